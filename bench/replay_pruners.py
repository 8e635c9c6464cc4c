"""Replay full learning curves through Optuna's pruners, to compare them without training anything.

Input: progress logs of studies run without pruning (``bench.run --arms A``, whose trials all run every epoch).
Each log's trials are replayed in their own order and in ``--orders`` random orders: every epoch's validation
error is reported to a fresh in-memory study with the pruner under test, and ``should_prune`` is asked after every
epoch but the last, as hpsearch's objective does. Per pruner: the share of the epochs it trains, and the share of
the no-pruning epochs it needs until its best-so-far is within 0.5 points of the log's best (median over orders),
and in how many orders it never got there (it pruned the trial that held the best).

How the default pruner was chosen (BENCHMARKS.md, "What changed since the first run"):
    python -m bench.run --arms A --seeds 0 --n-epochs 9 --n-trials 20 --throughput-repeats 0 --out /tmp/a0.json
    python -m bench.run --arms A --seeds 1 --n-epochs 9 --n-trials 20 --throughput-repeats 0 --out /tmp/a1.json
    python -m bench.replay_pruners bench/results/curves-9epochs-seed0.progress.txt \\
        bench/results/curves-9epochs-seed1.progress.txt
"""

from __future__ import annotations

import argparse
import math
import random
import re
import statistics
import sys
from pathlib import Path

import optuna

EPOCH_LINE = re.compile(r"trial (\d+) epoch (\d+)/(\d+)\s.*\bval_error (\S+)")
TARGET_MARGIN = 0.005


def read_curves(path: Path) -> tuple[list[list[float]], int]:
    """The validation error per epoch of every trial that ran all its epochs, in trial order."""
    curves: dict[int, list[float]] = {}
    n_epochs = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        m = EPOCH_LINE.search(line)
        if m:
            curves.setdefault(int(m[1]), []).append(float(m[4]))
            n_epochs = int(m[3])
    return [c for _, c in sorted(curves.items()) if len(c) == n_epochs], n_epochs


def replay(curves: list[list[float]], pruner: optuna.pruners.BasePruner) -> list[tuple[int, float]]:
    """(epochs trained so far, best error so far) after every epoch trained, with ``pruner`` deciding."""
    # a fixed name: hyperband assigns trials to brackets by a hash of the study name and trial number
    study = optuna.create_study(study_name="replay", pruner=pruner, sampler=optuna.samplers.RandomSampler(0))
    timeline, used, best = [], 0, math.inf
    for curve in curves:
        trial = study.ask()
        for epoch, error in enumerate(curve, start=1):
            used, best = used + 1, min(best, error)
            timeline.append((used, best))
            trial.report(error, epoch)
            if epoch < len(curve) and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, min(curve))
    return timeline


def epochs_to(timeline: list[tuple[int, float]], target: float) -> int | None:
    return next((used for used, best in timeline if best <= target + 1e-12), None)


def pruners(n_epochs: int) -> dict[str, optuna.pruners.BasePruner]:
    return {
        "none": optuna.pruners.NopPruner(),
        "successive-halving (r=3)": optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=3
        ),
        "successive-halving (r=2)": optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=2
        ),
        "successive-halving (r=4)": optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=4
        ),
        "hyperband (r=3)": optuna.pruners.HyperbandPruner(1, n_epochs, reduction_factor=3),
        "median (5 startup)": optuna.pruners.MedianPruner(n_startup_trials=5),
        "percentile 25 (5 startup)": optuna.pruners.PercentilePruner(25.0, n_startup_trials=5),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replay_pruners", description=__doc__.split("\n\n")[0])
    p.add_argument("logs", nargs="+", type=Path, help="progress logs of studies run without pruning")
    p.add_argument("--orders", type=int, default=40, help="random trial orders besides the logged one")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for path in args.logs:
        curves, n_epochs = read_curves(path)
        if not curves:
            print(
                f"error: {path}: no trial ran all its epochs; give logs of runs without pruning",
                file=sys.stderr,
            )
            return 2
        target = min(min(c) for c in curves) + TARGET_MARGIN
        rng = random.Random(0)
        orders = [curves] + [rng.sample(curves, len(curves)) for _ in range(args.orders)]
        print(f"\n{path.name}: {len(curves)} trials x {n_epochs} epochs, best {target - TARGET_MARGIN:.4f}")
        print("| pruner | share of epochs trained | share of epochs to target | orders that missed it |")
        print("| --- | ---: | ---: | ---: |")
        for name in pruners(n_epochs):
            shares, to_target, missed = [], [], 0
            for order in orders:
                full = replay(order, optuna.pruners.NopPruner())
                run = replay(order, pruners(n_epochs)[name])
                shares.append(run[-1][0] / full[-1][0])
                reached = epochs_to(run, target)
                if reached is None:
                    missed += 1
                else:
                    to_target.append(reached / epochs_to(full, target))
            median = f"{statistics.median(to_target):.2f}" if to_target else "-"
            print(f"| {name} | {statistics.median(shares):.2f} | {median} | {missed}/{len(orders)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
