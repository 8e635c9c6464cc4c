"""The benchmark harness (bench/run.py) end to end on a tiny demo config: its figures, its targets, its errors."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT))
from bench import run as bench  # noqa: E402
from hpsearch.errors import ConfigError  # noqa: E402

N_TRIALS, N_EPOCHS = 3, 3


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """Arms A, C, D and E for seeds 0 and 1 side by side (two spawned processes, as `make bench` runs), on 300
    demo rows, with one retraining seed; the result path and JSON."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "r.json"
    cfg = ROOT / "studies" / "demo.yaml"
    argv = [
        "--config", str(cfg), "--arms", "A,C,D,E", "--seeds", "0,1", "--n-trials", str(N_TRIALS),
        "--n-epochs", str(N_EPOCHS), "--throughput-repeats", "0", "--retrain-seeds", "1", "--jobs", "2",
        "--set", "data.demo_size=300", "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    return out, json.loads(out.read_text())


@pytest.mark.slow
def test_seeds_run_side_by_side_into_one_result_and_one_log(result):
    out, r = result
    assert set(r["per_seed"]) == {"0", "1"}
    log = out.with_suffix(".progress.txt").read_text()
    for name in ("bench-A-seed0", "bench-C-seed0", "bench-A-seed1", "bench-C-seed1"):
        assert f"study '{name}'" in log
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "r.json",
        "r.progress.txt",
    ]  # per-seed parts merged


@pytest.mark.slow
def test_each_seed_is_judged_against_its_own_rows(result):
    """Each seed draws its own sample and validation split: the majority-class error that decides "went on to
    learn" (and the divergence-by-outcome figures) is that seed's, not the first seed's."""
    from hpsearch.config import load_config
    from hpsearch.data import load_data

    _, r = result
    cfg = load_config(ROOT / "studies" / "demo.yaml", sets=["data.demo_size=300"])
    for seed in (0, 1):
        data = load_data(cfg.data, seed=seed)
        assert r["per_seed_data"][str(seed)] == {
            "n_train": len(data.train),
            "n_validation": len(data.validation),
            "majority_val_error": round(data.majority_error(), 4),
            "constant_val_error": round(data.constant_error(), 4),
            "length_note": None,  # the demo's text length says nothing of its labels
        }
    assert r["per_seed_data"]["0"] != r["per_seed_data"]["1"]  # else this test proves nothing
    assert r["majority_val_error"] == r["per_seed_data"]["0"]["majority_val_error"]


@pytest.mark.slow
def test_every_arm_records_its_trials_and_budget(result):
    _, r = result
    seed = r["per_seed"]["1"]
    assert set(seed) == {"A", "C", "D", "E"}
    assert seed["A"]["total_epochs"] == N_TRIALS * N_EPOCHS  # no pruning, no stop: every epoch of every trial
    assert len(seed["A"]["trials"]) == len(seed["C"]["trials"]) == len(seed["D"]["trials"]) == N_TRIALS
    # D's states are the ones its study stored (its pruner may prune after the last evaluation too)
    assert {t["state"] for t in seed["D"]["trials"]} <= {"COMPLETE", "PRUNED"}
    assert all(len(t["val_errors"]) == N_EPOCHS for t in seed["D"]["trials"] if t["state"] == "COMPLETE")
    assert sum(seed["D"]["trial_states"].values()) == N_TRIALS and seed["D"]["trial_states"].get("COMPLETE")
    assert 0 < seed["C"]["total_epochs"] <= N_TRIALS * N_EPOCHS
    for arm in seed.values():
        assert 0.0 <= arm["best_val_error"] <= 1.0
        # the target is the best of the issue's arms (not E) + 0.5 points, so one of them reaches it
        assert arm["target_val_error"] == pytest.approx(
            min(a["best_val_error"] for name, a in seed.items() if name != "E") + 0.005, abs=1e-4
        )
    assert any(a["reached_target"] for name, a in seed.items() if name != "E")
    # E spends A's epochs on as many trials as they buy: it stops once past them, inside one more trial
    assert N_TRIALS * N_EPOCHS <= seed["E"]["total_epochs"] < N_TRIALS * N_EPOCHS + N_EPOCHS
    assert seed["E"]["n_trials"] >= N_TRIALS and seed["A"]["n_trials"] == N_TRIALS
    assert set(r["same_compute"]) == {
        "E_trials_median", "E_epochs_over_A", "E_best_minus_A_best", "E_retrained_minus_A_retrained"
    }  # fmt: skip
    # at the compute C used, C has its own best; the unpruned arm at most what its whole search found
    assert seed["C"]["best_at_c_epochs"] == seed["C"]["best_val_error"]
    assert (
        seed["A"]["best_at_c_epochs"] is None or seed["A"]["best_at_c_epochs"] >= seed["A"]["best_val_error"]
    )


def test_best_within_epochs_follows_the_order_trials_ran():
    trials = [
        {"val_errors": [0.5, 0.4, 0.3], "epochs": 3.0},  # epochs 1-3 of the arm
        {"val_errors": [], "epochs": 0.25},  # stopped inside its first epoch: no epoch end
        {"val_errors": [0.35, 0.2], "epochs": 2.0},  # its epoch ends at 4.25 and 5.25
    ]
    assert bench.best_within_epochs(trials, 0.5) is None  # no epoch end yet
    assert bench.best_within_epochs(trials, 2) == 0.4
    assert bench.best_within_epochs(trials, 4.25) == 0.3
    assert bench.best_within_epochs(trials, 5.0) == 0.3
    assert bench.best_within_epochs(trials, 5.25) == 0.2
    assert bench.best_within_epochs(trials, 100) == 0.2
    by_arm = {"A": {"trials": trials, "total_epochs": 5.25}, "C": {"trials": trials[:1], "total_epochs": 3.0}}
    bench.at_c_compute(by_arm)
    assert (by_arm["A"]["best_at_c_epochs"], by_arm["C"]["best_at_c_epochs"]) == (0.3, 0.3)


def test_c_own_last_epoch_end_is_within_c_epochs_on_any_row_count():
    """C's epochs are rounded to 3 decimals in its summary; a fractional stop (600 rows: 0.41333 epochs) rounds
    them down, and C's own last epoch end must still count at C's compute."""
    trials = [{"val_errors": [], "epochs": 248 / 600}, {"val_errors": [0.3], "epochs": 1.0}]
    by_arm = {"C": {"trials": trials, "total_epochs": round(sum(t["epochs"] for t in trials), 3)}}
    bench.at_c_compute(by_arm)
    assert by_arm["C"]["best_at_c_epochs"] == 0.3  # C's best, as by definition


def _seed_summary(epochs_to_target, total_epochs, n_diverging=0):
    """An arm's figures of one seed, as summarise_arm writes them (a stand-in for what the aggregation reads)."""
    diverging = {"n": n_diverging, "stopped_within_first_epoch": n_diverging, "share_of_budget": 0.0}
    return {
        "best_val_error": 0.3,
        "total_epochs": total_epochs,
        "wall_seconds": 10.0 * total_epochs,
        "seconds_to_target": None if epochs_to_target is None else 10.0 * epochs_to_target,
        "epochs_to_target": epochs_to_target,
        "reached_target": epochs_to_target is not None,
        "n_trials": 4,
        "trials": [],
        "diverging_by_learning_rate": diverging,
        "diverging_by_outcome": diverging,
        "rule_fired_but_not_stopped": {"n": 0, "went_on_to_learn": 0},
        "per_trial_overhead": None,
        "padding_efficiency": 0.95,
    }


def _target(agg, name):
    return next(t for t in bench.check_targets(agg, None) if t["target"] == name)


def test_a_seed_that_never_reached_the_target_counts_in_the_to_target_verdict():
    """ "Never reached" is not left out of the medians the verdict compares: C reaching the target fast on one
    seed of four is no pass, and A's misses count as at least the epochs it spent."""
    name = "C epochs to target <= 1/3 of A's"
    # C got there on seed 0 only (10 epochs), A on every seed (60): C's median seed never got there
    per_seed = {
        s: {"A": _seed_summary(60, 144), "C": _seed_summary(10 if s == 0 else None, 40)} for s in range(4)
    }
    target = _target(bench.aggregate(per_seed, ["A", "C"]), name)
    assert (target["value"], target["met"]) == (None, False)
    assert "C reached the target on 1/4 seeds, A on 4/4" in target["note"]
    # C on every seed (30), A on two (60) and not in its 144 epochs on the other two: A's median is >= 102
    per_seed = {
        s: {"A": _seed_summary(60 if s < 2 else None, 144), "C": _seed_summary(30, 40)} for s in range(4)
    }
    target = _target(bench.aggregate(per_seed, ["A", "C"]), name)
    assert (target["value"], target["met"]) == (round(30 / 102, 3), True)


def test_no_diverging_trial_is_neither_met_nor_missed(capsys):
    per_seed = {0: {"C": _seed_summary(10, 40)}}
    result = {"aggregate": bench.aggregate(per_seed, ["C"]), "seeds": [0], "total_seconds": 1.0}
    result.update(n_train=100, n_validation=50, majority_val_error=0.5, throughput=None)
    result["targets"] = bench.check_targets(result["aggregate"], None)
    stopped = [t for t in result["targets"] if t["target"].startswith(">= 95% of diverging trials")]
    assert [t["met"] for t in stopped] == [None, None]  # 0 of 0: nothing to stop
    bench.print_summary(result, sys.stdout)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| >= 95% of diverging")]
    assert len(rows) == 2 and all("| None | n/a | 0/0 over all seeds |" in row for row in rows), rows


def test_a_figure_not_measured_is_an_n_a_row_not_a_missing_one():
    """--retrain-seeds 0: the retrained-best target is still listed, as not measured."""
    per_seed = {0: {"A": _seed_summary(60, 144), "C": _seed_summary(10, 40)}}
    name = "C best configuration, retrained, no worse than A's and D's (within 0.5 points)"
    target = _target(bench.aggregate(per_seed, ["A", "C"]), name)
    assert (target["value"], target["met"]) == (None, None) and "--retrain-seeds 0" in target["note"]
    per_seed[0]["A"]["retrained_best"] = per_seed[0]["C"]["retrained_best"] = {"mean": 0.3}
    assert _target(bench.aggregate(per_seed, ["A", "C"]), name)["met"] is True


def _part(tmp_path, seeds, config="bench/configs/sst2.yaml", **resolved) -> Path:
    """A result file of arms A and C for ``seeds``, as a run of ``bench.run`` writes it."""
    result = {
        "command": "python -m bench.run",
        "config": config,
        "overrides": [],
        "resolved_config": {
            "study": {"storage": f"sqlite:////tmp/s{seeds[0]}/w.db", "seed": seeds[0]},
            **resolved,
        },
        "arms": {"A": bench.ARMS["A"], "C": bench.ARMS["C"]},
        "seeds": seeds,
        "total_seconds": 1.0,
        "throughput": None,
        "per_seed": {str(s): {"A": _seed_summary(60, 144), "C": _seed_summary(10, 40)} for s in seeds},
        "per_seed_data": {
            str(s): {"n_train": 100, "n_validation": 50, "majority_val_error": 0.5} for s in seeds
        },
    }
    path = tmp_path / f"from-seed{seeds[0]}.json"
    path.write_text(json.dumps(result))
    path.with_suffix(".progress.txt").write_text(f"seeds {seeds}\n")
    return path


def test_the_no_worse_targets_also_compare_seed_by_seed():
    """The arms of a seed share its rows and trial seeds, so the note pairs them: medians of arms can differ
    while C is ahead on most seeds (here C's median is worse than D's, yet C is lower on 2 seeds of 3)."""
    per_seed = {
        s: {"A": _seed_summary(60, 144), "C": _seed_summary(10, 40), "D": _seed_summary(30, 90)}
        for s in range(3)
    }
    for s, (c, d) in enumerate([(0.30, 0.31), (0.33, 0.34), (0.40, 0.32)]):
        per_seed[s]["C"]["retrained_best"], per_seed[s]["D"]["retrained_best"] = {"mean": c}, {"mean": d}
        per_seed[s]["A"]["retrained_best"] = {"mean": 0.5}
    target = _target(
        bench.aggregate(per_seed, ["A", "C", "D"]),
        "C best configuration, retrained, no worse than A's and D's (within 0.5 points)",
    )
    assert target["value"] == 0.01 and target["met"] is False  # medians: C 0.33, D 0.32
    assert "C - D: median -0.0100, C lower or equal on 2/3" in target["note"]
    assert "C - A: median -0.1700, C lower or equal on 3/3" in target["note"]


def test_merge_takes_a_run_whose_first_seed_differs(tmp_path):
    """Each run records its first seed as study.seed (`--seeds 3,4` records 3): merging the two documented runs
    must not be refused for it."""
    paths = [_part(tmp_path, [0, 1]), _part(tmp_path, [3])]
    assert bench.merge_into(*paths) == 0
    merged = json.loads(paths[0].read_text())
    assert merged["seeds"] == [0, 1, 3] and merged["aggregate"]["C"]["reached_target"] == "3/3"


def test_merge_takes_seeds_run_later_by_a_version_with_more_settings_or_from_another_folder(tmp_path):
    """A result stores the settings it ran with; seeds added later by a version that has a setting more (at the
    default, the old behaviour) or reads one no more (train.save_best), or by a clone in another folder, ran
    the same search and are merged. Other settings are refused."""
    earlier = _part(tmp_path, [0, 1], train={"n_epochs": 9, "save_best": False})
    later = _part(
        tmp_path, [4], "/tmp/clone/bench/configs/sst2.yaml", train={"n_epochs": 9, "early_eval": None}
    )
    assert bench.merge_into(earlier, later) == 0
    assert json.loads(earlier.read_text())["seeds"] == [0, 1, 4]
    other = _part(tmp_path, [5], train={"n_epochs": 3})
    with pytest.raises(ConfigError, match="must come from the same config"):
        bench.merge_into(earlier, other)


@pytest.mark.slow
def test_each_arm_best_configuration_is_retrained_with_fresh_seeds(result):
    _, r = result
    for name, arm in r["per_seed"]["0"].items():
        rb = arm["retrained_best"]
        if name == "D":  # the Trainer's own ranking: the last evaluation of a trial that ran every epoch
            complete = [t for t in arm["trials"] if len(t["val_errors"]) == N_EPOCHS]
            best = min(complete, key=lambda t: (t["val_errors"][-1], t["number"]))
            epochs = N_EPOCHS
        else:  # the complete trial with the best epoch, as `hpsearch best` and `train-best` name it
            complete = [t for t in arm["trials"] if t.get("state") == "COMPLETE"]
            best = min(complete, key=lambda t: (min(t["val_errors"]), t["number"]))
            epochs = N_EPOCHS  # retrained for every epoch, as train-best does by default
        assert (rb["trial"], rb["learning_rate"], rb["batch_size"]) == (
            best["number"],
            best["learning_rate"],
            best["batch_size"],
        ), name
        assert rb["epochs"] == epochs, name
        # every value the trial trained with, searched or fixed (not only the learning rate and batch size)
        assert rb["params"] == best["params"] and rb["params"]["learning_rate"] == best["learning_rate"], name
        assert {"weight_decay", "warmup_ratio", "dropout", "max_grad_norm"} <= set(rb["params"]), name
        assert len(rb["val_errors"]) == 1 and 0.0 <= rb["mean"] <= 1.0
    assert r["retrain_epochs"] == "all"
    names = [t["target"] for t in r["targets"]]
    assert "C best configuration, retrained, no worse than A's and D's (within 0.5 points)" in names
    assert "C epochs (whole search) <= 1/3 of A's" in names


@pytest.mark.slow
def test_retrain_from_updates_an_earlier_result(result, tmp_path):
    out, r = result
    r = json.loads(json.dumps(r))  # the module's result stays as it was for the other tests
    copy = tmp_path / "again.json"
    for seed in r["per_seed"].values():
        for arm in seed.values():
            arm.pop("retrained_best")
    copy.write_text(json.dumps(r))
    argv = [  # no --config: the one the result ran with
        "--retrain-from",
        str(copy),
        "--retrain-seeds",
        "2",
        "--retrain-epochs",
        "best",
    ]
    assert bench.main(argv + ["--jobs", "1"]) == 0
    again = json.loads(copy.read_text())
    assert again["retrain_epochs"] == "best"
    for seed in again["per_seed"].values():
        assert all(len(a["retrained_best"]["val_errors"]) == 2 for a in seed.values())
        best = seed["C"]["retrained_best"]
        errors = next(t["val_errors"] for t in seed["C"]["trials"] if t["number"] == best["trial"])
        assert best["epochs"] == errors.index(min(errors)) + 1  # --retrain-epochs best: the best epoch
    assert again["aggregate"]["C"]["retrained_best_mean"]["median"] is not None


def test_unknown_arm_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench.main(["--arms", "A,Z", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --arms: unknown arm(s) Z; choose from A, B, C, D, E, F, G, I, P"]
    assert not out.exists()


@pytest.mark.slow
def test_merge_adds_seeds_run_later_and_recomputes_the_figures(result, tmp_path):
    out, r = result
    log = out.with_suffix(".progress.txt").read_text()
    parts = {}
    for seed in ("0", "1"):
        part = {**r, "seeds": [int(seed)], "per_seed": {seed: r["per_seed"][seed]}}
        study = {**r["resolved_config"]["study"], "storage": f"sqlite:////tmp/run-of-seed-{seed}/w.db"}
        part["resolved_config"] = {**r["resolved_config"], "study": study}  # each run has its own store
        parts[seed] = tmp_path / f"seed{seed}.json"
        parts[seed].write_text(json.dumps(part))
        parts[seed].with_suffix(".progress.txt").write_text(f"seed {seed} lines\n")
    assert bench.main(["--merge", str(parts["1"]), "--out", str(parts["0"])]) == 0
    merged = json.loads(parts["0"].read_text())
    assert merged["seeds"] == [0, 1]
    assert merged["aggregate"] == r["aggregate"]  # the same figures as the two seeds run together
    assert [run["seeds"] for run in merged["runs"]] == [[0], [1]]
    assert parts["0"].with_suffix(".progress.txt").read_text() == "seed 0 lines\nseed 1 lines\n"
    assert log  # the original result is untouched
    # the same seed twice is refused, in one line, and nothing is written
    before = parts["0"].read_text()
    assert bench.main(["--merge", str(parts["1"]), "--out", str(parts["0"])]) == 2
    assert parts["0"].read_text() == before
    # so are seeds whose configurations were retrained another way: their figures do not mix
    other = tmp_path / "seed2.json"
    study = {**r["resolved_config"]["study"], "storage": "sqlite:////tmp/run-of-seed-2/w.db"}
    other.write_text(
        json.dumps(
            {
                **r,
                "seeds": [2],
                "per_seed": {"2": r["per_seed"]["0"]},
                "resolved_config": {**r["resolved_config"], "study": study},
                "retrain_epochs": "best",
            }
        )
    )
    assert bench.main(["--merge", str(other), "--out", str(parts["0"])]) == 2
    assert parts["0"].read_text() == before


def test_noise_aware_promotion_lets_a_trial_within_one_standard_error_go_on():
    from bench.replay_pruners import NoiseAwareHalving, settled

    pruner = NoiseAwareHalving(n_validation=400, majority_error=0.5, z=1.0)  # SE at 0.2: 0.02
    records = [(0.20, 0.5), (0.30, 0.6), (0.40, 0.6)]  # with 0.21 below: the cut-off is the best of 4, 0.20
    assert pruner._in_best((0.21, 0.6), [*records, (0.21, 0.6)], pausing=False)
    assert not pruner._in_best((0.23, 0.6), [*records, (0.23, 0.6)], pausing=False)
    # on the majority plateau only the training-loss tie break decides, as in the default pruner
    plateau = NoiseAwareHalving(n_validation=400, majority_error=0.5, z=1.0)
    flat = [(0.49, 0.69), (0.5, 0.68), (0.5, 0.69)]
    assert not plateau._in_best((0.5, 0.70), [*flat, (0.5, 0.70)], pausing=False)
    assert settled([(0.3, 1.0), (0.2, 1.0), (0.4, 1.0)]) == 0.4  # the last third of 3 epochs
    assert settled([(e, 1.0) for e in (0.9, 0.5, 0.4, 0.3, 0.2, 0.1)]) == pytest.approx(0.15)


def test_first_rung_by_loss_ranks_epoch_1_by_training_loss_and_later_rungs_by_error():
    from bench.replay_pruners import FirstRungByLoss, run
    from hpsearch.pruners import SuccessiveHalvingPruner

    # trial 0 goes on unopposed; trial 1 is ahead in error after epoch 1 but behind in training loss
    curves = [[(0.45, 0.5), (0.40, 0.4), (0.35, 0.3)], [(0.40, 0.9), (0.30, 0.8), (0.20, 0.7)]]
    assert run(curves, SuccessiveHalvingPruner(3))[-1][0] == 6  # by error: trial 1 goes on
    assert run(curves, FirstRungByLoss())[-1][0] == 4  # by loss: cut after epoch 1
    assert run(curves, FirstRungByLoss(blend=True))[-1][0] == 6  # rank sums tie; the error decides
    # past epoch 1 the error decides, whatever the loss: a 9-epoch curve's rung at epoch 3
    long = [[(0.5, 0.5)] * 2 + [(0.45, 0.1)] * 7, [(0.5, 0.4)] * 2 + [(0.30, 0.9)] * 7]
    assert run(long, FirstRungByLoss())[-1][0] == 18  # trial 1 leads on loss at epoch 1, on error at 3


def test_replay_pruners_compares_pruners_on_recorded_curves(tmp_path, capsys):
    from bench import replay_pruners

    def study(name: str, curves, pruned: bool = False) -> list[str]:
        lines = [
            f"study '{name}' in sqlite:///x.db: 9 train / 9 validation examples, 2 classes, model tiny;"
            " majority-class val_error 0.5"
        ]
        for number, curve in enumerate(curves):
            for epoch, error in enumerate(curve, start=1):
                lines.append(
                    f"trial {number} epoch {epoch}/3  loss {0.7 - error / 10:.3f}  val_loss 0.6"
                    f"  val_error {error}  900 samples/s"
                )
            if pruned:
                lines.append(
                    f"trial {number} pruned: pruned by successive-halving after epoch 3: val_error 0.5"
                )
        return lines

    curves = [(0.5, 0.4, 0.3), (0.49, 0.49, 0.49), (0.45, 0.3, 0.2), (0.5, 0.5, 0.5)]
    log = tmp_path / "curves.progress.txt"
    log.write_text(
        "\n".join(study("A-seed0", curves) + study("C-seed0", curves, pruned=True))
        + "\ntrial 4 epoch 1/3  loss 0.6  val_loss 0.6  val_error 0.1  9 samples/s\n"
    )
    # the pruned study is left out, and so is the unfinished trial 4 of the other
    [read] = replay_pruners.read_studies(log)
    assert (read.name, read.n_epochs, read.n_validation, read.majority_error) == ("A-seed0", 3, 9, 0.5)
    assert [[error for error, _ in c] for c in read.curves] == [list(c) for c in curves]
    assert read.curves[0][0] == (0.5, 0.65)  # (val_error, training loss)
    assert replay_pruners.main([str(log), "--orders", "3", "--draws", "2"]) == 0
    out = capsys.readouterr().out
    assert "A-seed0: 4 trials x 3 epochs, best 0.2000" in out
    assert "| none | 1.00 | 1.00 | 0/4 |" in out
    sha = next(line for line in out.splitlines() if line.startswith("| hpsearch successive-halving"))
    assert float(sha.split("|")[2]) < 1.0  # it pruned something
    assert "same budget: 2 random searches per study" in out
    no_pruning = next(line for line in out.splitlines() if line.startswith("| none |") and "(" in line)
    assert no_pruning.count("(") == 3  # one cell per budget
    assert "| hpsearch successive-halving, noise-aware (r=3, within 1 SE of the cut-off goes on) |" in out
    # the searches scored by the trial they hand over: without pruning every search completes one
    assert "scored by the trial each hands over" in out
    handed = [line for line in out.splitlines() if line.startswith("| none |")][-1]
    assert handed.count("(0.00)") == 3

    empty = tmp_path / "pruned.progress.txt"
    empty.write_text("\n".join(study("C-seed1", curves, pruned=True)) + "\n")
    assert replay_pruners.main([str(empty)]) == 2
    assert "no study ran without pruning" in capsys.readouterr().err


# --- bench.divergence: the divergence stop replayed on recorded losses --------------------------------------


@pytest.mark.slow
def test_divergence_record_then_replay_counts_stops_and_false_stops(tmp_path, capsys):
    from bench import divergence

    out = tmp_path / "losses.json"
    argv = [
        "record", "--config", str(ROOT / "studies" / "demo.yaml"), "--set", "data.demo_size=300",
        "--lrs", "1e-3:1e-1:2", "--batch-sizes", "8", "--n-epochs", "2", "--out", str(out),
    ]  # fmt: skip
    assert divergence.main(argv) == 0
    rec = json.loads(out.read_text())
    assert [r["learning_rate"] for r in rec["runs"]] == pytest.approx([1e-3, 1e-1])
    for run in rec["runs"]:  # every step of both epochs, the stop off
        assert len(run["losses"]) == 2 * run["steps_per_epoch"] and len(run["val_errors"]) == 2

    # A learner with a burst of bad batches (the rule before 2026-12 stopped it) next to a hopeless run.
    learner = {**rec["runs"][0], "val_errors": [0.2, 0.1], "losses": [0.68] * 5 + [2.5] * 4 + [0.5] * 41}
    hopeless = {**rec["runs"][1], "val_errors": [0.5, 0.5], "losses": [1.2] * 50}
    for run in (learner, hopeless):
        run["steps_per_epoch"] = 25
    (tmp_path / "made.json").write_text(
        json.dumps({**rec, "majority_val_error": 0.5, "runs": [learner, hopeless]})
    )
    assert divergence.main(["replay", str(tmp_path / "made.json")]) == 0
    rows = {
        line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines() if "|" in line
    }
    assert "| 0 | 1 of 1 |" in rows["median (default)"]
    assert "| 1: lr 0.001 bs 8 (best 0.1) | 1 of 1 |" in rows["EMA, no floor, no cap (before 2026-12)"]


def test_a_seed_process_dies_with_its_parent(tmp_path):
    """Killing bench.run must not leave its seed processes training (and skewing whatever is timed next)."""
    import os
    import signal
    import subprocess
    import time

    pid_file, script = tmp_path / "child.pid", tmp_path / "parent.py"  # spawn needs a file to import
    script.write_text(CHILD_OF_A_PARENT.format(root=str(ROOT), pid_file=str(pid_file)))
    parent = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:  # the child renames it into place whole
            time.sleep(0.1)
        child = int(pid_file.read_text())
    finally:
        os.kill(
            parent.pid, signal.SIGKILL
        )  # no cleanup runs in the parent: only the kernel can stop the child
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


CHILD_OF_A_PARENT = """
import multiprocessing, os, sys, time
sys.path.insert(0, {root!r})
from bench.run import die_with_parent

def child(path):
    die_with_parent()
    with open(path + ".part", "w") as f:
        f.write(str(multiprocessing.current_process().pid))
    os.replace(path + ".part", path)  # the test never reads a file half written
    time.sleep(120)

if __name__ == "__main__":
    multiprocessing.get_context("spawn").Process(target=child, args=({pid_file!r},)).start()
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has died; its parent is gone
    except FileNotFoundError:
        return False


def test_arm_f_is_c_with_an_early_evaluation(tmp_path):
    from hpsearch.config import load_config

    cfg = load_config(ROOT / "studies" / "demo.yaml")
    c, f = (bench.arm_config(cfg, arm, 0, tmp_path) for arm in ("C", "F"))
    assert c.train.early_eval is None and f.train.early_eval == bench.F_EARLY_EVAL
    assert (f.study.sampler, f.study.pruner, f.train.divergence_stop) == (
        c.study.sampler, c.study.pruner, c.train.divergence_stop
    )  # fmt: skip


@pytest.mark.slow
def test_without_the_issues_arms_the_target_is_set_by_the_arms_that_ran(tmp_path):
    """`--arms F` alone: the target (and the JSON) had NaN, which a strict JSON reader refuses."""
    out = tmp_path / "f.json"
    argv = [
        "--config", str(ROOT / "studies" / "demo.yaml"), "--arms", "F", "--seeds", "0", "--n-trials", "2",
        "--n-epochs", "1", "--throughput-repeats", "0", "--retrain-seeds", "0", "--jobs", "1",
        "--set", "data.demo_size=200", "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0

    def no_nan(word):
        raise AssertionError(f"{word} in the result JSON")

    f = json.loads(out.read_text(), parse_constant=no_nan)["per_seed"]["0"]["F"]
    assert f["target_val_error"] == pytest.approx(f["best_val_error"] + 0.005, abs=1e-4)


def test_an_early_evaluation_is_not_counted_twice_in_its_epoch():
    rec = bench.Recorder(n_train=100)
    hp = {"learning_rate": 1e-3, "batch_size": 10}
    # the early evaluation after 30 examples, then the epoch's end with the whole epoch's figures
    rec.epoch(0, hp, 0.45, 0.3, 0.69, 1.5, samples=30, real=300, padded=330, train_seconds=1.0, early=True)
    rec.epoch(0, hp, 0.40, 1.0, 0.60, 5.0, samples=100, real=1000, padded=1100, train_seconds=4.0)
    t = rec.trials[0]
    assert t["epochs"] == pytest.approx(1.0) and t["samples"] == 100 and t["padded_tokens"] == 1100
    assert t["busy_seconds"] == pytest.approx(5.0) and t["train_seconds"] == pytest.approx(4.0)
    assert t["val_errors"] == [0.40] and t["train_losses"] == [0.60] and t["early_val_error"] == 0.45
    assert rec.early_counted == {}  # nothing left over for the result JSON
    assert [e["epochs"] for e in rec.events] == pytest.approx([0.3, 0.7])


def test_the_retrained_configuration_is_the_one_the_search_hands_its_user():
    def trial(number, errors, state=None):
        t = {"number": number, "val_errors": errors, "learning_rate": 1e-3, "batch_size": 8}
        return t if state is None else {**t, "state": state}

    hpsearch_arm = [
        trial(0, [0.40, 0.28, 0.30], "COMPLETE"),
        trial(1, [0.35, 0.25], "PRUNED"),  # the lowest error, but pruned: `hpsearch best` never names it
        trial(2, [0.45, 0.29, 0.31], "COMPLETE"),
    ]
    t, error, epochs = bench.handed_over("C", hpsearch_arm, 3)
    assert (t["number"], error, epochs) == (0, 0.28, 3)  # every epoch, as train-best retrains by default
    t, error, epochs = bench.handed_over("C", hpsearch_arm, 3, "best")
    assert (t["number"], error, epochs) == (0, 0.28, 2)  # train-best --epochs best: to the trial's best epoch
    # Trainer.hyperparameter_search ranks by the last evaluation and trains every epoch; a trial with fewer
    # evaluations than epochs was pruned by its MedianPruner
    trainer_arm = [trial(0, [0.30, 0.20, 0.33]), trial(1, [0.31, 0.30, 0.29]), trial(2, [0.25])]
    t, error, epochs = bench.handed_over("D", trainer_arm, 3)
    assert (t["number"], error, epochs) == (1, 0.29, 3)
    assert bench.handed_over("C", [trial(0, [0.5], "PRUNED")], 3) is None
    # --retrain-pick settled: the lowest mean of the last third of epochs, not the luckiest single epoch
    lucky = [*hpsearch_arm, trial(3, [0.27, 0.40, 0.35], "COMPLETE")]
    assert bench.handed_over("C", lucky, 3)[0]["number"] == 3
    t, error, epochs = bench.handed_over("C", lucky, 3, "all", "settled")
    assert (t["number"], error, epochs) == (0, 0.28, 3)
    assert bench.handed_over("D", trainer_arm, 3, "all", "settled")[0]["number"] == 1  # the Trainer's own
    assert bench.settled_error([0.9, 0.5, 0.4, 0.3, 0.2, 0.1]) == pytest.approx(0.15)


@pytest.mark.slow
def test_top_k_retrains_each_arms_candidates_and_scores_every_rule_on_held_out_seeds(result, tmp_path):
    from bench import top_k

    out, r = result
    report = tmp_path / "topk.json"
    argv = [str(out), "--config", str(ROOT / "studies" / "demo.yaml"), "--arms", "C", "--k", "2",
            "--rank-seeds", "1", "--held-out", "1", "--seeds", "0", "--out", str(report)]  # fmt: skip
    assert top_k.main(argv) == 0
    t = json.loads(report.read_text())
    rows = t["per_seed"]["0"]["C"]
    assert [row["trial"] for row in rows] == [
        c["number"] for c in top_k.candidates(r["per_seed"]["0"]["C"]["trials"], 2)
    ]
    for row in rows:
        assert len(row["rank"]) == 1 and len(row["held_out"]) == 1
        if row["own_recorded"]:  # a complete trial's own seed is its recorded last epoch
            trial = next(x for x in r["per_seed"]["0"]["C"]["trials"] if x["number"] == row["trial"])
            assert row["own"] == round(trial["val_errors"][N_EPOCHS - 1], 4)
    summary = t["summary"]["C"]
    assert set(summary) == {*top_k.RULES, "own_minus_fresh"}
    assert summary["oracle"]["median"] <= summary["top-1"]["median"]  # the oracle picks by the held-out runs


def test_top_k_rules_pick_by_their_own_seeds_and_are_scored_on_the_held_out_ones():
    from bench import top_k

    rows = [  # candidate 0 looked best in the search and on its own seed, and is worst on fresh seeds
        {"own": 0.20, "rank": [0.40, 0.40], "held_out": [0.38]},
        {"own": 0.40, "rank": [0.31, 0.33], "held_out": [0.30]},
        {"own": 0.35, "rank": [0.32, 0.34], "held_out": [0.29]},
    ]
    assert top_k.pick(rows, "top-1") is rows[0]
    assert top_k.pick(rows, "own") is rows[0]  # mean 0.333 against 0.347 and 0.337: the lucky seed wins
    assert top_k.pick(rows, "fresh") is rows[1]
    assert top_k.pick(rows, "oracle") is rows[2]
    summary = top_k.summarise({0: {"C": rows}, 1: {"C": rows[1:]}})["C"]
    assert summary["fresh"]["per_seed"] == {0: 0.30, 1: 0.30}
    assert summary["fresh"]["vs_top_1"] == {"better": 1, "worse": 0, "level": 1}
    assert summary["own_minus_fresh"] == pytest.approx(
        sum(r["own"] - sum(r["rank"]) / 2 for r in rows + rows[1:]) / 5
    )


def test_top_k_candidates_are_ranked_as_train_best_ranks_them():
    from bench import top_k

    trials = [
        {"number": 0, "state": "PRUNED", "val_errors": [0.2]},
        {"number": 1, "state": "COMPLETE", "val_errors": [0.5, 0.4, 0.35]},
        {"number": 2, "state": "PRUNED", "val_errors": [0.3, 0.25]},
        {"number": 3, "state": "PRUNED", "val_errors": [], "stopped_diverging": "loss is NaN"},
        {"number": 4, "state": "PRUNED", "val_errors": [0.1], "stopped_diverging": "worse than a guess"},
    ]
    assert [t["number"] for t in top_k.candidates(trials, 3)] == [1, 2, 0]


@pytest.mark.parametrize("flags", [["--arms", "D"], ["--arms", "G"], ["--seeds", "7"]])
def test_top_k_refuses_arms_and_seeds_the_result_lacks_in_one_line(flags, capsys):
    from bench import top_k

    result = ROOT / "bench" / "results" / "sst2-1202.json"
    with pytest.raises(SystemExit) as e:
        top_k.main([str(result), *flags, "--out", "/nonexistent/x.json"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"python -m bench.top_k: error: {flags[0]} ")


@pytest.mark.parametrize("flag", ["--retrain-from", "--merge"])
def test_a_result_file_that_is_not_there_is_one_line_and_exit_2(tmp_path, capsys, flag):
    assert bench.main([flag, str(tmp_path / "nope.json"), "--out", str(tmp_path / "r.json")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "nope.json: no such file" in line and flag in line


def test_retrain_from_refuses_another_config_than_the_results(result, tmp_path, capsys):
    out, _ = result
    import yaml

    other = tmp_path / "other.yaml"  # the same study with other tokens per example: another measurement
    cfg = yaml.safe_load((ROOT / "studies" / "demo.yaml").read_text())
    cfg["model"]["max_length"] = 2 * cfg["model"]["max_length"]
    other.write_text(yaml.safe_dump(cfg))
    assert bench.main(["--config", str(other), "--retrain-from", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "the result ran with" in line and "drop --config" in line


def test_a_seed_whose_sample_breaks_the_data_is_refused_before_any_arm(tmp_path, capsys):
    """Each seed draws its own sample: one that lacks a class the validation rows use fails up front."""
    rows = ["text\tlabel"] + [f"common words {i}\tmain" for i in range(60)] + ["rare words here\trare"]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "validation.tsv").write_text("text\tlabel\nsome words\tmain\nrare words\trare\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        "study: {name: r, n_trials: 2}\nmodel: {name: tiny, max_length: 16}\n"
        f"data: {{name: null, train_file: {tmp_path}/train.tsv, validation_file: {tmp_path}/validation.tsv,"
        " max_train_samples: 10}\ntrain: {n_epochs: 1}\n"
    )
    out = tmp_path / "r.json"
    seeds = ",".join(str(s) for s in range(8))  # 10 of 61 rows: most seeds' samples miss the one rare row
    assert bench.main(["--config", str(config), "--seeds", seeds, "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --seeds ") and "this seed's sample" in line and not out.exists()


# --- a study config and data the benchmark has not seen (the issue's "another real data set") ---------------

SMALL = [
    "--config", str(ROOT / "studies" / "demo.yaml"), "--arms", "C", "--seeds", "0", "--n-trials", "1",
    "--n-epochs", "1", "--throughput-repeats", "0", "--retrain-seeds", "0", "--jobs", "1",
    "--set", "data.demo_size=60",
]  # fmt: skip


@pytest.mark.parametrize(
    "flags",
    [
        ["--seeds", "a"],
        ["--seeds", "0,1,"],
        ["--seeds", "-1"],
        ["--seeds", "0,0"],
        ["--arms", "C,c"],
        ["--arms", "A,,C"],
        ["--n-trials", "0"],
        ["--n-epochs", "0"],
        ["--max-train-samples", "0"],
        ["--threads", "-1"],
    ],
)
def test_a_bad_flag_is_one_line_and_exit_2(tmp_path, capsys, flags):
    """A seed that is not a number, or given twice, crashed (the second run of a seed after its arms); a 0 count
    was silently ignored and the config's value ran."""
    out = tmp_path / "r.json"
    assert bench.main([*SMALL, *flags, "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {flags[0]}") and not out.exists()


def test_an_out_path_that_is_a_folder_is_refused_before_any_arm(tmp_path, capsys):
    """The result is written after the whole run: a folder there crashed it at the end, the figures lost."""
    assert bench.main([*SMALL, "--out", str(tmp_path)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --out {tmp_path}: is a folder")
    assert not list(tmp_path.iterdir())  # no arm ran: no trial log


def _files(tmp_path, train, validation):
    for name, rows in (("train.csv", train), ("validation.csv", validation)):
        (tmp_path / name).write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))


@pytest.mark.parametrize(
    "setting, blamed",
    [
        ("data.text_column=txt", "data.text_column: no column 'txt'"),
        ("data.validation_file={tmp}/other.csv", "data.validation_file: file not found"),
        ("data.label_column=label", "has label 'ham', which the training data never uses"),
    ],
)
def test_a_mistake_in_the_data_is_not_blamed_on_a_seeds_sample(tmp_path, capsys, setting, blamed):
    """Only a seed whose sample lacks a class is named; a column typo, a missing file or a label the training
    file never uses was reported as "this seed's sample; try other --seeds", which no seed would fix."""
    _files(tmp_path, [(f"words {i}", "a" if i % 2 else "b") for i in range(40)], [("more words", "ham")])
    config = tmp_path / "c.yaml"
    config.write_text(
        "study: {n_trials: 1}\ntrain: {n_epochs: 1}\n"
        f"data: {{train_file: {tmp_path}/train.csv, validation_file: {tmp_path}/validation.csv,"
        " max_train_samples: 20}\n"
    )
    argv = ["--config", str(config), "--seeds", "0,1", "--set", setting.format(tmp=tmp_path)]
    assert bench.main([*argv, "--out", str(tmp_path / "r.json")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert blamed in line and "--seeds" not in line


def test_the_configs_epoch_budget_and_early_evaluation_do_not_change_the_arms(tmp_path):
    """Every arm runs study.n_trials, as arm D (the Trainer) does: a config's epoch budget stopped A, B and C after
    its epochs (and A's "epochs" were the budget); E alone has one, A's. A and B prune nothing, so an early
    evaluation would only cost them a validation."""
    from hpsearch.config import load_config
    from hpsearch.study import make_pruner

    sets = ["study.epoch_budget=5", "study.n_trials=4", "train.n_epochs=3", "train.early_eval=0.3"]
    cfg = load_config(ROOT / "studies" / "demo.yaml", sets=sets)
    arms = {arm: bench.arm_config(cfg, arm, 0, tmp_path) for arm in "ABCEFGI"}
    assert {arm: c.study.epoch_budget for arm, c in arms.items()} == {**dict.fromkeys("ABCFGI"), "E": 12.0}
    assert {arm: c.train.early_eval for arm, c in arms.items()} == {
        **dict.fromkeys("AB"),
        **dict.fromkeys("CEFGI", 0.3),
    }
    # C is the default, which pauses trials at rungs; I is the rule that decides at once, the default before
    pauses = {arm: getattr(make_pruner(c), "pauses", False) for arm, c in arms.items()}
    assert pauses == {**dict.fromkeys("ABI", False), **dict.fromkeys("CEFG", True)}


def test_a_trial_stuck_on_a_constant_guess_has_not_learned(tmp_path):
    """The training rows' most common class is not always the validation rows': a model that collapsed onto the
    latter scores under the majority-class error without learning anything, and counted as having learned."""
    from hpsearch.config import DataSection
    from hpsearch.data import load_data

    _files(tmp_path, [(f"w{i}", "a" if i < 12 else "b") for i in range(20)], [(f"v{i}", "b" if i < 7 else "a") for i in range(10)])  # fmt: skip
    data = load_data(
        DataSection(
            name=None, train_file=f"{tmp_path}/train.csv", validation_file=f"{tmp_path}/validation.csv"
        )
    )
    facts = bench.data_facts(data)
    assert facts["majority_val_error"] == pytest.approx(0.7) and facts["constant_val_error"] == pytest.approx(
        0.3
    )
    rec = bench.Recorder(n_train=20)
    rec.epoch(0, {"learning_rate": 1e-2, "batch_size": 8}, 0.3, 1.0, 0.69, 1.0)  # every row called `b`
    rec.wall = 1.0
    summary = bench.summarise_arm(rec, 0.305, facts["constant_val_error"])
    assert summary["trials_learned"] == 0 and summary["diverging_by_outcome"]["n"] == 1


def test_no_evaluation_at_all_gives_no_target_and_valid_json():
    """`--arms C` where every trial diverged in its first epoch: the target was NaN, which strict JSON refuses."""
    rec = bench.Recorder(n_train=100)
    rec.epoch(0, {"learning_rate": 5.0, "batch_size": 8}, None, 0.2, math.nan, 1.0)  # stopped: no evaluation
    rec.wall = 1.0
    assert bench.seed_target({"C": rec}) is None
    summary = bench.summarise_arm(rec, bench.seed_target({"C": rec}), 0.5)
    assert summary["target_val_error"] is None and not summary["reached_target"]
    json.dumps(summary, allow_nan=False)
    # arms that did evaluate set it when the issue's arms did not
    other = bench.Recorder(n_train=100)
    other.epoch(0, {"learning_rate": 1e-3, "batch_size": 8}, 0.25, 1.0, 0.5, 1.0)
    assert bench.seed_target({"C": rec, "E": other}) == pytest.approx(0.255)


@pytest.mark.parametrize(
    "best, constant, warned", [(0.47, 0.47, True), (0.3, 0.47, False), (0.0, 0.0167, False)]
)
def test_a_seed_where_nothing_learned_is_said_above_the_table(capsys, best, constant, warned):
    """Random labels, or a learning-rate range where nothing trains: every arm "reaches the target" at once and is
    "no worse" than the others; the table alone reads as a pass. Very imbalanced data that did learn is no such
    seed."""
    per_seed = {0: {"A": _seed_summary(1, 12), "C": _seed_summary(1, 4)}}
    for summary in per_seed[0].values():
        summary["best_val_error"] = best
    result = {"aggregate": bench.aggregate(per_seed, ["A", "C"]), "seeds": [0], "total_seconds": 1.0}
    result.update(n_train=100, n_validation=60, majority_val_error=constant, throughput=None)
    result["per_seed"] = {"0": per_seed[0]}
    result["per_seed_data"] = {"0": {"n_train": 100, "n_validation": 60, "majority_val_error": 0.6, "constant_val_error": constant}}  # fmt: skip
    result["targets"] = bench.check_targets(result["aggregate"], None)
    bench.print_summary(result, sys.stdout)
    out = capsys.readouterr().out
    assert (f"warning: nothing learned on seed(s) 0 ({constant:g})" in out) is warned


def test_a_seed_whose_text_length_gives_the_class_away_is_said_above_the_table(tmp_path, capsys):
    """hpsearch's arms batch by length, arm D (the Trainer) at random: where length tells the classes apart, the
    C-against-D rows compare batching too, and the summary says so with the flag that compares searches alone."""
    from hpsearch.config import load_config
    from hpsearch.search import prepare

    rows = [("good " * (2 + i % 3), "pos") if i % 2 else ("a dull and tedious tale " * 4 + str(i), "neg") for i in range(120)]  # fmt: skip
    (tmp_path / "len.csv").write_text(
        "text,label\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8"
    )
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{name: null, train_file: {tmp_path}/len.csv}}\nmodel: {{max_length: 64}}\n")
    cfg = load_config(config)
    space, data, _, encoded = prepare(cfg)
    note = bench.length_note(cfg, space, data, encoded)
    assert note.startswith("data: text length tells the classes apart: batches of 8 grouped by length")
    per_seed = {0: {"C": _seed_summary(1, 4)}}
    result = {
        "aggregate": bench.aggregate(per_seed, ["C"]),
        "seeds": [0],
        "total_seconds": 1.0,
        "throughput": None,
    }
    result.update(n_train=100, n_validation=20, majority_val_error=0.5, per_seed={"0": per_seed[0]})
    result["per_seed_data"] = {"0": {**bench.data_facts(data, note), "majority_val_error": 0.5}}
    result["targets"] = bench.check_targets(result["aggregate"], None)
    bench.print_summary(result, sys.stdout)
    out = capsys.readouterr().out
    assert "warning: seed(s) 0: text length tells the classes apart" in out
    assert "--set train.group_by_length=false" in out
    off = load_config(config, sets=["train.group_by_length=false"])
    assert bench.length_note(off, space, data, encoded) is None


def test_ctrl_c_stops_the_benchmark_not_only_the_arm_it_interrupts(tmp_path):
    """run_search takes SIGINT as "stop this search": the benchmark went on to the next arm and wrote a result,
    exit 0, whose interrupted arm had a few of its trials."""
    import signal
    import subprocess
    import time

    out = tmp_path / "r.json"
    argv = [*SMALL, "--arms", "A,C", "--n-trials", "40", "--set", "data.demo_size=200", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.run", *argv], cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    log = tmp_path / "r.progress.seed0.txt"  # arm A's progress lines, as they come
    try:
        for _ in range(1200):  # at most 4 minutes to start: a guard, not a measure
            if "trial 0 epoch 1/1" in (log.read_text() if log.exists() else ""):
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 130 and not out.exists()
    assert err.strip().splitlines()[-1] == "interrupted: no result written"


def test_the_benchmark_does_not_turn_the_hub_off(monkeypatch, tmp_path):
    """A config naming a hub model or data set fetches it under `hpsearch search`; bench.run set HF_HUB_OFFLINE=1
    for itself and refused it ("OfflineModeIsEnabled") where the other command would download it."""
    import os

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert bench.main([*SMALL, "--arms", "Z", "--out", str(tmp_path / "r.json")]) == 2
    assert "HF_HUB_OFFLINE" not in os.environ


@pytest.mark.parametrize(
    "model, name", [("/models/my bert", "demo-models-my-bert.json"), ("org/name", "demo-org-name.json")]
)
def test_a_model_path_names_one_result_file_not_folders(model, name):
    """`--model /models/bert` wrote bench/results/demo-/models/bert.json, folders and all."""
    args = bench.parse_args(["--config", str(ROOT / "studies" / "demo.yaml"), "--model", model])
    assert bench.default_out(args) == bench.RESULTS / name


@pytest.mark.parametrize("ratio, steps", [(0.0, 0), (0.1, 10), (1.0, 100)])
def test_arm_d_warms_up_over_the_same_share_of_steps(tmp_path, ratio, steps):
    """The Trainer reads warmup_steps under 1 as a share and from 1 on as a count: a ratio of 1 was one step."""
    from hpsearch.config import load_config

    cfg = load_config(ROOT / "studies" / "demo.yaml")
    hp = {"learning_rate": 1e-3, "batch_size": 8, "weight_decay": 0.0, "warmup_ratio": ratio}
    hp.update(lr_scheduler="linear", max_grad_norm=1.0, seed=0)
    args = bench.hf_training_args(cfg, hp, tmp_path, epochs=1)
    assert args.get_warmup_steps(100) == steps


def test_throughput_is_measured_at_a_batch_size_the_space_holds():
    from hpsearch.space import parse_space

    assert bench._batch_sizes(parse_space({"batch_size": {"type": "int", "low": 64, "high": 256}})) == [64]
    assert bench._batch_sizes(parse_space({"batch_size": {"type": "int", "low": 4, "high": 16}})) == [16]
    choices = {"batch_size": {"type": "categorical", "choices": [8, 16]}}
    assert bench._batch_sizes(parse_space(choices)) == [8, 16]
    assert bench._batch_sizes(parse_space({"batch_size": 12})) == [12]


def test_calls_of_several_workers_replay_into_one_record_in_the_order_they_happened():
    """Arm P: worker 1 continues the trial worker 0 paused; replayed, the configuration's record holds both
    parts in order, as one process recording both would have."""
    hp = {"learning_rate": 1e-3, "batch_size": 8}
    direct = bench.Recorder(n_train=100)
    w0, w1 = bench.CallLog(100), bench.CallLog(100)
    script = [
        (w0, "epoch", (0, hp, 0.49, 1.0, 0.69, 2.0, 100, 900, 1000, 1.5, False)),
        (w1, "epoch", (1, hp, 0.45, 1.0, 0.66, 2.0, 100, 900, 1000, 1.5, False)),
        (w0, "finished", (0, "PRUNED", 2.5, 1, None, 8)),  # paused at the rung
        (w1, "continued", (2, 0)),  # trial 2 continues trial 0, on the other worker
        (w0, "stopped", (3, hp, "loss became NaN")),
        (w1, "epoch", (2, hp, 0.40, 1.0, 0.55, 2.0, 100, 900, 1000, 1.5, False)),
        (w1, "finished", (2, "COMPLETE", 2.4, 1, None, 8)),
    ]
    for log, name, args in script:
        getattr(log, name)(*args)
        getattr(direct, name)(*args)
    replayed = bench.replay(w1.calls + w0.calls, bench.Recorder(n_train=100))
    assert replayed.trials == direct.trials
    assert replayed.trials[0]["val_errors"] == [0.49, 0.40] and replayed.trials[0]["state"] == "COMPLETE"
    assert replayed.trials[0]["wall_seconds"] == pytest.approx(4.9) and 2 not in replayed.trials
    drop_t = [{k: v for k, v in e.items() if k != "t"} for e in replayed.events]
    assert drop_t == [{k: v for k, v in e.items() if k != "t"} for e in direct.events]  # in time order
    assert [e["t"] for e in replayed.events] == sorted(
        e["t"] for e in replayed.events
    ) and replayed.at is None
    with pytest.raises(AttributeError):
        w0.trial  # noqa: B018 (only the recording calls are logged; a read would see nothing)


@pytest.mark.slow
def test_arm_p_runs_the_default_with_workers_sharing_one_study(tmp_path):
    """Two worker processes on one study: every trial of the study is recorded once, by whichever worker ran
    it, the study's budget holds across both, and the log has each worker's lines."""
    out = tmp_path / "p.json"
    argv = [
        "--config", str(ROOT / "studies" / "demo.yaml"), "--arms", "P", "--seeds", "0", "--n-trials", "5",
        "--n-epochs", "3", "--throughput-repeats", "0", "--retrain-seeds", "1", "--jobs", "1",
        "--workers", "2", "--set", "data.demo_size=300", "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    r = json.loads(out.read_text())
    p = r["per_seed"]["0"]["P"]
    log = out.with_suffix(".progress.txt").read_text()
    assert "[worker 0] study 'bench-P-seed0'" in log and "[worker 1] study 'bench-P-seed0'" in log
    worker_of = {}
    for line in log.splitlines():
        if line.startswith("[worker ") and " trial " in line and " epoch 1/" in line:
            worker_of[int(line.split(" trial ")[1].split()[0])] = line[8]
    assert set(worker_of.values()) == {"0", "1"}  # both workers trained trials
    assert p["n_trials"] == 5 and sorted(t["number"] for t in p["trials"]) == sorted(worker_of)
    assert sum(p["trial_states"].values()) == 5 and p["trial_states"].get("COMPLETE", 0) >= 1
    assert p["total_epochs"] == pytest.approx(sum(t["epochs"] for t in p["trials"]))
    assert all(
        t["epochs"] == pytest.approx(len(t["val_errors"])) for t in p["trials"] if not t["stopped_diverging"]
    )
    assert p["retrained_best"]["trial"] in worker_of and p["wall_seconds"] > 0


def test_arm_p_workers_must_be_at_least_one(tmp_path, capsys):
    out = tmp_path / "never.json"
    assert bench.main(["--arms", "P", "--workers", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: --workers: must be >= 1, got 0"
    assert not out.exists()
