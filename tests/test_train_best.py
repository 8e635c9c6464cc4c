"""train-best: a real search, then its best trial retrained (or exported) to a folder transformers loads."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from conftest import tiny_config, write_config

from hpsearch.cli import cli
from hpsearch.config import config_from_dict
from hpsearch.data import load_data

BEST = {"learning_rate": 3.0e-3, "batch_size": 16}


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> dict:
    """One enqueued trial, so the best configuration is known; more demo data, so the model learns."""
    root = tmp_path_factory.mktemp("best")
    url = f"sqlite:///{root}/t.db"
    config = write_config(
        root / "t.yaml",
        tiny_config(
            study={"name": "t", "n_trials": 1},
            data={"demo_size": 1000},
            train={"n_epochs": 3, "save_best": True, "checkpoint_dir": str(root / "checkpoints")},
        ),
    )
    study = optuna.create_study(study_name="t", storage=url, direction="minimize")
    study.enqueue_trial(BEST)
    result = CliRunner().invoke(cli, ["search", str(config), "--storage", url])
    assert result.exit_code == 0, result.output
    return {"root": root, "url": url, "trial": optuna.load_study(study_name="t", storage=url).best_trial}


def validation_error(folder, cfg) -> float:
    """Load the folder as any transformers user would, and measure it on the study's validation split."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    data = load_data(cfg.data, seed=cfg.study.seed or 0)
    wrong = 0
    with torch.inference_mode():
        for s in range(0, len(data.validation), 64):
            texts, labels = data.validation.texts[s : s + 64], data.validation.labels[s : s + 64]
            batch = tokenizer(
                texts, truncation=True, max_length=cfg.model.max_length, padding=True, return_tensors="pt"
            )
            wrong += int((model(**batch).logits.argmax(-1) != torch.tensor(labels)).sum())
    assert [model.config.id2label[i] for i in range(model.config.num_labels)] == data.label_names
    return wrong / len(data.validation)


def test_train_best_saves_a_loadable_model_that_reproduces_its_validation_error(searched):
    out = searched["root"] / "model"
    result = CliRunner().invoke(
        cli, ["train-best", "t", "--storage", searched["url"], "--seeds", "2", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    trial = searched["trial"]
    (cand,) = report["candidates"]
    # Every epoch of the study's schedule by default, not the trial's best epoch.
    assert report["epochs"] == "all" and cand["trial"] == trial.number and cand["n_epochs"] == 3
    runs = cand["runs"]
    assert [r["seed"] for r in runs] == [0, 1] and all(r["epochs"] == 3 for r in runs)
    errors = [r["val_error"] for r in runs]
    assert cand["val_error"]["min"] == min(errors) and cand["val_error"]["max"] == max(errors)
    assert cand["val_error"]["mean"] == pytest.approx(sum(errors) / 2)
    # Seed 0 is the trial's own seed: the same recipe gives what the trial measured after its last epoch.
    assert cand["trial_val_error"] == trial.value
    assert cand["trial_val_error_at_n_epochs"] == trial.intermediate_values[3]
    assert runs[0]["val_error"] == pytest.approx(trial.intermediate_values[3], abs=0.02)
    assert f"trial {trial.number} seed 0: val_error" in result.stderr
    assert report["saved_val_error"] == min(errors)

    meta = yaml.safe_load((out / "hyperparameters.yaml").read_text())
    assert meta["hyperparameters"]["learning_rate"] == BEST["learning_rate"]
    assert meta["hyperparameters"]["batch_size"] == BEST["batch_size"]
    assert meta["n_epochs"] == 3 and meta["val_error"] == report["saved_val_error"]
    assert json.loads((out / "results.json").read_text())["saved_val_error"] == report["saved_val_error"]
    cfg = config_from_dict(json.loads((out / "results.json").read_text())["config"])
    assert validation_error(out, cfg) == pytest.approx(report["saved_val_error"], abs=0.01)
    umask = os.umask(0)
    os.umask(umask)
    # readable as the user's other files are (safetensors wrote the weights 0600)
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == dict.fromkeys(
        [p.name for p in out.iterdir()], 0o666 & ~umask
    )
    from transformers import AutoTokenizer

    # truncation=True alone cuts where the trials did
    assert AutoTokenizer.from_pretrained(out).model_max_length == cfg.model.max_length == 32


def test_epochs_best_stops_after_the_trials_best_epoch_and_reproduces_its_value(searched):
    out = searched["root"] / "best-epoch"
    result = CliRunner().invoke(
        cli,
        ["train-best", "t", "--storage", searched["url"], "--seeds", "1", "--epochs", "best", "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    trial = searched["trial"]
    (cand,) = report["candidates"]
    best_epoch = trial.user_attrs["best_epoch"]
    assert report["epochs"] == "best" and cand["n_epochs"] == best_epoch
    assert cand["runs"][0]["epochs"] == best_epoch
    assert cand["runs"][0]["val_error"] == pytest.approx(trial.value, abs=0.02)
    assert yaml.safe_load((out / "hyperparameters.yaml").read_text())["n_epochs"] == best_epoch


@pytest.mark.parametrize("flag", [["--epochs", "best"], ["--seeds", "2"], ["--top-k", "2"]])
def test_from_checkpoint_refuses_the_retraining_flags(searched, flag):
    out = searched["root"] / "refused"
    args = ["train-best", "t", "--storage", searched["url"], "--from-checkpoint", *flag, "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert f"{flag[0]} set how to retrain, but --from-checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_from_checkpoint_exports_the_trials_own_weights(searched):
    out = searched["root"] / "exported"
    result = CliRunner().invoke(
        cli, ["train-best", "t", "--storage", searched["url"], "--from-checkpoint", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    trial = searched["trial"]
    assert report["epoch"] == trial.user_attrs["epochs_run"]
    assert report["saved_val_error"] == pytest.approx(trial.intermediate_values[report["epoch"]], abs=1e-9)
    assert report["warning"] == ""
    cfg = config_from_dict(json.loads((out / "results.json").read_text())["config"])
    assert validation_error(out, cfg) == pytest.approx(report["saved_val_error"], abs=0.01)


@pytest.mark.parametrize("from_checkpoint", [False, True])
def test_a_study_trained_in_fp16_on_gpus_is_retrained_and_exported_on_a_cpu_in_fp32(
    searched, from_checkpoint
):
    """A CPU has no fp16, and train-best has no --precision: it trains in fp32 there and says so."""
    import shutil

    root = searched["root"]
    db = root / f"fp16-{from_checkpoint}.db"
    shutil.copy(root / "t.db", db)
    url = f"sqlite:///{db}"
    study = optuna.load_study(study_name="t", storage=url)
    cfg = study.user_attrs["hpsearch_config"]
    study.set_user_attr("hpsearch_config", {**cfg, "train": {**cfg["train"], "precision": "fp16"}})
    out = root / f"fp16-model-{from_checkpoint}"
    args = ["train-best", "t", "--storage", url, "--device", "cpu", "-o", str(out)]
    args += ["--from-checkpoint"] if from_checkpoint else ["--seeds", "1", "--epochs", "best"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "the study trained in fp16, which a CPU does not have; fp32 here" in result.stderr
    assert (out / "config.json").exists()


def test_train_best_never_writes_into_a_folder_that_holds_files(searched):
    out = searched["root"] / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["train-best", "t", "--storage", searched["url"], "-o", str(out)])
    assert result.exit_code == 2
    assert "not an empty folder" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_train_best_needs_a_complete_trial(workdir):
    url = f"sqlite:///{workdir}/e.db"
    optuna.create_study(study_name="e", storage=url).set_user_attr(
        "hpsearch_config", config_from_dict({}).to_dict()
    )
    result = CliRunner().invoke(cli, ["train-best", "e", "--storage", url, "-o", "m"])
    assert result.exit_code == 2
    assert "has no complete trial yet" in result.stderr and not (workdir / "m").exists()


def _trial(state, curve, value=None, system_attrs=None, **attrs):
    from optuna.distributions import FloatDistribution

    return optuna.trial.create_trial(
        state=state,
        value=value,
        params={"learning_rate": 1e-4},
        distributions={"learning_rate": FloatDistribution(1e-5, 1e-1, log=True)},
        intermediate_values=curve,
        user_attrs=attrs,
        system_attrs=system_attrs,
    )


def test_top_k_ranks_complete_trials_first_then_pruned_ones_by_the_rung_they_reached(workdir):
    from optuna.trial import TrialState

    from hpsearch.best_model import top_trials

    study = optuna.create_study(study_name="k", storage=f"sqlite:///{workdir}/k.db")
    for t in [
        _trial(TrialState.COMPLETE, {1: 0.4, 2: 0.35, 3: 0.30}, 0.30),  # 0
        _trial(TrialState.PRUNED, {1: 0.33, 2: 0.31}),  # 1: reached the epoch-2 rung
        _trial(TrialState.PRUNED, {1: 0.25}),  # 2: lower, but pruned at the first rung
        _trial(TrialState.PRUNED, {1: 0.2}, prune_reason="diverged: loss is NaN"),  # 3: never a candidate
        _trial(TrialState.PRUNED, {0: 0.3}),  # 4: pruned at train.early_eval, before an epoch's end
        _trial(TrialState.COMPLETE, {1: 0.5, 2: 0.4, 3: 0.32}, 0.32),  # 5
        _trial(TrialState.PRUNED, {1: 0.24}),  # 6
        _trial(TrialState.PRUNED, {1: 0.3, 2: 0.29, 3: 0.28}, paused_at_epoch=3),  # 7: paused, then...
        _trial(
            TrialState.PRUNED, {1: 0.3, 2: 0.29, 3: 0.28, 4: 0.27}, system_attrs={"continues_trial": 7}
        ),  # 8
    ]:
        study.add_trial(t)
    assert [t.number for t in top_trials(study, 1)] == [0]
    assert [t.number for t in top_trials(study, 3)] == [0, 5, 8]  # 8 carries 7's curve: 7 is not listed
    assert [t.number for t in top_trials(study, 9)] == [0, 5, 8, 1, 6, 2]


def test_top_k_breaks_ties_among_pruned_trials_by_training_loss_as_the_pruner_does(workdir):
    """Trials still predicting one class share one error at a rung; the pruner ranks them by training loss."""
    from optuna.trial import TrialState

    from hpsearch.best_model import top_trials

    study = optuna.create_study(study_name="k", storage=f"sqlite:///{workdir}/k.db")
    study.add_trial(_trial(TrialState.COMPLETE, {1: 0.4, 2: 0.35, 3: 0.30}, 0.30))
    for loss in (0.6900, 0.6886, 0.6898):  # 1, 2, 3: all at the majority-class error after epoch 3
        study.add_trial(_trial(TrialState.PRUNED, {1: 0.4667, 2: 0.4667, 3: 0.4667}, train_loss=loss))
    assert [t.number for t in top_trials(study, 4)] == [0, 2, 3, 1]


def test_top_k_retrains_a_pruned_trial_when_too_few_completed(searched):
    import shutil

    from optuna.trial import TrialState

    root = searched["root"]
    shutil.copy(root / "t.db", root / "k.db")
    url = f"sqlite:///{root}/k.db"
    study = optuna.load_study(study_name="t", storage=url)
    trial = searched["trial"]
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.PRUNED,
            params={**trial.params, "learning_rate": 1e-4},
            distributions=trial.distributions,
            intermediate_values={1: 0.45},
            user_attrs={"prune_reason": "val_error 0.4500 at epoch 1: not in the top 1/3"},
        )
    )
    out = root / "top2"
    args = ["train-best", "t", "--storage", url, "--top-k", "2", "--seeds", "2", "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    complete, pruned = report["candidates"]
    assert complete["trial"] == trial.number and complete["pruned_after_epoch"] is None
    assert pruned["trial"] == trial.number + 1 and pruned["pruned_after_epoch"] == 1
    assert pruned["trial_val_error"] == 0.45 and pruned["n_epochs"] == 3
    assert (
        "--top-k 2: the study has 1 complete trial; also retraining the best pruned, deepest rung first:"
        " trial 1 (pruned after epoch 1)\n" in result.stderr
    )
    assert len(pruned["runs"]) == 2 and all(r["epochs"] == 3 for r in pruned["runs"])
    chosen = min((complete, pruned), key=lambda c: c["val_error"]["mean"])
    assert report["chosen_trial"] == chosen["trial"]
    assert yaml.safe_load((out / "hyperparameters.yaml").read_text())["trial"] == chosen["trial"]


def test_top_k_ranks_pruned_trials_by_their_lowest_epoch_end_not_their_last(workdir):
    from optuna.trial import TrialState

    from hpsearch.best_model import top_trials

    study = optuna.create_study(study_name="k", storage=f"sqlite:///{workdir}/k.db")
    study.add_trial(_trial(TrialState.COMPLETE, {1: 0.4, 2: 0.35, 3: 0.30}, 0.30))
    study.add_trial(_trial(TrialState.PRUNED, {1: 0.40, 2: 0.36, 3: 0.35}))  # 1: its last is its lowest
    study.add_trial(_trial(TrialState.PRUNED, {1: 0.40, 2: 0.30, 3: 0.45}))  # 2: lower at epoch 2, then up
    assert [t.number for t in top_trials(study, 3)] == [0, 2, 1]


def test_retraining_uses_the_values_the_study_held_fixed_not_the_train_defaults():
    from optuna.trial import TrialState

    from hpsearch.best_model import trial_hyperparameters
    from hpsearch.config import load_config

    cfg = load_config(
        None, sets=["search_space.batch_size=16", "search_space.dropout=0.2", "train.batch_size=32"]
    )
    hp = trial_hyperparameters(cfg, _trial(TrialState.COMPLETE, {1: 0.3}, 0.3))
    assert (hp["batch_size"], hp["dropout"], hp["learning_rate"]) == (16, 0.2, 1e-4)


def test_a_retrain_stops_after_the_epochs_it_is_given_not_the_schedules(searched):
    """`--epochs best` trains fewer epochs than the schedule: it must stop there, not one epoch later."""
    from hpsearch.best_model import _on_device, _prepare, _train_one, trial_hyperparameters

    study = optuna.load_study(study_name="t", storage=searched["url"])
    cfg = config_from_dict(study.user_attrs["hpsearch_config"])
    assert cfg.train.n_epochs == 3
    cfg, device = _on_device(cfg, "cpu", io.StringIO())
    data, factory, encoded = _prepare(cfg)
    hp = trial_hyperparameters(cfg, searched["trial"])
    run, weights = _train_one(cfg, data, factory, encoded, hp, 1, device)
    assert run.epochs == 1 and weights is not None


def _copy_study(searched, name: str, **changes) -> str:
    """A copy of the searched store, with ``changes`` ({section: {key: value}}) made to the stored config."""
    import shutil

    db = searched["root"] / f"{name}.db"
    shutil.copy(searched["root"] / "t.db", db)
    url = f"sqlite:///{db}"
    study = optuna.load_study(study_name="t", storage=url)
    cfg = study.user_attrs["hpsearch_config"]
    study.set_user_attr("hpsearch_config", {**cfg, **{k: {**cfg[k], **v} for k, v in changes.items()}})
    return url


def _train_best_process(searched, out, *args, **popen):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "hpsearch",
        "train-best",
        "t",
        "--storage",
        searched["url"],
        "-o",
        str(out),
    ]
    return subprocess.Popen(
        [*command, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen
    )


def _no_model_beside(out) -> None:
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]


def test_a_save_that_fails_leaves_no_folder_that_looks_like_a_model(searched):
    """A full disk while saving (here: a 200 kB limit on file size, which the model passes and nothing else
    does): one line, exit 1, and no folder; one with config.json alone was left, and a rerun refused it."""
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = searched["root"] / "full-disk"
    proc = _train_best_process(searched, out, "--seeds", "1", "--epochs", "best", preexec_fn=small_files)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err
    assert err.strip().splitlines()[-1].startswith("hpsearch: error: could not write the model (")
    assert "nothing was saved" in err and "internal error" not in err
    _no_model_beside(out)


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_from_checkpoint_with_an_unreadable_checkpoint_is_one_line(searched, content):
    import sqlite3

    url = _copy_study(searched, f"bad-{content}")
    good = searched["trial"].user_attrs["checkpoint_path"]
    bad = searched["root"] / f"{content}.pt"
    with open(good, "rb") as f:
        bad.write_bytes(b"garbage\n" if content == "garbage" else f.read()[:100_000])  # a crash mid-write
    with sqlite3.connect(url.removeprefix("sqlite:///")) as con:  # Optuna updates no finished trial
        con.execute(
            "update trial_user_attributes set value_json = ? where key = 'checkpoint_path'",
            (json.dumps(str(bad)),),
        )
    con.close()
    out = searched["root"] / f"from-{content}"
    result = CliRunner().invoke(
        cli, ["train-best", "t", "--storage", url, "--from-checkpoint", "-o", str(out)]
    )
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"hpsearch: error: the checkpoint of best trial 0 ({bad}) cannot be read (")
    assert line.endswith("; retrain instead (drop --from-checkpoint)") and not out.exists()


def test_changed_data_is_named_by_from_checkpoint_and_by_a_retrain(searched):
    """The tiny model's vocabulary is built from the training data: other data, another embedding table. The
    export failed with "internal error: RuntimeError: Error(s) in loading state_dict"; a retrain said nothing
    and reported a seed that no longer reproduced the trial."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    other = searched["root"] / "other.tsv"  # the data file, rewritten since the search
    rows = [f"{words[i % 10]} {words[i * 3 % 10]} {i}\t{i % 2}" for i in range(300)]
    other.write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    url = _copy_study(searched, "changed", data={"name": None, "train_file": str(other)})
    out = searched["root"] / "changed-export"
    result = CliRunner().invoke(
        cli, ["train-best", "t", "--storage", url, "--from-checkpoint", "-o", str(out)]
    )
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert "does not fit the model built from the data here (size mismatch for" in line
    assert "measured on n_train 900, n_validation 100, n_classes 2, the data here has n_train 270" in line
    assert line.endswith("restore them, or retrain (drop --from-checkpoint)") and not out.exists()

    out = searched["root"] / "changed-retrain"
    args = ["train-best", "t", "--storage", url, "--seeds", "1", "--epochs", "best", "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: the study's trials were measured on n_train 900")
    assert "so these runs do not repeat its trials" in json.loads(result.stdout)["warning"]


def test_a_study_searched_on_a_gpu_names_the_flag_that_runs_it_here(searched):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has the GPU the study names")
    url = _copy_study(searched, "gpu", train={"device": "cuda"})
    for extra in ([], ["--from-checkpoint"]):
        result = CliRunner().invoke(
            cli, ["train-best", "t", "--storage", url, "-o", str(searched["root"] / "never"), *extra]
        )
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == (
            "hpsearch: error: train.device: cuda requested (by the study, whose search ran on it) but no GPU is"
            " visible; give --device cpu (or --device auto) to run here"
        )
    result = CliRunner().invoke(
        cli, ["train-best", "t", "--storage", url, "-o", str(searched["root"] / "never"), "--device", "cuda"]
    )
    assert result.exit_code == 2 and result.stderr.strip() == (
        "hpsearch: error: train.device: cuda requested (--device cuda) but no GPU is visible; give --device cpu"
        " (or --device auto) to run here"
    )


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_output_that_cannot_be_made_is_refused_before_any_training(searched):
    """/proc takes no new folder, though it looks writable to root (os.access): the runs trained, then the
    save failed with "internal error: FileNotFoundError", the retrained model lost."""
    result = CliRunner().invoke(
        cli, ["train-best", "t", "--storage", searched["url"], "-o", "/proc/hpsearch-model"]
    )
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("hpsearch: error: -o /proc/hpsearch-model: cannot write")


def test_trial_retrains_the_trials_named_and_refuses_those_it_cannot(searched):
    """`--trial N` (repeatable) for the trials the search names within one standard error of the best; a trial
    with nothing to retrain is refused with what became of it."""
    import shutil

    from optuna.trial import TrialState, create_trial

    root = searched["root"]
    shutil.copy(root / "t.db", root / "pick.db")
    url = f"sqlite:///{root}/pick.db"
    study = optuna.load_study(study_name="t", storage=url)
    best = searched["trial"]

    def add(state, curve=None, number_attrs=None, **user_attrs):
        params = {**best.params, "learning_rate": 1e-4}
        study.add_trial(
            create_trial(
                state=state,
                params=params,
                distributions=best.distributions,
                value=0.40 if state == TrialState.COMPLETE else None,
                intermediate_values=curve or {},
                user_attrs=user_attrs,
                system_attrs=number_attrs or {},
            )
        )

    add(
        TrialState.PRUNED,
        {1: 0.45},
        best_epoch=1,
        prune_reason="val_error 0.4500 at epoch 1: not in the top 1/3",
    )
    add(TrialState.FAIL, {1: 0.44}, fail_reason="worker died")  # 2
    add(TrialState.COMPLETE, {1: 0.44, 2: 0.41, 3: 0.40}, {"retry_history": [2]})  # 3: resumed 2
    add(TrialState.PRUNED, prune_reason="diverged: loss nan at epoch 1, step 3")  # 4
    out = root / "picked"
    args = ["train-best", "t", "--storage", url, "--seeds", "1", "--epochs", "best", "-o", str(out)]
    result = CliRunner().invoke(cli, [*args, "--trial", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [c["trial"] for c in report["candidates"]] == [1] and report["chosen_trial"] == 1
    assert report["candidates"][0]["n_epochs"] == 1 and "--top-k" not in result.stderr
    for trial, words in [
        ("2", "--trial 2: trial 3 took it over (its retry or continuation): give --trial 3"),
        ("4", "--trial 4: it was stopped in its first epoch (diverged: loss nan"),
        ("9", "--trial 9: study 't' has no trial 9"),
    ]:
        refused = CliRunner().invoke(
            cli, [*args[:-1], str(root / f"no-{trial}"), "--trial", "1", "--trial", trial]
        )
        assert refused.exit_code == 2 and words in refused.stderr, refused.output
        assert not (root / f"no-{trial}").exists()
    for flag in (["--top-k", "2"], ["--from-checkpoint"]):
        refused = CliRunner().invoke(cli, [*args[:4], "--trial", "1", *flag, "-o", str(root / "no-flag")])
        assert refused.exit_code == 2 and "--trial" in refused.stderr, refused.output
