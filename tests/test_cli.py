"""Bad input through the CLI: exit 2, one line on stderr, no traceback, and nothing written to any store."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import tiny_config, write_config

from hpsearch.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hpsearch: error: "), lines[0]
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def assert_nothing_written(workdir: Path) -> None:
    assert not (workdir / "studies").exists()
    assert not list(workdir.rglob("*.db")) and not list(workdir.rglob("*.log"))
    assert not (workdir / "checkpoints").exists()


def write_rows(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def file_data(workdir: Path, labels: list, validation_labels: list | None = None, **data) -> dict:
    """A data section over generated TSV files with the given train (and validation) labels."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    write_rows(
        workdir / "train.tsv",
        ["sentence", "label"],
        [[f"{words[i % 10]} {words[(i * 3) % 10]} row {i}", y] for i, y in enumerate(labels)],
    )
    section = {"name": None, "train_file": "train.tsv", "text_column": "sentence", **data}
    if validation_labels is not None:
        write_rows(
            workdir / "validation.tsv",
            ["sentence", "label"],
            [[f"{words[i % 10]} held out {i}", y] for i, y in enumerate(validation_labels)],
        )
        section["validation_file"] = "validation.tsv"
    return section


# Each case: (id, config sections or raw text, extra CLI args, words the error line must contain).
BAD_INPUTS = [
    (
        "unknown key",
        {"train": {"n_epoch": 2}},
        [],
        ["unknown key 'n_epoch' in train", "did you mean 'n_epochs'"],
    ),
    (
        "low >= high",
        {"search_space": {"learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}},
        [],
        ["low must be < high"],
    ),
    ("unknown sampler flag", {}, ["--sampler", "tpr"], ["study.sampler", "did you mean 'tpe'"]),
    ("unknown pruner in --set", {}, ["--set", "study.pruner=medain"], ["did you mean 'median'"]),
    ("bad --set", {}, ["--set", "train.n_epochs"], ["expected section.key=value"]),
    (
        "grid with continuous log range",
        {},
        ["--sampler", "grid"],
        ["search_space.learning_rate", "grid sampler needs finite values"],
    ),
    ("non-URL storage", {}, ["--storage", "studies/t.db"], ["not a storage URL", "sqlite:///"]),
    (
        "unreachable store",
        {},
        ["--storage", "postgresql+psycopg://nobody@127.0.0.1:1/x"],
        ["storage: cannot reach postgresql+psycopg://nobody@127.0.0.1:1/x", "fix the host and port"],
    ),
    (
        "missing data file",
        {"data": {"name": None, "train_file": "nope.csv"}},
        [],
        ["data.train_file: file not found: nope.csv (paths are relative to the current folder, "],
    ),
    (
        "unsupported data file",
        {"data": {"name": None, "train_file": "study.yaml"}},
        [],
        ["unsupported file type '.yaml'"],
    ),
    ("missing model folder", {"model": {"name": "./no-such-model"}}, [], ["model.name", "no-such-model"]),
    ("max_length zero", {"model": {"max_length": 0}}, [], ["model.max_length: must be >= 1"]),
    ("no Apple GPU", {"train": {"device": "mps"}}, [], ["train.device: mps requested", "cpu"]),
    (
        "checkpoint folder under a file",
        {"train": {"checkpoint_dir": "study.yaml/checkpoints"}},
        [],
        ["train.checkpoint_dir", "is a file"],
    ),
    (
        "infinite bound",
        {
            "search_space": {
                "learning_rate": {"type": "float", "low": 1e-5, "high": float("inf"), "log": True}
            }
        },
        [],
        ["low and high must be finite"],
    ),
    ("in-memory SQLite", {}, ["--storage", "sqlite://"], ["in-memory SQLite store", "sqlite:///studies/"]),
    ("in-memory SQLite file", {}, ["--storage", "sqlite:///:memory:"], ["in-memory SQLite store"]),
    (
        "SQLite URL options",
        {},
        ["--storage", "sqlite:///t.db?mode=ro"],
        ["options (mode=ro)", "sqlite:///t.db"],
    ),
    (
        "study name with a path",
        {},
        ["--study-name", "../elsewhere/t"],
        ["--study-name (study.name):", "path parts", "'elsewhere-t'"],
    ),
    ("seed out of range", {}, ["--seed", "99999999999"], ["--seed (study.seed): must be in 0..4294967295"]),
    ("negative seed", {}, ["--seed", "-1"], ["--seed (study.seed): must be in 0..4294967295"]),
    ("zero trials by flag", {}, ["--n-trials", "0"], ["--n-trials (study.n_trials): must be >= 1"]),
    ("misspelt --set key", {}, ["--set", "train.lr=1e-3"], ["--set train.lr: unknown key 'lr' in train"]),
    ("zero trials in the file", {"study": {"n_trials": 0}}, [], ["study.yaml: study.n_trials: must be >= 1"]),
    ("bad --set value", {}, ["--set", "train.n_epochs=0"], ["--set train.n_epochs: must be >= 1, got 0"]),
    (
        "bad --set range",
        {},
        ["--set", "search_space.learning_rate.high=1e-6"],
        ["--set search_space.learning_rate: low must be < high"],
    ),
    ("store is a folder", {}, ["--storage", "sqlite:///studies.d"], ["studies.d is a folder"]),
    ("negative store wait", {}, ["--set", "study.store_wait=-1"], ["study.store_wait: must be >= 0"]),
]


@pytest.mark.parametrize("case,sections,args,words", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(workdir, case, sections, args, words):
    config = write_config(workdir / "study.yaml", tiny_config(**sections))
    if case == "store is a folder":
        (workdir / "studies.d").mkdir()
    result = invoke("search", str(config), *args)
    assert_one_line_error(result, *words)
    assert_nothing_written(workdir)


def test_missing_config_file(workdir):
    assert_one_line_error(invoke("search", "studies/nope.yaml"), "studies/nope.yaml: config file not found")
    assert_nothing_written(workdir)


def test_invalid_yaml_names_the_line(workdir):
    (workdir / "bad.yaml").write_text("study:\n  name: x\n  n_trials: [3\n", encoding="utf-8")
    assert_one_line_error(invoke("search", "bad.yaml"), "bad.yaml: line 4:", "not valid YAML")
    assert_nothing_written(workdir)


@pytest.mark.parametrize(
    "case,make,words",
    [
        (
            "ragged TSV",
            lambda w: (
                (w / "train.tsv").write_text("text\tlabel\na b\t1\nc\td\te\tf\n")
                and {"name": None, "train_file": "train.tsv"}
            ),
            ["could not read train.tsv", "Expected 2 fields in line 3, saw 4"],
        ),
        (
            "header only",
            lambda w: (
                (w / "train.tsv").write_text("text\tlabel\n") and {"name": None, "train_file": "train.tsv"}
            ),
            ["could not read train.tsv: it has no data rows"],
        ),
        (
            "missing column",
            lambda w: file_data(w, [0, 1] * 20, text_column="sentense"),
            ["data.text_column: no column 'sentense' in the train data; did you mean 'sentence'?"],
        ),
        (
            "missing label column",
            lambda w: file_data(w, [0, 1] * 20, label_column="labels"),
            ["data.label_column: no column 'labels'", "did you mean 'label'"],
        ),
        (
            "float labels",
            lambda w: file_data(w, [0.25, 0.5, 0.75, 1.5] * 10),
            ["data.label_column", "labels must be classes", "not continuous values"],
        ),
        (
            "nearly unique labels",
            lambda w: file_data(w, [f"id-{i}" for i in range(40)]),
            ["distinct values in", "not class labels"],
        ),
        ("one class", lambda w: file_data(w, ["pos"] * 40), ["only one class ('pos')"]),
        ("empty label cells", lambda w: file_data(w, ["pos", "neg", ""] * 20), ["empty"]),
        (
            "validation label unseen in train",
            lambda w: file_data(w, ["pos", "neg"] * 20, ["pos", "neg", "meh"]),
            [
                "data.label_column: validation row 2 (line 4 of validation.tsv) has label 'meh'",
                "never uses",
                "classes: neg, pos",
            ],
        ),
    ],
)
def test_bad_data_exits_2_and_writes_nothing(workdir, case, make, words):
    config = write_config(workdir / "study.yaml", tiny_config(data=None) | {"data": make(workdir)})
    assert_one_line_error(invoke("search", str(config)), *words)
    assert_nothing_written(workdir)


@pytest.fixture
def existing_store(workdir) -> str:
    """A real store with one study and one finished trial, as a previous search would leave it."""
    url = f"sqlite:///{workdir}/studies/t.db"
    (workdir / "studies").mkdir()
    study = optuna.create_study(study_name="t", storage=url)
    trial = study.ask()
    trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
    study.tell(trial, 0.3)
    return url


def snapshot(url: str) -> list[tuple[str, int]]:
    return [(s.study_name, s.n_trials) for s in optuna.get_all_study_summaries(url, include_best_trial=False)]


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "train.n_epoch=1"],
        ["--sampler", "grid"],
        ["--set", "data.name=null", "--set", "data.train_file=missing.tsv"],
        ["--study-name", "other", "--set", "data.text_column=txt"],
    ],
    ids=["typo", "grid", "missing file", "new study with missing column"],
)
def test_rejected_command_adds_no_study_or_trial_to_an_existing_store(workdir, existing_store, args):
    before = snapshot(existing_store)
    config = write_config(workdir / "study.yaml", tiny_config())
    assert_one_line_error(invoke("search", str(config), "--storage", existing_store, *args))
    assert snapshot(existing_store) == before == [("t", 1)]
    assert not (workdir / "checkpoints").exists()


def test_debug_shows_the_traceback(workdir):
    result = invoke("--debug", "search", "nope.yaml")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("hpsearch: error: ")


@pytest.mark.parametrize("command", [["show", "t"], ["best", "t"], ["export", "t"], ["studies"]])
def test_reading_a_missing_store_creates_nothing(workdir, command):
    assert_one_line_error(invoke(*command))
    assert_nothing_written(workdir)


def test_reading_an_unknown_study_suggests_the_stored_one(workdir, existing_store):
    assert_one_line_error(
        invoke("show", "tt", "--storage", existing_store), "study 'tt' not found", "did you mean 't'"
    )
    assert snapshot(existing_store) == [("t", 1)]


def test_usage_error_is_one_line(workdir):
    assert_one_line_error(invoke("search", "a.yaml", "--n-trials", "many"), "--n-trials")


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("search", "studies", "show", "best", "export"):
        assert command in result.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--set", "train.dropout=0.5"], ["train.dropout is 0.5", "created with 0.1"]),
        (["--set", "train.warmup_ratio=0.1"], ["train.warmup_ratio is 0.1"]),
        (["--seed", "1"], ["--seed (study.seed) is 1", "created with 0", "--worker-index"]),
        (["--set", "train.n_epochs=3"], ["train.n_epochs is 3", "created with 2"]),
        (["--set", "model.max_length=64"], ["model.max_length is 64", "created with 32"]),
        (["--set", "data.demo_size=200"], ["data.demo_size is 200", "created with 300"]),
        (
            ["--set", "search_space.learning_rate.high=0.01"],
            ["search_space differs", "(changed: learning_rate)"],
        ),
    ],
    ids=["dropout", "warm-up", "seed", "epochs", "max-length", "data", "space"],
)
def test_resuming_with_other_training_settings_is_refused_and_keeps_the_stored_recipe(workdir, args, words):
    """Every stored trial was trained with the stored settings; `best` and `train-best` read them from there."""
    from hpsearch.config import load_config
    from hpsearch.study import CONFIG_ATTR

    config = write_config(workdir / "study.yaml", tiny_config())
    url = f"sqlite:///{workdir}/t.db"
    stored = load_config(config).to_dict()
    study = optuna.create_study(study_name="t", storage=url)
    study.set_user_attr(CONFIG_ATTR, stored)
    trial = study.ask()
    trial.suggest_float("learning_rate", 1e-4, 3e-3, log=True)
    study.tell(trial, 0.3)
    assert_one_line_error(invoke("search", str(config), "--storage", url, *args), *words)
    assert optuna.load_study(study_name="t", storage=url).user_attrs[CONFIG_ATTR] == stored
    assert snapshot(url) == [("t", 1)]
    # a setting that does not change what a trial measures may change on resume: the device, the pruner
    changed = dict(
        stored, search_space={**stored["search_space"], "dropout": {"type": "float", "low": 0.0, "high": 0.2}}
    )
    study.set_user_attr(CONFIG_ATTR, changed)  # dropout searched: its train default is not the trial's value
    config2 = write_config(workdir / "s2.yaml", tiny_config(search_space=changed["search_space"]))
    result = invoke("search", str(config2), "--storage", url, "--set", "train.dropout=0.3", "--n-trials", "1")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", [["show", "t"], ["best", "t"], ["export", "t"], ["studies"]])
def test_reading_a_store_leaves_its_file_byte_identical(workdir, existing_store, command):
    """Optuna's own store keeps SQLite's rollback journal; reading it must not switch the file to WAL."""
    path = workdir / "studies" / "t.db"
    before = path.read_bytes()
    result = invoke(*command, "--storage", existing_store)
    assert result.exit_code == 0, result.output
    assert path.read_bytes() == before and not list(workdir.glob("studies/t.db-*"))


@pytest.mark.parametrize("content", ["users", "trials", "empty"])  # trials: one of Optuna's table names alone
@pytest.mark.parametrize("command", [["show", "t"], ["studies"], ["best", "t"]])
def test_reading_a_sqlite_file_that_is_not_a_study_store_leaves_it_untouched(workdir, command, content):
    import sqlite3

    path = workdir / "other.db"
    if content == "empty":
        path.touch()
    else:
        with sqlite3.connect(path) as con:
            con.execute(f"create table {content}(id int)")
        con.close()
    before = path.read_bytes()
    line = assert_one_line_error(invoke(*command, "--storage", f"sqlite:///{path}"))
    assert "not a study store" in line
    assert "empty file" in line if content == "empty" else f"other tables ({content})" in line
    assert path.read_bytes() == before and not list(workdir.glob("other.db-*"))


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (["export", "t", "-o", "afile/x.csv"], ["afile is a file, not a folder"]),
        (["report", "t", "-o", "adir"], ["-o adir: is a folder"]),
        (["report", "t", "-o", "afile/r.html"], ["afile is a file"]),
        (["report", "t", "--format", "png", "-o", "afile/figures"], ["afile is a file"]),
        (["report", "t", "--format", "png", "-o", "r.html"], ["writes a folder of PNG files", "-o r/"]),
        (["train-best", "t", "-o", "afile/model"], ["afile is a file"]),
        (["train-best", "t", "-o", "model", "--device", "mps"], ["train.device: mps requested"]),
    ],
    ids=[
        "export under a file",
        "report to a folder",
        "report under a file",
        "png under a file",
        "png to a file name",
        "model",
        "mps",
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_any_work(workdir, existing_store, command, words):
    (workdir / "afile").write_text("x")
    (workdir / "adir").mkdir()
    assert_one_line_error(invoke(*command, "--storage", existing_store), *words)
    assert snapshot(existing_store) == [("t", 1)] and not (workdir / "model").exists()
    assert not (workdir / "r.html").exists()


def test_a_key_given_twice_is_refused_with_its_line(workdir):
    (workdir / "study.yaml").write_text("study: {name: t}\ntrain:\n  n_epochs: 2\n  n_epochs: 30\n")
    assert_one_line_error(invoke("search", "study.yaml"), "line 4", "'n_epochs' is given twice")
    assert_nothing_written(workdir)


@pytest.mark.parametrize("command", [["search", "study.yaml"], ["show", "t"], ["studies"]])
def test_a_password_in_a_malformed_url_is_not_printed(workdir, command):
    write_config(workdir / "study.yaml", tiny_config())
    url = "postgresql+psycopg:/hp:s3cret@db.internal/hpsearch"  # one slash missing
    line = assert_one_line_error(invoke(*command, "--storage", url), "not a storage URL")
    assert "s3cret" not in line and "hp:***@db.internal" in line


def test_studies_lists_the_good_stores_beside_a_file_that_is_not_one(workdir, existing_store):
    (workdir / "studies" / "junk.db").write_bytes(b"not a database at all, just bytes" * 100)
    result = invoke("studies")
    assert result.exit_code == 0, result.output
    assert "t: 1 complete" in result.stdout
    assert "skipped sqlite:///studies/junk.db" in result.stderr


def test_yaml_anchors_and_merge_keys_still_work_and_may_be_overridden(workdir):
    from hpsearch.config import load_config

    (workdir / "study.yaml").write_text(
        "study: {name: m}\nsearch_space:\n"
        "  weight_decay: &uniform {type: float, low: 0.0, high: 0.1}\n"
        "  warmup_ratio: {<<: *uniform, high: 0.2}\n",
        encoding="utf-8",
    )
    space = load_config(workdir / "study.yaml").search_space
    assert space["warmup_ratio"] == {"type": "float", "low": 0.0, "high": 0.2}


def test_a_key_given_twice_in_a_set_value_is_refused(workdir):
    write_config(workdir / "study.yaml", tiny_config())
    value = "search_space.learning_rate={type: float, low: 0.001, low: 0.01, high: 0.1}"
    assert_one_line_error(invoke("search", "study.yaml", "--set", value), "--set", "'low' is given twice")
    assert_nothing_written(workdir)


def test_resuming_a_study_that_maximises_is_refused(workdir):
    """hpsearch minimises val_error: in a study made to maximise, `best` would name the worst trial."""
    config = write_config(workdir / "study.yaml", tiny_config())
    url = f"sqlite:///{workdir}/t.db"
    optuna.create_study(study_name="t", storage=url, direction="maximize")
    assert_one_line_error(invoke("search", str(config), "--storage", url), "study 't' maximises")
    assert snapshot(url) == [("t", 0)] and not (workdir / "checkpoints").exists()


def test_resuming_a_study_made_outside_hpsearch_is_refused_and_left_as_it_was(workdir):
    """A study with trials but no hpsearch settings (made with Optuna directly) measured something unknown:
    hpsearch's trials added to it would not be comparable. One seeded with queued trials alone is taken."""
    config = write_config(workdir / "study.yaml", tiny_config(study={"n_trials": 1}, train={"n_epochs": 1}))
    url = f"sqlite:///{workdir}/t.db"
    made = optuna.create_study(study_name="t", storage=url)
    made.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    before = (workdir / "t.db").read_bytes()
    line = assert_one_line_error(invoke("search", str(config), "--storage", url))
    assert "study 't' has 2 trial(s) but no hpsearch settings" in line and "another --study-name" in line
    assert (workdir / "t.db").read_bytes() == before and not (workdir / "checkpoints").exists()

    seeded = optuna.create_study(study_name="seeded", storage=url)
    seeded.enqueue_trial({"learning_rate": 1e-3, "batch_size": 16})
    result = invoke("search", str(config), "--storage", url, "--study-name", "seeded")
    assert result.exit_code == 0, result.output
    [trial] = optuna.load_study(study_name="seeded", storage=url).trials
    assert trial.state.is_finished() and trial.params == {"learning_rate": 1e-3, "batch_size": 16}


def test_search_refuses_a_sqlite_file_of_other_tables(workdir):
    import sqlite3

    write_config(workdir / "study.yaml", tiny_config())
    path = workdir / "app.db"
    with sqlite3.connect(path) as con:
        con.execute("create table users(id int)")
    con.close()
    before = path.read_bytes()
    line = assert_one_line_error(invoke("search", "study.yaml", "--storage", f"sqlite:///{path}"))
    assert "SQLite file of other tables (users), not a study store" in line
    assert path.read_bytes() == before and not (workdir / "checkpoints").exists()
