"""Stores a user has paid for: damaged journals, outputs named like a store, stores that cannot be opened, and
resumes whose data or settings changed. Each refusal is one line, exit 2, and leaves the store's bytes as they
were."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import ROOT, tiny_config, two_data_folders, write_config

from hpsearch.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def one_line_error(result, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpsearch: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def journal_with_a_trial(path: Path) -> None:
    """A journal-file store as a search leaves it: one study, one complete trial."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.create_study(study_name="t", storage=JournalStorage(JournalFileBackend(str(path))))
    trial = study.ask()
    trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
    study.tell(trial, 0.3)


def test_a_journal_whose_last_operation_was_cut_short_is_refused_until_it_is_cut_off(workdir):
    """A full disk or a killed worker leaves half an operation at the end. Optuna skips it while it is last but
    appends after it, and then refuses the whole journal: every trial in it would be unreadable."""
    path = workdir / "hp.log"
    journal_with_a_trial(path)
    whole = path.stat().st_size
    with path.open("ab") as f:
        f.write(b'{"op_code": 6, "worker_id": "w", "trial_id": 0, "user_attr": {"best_ep')
    before = path.read_bytes()
    write_config(workdir / "study.yaml", tiny_config())
    for command in (["search", "study.yaml"], ["show", "t"], ["requeue", "t", "0"]):
        line = one_line_error(
            invoke(*command, "--storage", str(path)), "hp.log (line ", "was cut short", "truncate -s"
        )
        assert path.read_bytes() == before and not (workdir / "checkpoints").exists()
    fix = shlex.split(re.search(r"(truncate -s \d+ \S+)$", line).group(1))
    assert fix[2] == str(whole)
    subprocess.run(fix, check=True)  # the command the message gives
    result = invoke("show", "t", "--storage", str(path))
    assert result.exit_code == 0, result.output
    assert re.search(r"^0\s+complete\s+0\.3000", result.stdout, re.M), result.stdout


def test_a_journal_broken_before_its_end_is_one_line_naming_the_line(workdir):
    path = workdir / "hp.log"
    journal_with_a_trial(path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([lines[0], b'{"op_code": 5{"op_code": 6}\n', *lines[1:]]))
    before = path.read_bytes()
    for command in (["show", "t"], ["studies"]):
        one_line_error(
            invoke(*command, "--storage", str(path)), "line 2 is not a whole JSON operation", "'2d'"
        )
    assert path.read_bytes() == before


@pytest.fixture
def stores(workdir) -> dict[str, Path]:
    """A SQLite store (and the name of its WAL file) and a journal, each with one complete trial."""
    db = workdir / "studies" / "t.db"
    db.parent.mkdir()
    study = optuna.create_study(study_name="t", storage=f"sqlite:///{db}")
    trial = study.ask()
    trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
    study.tell(trial, 0.3)
    journal_with_a_trial(workdir / "studies" / "t.log")
    return {"sqlite": db, "wal": db.with_name("t.db-wal"), "journal": workdir / "studies" / "t.log"}


@pytest.mark.parametrize("target", ["sqlite", "wal", "journal"])
@pytest.mark.parametrize("command", [["export", "t"], ["export", "t", "--format", "json"], ["report", "t"]])
def test_export_and_report_never_write_over_a_study_store(workdir, stores, command, target):
    """`-o studies/demo.db` for `-o demo.csv` would replace every trial of the study with a CSV file."""
    before = {p: p.read_bytes() for p in stores.values() if p.exists()}
    url = f"sqlite:///{stores['sqlite']}"
    output = stores[target]
    one_line_error(invoke(*command, "--storage", url, "-o", str(output)), f"-o {output}: is ", "give another")
    assert {p: p.read_bytes() for p in stores.values() if p.exists()} == before
    ext = "html" if command[0] == "report" else command[-1] if "--format" in command else "csv"
    fine = invoke(*command, "--storage", url, "-o", str(workdir / f"t.{ext}"))
    assert fine.exit_code == 0, fine.output


@pytest.fixture
def read_only_folder(workdir):
    """A folder no one can write in, root included (chattr +i where mode bits do not stop root)."""
    folder = workdir / "ro"
    folder.mkdir()
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def _make_read_only(folder: Path) -> None:
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root: mode bits do not apply
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
        if done.returncode != 0 or os.access(folder, os.W_OK):
            pytest.skip("cannot make a folder read-only for this user (root without chattr +i)")


def test_a_store_in_a_read_only_folder_is_not_called_a_non_sqlite_file(workdir, read_only_folder):
    """A search leaves its store in WAL mode, which SQLite cannot open where it cannot write the -shm file."""
    import sqlite3

    db = read_only_folder / "t.db"
    optuna.create_study(study_name="t", storage=f"sqlite:///{db}")
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA journal_mode=WAL")
    con.close()
    _make_read_only(read_only_folder)
    before = db.read_bytes()
    for command in (["show", "t"], ["studies"]):
        line = one_line_error(
            invoke(*command, "--storage", f"sqlite:///{db}"), "cannot open", "is read-only", "copy the store"
        )
        assert "not a SQLite file" not in line
    assert db.read_bytes() == before


def test_resuming_on_a_changed_data_file_is_refused_and_writes_nothing(workdir):
    """The config names the same file, but its rows changed: the new trials would measure other data."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()

    def rows(n: int) -> None:
        body = "".join(f"{words[i % 10]} {words[(i * 3) % 10]} row {i}\t{i % 2}\n" for i in range(n))
        (workdir / "train.tsv").write_text("sentence\tlabel\n" + body, encoding="utf-8")

    rows(200)
    data = {"name": None, "train_file": "train.tsv", "text_column": "sentence"}
    config = write_config(
        workdir / "study.yaml",
        tiny_config(data=None, study={"n_trials": 1}, train={"n_epochs": 1}) | {"data": data},
    )
    first = invoke("search", str(config))
    assert first.exit_code == 0, first.output
    store = workdir / "studies" / "t.db"
    before = store.read_bytes()
    rows(150)
    one_line_error(
        invoke("search", str(config), "--n-trials", "2"),
        "data: the data files (train.tsv) differ from those study 't' was measured on",
        "n_train 135 (study: 180)",
        "another --study-name",
    )
    assert store.read_bytes() == before


@pytest.fixture
def finished_study(workdir) -> str:
    """A study made by `hpsearch search` with tiny_config(): stored config, one complete trial."""
    from hpsearch.config import load_config
    from hpsearch.study import CONFIG_ATTR

    write_config(workdir / "study.yaml", tiny_config(study={"n_trials": 1}))
    url = f"sqlite:///{workdir}/t.db"
    study = optuna.create_study(study_name="t", storage=url)
    study.set_user_attr(CONFIG_ATTR, load_config(workdir / "study.yaml").to_dict())
    trial = study.ask()
    trial.suggest_float("learning_rate", 1e-4, 3e-3, log=True)
    trial.suggest_categorical("batch_size", [16, 32])
    trial.set_user_attr("best_epoch", 2)
    trial.report(0.4, 1)
    trial.report(0.3, 2)
    study.tell(trial, 0.3)
    return url


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--set", "train.n_epochs=3"], ["--set train.n_epochs is 3", "give --set train.n_epochs=2"]),
        (["--seed", "1"], ["--seed (study.seed) is 1", "Give --seed 0"]),
        (["--set", "search_space.batch_size=16"], ["--set search_space.batch_size: search_space differs"]),
    ],
    ids=["--set", "--seed", "space"],
)
def test_a_resume_refusal_names_the_flag_that_set_the_value_not_the_config_file(
    workdir, finished_study, args, words
):
    """The file says n_epochs 2; naming it for a value a flag set sends the user to fix the wrong place."""
    line = one_line_error(invoke("search", "study.yaml", "--storage", finished_study, *args), *words)
    assert "study.yaml" not in line


def test_a_resume_refusal_for_a_changed_file_gives_the_value_to_set_back(workdir, finished_study):
    write_config(workdir / "study.yaml", tiny_config(study={"n_trials": 1}, train={"n_epochs": 5}))
    one_line_error(
        invoke("search", "study.yaml", "--storage", finished_study),
        "study.yaml: train.n_epochs is 5",
        "set it back to 2 in study.yaml",
    )


def test_workers_refuse_other_settings_on_a_finished_study_as_one_worker_does(workdir, finished_study):
    before = Path(finished_study.removeprefix("sqlite:///")).read_bytes()
    args = ["search", "study.yaml", "--storage", finished_study, "--set", "train.n_epochs=3"]
    one_line_error(invoke(*args), "--set train.n_epochs is 3")
    one_line_error(invoke(*args, "--workers", "2"), "--set train.n_epochs is 3")
    assert Path(finished_study.removeprefix("sqlite:///")).read_bytes() == before


def test_ctrl_c_during_train_best_does_not_promise_a_resume(workdir, finished_study):
    """Only a search resumes; train-best starts over, and its message must say so."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "hpsearch", "train-best", "t", "--storage", finished_study, "-o", "m"]
    proc = subprocess.Popen(
        [*command, "--seeds", "100"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    )
    lines = []
    for line in proc.stderr:  # the first seed's line: training has started
        lines.append(line)
        if " seed " in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 130, "".join(lines) + rest
    last = rest.strip().splitlines()[-1]
    assert last.startswith("hpsearch: interrupted; train-best does not resume"), last
    assert "re-queued" not in last


@pytest.mark.skipif(
    not (os.access("/dev/full", os.W_OK) and os.access("/dev", os.W_OK)), reason="needs a writable /dev/full"
)
def test_a_full_disk_is_named_not_reported_as_an_internal_error(workdir, stores):
    """/dev/full answers every write with ENOSPC, as a full disk does."""
    result = invoke("export", "t", "--storage", f"sqlite:///{stores['sqlite']}", "-o", "/dev/full")
    assert result.exit_code == 1, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("hpsearch: error: the disk is full"), line
    assert "free some space" in line and "internal error" not in line


@pytest.mark.parametrize("name", ["a#b", "%41", "x?y"])
def test_a_study_name_with_url_characters_is_read_from_its_own_file_and_nothing_else_is_made(workdir, name):
    """SQLite URLs decode `%XX` and cut at `?`, and SQLite file URIs cut at `#`: the default store of such a
    study must still be studies/NAME.db, read and checked there, with no stray file beside it."""
    (workdir / "studies").mkdir()
    url = "sqlite:///studies/" + name.replace("%", "%25").replace("?", "%3F") + ".db"
    study = optuna.create_study(study_name=name, storage=url)
    trial = study.ask()
    trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
    study.tell(trial, 0.3)
    assert os.listdir(workdir / "studies") == [f"{name}.db"]
    result = invoke("show", name)
    assert result.exit_code == 0, result.output
    assert re.search(r"^0\s+complete\s+0\.3000", result.stdout, re.M), result.stdout
    assert os.listdir(workdir / "studies") == [f"{name}.db"]


def test_a_search_keeps_a_study_named_with_url_characters_in_studies_name_db(workdir):
    name = "r%41?s#t"
    write_config(workdir / "study.yaml", tiny_config(study={"n_trials": 1}, train={"n_epochs": 1}))
    result = invoke("search", "study.yaml", "--study-name", name)
    assert result.exit_code == 0, result.output
    assert os.listdir(workdir / "studies") == [f"{name}.db"]
    shown = invoke("show", name)
    assert shown.exit_code == 0 and re.search(r"^0\s+complete", shown.stdout, re.M), shown.output


def test_two_workers_on_other_data_files_cannot_both_record_their_data(workdir, monkeypatch):
    """Two workers of one new study, reading the same relative path from other folders (other data), both
    pass the checks while no data is recorded yet; the second to record finds the first's and is refused,
    instead of writing its sizes over them (the study would mix trials measured on both)."""
    from hpsearch.config import load_config
    from hpsearch.data import load_data
    from hpsearch.errors import ConfigError
    from hpsearch.space import parse_space
    from hpsearch.study import DATA_ATTR, data_sizes, open_study, record_data

    cfg = load_config(str(two_data_folders(workdir)), overrides={"storage": f"sqlite:///{workdir}/t.db"})
    space = parse_space(cfg.search_space, cfg.source)
    loaded = {}
    for folder in ("a", "b"):
        monkeypatch.chdir(workdir / folder)
        loaded[folder] = load_data(cfg.data, seed=0)
    first = open_study(cfg, space, 0, loaded["a"])  # both checked: nothing recorded yet
    second = open_study(cfg, space, 1, loaded["b"])
    record_data(second, loaded["b"], cfg)
    with pytest.raises(
        ConfigError, match=r"differ from those study 't' was measured on: n_train 180 \(study: 135\)"
    ):
        record_data(first, loaded["a"], cfg)
    assert optuna.load_study(study_name="t", storage=cfg.study.storage).user_attrs[DATA_ATTR] == data_sizes(
        loaded["b"]
    )


def test_a_refused_search_leaves_no_sqlite_side_files_behind(workdir):
    """A search refused after its store check (here a data column that is not there) left the WAL store's
    -wal and -shm files, made by the check's read-only connection, which cannot remove them."""
    write_config(workdir / "study.yaml", tiny_config(study={"n_trials": 1}, train={"n_epochs": 1}))
    assert invoke("search", "study.yaml").exit_code == 0
    store = workdir / "studies" / "t.db"
    before, files = store.read_bytes(), sorted(os.listdir(store.parent))
    assert files == ["t.db"]  # the search closed its store: SQLite removed its side files
    one_line_error(invoke("search", "study.yaml", "--set", "data.text_column=nope"), "no column 'nope'")
    assert sorted(os.listdir(store.parent)) == files and store.read_bytes() == before
    assert invoke("show", "t").exit_code == 0 and sorted(os.listdir(store.parent)) == files
