"""End to end through the CLI: a real search on a real SQLite file, read back by every command and Optuna."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from click.testing import CliRunner
from conftest import ROOT, tiny_config, write_config
from optuna.trial import TrialState

from hpsearch.cli import cli
from hpsearch.config import DataSection, load_config
from hpsearch.data import load_data

DEMO_SIZE = 800  # small enough for seconds per trial, big enough that a good learning rate clearly learns
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Finished trials, one per configuration: a paused trial that another continues counts as that one."""
    from hpsearch.pruners import continued

    gone = continued(study.trials)
    return [t for t in study.trials if t.state in FINISHED and t.number not in gone]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> SimpleNamespace:
    """studies/demo.yaml (its space, sampler and pruner) on a smaller demo set, searched once per module."""
    folder = tmp_path_factory.mktemp("demo")
    cfg = yaml.safe_load((ROOT / "studies" / "demo.yaml").read_text(encoding="utf-8"))
    cfg["data"]["demo_size"] = DEMO_SIZE
    cfg["train"] = {**cfg.get("train", {}), "n_epochs": 3, "checkpoint_dir": str(folder / "checkpoints")}
    cfg["model"]["max_length"] = 32
    cfg["study"]["storage"] = f"sqlite:///{folder}/studies/demo.db"
    config = write_config(folder / "demo.yaml", cfg)
    result = invoke("search", config)
    assert result.exit_code == 0, result.output
    url = cfg["study"]["storage"]
    return SimpleNamespace(
        folder=folder,
        config=config,
        url=url,
        result=result,
        cfg=cfg,
        study=optuna.load_study(study_name="demo", storage=url),
    )


@pytest.mark.slow
def test_demo_search_has_pruned_and_complete_trials_inside_the_space(demo):
    study = demo.study
    assert "also training examples" not in demo.result.output  # the demo data repeats no row
    assert len(finished(study)) == 12 <= len(study.trials)  # + continuations of paused trials
    states = [t.state for t in study.trials]
    assert TrialState.COMPLETE in states and TrialState.PRUNED in states
    for t in study.trials:
        assert 1e-5 <= t.params["learning_rate"] <= 1e-1
        assert t.params["batch_size"] in (8, 16, 32, 64)
        assert set(t.intermediate_values) <= {1, 2, 3}  # step = epoch
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert t.value == min(t.intermediate_values.values())
            assert t.user_attrs["epochs_run"] == 3 and t.user_attrs["best_epoch"] in (1, 2, 3)
            assert t.user_attrs["device"] == "cpu" and t.user_attrs["train_seconds"] > 0
    summary = json.loads(demo.result.stdout.strip().splitlines()[-1])
    assert summary["best_trial"] == study.best_trial.number and summary["best_value"] == study.best_value


@pytest.mark.slow
def test_best_demo_trial_beats_the_majority_class_baseline(demo):
    data = load_data(DataSection(name="demo", demo_size=DEMO_SIZE), seed=0)
    assert demo.study.best_value <= data.majority_error() - 0.1, (
        demo.study.best_value,
        data.majority_error(),
    )


@pytest.mark.slow
def test_the_search_stores_its_data_sizes_and_gives_the_noise_of_its_best(demo):
    data = load_data(DataSection(name="demo", demo_size=DEMO_SIZE), seed=0)
    sizes = demo.study.user_attrs["hpsearch_data"]
    assert sizes == {
        "n_train": len(data.train),
        "n_validation": len(data.validation),
        "n_classes": 2,
        "majority_val_error": round(data.majority_error(), 4),
        "constant_val_error": round(data.constant_error(), 4),
    }
    best = demo.study.best_value
    se = round(math.sqrt(best * (1 - best) / len(data.validation)), 4)
    summary = json.loads(demo.result.stdout.strip().splitlines()[-1])
    assert summary["best_standard_error"] == se > 0
    tied = [
        t.number
        for t in demo.study.trials
        if t.state == TrialState.COMPLETE and t.number != summary["best_trial"] and t.value <= best + se
    ]
    assert sorted(summary["best_within_one_standard_error"]) == sorted(tied)
    assert f"val_error {best:.4f} ± {se:.4f} (" in demo.result.stderr


@pytest.mark.slow
def test_stored_config_is_the_resolved_config(demo):
    stored = demo.study.user_attrs["hpsearch_config"]
    assert stored == load_config(demo.config).to_dict()
    assert stored["data"]["demo_size"] == DEMO_SIZE and stored["study"]["n_trials"] == 12


@pytest.mark.slow
def test_show_lists_every_trial(demo):
    result = invoke("show", "demo", "--storage", demo.url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["number", "state", "value"]
    rows = [line.split() for line in lines[1:] if line.split() and line.split()[0].isdigit()]
    by_number = {int(row[0]): row[1] for row in rows}
    assert by_number == {t.number: t.state.name.lower() for t in demo.study.trials}


@pytest.mark.slow
def test_show_json_matches_the_store(demo):
    result = invoke("show", "demo", "--storage", demo.url, "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    # counts are per configuration: a paused trial that another continues is counted as that one
    assert shown["counts"]["complete"] == sum(t.state == TrialState.COMPLETE for t in finished(demo.study))
    assert shown["counts"]["pruned"] == sum(t.state == TrialState.PRUNED for t in finished(demo.study))
    for row, t in zip(shown["trials"], demo.study.trials, strict=True):
        assert (row["number"], row["state"], row["value"], row["params"]) == (
            t.number,
            t.state.name,
            t.value,
            t.params,
        )
        assert row["intermediate_values"] == {str(k): v for k, v in t.intermediate_values.items()}


@pytest.mark.slow
def test_best_pastes_back_as_a_config_that_fixes_the_values(demo, tmp_path):
    result = invoke("best", "demo", "--storage", demo.url)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"# best trial {demo.study.best_trial.number} of study 'demo'")
    pasted = yaml.safe_load(result.stdout)
    assert pasted["search_space"]["learning_rate"] == demo.study.best_params["learning_rate"]
    path = tmp_path / "best.yaml"
    path.write_text(result.stdout, encoding="utf-8")
    cfg = load_config(path)
    from hpsearch.space import parse_space

    space = parse_space(cfg.search_space)
    assert space.params == ()  # nothing left to search
    assert space.fixed == demo.study.best_params
    assert cfg.model.max_length == 32 and cfg.data.demo_size == DEMO_SIZE  # the same model and data
    assert cfg.train.n_epochs == 3  # the study's whole schedule, as train-best retrains it
    # the seed that carved and sampled the trial's data
    assert cfg.study.seed == demo.study.user_attrs["hpsearch_config"]["study"]["seed"] is not None
    assert f"at epoch {demo.study.best_trial.user_attrs['best_epoch']} of 3" in result.stdout.splitlines()[0]
    as_json = json.loads(invoke("best", "demo", "--storage", demo.url, "--format", "json").stdout)
    assert as_json["val_error"] == demo.study.best_value and as_json["trial"] == demo.study.best_trial.number


@pytest.mark.slow
def test_export_csv_and_json_to_files(demo, tmp_path):
    out = tmp_path / "trials.csv"
    result = invoke("export", "demo", "--storage", demo.url, "--format", "csv", "-o", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [int(r["number"]) for r in rows] == [t.number for t in demo.study.trials]
    for r, t in zip(rows, demo.study.trials, strict=True):
        assert r["state"] == t.state.name
        assert float(r["params_learning_rate"]) == pytest.approx(t.params["learning_rate"])
        assert int(r["params_batch_size"]) == t.params["batch_size"]
        if 1 in t.intermediate_values:
            assert float(r["val_error_epoch_1"]) == pytest.approx(t.intermediate_values[1])
    out_json = tmp_path / "trials.json"
    assert invoke("export", "demo", "--storage", demo.url, "--format", "json", "-o", out_json).exit_code == 0
    exported = json.loads(out_json.read_text(encoding="utf-8"))
    assert [r["params"] for r in exported["trials"]] == [t.params for t in demo.study.trials]


@pytest.mark.slow
def test_studies_lists_the_default_stores(demo, monkeypatch):
    monkeypatch.chdir(demo.folder)  # `studies` without --storage reads studies/*.db here
    result = invoke("studies")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("demo: ")
    rows = json.loads(invoke("studies", "--json").stdout)
    assert len(rows) == 1 and rows[0]["study"] == "demo" and rows[0]["n_trials"] == 12
    assert rows[0]["trials"]["complete"] + rows[0]["trials"]["pruned"] == 12
    assert rows[0]["best_value"] == demo.study.best_value


def copy_store(url: str, folder: Path) -> str:
    """A consistent copy of a SQLite store (WAL included), for tests that add trials."""
    target = folder / "copy.db"
    with sqlite3.connect(url.removeprefix("sqlite:///")) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return f"sqlite:///{target}"


@pytest.mark.slow
def test_more_n_trials_adds_exactly_the_missing_trials_then_nothing(demo, tmp_path):
    url = copy_store(demo.url, tmp_path)
    result = invoke("search", demo.config, "--storage", url, "--n-trials", 14)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="demo", storage=url)
    n_before = len(demo.study.trials)
    assert [t.number for t in study.trials] == list(range(len(study.trials)))
    assert len(finished(study)) == 14
    assert [(t.params, t.state) for t in study.trials[:n_before]] == [
        (t.params, t.state) for t in demo.study.trials
    ]
    # The budget is met: the same command runs nothing and says so.
    again = invoke("search", demo.config, "--storage", url, "--n-trials", 14)
    assert again.exit_code == 0, again.output
    assert len(optuna.load_study(study_name="demo", storage=url).trials) == len(study.trials)
    assert json.loads(again.stdout.strip().splitlines()[-1])["best_trial"] == study.best_trial.number


@pytest.mark.slow
def test_tiny_fine_tunes_on_sst2_through_the_cli(workdir, sst2_dir):
    # studies/sst2.yaml as shipped, on a few hundred rows; its relative paths are replaced by the fixture's.
    result = invoke(
        "search",
        ROOT / "studies" / "sst2.yaml",
        "--n-trials",
        2,
        "--pruner",
        "none",
        "--set",
        f"data.train_file={sst2_dir / 'train.tsv'}",
        "--set",
        f"data.validation_file={sst2_dir / 'validation.tsv'}",
        "--set",
        "data.max_train_samples=300",
        "--set",
        "data.max_validation_samples=100",
        "--set",
        "train.n_epochs=1",
        "--set",
        "model.max_length=32",
    )
    assert result.exit_code == 0, result.output
    assert "300 train / 100 validation examples, 2 classes" in result.stderr
    study = optuna.load_study(study_name="sst2", storage=f"sqlite:///{workdir}/studies/sst2.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all(0 <= t.value <= 1 and t.user_attrs["epochs_run"] == 1 for t in study.trials)
    assert study.user_attrs["hpsearch_config"]["data"]["text_column"] == "sentence"


def test_sst2_study_file_points_at_the_shared_data():
    cfg = load_config(ROOT / "studies" / "sst2.yaml")
    assert cfg.model.name == "tiny" and cfg.data.text_column == "sentence" and cfg.data.max_train_samples
    assert cfg.data.train_file == "../shared/data/sst2/train.tsv"
    assert cfg.data.validation_file == "../shared/data/sst2/validation.tsv"


def test_demo_study_file_is_the_documented_demo():
    cfg = load_config(ROOT / "studies" / "demo.yaml")
    assert (cfg.study.name, cfg.study.n_trials, cfg.model.name, cfg.data.name) == ("demo", 12, "tiny", "demo")
    assert cfg.search_space["learning_rate"] == {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}
    assert cfg.search_space["batch_size"] == {"type": "categorical", "choices": [8, 16, 32, 64]}


INTENTS = {
    "book_flight": ["book a flight to {}", "i need a plane ticket to {}", "fly me to {} tomorrow"],
    "weather": ["what is the weather in {}", "will it rain in {}", "is it sunny in {} today"],
    "play_music": ["play some jazz by {}", "put on the latest album from {}", "i want to hear {}"],
    "set_alarm": ["wake me up at {} am", "set an alarm for {}", "alarm at {} please"],
}
FILLERS = {
    "book_flight": ["paris", "tokyo", "lima"],
    "weather": ["oslo", "rome", "cairo"],
    "play_music": ["miles", "nina", "bach"],
    "set_alarm": ["six", "seven", "eight"],
}


def write_intents(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["id", "utterance", "intent"])
        for i in range(n):
            intent = rng.choice(sorted(INTENTS))
            writer.writerow([i, rng.choice(INTENTS[intent]).format(rng.choice(FILLERS[intent])), intent])
    return path


def _one_trial_on_rows(workdir: Path, name: str, rows: list[tuple[str, str]]) -> Path:
    """A config for one 1-epoch trial on ``rows`` (text, label), written as NAME.csv; validation carved from it."""
    (workdir / f"{name}.csv").write_text(
        "text,label\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8"
    )
    return write_config(
        workdir / f"{name}.yaml",
        tiny_config(
            study={"name": name, "n_trials": 1},
            data={"name": None, "train_file": f"{name}.csv"},
            train={"n_epochs": 1},
        ),
    )


def test_validation_rows_repeated_from_training_are_named_before_the_search(workdir):
    """A file with repeated rows, its validation split carved from it: some validation sentences are training
    sentences, and the search says how many before it spends anything."""
    rows = [(f"sentence number {i % 20} here", "pos" if i % 20 < 10 else "neg") for i in range(60)]
    config = _one_trial_on_rows(workdir, "rep", rows)
    result = invoke("search", config)
    assert result.exit_code == 0, result.output
    data = load_data(load_config(config).data)
    seen = data.validation_seen_in_train()
    assert 0 < seen <= len(data.validation)
    assert f"data: {seen} of {len(data.validation)} validation examples (" in result.stderr
    assert "are also training examples (repeated rows)" in result.stderr


@pytest.mark.slow
def test_another_tsv_data_set_with_other_columns_and_four_classes(workdir):
    write_intents(workdir / "intents_train.tsv", 400, seed=0)
    write_intents(workdir / "intents_dev.tsv", 80, seed=1)
    config = write_config(
        workdir / "intents.yaml",
        tiny_config(
            study={"name": "intents", "n_trials": 3},
            data={
                "name": None,
                "train_file": "intents_train.tsv",
                "validation_file": "intents_dev.tsv",
                "text_column": "utterance",
                "label_column": "intent",
                "demo_size": 3000,
            },
            train={"n_epochs": 2},
            search_space={
                "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                "batch_size": 16,
            },
        ),
    )
    result = invoke("search", config)
    assert result.exit_code == 0, result.output
    assert "400 train / 80 validation examples, 4 classes" in result.stderr
    study = optuna.load_study(study_name="intents", storage=f"sqlite:///{workdir}/studies/intents.db")
    assert len(finished(study)) == 3
    data = load_data(load_config(config).data)
    assert data.label_names == sorted(INTENTS)
    assert study.best_value < data.majority_error()


def test_epoch_budget_stops_starting_trials_and_a_larger_one_resumes(make_config, workdir):
    config = make_config(study={"n_trials": 100, "pruner": "none", "epoch_budget": 5}, train={"n_epochs": 2})
    url = f"sqlite:///{workdir}/studies/t.db"
    result = invoke("search", config)
    assert result.exit_code == 0, result.output
    # 2 + 2 epochs are under the budget, so a third trial starts; it finishes, and then nothing starts
    assert "epoch budget met: study 't' has trained 6.0 of 5 epochs in 3 trials" in result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["stopped_by"] == "budget"
    study = optuna.load_study(study_name="t", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    more = invoke("search", config, "--epoch-budget", 8)
    assert more.exit_code == 0, more.output
    study = optuna.load_study(study_name="t", storage=url)
    assert len(finished(study)) == 4 and "trained 8.0 of 8 epochs in 4 trials" in more.output
    show = invoke("show", "t", "--storage", url)
    assert "epoch budget 8.0 of 8 spent" in show.output
    again = invoke("search", config, "--epoch-budget", 8)  # met: the same command starts nothing
    assert again.exit_code == 0 and len(optuna.load_study(study_name="t", storage=url).trials) == 4


def test_the_early_evaluation_prunes_inside_epoch_one_and_counts_that_share(make_config, workdir):
    from hpsearch.cost import epochs_spent
    from hpsearch.dashboard import trial_note_text

    config = make_config(study={"n_trials": 5}, train={"n_epochs": 2, "early_eval": 0.3})
    result = invoke("search", config)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{workdir}/studies/t.db")
    trials = finished(study)
    assert len(trials) == 5 and all(0 in t.intermediate_values for t in trials)
    early = [t for t in trials if "at the early evaluation" in t.user_attrs.get("prune_reason", "")]
    assert early, [t.user_attrs.get("prune_reason") for t in trials]
    for t in early:
        share = t.user_attrs["early_eval_epochs"]
        assert 0.2 < share < 0.4 and t.user_attrs["partial_epoch"] == share
        assert t.user_attrs["epochs_run"] == 0 and list(t.intermediate_values) == [0]
        assert f"| {share:g} |" in trial_note_text(t)
    for t in trials:
        if t.state == TrialState.COMPLETE:  # its value is its best epoch end, not the early evaluation
            ends = {step: v for step, v in t.intermediate_values.items() if step >= 1}
            assert t.value == min(ends.values()) and t.user_attrs["best_epoch"] in ends
    assert epochs_spent(study) == pytest.approx(
        sum(t.user_attrs["epochs_run"] + t.user_attrs.get("partial_epoch", 0) for t in trials)
    )
    assert f"trial {early[0].number} early evaluation at" in result.output


def test_grid_sampler_stops_when_the_grid_is_exhausted(make_config, workdir):
    config = make_config(
        study={"sampler": "grid", "n_trials": 4},
        data={"demo_size": 200},
        train={"n_epochs": 1},
        search_space={"learning_rate": 1e-3, "batch_size": {"type": "categorical", "choices": [16, 32]}},
    )
    result = invoke("search", config)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{workdir}/studies/t.db")
    assert sorted(t.params["batch_size"] for t in finished(study)) == [16, 32]


@pytest.mark.slow
def test_resuming_with_a_changed_config_is_refused_and_adds_nothing(demo, tmp_path):
    url = copy_store(demo.url, tmp_path)
    result = invoke("search", demo.config, "--storage", url, "--n-trials", 20, "--set", "train.n_epochs=2")
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert (
        line.startswith("hpsearch: error: ")
        and "train.n_epochs is 2 but study 'demo' was created with 3" in line
    )
    study = optuna.load_study(study_name="demo", storage=url)
    assert len(study.trials) == len(demo.study.trials)
    assert study.user_attrs["hpsearch_config"]["train"]["n_epochs"] == 3


@pytest.mark.parametrize("factor, promoted", [(2, True), (4, False)])
def test_successive_halving_keeps_the_best_share_of_each_rung(factor, promoted):
    """The default pruner: a trial goes on past epoch 1 only when its error is in the best 1/factor there."""
    from hpsearch.study import make_pruner

    cfg = load_config(sets=[f"study.reduction_factor={factor}", "train.n_epochs=9"])
    assert cfg.study.pruner == "successive-halving"
    study = optuna.create_study(pruner=make_pruner(cfg))
    for error in (0.20, 0.30, 0.40, 0.50, 0.60, 0.70):  # six trials finished epoch 1 with these errors
        trial = study.ask()
        trial.report(error, 1)
        trial.should_prune()  # records the trial's value at the rung
        study.tell(trial, state=TrialState.PRUNED)
    trial = study.ask()
    trial.report(0.35, 1)  # 3rd of 7: inside the best half, outside the best quarter
    assert trial.should_prune() is not promoted


def test_paused_trials_are_continued_from_their_checkpoints_and_count_once(make_config, workdir):
    """study.pause_at_rungs: a trial not yet among the best at a rung pauses there; a later
    trial continues it from its checkpoint with its learning curve, and the pair counts as one trial."""
    from hpsearch.cost import compute_cost, epochs_spent, trial_epochs
    from hpsearch.dashboard import read_note

    config = make_config(
        study={"n_trials": 7, "pause_at_rungs": True, "reduction_factor": 2}, train={"n_epochs": 4}
    )
    result = invoke("search", config)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{workdir}/studies/t.db")
    trials = study.trials
    continuations = [t for t in trials if "continues_trial" in t.system_attrs]
    assert continuations, result.output
    # nothing learns on 300 rows in 4 epochs, so the first rung cannot rank: the first 2 (reduction_factor)
    # trials go on past it to find out, and wait at the next (epoch 2); later ones wait at epoch 1, ranked by
    # their training loss
    assert [t.user_attrs.get("paused_at_epoch") for t in trials[:2]] == [2, 2], result.output
    assert "trial 4 pruned: paused by successive-halving after epoch 1" in result.output
    for child in continuations:
        paused = trials[child.system_attrs["continues_trial"]]
        assert paused.state == TrialState.PRUNED and paused.params == child.params
        epoch = paused.user_attrs["paused_at_epoch"]
        assert epoch == paused.user_attrs["epochs_run"] == max(paused.intermediate_values)
        assert paused.intermediate_values.items() <= child.intermediate_values.items()
        assert child.user_attrs["resumed_from_epoch"] == epoch < child.user_attrs["epochs_run"]
        assert child.user_attrs["train_seconds"] > paused.user_attrs["train_seconds"]  # its time goes on
        assert len(child.user_attrs["val_losses"]) == child.user_attrs["epochs_run"]  # its curve goes on too
        assert f"trial {child.number} continues trial {paused.number} after epoch {epoch}" in result.output
        assert f"trial {child.number} continues it from its checkpoint" in read_note(study, paused)
    configs = finished(study)
    assert len(configs) == 7 and len({tuple(t.params.values()) for t in configs}) == 7
    assert any(t.state == TrialState.COMPLETE for t in configs)
    assert epochs_spent(study) == pytest.approx(sum(trial_epochs(t) for t in configs))
    assert compute_cost(study).n_finished == 7
    best = study.best_trial
    assert best.user_attrs["epochs_run"] == 4 and best.value == min(best.intermediate_values.values())
    # the search is over: the paused trials' checkpoints are gone, the best trial's is kept
    assert [p.name for p in workdir.rglob("*.pt")] == [f"trial-{best.number}.pt"]
    show = invoke("show", "t", "--storage", f"sqlite:///{workdir}/studies/t.db")
    assert show.exit_code == 0, show.output
    child = continuations[0]
    assert (
        f"paused after epoch {trials[child.system_attrs['continues_trial']].user_attrs['epochs_run']};"
        f" continued as trial {child.number}" in show.output
    )
    assert "7/7" in invoke("search", config).output  # a rerun adds nothing: the budget counts configurations


def test_two_studies_of_one_name_in_two_stores_keep_their_own_checkpoints(make_config, workdir):
    """Same study name, same train.checkpoint_dir, two stores: the second search neither overwrites nor
    deletes the first one's checkpoints, so the first study's best model can still be exported."""
    import torch

    config = make_config(study={"n_trials": 3})
    first, second = f"sqlite:///{workdir}/a.db", f"sqlite:///{workdir}/b.db"
    assert invoke("search", config, "--storage", first).exit_code == 0
    best = optuna.load_study(study_name="t", storage=first).best_trial
    kept = Path(best.user_attrs["checkpoint_path"])
    assert kept.is_file()
    result = invoke("search", config, "--storage", second, "--seed", 1)
    assert result.exit_code == 0, result.output
    others = {
        t.user_attrs["checkpoint_path"] for t in optuna.load_study(study_name="t", storage=second).trials
    }
    assert kept.is_file(), "the second study deleted the first one's best checkpoint"
    state = torch.load(kept, map_location="cpu", weights_only=False)
    assert state["trial"] == best.number and state["hyperparameters"]["learning_rate"] == pytest.approx(
        best.params["learning_rate"]
    )
    export = invoke("train-best", "t", "--storage", first, "--from-checkpoint", "-o", workdir / "model")
    assert export.exit_code == 0, export.output
    assert str(kept) not in others and kept.parent.parent == workdir / "checkpoints" / "t"  # t/KEY/trial-N.pt


def test_the_search_names_the_bar_a_constant_answer_sets(make_config, workdir):
    """Demo rows, seed 4: the training set's majority class is the validation set's minority, so always
    answering the other class scores 0.40, under the majority-class error of 0.60; both are named."""
    result = invoke("search", make_config(study={"n_trials": 1, "seed": 4}, train={"n_epochs": 1}))
    assert result.exit_code == 0, result.output
    assert (
        "majority-class val_error 0.6000 (another class's: 0.4000, the validation set's largest)"
        in result.output
    )
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{workdir}/studies/t.db")
    sizes = study.user_attrs["hpsearch_data"]
    assert (sizes["majority_val_error"], sizes["constant_val_error"]) == (0.6, 0.4)
    from hpsearch.dashboard import read_note  # the dashboard's study note says it too

    assert "val_error 0.6000, always answering the validation set's largest class 0.4000)" in read_note(study)


def test_without_pausing_the_first_trial_goes_on_unopposed(make_config, workdir):
    config = make_config(study={"n_trials": 3, "pause_at_rungs": False}, train={"n_epochs": 2})
    result = invoke("search", config)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{workdir}/studies/t.db")
    assert len(study.trials) == 3 and study.trials[0].state == TrialState.COMPLETE
    assert not any(
        "paused_at_epoch" in t.user_attrs or "continues_trial" in t.system_attrs for t in study.trials
    )


def test_trials_pause_at_rungs_by_default_but_a_study_made_deciding_at_once_keeps_that_rule(
    make_config, workdir
):
    """Pausing is the default since 2026-12-07. A study made before (its stored settings say
    pause_at_rungs: false, as every older study's do) keeps the rule it was made with when the config leaves
    the key out, and the search says so: its pruned trials have no checkpoints to continue."""

    def paused(study):
        return [t.number for t in study.trials if "paused_at_epoch" in t.user_attrs]

    fresh = make_config("fresh.yaml", study={"name": "fresh", "n_trials": 4}, train={"n_epochs": 3})
    result = invoke("search", fresh)
    assert result.exit_code == 0, result.output
    assert "keeps that rule" not in result.output
    study = optuna.load_study(study_name="fresh", storage=f"sqlite:///{workdir}/studies/fresh.db")
    assert paused(study), result.output  # nothing learns on 300 rows: the 4th trial waits at epoch 1
    assert study.user_attrs["hpsearch_config"]["study"]["pause_at_rungs"] is None
    from hpsearch.dashboard import read_note

    assert "pauses there and is continued once it is" in read_note(study)  # the study note says which rule

    old = {"name": "old", "n_trials": 4, "pause_at_rungs": False}
    assert invoke("search", make_config("old.yaml", study=old, train={"n_epochs": 3})).exit_code == 0
    resumed = make_config("resumed.yaml", study={"name": "old", "n_trials": 6}, train={"n_epochs": 3})
    result = invoke("search", resumed)
    assert result.exit_code == 0, result.output
    assert (
        "study 'old' was made when successive halving decided at once at its rungs (study.pause_at_rungs"
        " false, the default before 2026-12-07), so it keeps that rule" in result.output
    )
    study = optuna.load_study(study_name="old", storage=f"sqlite:///{workdir}/studies/old.db")
    assert len(study.trials) == 6 and not paused(study)
    assert study.user_attrs["hpsearch_config"]["study"]["pause_at_rungs"] is False
    assert "each rung decides at once" in read_note(study)
    # said explicitly, the config wins
    result = invoke("search", resumed, "--n-trials", 8, "--set", "study.pause_at_rungs=true")
    assert result.exit_code == 0 and "keeps that rule" not in result.output, result.output


def test_two_continuations_of_one_paused_trial_run_once(make_config, workdir):
    """Two workers may queue a continuation of the same paused trial at once: the first one numbered runs,
    the other is given back untouched."""
    from hpsearch.search import continue_paused

    config = make_config(study={"n_trials": 4, "pause_at_rungs": True}, train={"n_epochs": 3})
    assert invoke("search", config).exit_code == 0
    url = f"sqlite:///{workdir}/studies/t.db"
    study = optuna.load_study(study_name="t", storage=url)
    paused = [
        t for t in finished(study) if t.state == TrialState.PRUNED and "paused_at_epoch" in t.user_attrs
    ]
    # nothing learns on 300 rows: the first 3 go on past rung 0 to find out, the 4th waits there for good
    assert paused, [t.user_attrs for t in finished(study)]
    first, second = continue_paused(study, paused[0]), continue_paused(study, paused[0])
    result = invoke("search", config, "--n-trials", 5)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="t", storage=url)
    assert study.trials[first].state in FINISHED
    assert study.trials[second].state == TrialState.FAIL
    assert study.trials[second].user_attrs["hpsearch_over_budget"] == (
        f"another worker continued trial {paused[0].number} first"
    )
    assert len(finished(study)) == 5


def test_a_continuation_whose_checkpoint_is_not_there_says_so_and_trains_from_the_start(make_config, workdir):
    """Pausing is the default, so a paused trial's continuation may run on a node that cannot see the
    checkpoint (a checkpoint_dir on local disk): it trains from epoch 1 and names the cause and the fix."""
    from hpsearch.search import continue_paused

    config = make_config(study={"n_trials": 4}, train={"n_epochs": 3})
    assert invoke("search", config).exit_code == 0
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{workdir}/studies/t.db")
    paused = [t for t in finished(study) if "paused_at_epoch" in t.user_attrs]
    assert paused, [t.user_attrs for t in finished(study)]
    number = continue_paused(study, paused[0])
    checkpoint = Path(paused[0].user_attrs["checkpoint_path"])
    # the search's end deleted the paused checkpoints; another node would not see a node-local one either
    checkpoint.unlink(missing_ok=True)
    result = invoke("search", config, "--n-trials", 5)
    assert result.exit_code == 0, result.output
    assert (
        f"trial {number}: checkpoint {checkpoint} is gone or on another machine's disk, so it trains from"
        " epoch 1; put train.checkpoint_dir on a filesystem every worker sees" in result.output
    )
    assert f"trial {number} epoch 1/3" in result.output
    assert f"trial {number} continues trial" not in result.output


def test_a_trials_value_is_its_lowest_epoch_end_and_its_best_epoch_the_first_to_reach_it(
    make_config, workdir
):
    """Learning rates too high for the tiny model: the validation error falls, then rises again or stays put.
    The trial's value is its lowest epoch end, not its last; its best epoch the first that reached it."""
    config = make_config(
        study={"n_trials": 2, "sampler": "grid", "pruner": "none"},
        train={"n_epochs": 3, "divergence_stop": False},
        search_space={"learning_rate": {"type": "categorical", "choices": [0.01, 0.03]}, "batch_size": 16},
    )
    result = invoke("search", config)
    assert result.exit_code == 0, result.output
    trials = finished(optuna.load_study(study_name="t", storage=f"sqlite:///{workdir}/studies/t.db"))
    curves = [t.intermediate_values for t in trials]
    assert len(trials) == 2 and all(sorted(c) == [1, 2, 3] for c in curves)
    for t, curve in zip(trials, curves, strict=True):
        assert t.value == min(curve.values())
        assert t.user_attrs["best_epoch"] == min(e for e in curve if curve[e] == t.value)
    # the curves these rules are for: one that turns up after its best epoch, one that ties at its best
    assert any(c[3] > min(c.values()) for c in curves), curves
    assert any(sum(v == min(c.values()) for v in c.values()) > 1 for c in curves), curves


def test_this_runs_trial_count_counts_a_paused_trial_and_its_continuation_once(workdir):
    """The closing line's "this run: N trials": a paused trial continued in the same run, or a failed trial
    resumed in it, is one trial; a trial whose retry runs later still counts here."""
    from hpsearch.search import _result

    url = f"sqlite:///{workdir}/t.db"
    cfg = load_config(None, sets=["study.name=t", f"study.storage={url}"])
    study = optuna.create_study(study_name="t", storage=url, direction="minimize")
    dists = {"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)}
    make = optuna.trial.create_trial
    study.add_trials(
        [
            make(state=TrialState.PRUNED, value=0.4, params={"learning_rate": 1e-3}, distributions=dists),
            make(
                value=0.3,
                params={"learning_rate": 1e-3},
                distributions=dists,
                system_attrs={"continues_trial": 0},
            ),
            make(state=TrialState.FAIL, params={"learning_rate": 1e-4}, distributions=dists),
            make(
                value=0.35,
                params={"learning_rate": 1e-4},
                distributions=dists,
                system_attrs={"failed_trial": 2},
            ),
        ]
    )
    assert _result(cfg, study, "budget", [0, 1, 2, 3]).trials_run == [1, 3]
    assert _result(cfg, study, "budget", [0, 2]).trials_run == [0, 2]  # their successors ran in another run
    assert _result(cfg, study, "budget", [1, 3]).trials_run == [1, 3]


def test_text_length_that_tells_the_classes_apart_is_named_before_the_search(workdir):
    """Short texts one class, long ones the other: batches grouped by length are one class each, which trains
    worse; the search says so, and not with train.group_by_length off or where length says nothing."""
    rows = [
        ("good " * (2 + i % 3), "pos") if i % 2 else (("a dull and tedious tale " * 4) + str(i), "neg")
        for i in range(120)
    ]
    config = _one_trial_on_rows(workdir, "len", rows)
    result = invoke("search", config)
    assert result.exit_code == 0, result.output
    [line] = [
        x for x in result.stderr.splitlines() if x.startswith("data: text length tells the classes apart")
    ]
    grouped, shuffled = map(
        int, re.search(r"hold (\d+)% of one class on average, random ones (\d+)%", line).groups()
    )
    assert grouped >= 90 and shuffled <= 75
    assert "set train.group_by_length: false" in line
    off = invoke("search", config, "--study-name", "len-off", "--set", "train.group_by_length=false")
    assert off.exit_code == 0, off.output
    assert "text length tells" not in off.stderr
    demo = invoke(
        "search",
        config,
        "--study-name",
        "demo-len",
        "--set",
        "data.name=demo",
        "--set",
        "data.train_file=null",
        "--set",
        "data.demo_size=200",
    )
    assert demo.exit_code == 0, demo.output
    assert "text length tells" not in demo.stderr


def test_the_commands_a_search_prints_paste_into_a_shell_for_a_name_with_a_space(workdir):
    """`inspect: hpsearch show a b --storage sqlite:///studies/a b.db` ran `show` on a study named `a`."""
    import shlex

    config = write_config(
        workdir / "s.yaml", tiny_config(study={"name": "a b", "n_trials": 1}, train={"n_epochs": 1})
    )
    result = invoke("search", str(config))
    assert result.exit_code == 0, result.output
    [line] = [x for x in result.stderr.splitlines() if x.startswith("inspect: ")]
    argv = shlex.split(line.removeprefix("inspect: "))
    assert argv[:3] == ["hpsearch", "show", "a b"] and argv[4] == "sqlite:///studies/a b.db"
    shown = invoke(*argv[1:])
    assert shown.exit_code == 0, shown.output
    assert re.search(r"^0\s+complete\s", shown.output, re.M), shown.output
