"""The best trial read back with its noise: a real SQLite study driven through ask/tell, read by show and best."""

from __future__ import annotations

import json
import math

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.distributions import FloatDistribution

from hpsearch.cli import cli
from hpsearch.config import load_config
from hpsearch.results import best_summary, standard_error
from hpsearch.study import CONFIG_ATTR, DATA_ATTR

LR = FloatDistribution(1e-5, 1e-1, log=True)
N_VALIDATION = 400  # one standard error at val_error 0.20 is sqrt(0.2 * 0.8 / 400) = 0.02


def make_study(url: str, values: list[float | None], data: bool = True) -> optuna.Study:
    """One trial per val_error, in order; None is a pruned trial."""
    study = optuna.create_study(study_name="s", storage=url, direction="minimize")
    study.set_user_attr(CONFIG_ATTR, load_config(None).to_dict())
    if data:
        sizes = {"n_train": 2000, "n_validation": N_VALIDATION, "n_classes": 2, "majority_val_error": 0.5}
        study.set_user_attr(DATA_ATTR, sizes)
    for value in values:
        trial = study.ask({"learning_rate": LR})
        trial.report(0.45 if value is None else value, step=1)
        if value is None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    return study


def test_standard_error_is_the_binomial_one():
    assert standard_error(0.2, 400) == pytest.approx(0.02)
    assert standard_error(0.5, 100) == pytest.approx(0.05)
    assert standard_error(0.0, 100) == 0.0


def test_trials_within_one_standard_error_of_the_best_are_named_best_first(tmp_path):
    # trial 0: 0.215 (within 0.02 of 0.20), 1: best 0.20, 2: 0.25 (outside), 3: pruned at 0.45, 4: 0.22 (edge)
    url = f"sqlite:///{tmp_path}/s.db"
    make_study(url, [0.215, 0.20, 0.25, None, 0.22])
    summary = best_summary(optuna.load_study(study_name="s", storage=url))
    assert summary["trial"] == 1 and summary["val_error"] == 0.20
    assert summary["standard_error"] == 0.02 and summary["n_validation"] == N_VALIDATION
    assert summary["within_one_standard_error"] == [0, 4]  # by value; pruned trials are never candidates


def test_a_study_from_before_the_data_sizes_were_stored_gets_no_noise(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    make_study(url, [0.30, 0.29], data=False)
    summary = best_summary(optuna.load_study(study_name="s", storage=url))
    assert {"n_validation", "standard_error", "within_one_standard_error"}.isdisjoint(summary)
    assert (summary["trial"], summary["val_error"], summary["complete_trials"]) == (1, 0.29, 2)
    show = CliRunner().invoke(cli, ["show", "s", "--storage", url])
    assert show.exit_code == 0, show.output
    assert "best: trial 1, val_error 0.2900 (learning_rate=" in show.stdout and "±" not in show.stdout


def test_show_and_best_say_which_trials_the_noise_cannot_rank(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    make_study(url, [0.215, 0.20, 0.25])
    show = CliRunner().invoke(cli, ["show", "s", "--storage", url])
    assert show.exit_code == 0, show.output
    lines = show.stdout.splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("best: "))
    assert lines[at].startswith("best: trial 1, val_error 0.2000 ± 0.0200 (learning_rate=")
    assert lines[at].endswith("; ± is one standard error on 400 validation examples)")
    assert lines[at + 1].startswith("within one standard error of it: trial 0; one measurement cannot rank")
    assert f"hpsearch train-best s --storage {url} --top-k 2" in lines[at + 1]
    assert lines[at + 2].startswith("cost: ")
    shown = json.loads(CliRunner().invoke(cli, ["show", "s", "--storage", url, "--json"]).stdout)["best"]
    assert (shown["trial"], shown["standard_error"], shown["within_one_standard_error"]) == (1, 0.02, [0])
    best = CliRunner().invoke(cli, ["best", "s", "--storage", url])
    assert best.exit_code == 0, best.output
    assert best.stdout.startswith("# best trial 1 of study 's': val_error 0.2000 ± 0.0200 at epoch")
    assert "# within one standard error of it: trial 0; one measurement cannot rank them" in best.stdout
    assert f"hpsearch train-best s --storage {url} --top-k 2 -o models/best\n" in best.stdout
    assert yaml.safe_load(best.stdout)["search_space"]["learning_rate"] > 0  # still pastes as a config


def test_a_clear_winner_gets_no_tie_line(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    make_study(url, [0.30, 0.20])
    show = CliRunner().invoke(cli, ["show", "s", "--storage", url]).stdout
    assert "val_error 0.2000 ± 0.0200" in show and "within one standard error" not in show
    best = json.loads(CliRunner().invoke(cli, ["best", "s", "--storage", url, "--format", "json"]).stdout)
    assert math.isclose(best["standard_error"], 0.02) and best["within_one_standard_error"] == []


def test_the_study_note_gives_the_noise_and_the_trials_within_it(tmp_path):
    from hpsearch.config import config_from_dict
    from hpsearch.dashboard import read_note, write_study_note

    url = f"sqlite:///{tmp_path}/s.db"
    study = make_study(url, [0.215, 0.20, 0.25])
    write_study_note(study, config_from_dict(study.user_attrs[CONFIG_ATTR], source="test"))
    note = read_note(optuna.load_study(study_name="s", storage=url))
    assert "**Best so far:** trial 1, val_error 0.2000 ± 0.0200 (one standard error) at epoch" in note
    assert "Within one standard error of it: trial 0; one measurement cannot rank them" in note


def test_few_complete_trials_get_the_command_that_retrains_the_best_pruned_ones_too(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    make_study(url, [None, 0.20, None])  # one complete trial, two pruned after epoch 1
    summary = best_summary(optuna.load_study(study_name="s", storage=url))
    assert (summary["complete_trials"], summary["pruned_candidates"]) == (1, 2)
    show = CliRunner().invoke(cli, ["show", "s", "--storage", url]).stdout.splitlines()
    at = next(i for i, x in enumerate(show) if x.startswith("best: "))
    assert show[at + 1].startswith(
        "only 1 complete trial; the best pruned ones may retrain better (BENCHMARKS"
    )
    assert show[at + 1].endswith(f"hpsearch train-best s --storage {url} --top-k 3 -o models/best")
    best = CliRunner().invoke(cli, ["best", "s", "--storage", url])
    assert "# only 1 complete trial" in best.stdout and "--top-k 3 -o models/best\n" in best.stdout
    assert yaml.safe_load(best.stdout)["search_space"]["learning_rate"] > 0


def test_three_complete_trials_or_nothing_pruned_get_no_few_complete_line(tmp_path):
    for name, values in {"a": [0.30, 0.40, 0.50, None], "b": [0.30, 0.20]}.items():
        url = f"sqlite:///{tmp_path}/{name}.db"
        make_study(url, values)
        show = CliRunner().invoke(cli, ["show", "s", "--storage", url]).stdout
        assert "best: trial" in show and "complete trial" not in show, name


def test_best_pastes_the_studys_fixed_values_and_no_train_value_that_the_space_overrides(tmp_path):
    """`best` prints a config that trains the best trial again: the values the study held fixed in
    search_space go with its params, and a train value the space set (unused by any trial) is left out."""
    url = f"sqlite:///{tmp_path}/s.db"
    study = make_study(url, [0.30, 0.20])
    cfg = load_config(
        None, sets=["search_space.batch_size=16", "train.learning_rate=0.002", "train.weight_decay=0.01"]
    )
    study.set_user_attr(CONFIG_ATTR, cfg.to_dict())
    best = CliRunner().invoke(cli, ["best", "s", "--storage", url, "--format", "json"])
    assert best.exit_code == 0, best.output
    pasted = json.loads(best.stdout)
    assert pasted["search_space"] == {
        "batch_size": 16,
        "learning_rate": study.trials[1].params["learning_rate"],
    }
    assert pasted["train"]["weight_decay"] == 0.01 and "learning_rate" not in pasted["train"]


def test_a_failed_trial_that_a_retry_resumes_counts_once(tmp_path):
    """A dead worker's trial and the retry that resumes it are one configuration: `studies`, `show` and the
    search's summary count the retry, not the failure too; the table says which trial resumed it."""
    url = f"sqlite:///{tmp_path}/s.db"
    study = make_study(url, [0.30])
    params, dists = {"learning_rate": 1e-3}, {"learning_rate": LR}
    dead = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params=params, distributions=dists)
    retry = optuna.trial.create_trial(
        value=0.25,
        params=params,
        distributions=dists,
        intermediate_values={1: 0.25},
        system_attrs={"failed_trial": 1, "retry_history": [1]},
    )
    for_good = optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL,
        params=params,
        distributions=dists,
        user_attrs={"fail_reason": "CUDA out of memory even with micro-batch 1"},
    )
    study.add_trials([dead, retry, for_good])
    expected = {"complete": 2, "pruned": 0, "running": 0, "waiting": 0, "fail": 1}
    listed = CliRunner().invoke(cli, ["studies", "--storage", url, "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)[0]["trials"] == expected
    shown = CliRunner().invoke(cli, ["show", "s", "--storage", url, "--json"])
    assert {k: v for k, v in json.loads(shown.stdout)["counts"].items() if k in expected} == expected
    table = CliRunner().invoke(cli, ["show", "s", "--storage", url]).stdout.splitlines()
    assert "  resumed as trial 2; its worker died" in table[2]  # first: the 80-character cut kept it
    assert table[3].endswith("retry of 1")


def test_studies_lists_a_study_hpsearch_did_not_make_without_a_budget_it_never_had(tmp_path):
    url = f"sqlite:///{tmp_path}/plain.db"
    optuna.create_study(study_name="plain", storage=url)  # plain Optuna: no hpsearch config, no n_trials
    listed = CliRunner().invoke(cli, ["studies", "--storage", url])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.startswith(
        "plain: 0 complete, 0 pruned, 0 running, 0 waiting, 0 failed; best val_error -"
    )


def test_studies_says_when_a_store_holds_none(tmp_path):
    """A store whose only study was deleted listed nothing at all, exit 0: no hint the store was read."""
    url = f"sqlite:///{tmp_path}/gone.db"
    optuna.create_study(study_name="x", storage=url)
    optuna.delete_study(study_name="x", storage=url)
    listed = CliRunner().invoke(cli, ["studies", "--storage", url])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout == "" and listed.stderr.strip() == f"no studies in {url}"


def test_export_csv_has_the_epochs_with_the_part_a_divergence_stop_cut_short(tmp_path):
    import csv
    import io

    url = f"sqlite:///{tmp_path}/s.db"
    study = make_study(url, [0.30])
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED,
            params={"learning_rate": 0.09},
            distributions={"learning_rate": LR},
            user_attrs={"epochs_run": 0, "partial_epoch": 0.25, "prune_reason": "diverged: loss is NaN"},
        )
    )
    result = CliRunner().invoke(cli, ["export", "s", "--storage", url, "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["epochs_run"], r["epochs"]) for r in rows] == [("1", "1"), ("0", "0.25")]


def test_a_study_that_searched_nothing_names_no_empty_params_before_the_noise():
    """Every value fixed (params {}): the line read "(; ± is one standard error ...)"."""
    from hpsearch.results import describe_best

    summary = {"trial": 0, "val_error": 0.45, "params": {}, "standard_error": 0.0497, "n_validation": 100}
    line = describe_best({**summary, "within_one_standard_error": [], "complete_trials": 1}, "s")[0]
    assert (
        line
        == "best: trial 0, val_error 0.4500 ± 0.0497 (± is one standard error on 100 validation examples)"
    )


def test_a_note_cut_to_fit_the_table_says_it_was_cut():
    """`show` keeps the note column to 80 characters; a longer reason ended mid-word with nothing to say so
    ("... is worse than a uniform"). It now ends with an ellipsis; `show --json` has it whole."""
    from hpsearch.results import format_table

    reason = "diverged: median training loss 0.812 over the last 64 steps of epoch 1 is worse than a uniform guess (0.797)"
    row = {"number": 4, "state": "PRUNED", "value": 0.49, "epochs": 0.4, "duration_s": 3.0, "epochs_run": 0}
    row |= {
        "params": {"batch_size": 8},
        "reason": reason,
        "continued_by": None,
        "continues": None,
        "retry_of": None,
    }
    line = format_table([row]).splitlines()[1]
    assert line.endswith(f"{reason[:79]}…") and len(line.split("  ")[-1]) == 80
    short = format_table([row | {"reason": "pruned at epoch 1"}]).splitlines()[1]
    assert short.endswith("pruned at epoch 1")
