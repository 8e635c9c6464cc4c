"""Replay full learning curves through pruners, to compare them without training anything.

Input: progress logs of studies run without pruning (``bench.run --arms A`` or ``B``, whose trials all run every
epoch); a log holding several studies (``bench/results/sst2.progress.txt``) is split at each ``study '...'`` line,
and only studies whose trials all ran every epoch are replayed. Each study's trials are replayed in their own
order and in ``--orders`` random orders: every epoch's validation error (and, for hpsearch's pruner, the epoch's
training loss) is reported to a fresh in-memory study with the pruner under test, and ``should_prune`` is asked
after every epoch but the last, as hpsearch's objective does. Per pruner: the share of the epochs it trains, and
the share of the no-pruning epochs it needs until its best-so-far is within 0.5 points of the study's best
(median over orders), and in how many orders it never got there (it pruned the trial that held the best).
Per study it also prints how well each epoch-1 figure ranks the trials by their final best error (Spearman).

How the default pruner was chosen (BENCHMARKS.md, "What changed since the first run" and "Pruning ties"):
    python -m bench.run --arms A --seeds 0 --n-epochs 9 --n-trials 20 --throughput-repeats 0 --out /tmp/a0.json
    python -m bench.run --arms A --seeds 1 --n-epochs 9 --n-trials 20 --throughput-repeats 0 --out /tmp/a1.json
    python -m bench.replay_pruners bench/results/curves-9epochs-seed0.progress.txt \\
        bench/results/curves-9epochs-seed1.progress.txt bench/results/sst2.progress.txt
"""

from __future__ import annotations

import argparse
import math
import random
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna

from bench.run import settled_error
from hpsearch.pruners import TRAIN_LOSS_ATTR, SuccessiveHalvingPruner

EPOCH_LINE = re.compile(r"trial (\d+) epoch (\d+)/(\d+)\s+loss (\S+)\s.*\bval_error (\S+)")
STUDY_LINE = re.compile(
    r"^study '([^']+)'(?:.*?/ (\d+) validation examples.*majority-class val_error (\S+))?"
)
PRUNED_LINE = re.compile(r"^trial \d+ pruned:")
TARGET_MARGIN = 0.005

Curve = list[tuple[float, float]]  # (validation error, mean training loss) per epoch
# after each epoch trained: (epochs so far, best error so far, settled error of the trial handed over so far)
Timeline = list[tuple[int, float, float | None]]


@dataclass(frozen=True)
class Study:
    name: str
    curves: list[Curve]
    n_epochs: int
    n_validation: int | None = None  # from the log's study line, when it has one
    majority_error: float | None = None


def read_studies(path: Path) -> list[Study]:
    """Every study in the log that pruned nothing, its trials in order.

    A curve is kept only when its trial ran every epoch (one cut short by an interrupted run is left out).
    """
    studies: list[dict] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := STUDY_LINE.match(line):
            studies.append(
                {
                    "name": m[1],
                    "curves": {},
                    "n_epochs": 0,
                    "pruned": False,
                    "n_validation": int(m[2]) if m[2] else None,
                    "majority_error": float(m[3]) if m[3] else None,
                }
            )
            continue
        if not studies:  # a log of one study, without its study line
            studies.append({"name": path.stem, "curves": {}, "n_epochs": 0, "pruned": False})
        study = studies[-1]
        if PRUNED_LINE.match(line):
            study["pruned"] = True
        elif m := EPOCH_LINE.search(line):
            study["curves"].setdefault(int(m[1]), []).append((float(m[5]), float(m[4])))
            study["n_epochs"] = int(m[3])
    out = []
    for study in studies:
        full = [c for _, c in sorted(study["curves"].items()) if len(c) == study["n_epochs"]]
        if full and not study["pruned"]:
            out.append(
                Study(
                    study["name"],
                    full,
                    study["n_epochs"],
                    study.get("n_validation"),
                    study.get("majority_error"),
                )
            )
    return out


def settled(curve: Curve) -> float:
    """A trial's error once training has settled: the mean of its last third of epochs (at least one). Less
    noisy than its best epoch, which is the luckiest of several measurements, and close to what retraining
    its configuration for every epoch gives (``train-best``'s default)."""
    return settled_error([error for error, _ in curve])


class _Handed:
    """The trial a search hands its user so far: the complete one with the lowest error at any epoch."""

    def __init__(self):
        self.best: Curve | None = None

    def complete(self, curve: Curve) -> None:
        if self.best is None or min(e for e, _ in curve) < min(e for e, _ in self.best):
            self.best = curve

    @property
    def settled(self) -> float | None:
        return None if self.best is None else settled(self.best)


def replay(curves: list[Curve], pruner: optuna.pruners.BasePruner, budget: int | None = None) -> Timeline:
    """(epochs trained so far, best error so far, the settled error of the trial handed over so far) after every
    epoch trained, with ``pruner`` deciding; it stops when ``budget`` epochs are spent, if given."""
    # a fixed name: hyperband assigns trials to brackets by a hash of the study name and trial number
    study = optuna.create_study(study_name="replay", pruner=pruner, sampler=optuna.samplers.RandomSampler(0))
    timeline, used, best, handed = [], 0, math.inf, _Handed()
    for curve in curves:
        trial = study.ask()
        for epoch, (error, train_loss) in enumerate(curve, start=1):
            used, best = used + 1, min(best, error)
            if epoch == len(curve):
                handed.complete(curve)
            timeline.append((used, best, handed.settled))
            if used == budget:
                return timeline
            trial.report(error, epoch)
            trial.set_user_attr(TRAIN_LOSS_ATTR, train_loss)  # as hpsearch's objective records it
            if epoch < len(curve) and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, min(error for error, _ in curve))
    return timeline


def replay_pausing(
    curves: list[Curve], pruner: SuccessiveHalvingPruner, budget: int | None = None
) -> Timeline:
    """As :func:`replay`, for a pausing pruner (``study.pause_at_rungs``), with hpsearch's own promotion code:
    before each new trial, every paused trial now among the best at its rung is continued (the search loop's
    order), and when no new trial is left the best of a rung too small to rank goes on."""
    from hpsearch.pruners import PAUSED_ATTR
    from hpsearch.search import continue_paused

    study = optuna.create_study(study_name="replay", pruner=pruner, sampler=optuna.samplers.RandomSampler(0))
    timeline, used, best, todo, handed = [], 0, math.inf, list(curves), _Handed()
    curve_of: dict[int, Curve] = {}  # trial number -> its curve, continuations included
    while True:
        trials = study.get_trials(deepcopy=False)
        promoted = pruner.promotions(trials) or (pruner.promotions(trials, last=True) if not todo else [])
        if promoted:
            paused = promoted[0]
            number = continue_paused(study, paused)
            curve_of[number] = curve_of[paused.number]
        elif todo:
            number = len(trials)
            curve_of[number] = todo.pop(0)
        else:
            return timeline
        trial = study.ask()
        assert trial.number == number
        curve = curve_of[number]
        start = max(trial.study.get_trials(deepcopy=False)[number].intermediate_values, default=0)
        for epoch, (error, train_loss) in enumerate(curve[start:], start=start + 1):
            used, best = used + 1, min(best, error)
            if epoch == len(curve):
                handed.complete(curve)
            timeline.append((used, best, handed.settled))
            if used == budget:
                return timeline
            trial.report(error, epoch)
            trial.set_user_attr(TRAIN_LOSS_ATTR, train_loss)
            if epoch < len(curve) and trial.should_prune():
                trial.set_user_attr(PAUSED_ATTR, epoch)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, min(error for error, _ in curve))


def run(curves: list[Curve], pruner: optuna.pruners.BasePruner, budget: int | None = None):
    """:func:`replay_pausing` for a pausing pruner, :func:`replay` for any other."""
    if getattr(pruner, "pauses", False):
        return replay_pausing(curves, pruner, budget)
    return replay(curves, pruner, budget)


def rank_correlation(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation, ties given their mean rank (nan when either side is constant)."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else math.nan


def epochs_to(timeline: Timeline, target: float) -> int | None:
    return next((used for used, best, _ in timeline if best <= target + 1e-12), None)


def regrets_at_budgets(
    study: Study, pruner: str, budgets: list[int], n_draws: int
) -> tuple[dict[int, list[float]], dict[int, list[float | None]]]:
    """Same compute for every pruner: trials drawn at random, with replacement, from the study's curves (a
    random search of the study's space, as arm A ran it), trained under ``pruner`` until each budget (in
    epochs) is spent. Per budget and draw, in points: the best error found minus the study's best, and the
    settled error of the trial handed over minus the study's best settled error (None: no trial completed)."""
    curves = study.curves
    best = min(error for c in curves for error, _ in c)
    best_settled = min(settled(c) for c in curves)
    regrets: dict[int, list[float]] = {b: [] for b in budgets}
    handed: dict[int, list[float | None]] = {b: [] for b in budgets}
    for draw in range(n_draws):
        rng = random.Random(draw)
        stream = [
            rng.choice(curves) for _ in range(max(budgets))
        ]  # enough if every trial stops after epoch 1
        timeline = run(stream, pruners(study)[pruner], budget=max(budgets))
        for b in budgets:
            _, found, kept = timeline[b - 1]
            regrets[b].append(100 * (found - best))
            handed[b].append(None if kept is None else 100 * (kept - best_settled))
    return regrets, handed


class NoiseAwareHalving(SuccessiveHalvingPruner):
    """hpsearch's pruner, but a trial within ``z`` binomial standard errors (sqrt(e(1-e)/n) on the ``n``
    validation examples) of a rung's cut-off goes on too, when its error is that far below the majority-class
    error; on the majority plateau the training-loss tie break decides alone, as in the default. Replayed
    here to decide whether it should become hpsearch's rule (BENCHMARKS.md, "A noise-aware promotion rule")."""

    def __init__(self, n_validation: int, majority_error: float, z: float = 1.0, reduction_factor: int = 3):
        super().__init__(reduction_factor)
        self.n_validation, self.majority_error, self.z = n_validation, majority_error, z

    def _in_best(self, mine: tuple[float, float], records: list[tuple[float, float]], pausing: bool) -> bool:
        cut = self._cut_off(records, pausing)
        if cut is None or mine <= cut:
            return cut is not None
        error = cut[0]
        margin = self.z * math.sqrt(max(error * (1 - error), 0.0) / self.n_validation)
        return mine[0] <= error + margin and mine[0] < self.majority_error - margin


class FirstRungByLoss(SuccessiveHalvingPruner):
    """hpsearch's pruner, but its first rung (epoch 1) ranks trials by the epoch's mean training loss, the
    validation error breaking ties (``blend``: by the sum of the two ranks). In epoch 1 every training example
    is scored before the model has trained on it, so that mean is a held-out estimate over the whole epoch's
    rows; from epoch 2 on it is not, and later rungs keep the validation error. Replayed here to decide whether
    it should become hpsearch's rule (BENCHMARKS.md, "The first rung by training loss")."""

    def __init__(self, blend: bool = False, reduction_factor: int = 3):
        super().__init__(reduction_factor)
        self.blend, self._first = blend, False

    def _promotable(self, study, trial, key, mine, trials=None, pausing=False):
        self._first = key == "completed_rung_0"
        try:
            return super()._promotable(study, trial, key, mine, trials, pausing)
        finally:
            self._first = False

    def _in_best(self, mine: tuple[float, float], records: list[tuple[float, float]], pausing: bool) -> bool:
        if not self._first:
            return super()._in_best(mine, records, pausing)
        if not self.blend:
            return super()._in_best((mine[1], mine[0]), [(r[1], r[0]) for r in records], pausing)
        errors, losses = sorted(r[0] for r in records), sorted(r[1] for r in records)

        def score(r):  # the sum of the two ranks (ties share the lowest), then the error, then the loss
            return (errors.index(r[0]) + losses.index(r[1]), *r)

        return super()._in_best(score(mine), [score(r) for r in records], pausing)


def pruners(study: Study) -> dict[str, optuna.pruners.BasePruner]:
    n_epochs = study.n_epochs
    out: dict[str, optuna.pruners.BasePruner] = {
        "none": optuna.pruners.NopPruner(),
        "hpsearch successive-halving (r=3, ties by training loss, pausing at rungs: study.pause_at_rungs)": (
            SuccessiveHalvingPruner(3, pause=True)
        ),
        "hpsearch successive-halving (r=3, ties by training loss; the default)": (SuccessiveHalvingPruner(3)),
    }
    if study.n_validation and study.majority_error is not None:
        for z in (1.0, 2.0):
            out[f"hpsearch successive-halving, noise-aware (r=3, within {z:g} SE of the cut-off goes on)"] = (
                NoiseAwareHalving(study.n_validation, study.majority_error, z)
            )
    out.update(
        {
            "hpsearch successive-halving, first rung by training loss (r=3)": FirstRungByLoss(),
            "hpsearch successive-halving, first rung by the sum of error and loss ranks (r=3)": FirstRungByLoss(
                blend=True
            ),
            "optuna successive-halving (r=3)": optuna.pruners.SuccessiveHalvingPruner(
                min_resource=1, reduction_factor=3
            ),
            "optuna successive-halving (r=2)": optuna.pruners.SuccessiveHalvingPruner(
                min_resource=1, reduction_factor=2
            ),
            "optuna successive-halving (r=4)": optuna.pruners.SuccessiveHalvingPruner(
                min_resource=1, reduction_factor=4
            ),
            "hyperband (r=3)": optuna.pruners.HyperbandPruner(1, n_epochs, reduction_factor=3),
            "median (5 startup)": optuna.pruners.MedianPruner(n_startup_trials=5),
            "percentile 25 (5 startup)": optuna.pruners.PercentilePruner(25.0, n_startup_trials=5),
        }
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replay_pruners", description=__doc__.split("\n\n")[0])
    p.add_argument("logs", nargs="+", type=Path, help="progress logs of studies run without pruning")
    p.add_argument("--orders", type=int, default=40, help="random trial orders besides the logged one")
    p.add_argument(
        "--draws", type=int, default=30, help="random searches per study for the same-budget table (0: none)"
    )
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    studies = [(path, study) for path in args.logs for study in read_studies(path)]
    if not studies:
        print(
            f"error: {', '.join(map(str, args.logs))}: no study ran without pruning; give logs of runs"
            " without pruning (bench.run --arms A or B)",
            file=sys.stderr,
        )
        return 2
    summary: dict[str, list[tuple[float, float | None, int, int]]] = {}
    for path, study in studies:
        curves = study.curves
        target = min(error for c in curves for error, _ in c) + TARGET_MARGIN
        rng = random.Random(0)
        orders = [curves] + [rng.sample(curves, len(curves)) for _ in range(args.orders)]
        final = [min(error for error, _ in c) for c in curves]
        spearman = {
            what: rank_correlation([c[0][i] for c in curves], final)
            for i, what in ((0, "validation error"), (1, "training loss"))
        }
        print(
            f"\n{path.name}, {study.name}: {len(curves)} trials x {study.n_epochs} epochs,"
            f" best {target - TARGET_MARGIN:.4f}"
        )
        print(
            "epoch 1 against the final best error, rank correlation:"
            + ",".join(f" {what} {rho:.2f}" for what, rho in spearman.items())
        )
        print("| pruner | share of epochs trained | share of epochs to target | orders that missed it |")
        print("| --- | ---: | ---: | ---: |")
        fulls = [replay(order, optuna.pruners.NopPruner()) for order in orders]
        for name, pruner in pruners(study).items():
            shares, to_target, missed = [], [], 0
            for order, full in zip(orders, fulls, strict=True):
                timeline = run(order, pruner)
                shares.append(timeline[-1][0] / full[-1][0])
                reached = epochs_to(timeline, target)
                if reached is None:
                    missed += 1
                else:
                    to_target.append(reached / epochs_to(full, target))
            median = statistics.median(to_target) if to_target else None
            summary.setdefault(name, []).append((statistics.median(shares), median, missed, len(orders)))
            print(
                f"| {name} | {statistics.median(shares):.2f} | {'-' if median is None else f'{median:.2f}'}"
                f" | {missed}/{len(orders)} |"
            )
    if len(studies) > 1:
        print(f"\nall {len(studies)} studies: medians over studies, orders that missed summed")
        print("| pruner | share of epochs trained | share of epochs to target | orders that missed it |")
        print("| --- | ---: | ---: | ---: |")
        for name, rows in summary.items():
            reached = [r[1] for r in rows if r[1] is not None]
            median = f"{statistics.median(reached):.2f}" if reached else "-"
            print(
                f"| {name} | {statistics.median(r[0] for r in rows):.2f} | {median}"
                f" | {sum(r[2] for r in rows)}/{sum(r[3] for r in rows)} |"
            )
    if args.draws:
        print_same_budget([study for _, study in studies], args.draws)
    return 0


def print_same_budget(studies: list[Study], n_draws: int) -> None:
    """The question a user pays for: with the same epochs, which pruner finds the better configuration?"""
    sizes = (3, 6, 9)  # budgets, in full trials' worth of epochs
    regrets: dict[str, dict[int, list[float]]] = {}
    handed: dict[str, dict[int, list[float | None]]] = {}
    for study in studies:
        for name in pruners(study):
            found, kept = regrets_at_budgets(study, name, [k * study.n_epochs for k in sizes], n_draws)
            for k in sizes:
                regrets.setdefault(name, {}).setdefault(k, []).extend(found[k * study.n_epochs])
                handed.setdefault(name, {}).setdefault(k, []).extend(kept[k * study.n_epochs])
    _print_budget_table(
        f"\nsame budget: {n_draws} random searches per study ({len(studies)} studies), trials drawn with"
        " replacement from the study's curves, each pruner training until the budget is spent;"
        " regret = best error found - the study's best, in points (mean; in brackets the share of searches"
        " within 0.5 points)",
        regrets,
        sizes,
        lambda r: (
            f"{statistics.fmean(r):.2f} ({sum(x <= 100 * TARGET_MARGIN + 1e-9 for x in r) / len(r):.2f})"
        ),
    )

    def handed_cell(r: list[float | None]) -> str:
        done = [x for x in r if x is not None]
        mean = f"{statistics.fmean(done):.2f}" if done else "-"
        return f"{mean} ({1 - len(done) / len(r):.2f})"

    _print_budget_table(
        "\nthe same searches, scored by the trial each hands over (the complete trial with the lowest error at"
        " any epoch): its settled error (mean of its last third of epochs) - the study's best settled error, in"
        " points (mean over the searches that completed a trial; in brackets the share that completed none)",
        handed,
        sizes,
        handed_cell,
    )


def _print_budget_table(
    title: str, by_pruner: dict[str, dict[int, list]], sizes: tuple[int, ...], cell
) -> None:
    """One markdown table: a row per pruner, a column per budget, ``cell`` of that budget's draws."""
    print(title)
    print("| pruner | " + " | ".join(f"{k} trials' epochs" for k in sizes) + " |")
    print("| --- |" + " ---: |" * len(sizes))
    for name, by_size in by_pruner.items():
        print(f"| {name} | " + " | ".join(cell(by_size[k]) for k in sizes) + " |")


if __name__ == "__main__":
    sys.exit(main())
