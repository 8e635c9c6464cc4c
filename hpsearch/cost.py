"""What a study cost: device-hours, epochs trained against a search without pruning, time to the best trial.

Every trial records ``train_seconds`` (training plus validation, summed over its epochs) and ``device`` as
user attributes. A retried trial inherits its predecessor's attributes and adds to them, as the continuation
of a paused trial does, so the trial it replaces is left out of the sums: counting both would count the same
epochs twice.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.pruners import replaced
from hpsearch.study import CONFIG_ATTR, OVER_BUDGET_ATTR, PARTIAL_EPOCH_ATTR, best_trial


@dataclass(frozen=True)
class Cost:
    device_hours: float  # training + validation time of every trial, in hours of one device
    device_hours_by_device: dict[str, float] = field(default_factory=dict)
    n_finished: int = 0  # complete + pruned trials
    n_started: int = 0  # those and the running, queued or failed ones that trained something
    n_epochs: int | None = None  # maximum epochs per trial (train.n_epochs)
    epochs_trained: int = 0  # epochs trained to their end, all trials (failed ones included)
    # what the same trials cost unpruned: n_epochs for each finished trial, and what the unfinished ones
    # (running, queued, failed) trained so far, which are neither saved nor spent in vain yet
    epochs_without_pruning: float | None = None
    epochs_unfinished: float = 0.0  # the epochs of the running, queued or failed trials
    best_trial: int | None = None
    time_to_best_s: float | None = None  # study start -> completion of the best trial, wall time
    wall_s: float | None = None  # study start -> last trial finished (or now, while trials run)
    epoch_budget: float | None = None  # study.epoch_budget, when the study has one
    epochs_spent: float = 0.0  # what the epoch budget counts: epochs_trained plus cut-short epochs

    @property
    def epochs_saved(self) -> float | None:
        """Share of the no-pruning epochs that pruning (and early divergence stops) did not train; the epochs
        cut short (divergence stops, trials pruned at the early evaluation) count for the part they trained."""
        if not self.epochs_without_pruning:
            return None
        return 1 - self.epochs_spent / self.epochs_without_pruning

    @property
    def epochs_trained_text(self) -> str:
        """The epochs trained, with the parts of epochs cut short, as the summaries show them: ``13.5``, ``7``."""
        return _epochs_text(self.epochs_spent)

    @property
    def baseline_text(self) -> str:
        """``24 without pruning (8 trials x 3; 21% saved)``, as every summary gives the baseline."""
        parts = f"{self.n_finished} trials x {self.n_epochs}"
        if self.epochs_unfinished:
            parts += f" + {_epochs_text(self.epochs_unfinished)} epochs of unfinished trials"
        return (
            f"{_epochs_text(self.epochs_without_pruning or 0.0)} without pruning ({parts};"
            f" {self.epochs_saved:.0%} saved)"
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["epochs_saved"] = None if self.epochs_saved is None else round(self.epochs_saved, 4)
        return out

    def summary(self) -> str:
        """One line for `hpsearch show` and the study note."""
        devices = ", ".join(f"{d} {h:.3g}" for d, h in sorted(self.device_hours_by_device.items()))
        parts = [f"{self.device_hours:.3g} device-hours" + (f" ({devices})" if devices else "")]
        trained = self.epochs_trained_text
        if self.epochs_without_pruning:
            parts.append(f"{trained} epochs trained of {self.baseline_text}")
        else:
            parts.append(f"{trained} epochs trained")
        if self.epoch_budget is not None:
            parts.append(f"epoch budget {self.epochs_spent:.1f} of {self.epoch_budget:g} spent")
        if self.time_to_best_s is not None:
            parts.append(
                f"best trial {self.best_trial} after {format_seconds(self.time_to_best_s)}"
                f" of {format_seconds(self.wall_s or 0.0)} wall time"
            )
        return "; ".join(parts)


def format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _trials(study: optuna.Study) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
    """The study's trials without over-budget asks, and of those the ones whose cost counts: a retry carries
    its predecessor's epochs and seconds, as the continuation of a paused trial does, so the trial it replaced
    is left out."""
    trials = [t for t in study.get_trials(deepcopy=False) if OVER_BUDGET_ATTR not in t.user_attrs]
    gone = replaced(trials)
    return trials, [t for t in trials if t.number not in gone]


def epochs_spent(study: optuna.Study) -> float:
    """Epochs the study's trials have trained, all workers together, running trials included: each trial's
    finished epochs plus the part of an epoch a divergence stop cut short. What ``study.epoch_budget`` counts."""
    return _spent(_trials(study)[1])


def trial_epochs(t: FrozenTrial) -> float:
    """The epochs one trial trained: its finished epochs plus the part of one a divergence stop or the early
    evaluation cut short."""
    return int(t.user_attrs.get("epochs_run") or 0) + float(t.user_attrs.get(PARTIAL_EPOCH_ATTR) or 0.0)


def _epochs_text(epochs: float) -> str:
    return f"{epochs:.1f}".removesuffix(".0")


def _spent(counted: list[FrozenTrial]) -> float:
    return sum(trial_epochs(t) for t in counted)


def compute_cost(study: optuna.Study) -> Cost:
    from datetime import datetime

    trials, counted = _trials(study)
    by_device: dict[str, float] = defaultdict(float)
    for t in counted:
        seconds = float(t.user_attrs.get("train_seconds") or 0.0)
        if seconds:
            by_device[str(t.user_attrs.get("device", "unknown"))] += seconds / 3600
    n_finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in counted)
    # a running, re-queued or failed trial's epochs count as trained, and in the unpruned baseline as they are:
    # it has saved nothing yet (counted at n_epochs, a trial stopped half-way read as half saved)
    unfinished = [t for t in counted if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)]
    n_started = n_finished + sum(trial_epochs(t) > 0 for t in unfinished)
    epochs_unfinished = round(_spent(unfinished), 4)
    stored = study.user_attrs.get(CONFIG_ATTR, {})
    n_epochs = stored.get("train", {}).get("n_epochs")
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    start = min(starts) if starts else None
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    running = any(t.state == TrialState.RUNNING for t in trials)
    end = datetime.now() if running else max(ends) if ends else None
    best = best_trial(study)
    to_best = None
    if best is not None and start is not None and best.datetime_complete is not None:
        to_best = (best.datetime_complete - start).total_seconds()
    return Cost(
        device_hours=round(sum(by_device.values()), 6),
        device_hours_by_device={d: round(h, 6) for d, h in by_device.items()},
        n_finished=n_finished,
        n_started=n_started,
        n_epochs=n_epochs,
        epochs_trained=sum(int(t.user_attrs.get("epochs_run") or 0) for t in counted),
        epochs_without_pruning=n_finished * n_epochs + epochs_unfinished if n_epochs else None,
        epochs_unfinished=epochs_unfinished,
        best_trial=best.number if best else None,
        time_to_best_s=None if to_best is None else round(to_best, 1),
        wall_s=None if start is None or end is None else round((end - start).total_seconds(), 1),
        epoch_budget=stored.get("study", {}).get("epoch_budget"),
        epochs_spent=round(_spent(counted), 4),
    )
