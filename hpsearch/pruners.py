"""hpsearch's default pruner: asynchronous successive halving whose ties are broken by the training loss.

Kept apart from ``study.py`` because the objective and the benchmark's replay feed it too: the objective sets
the user attribute ``train_loss`` (the epoch's mean training loss) before it asks ``should_prune``.
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial, TrialState

TRAIN_LOSS_ATTR = "train_loss"  # user attribute: the mean training loss of the trial's last epoch
EARLY_STEP = 0  # train.early_eval reports the validation error part-way through epoch 1 at this step
EARLY_RUNG_KEY = "completed_rung_early"  # its rung record, apart from Optuna's completed_rung_<k>
EARLY_EVAL_ATTR = "early_eval_epochs"  # user attribute: the share of epoch 1 trained at that evaluation
PAUSED_ATTR = "paused_at_epoch"  # user attribute of a trial paused at a rung (study.pause_at_rungs)
CONTINUES_ATTR = "continues_trial"  # system attribute of the trial that continues a paused one: its number
OVER_BUDGET_ATTR = "hpsearch_over_budget"  # user attribute of a trial asked past the budget and given back
# study user attribute: the sizes of the data every val_error was measured on, so a reader can tell a real
# difference between two trials from the noise of a few hundred validation examples (and a pausing pruner a
# model that learned from one that answers one class whatever it reads)
DATA_ATTR = "hpsearch_data"


def continued(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of paused trials that a later trial continues (with their learning curve, epochs and seconds)."""
    return {t.system_attrs[CONTINUES_ATTR] for t in trials if CONTINUES_ATTR in t.system_attrs}


def resumed_trial(trial: FrozenTrial) -> int | None:
    """The failed trial that ``trial``, a retry, takes over: the last one of its retry history. Optuna's
    ``failed_trial`` names the first one, which a retry of a retry does not resume: trial 9, retrying trial 5
    that retried trial 0, resumes trial 5's checkpoint, epochs trial 0 never reached."""
    history = trial.system_attrs.get("retry_history")
    return history[-1] if history else trial.system_attrs.get("failed_trial")


def replaced(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of trials whose work a later trial carries on, with their learning curve, epochs and seconds:
    every failed trial in a retry's history, and every paused trial that was continued. Counting both a
    trial and its successor would count the same configuration and epochs twice."""
    out = continued(trials)
    for t in trials:
        out.update(t.system_attrs.get("retry_history") or ())
        if "failed_trial" in t.system_attrs:
            out.add(t.system_attrs["failed_trial"])
    return out


class SuccessiveHalvingPruner(optuna.pruners.BasePruner):
    """Asynchronous successive halving (ASHA) over epochs, ties in validation error broken by training loss.

    Rungs are at epochs ``min_resource * reduction_factor**k``. A trial goes past a rung when its validation
    error there is among the best ``1/reduction_factor`` of the errors that any trial reported at that rung so
    far (the best one while fewer than ``reduction_factor`` trials have reached it), as in Optuna's
    ``SuccessiveHalvingPruner``, whose rung records (the ``completed_rung_<k>`` system attributes) this one
    reads and writes, so a study can switch between the two.

    The difference is what a tie means. A validation error moves in steps of 1/(validation rows), and early in
    training many trials share one value: the majority class's error, while a model still predicts one class.
    Optuna's pruner lets every trial tied at the cut-off through, so on such a plateau its first rung prunes
    only when some trial is already strictly better. Here trials with the same error are ordered by their mean training loss over that epoch, which
    still tells a model that has started to learn from one that has not: in 20 recorded studies of the tiny
    model on SST-2 (328 complete 9-epoch curves) its rank correlation with the trial's final error after epoch 1
    was 0.70-0.89, against 0.29-0.64 for the validation error. At the same compute, it found configurations
    closer to the best than Optuna's pruner on those curves and on MiniLM's (BENCHMARKS.md, "Pruning ties").
    A trial without a recorded training loss (one from an older study) ranks after those with one.

    With ``pause=True`` (``study.pause_at_rungs``, on by default since 2026-12-07; BENCHMARKS.md), a trial that
    is not in the best ``1/reduction_factor`` at a rung is not stopped for good but paused there: the objective
    keeps its checkpoint and ends it as pruned, and once enough trials have reached the rung to rank it among
    the best (:meth:`promotions`), the search loop queues a trial that continues it from that checkpoint. No
    trial goes past a rung unopposed: with fewer than ``reduction_factor`` trials at a rung, all of them wait
    there. This is ASHA as its paper describes it (promotions, Li et al. 2020); Optuna's pruner, and this one with
    ``pause=False``, decide once and let the first trials at each rung go on with nothing to compare.

    Where a trial is no better than always answering one class (the best constant answer, from the study's
    ``DATA_ATTR``), the ranking says nothing, and pausing does otherwise (:meth:`_past_constant`). At the
    first rung, while no trial has done better either (at any epoch), the training losses differ by noise: such
    a trial goes on past it instead of pausing, until ``reduction_factor`` trials have, to find out which
    configurations learn. At a later rung it waits whatever its rank, and is not promoted until the search
    ends: it had ``reduction_factor`` times the epochs to learn. Without this, where every model still
    answered one class after epoch 1, pausing continued the one with the lowest loss, a learning rate too
    small to learn, and spent the budget on it (BENCHMARKS.md, "The first-rung guard").

    With ``train.early_eval``, a trial also reports at step 0, part-way through epoch 1, and that step is one
    more rung with the same rule: only the best ``1/reduction_factor`` of the trials there train on to epoch 1
    (decided at once: there is no checkpoint inside an epoch to pause at).
    """

    def __init__(self, reduction_factor: int = 3, min_resource: int = 1, pause: bool = False):
        if not isinstance(reduction_factor, int) or reduction_factor < 2:
            raise ValueError(f"reduction_factor must be an integer >= 2, got {reduction_factor!r}")
        if not isinstance(min_resource, int) or min_resource < 1:
            raise ValueError(f"min_resource must be an integer >= 1, got {min_resource!r}")
        self._reduction_factor = reduction_factor
        self._min_resource = min_resource
        self._pause = pause

    @property
    def pauses(self) -> bool:
        """True when a trial stopped at a rung is paused there, to be continued if it gets among the best."""
        return self._pause

    @property
    def reduction_factor(self) -> int:
        return self._reduction_factor

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate_values[step]
        mine = (value, _train_loss(trial.user_attrs.get(TRAIN_LOSS_ATTR)))
        if step == EARLY_STEP:  # train.early_eval: one more rung, part-way through epoch 1
            return math.isnan(value) or not self._promotable(study, trial, EARLY_RUNG_KEY, mine)
        rung = _current_rung(trial)
        trials: list[FrozenTrial] | None = None
        while True:
            if step < self._min_resource * self._reduction_factor**rung:
                return False
            if math.isnan(value):
                return True
            if trials is None:
                trials = study.get_trials(deepcopy=False)
            go_on = self._promotable(study, trial, _rung_key(rung), mine, trials, self._pause)
            if self._pause:
                go_on = self._past_constant(study, trial, rung, value, trials, go_on)
            if not go_on:
                return True
            rung += 1

    def _promotable(
        self, study, trial, key: str, mine: tuple[float, float], trials=None, pausing: bool = False
    ) -> bool:
        """Record ``mine`` (validation error, training loss) at the rung ``key``; is it in the best
        ``1/reduction_factor`` there?"""
        recorded = mine[1] if math.isfinite(mine[1]) else None  # None, not inf: JSON has no infinity
        study._storage.set_trial_system_attr(trial._trial_id, key, mine[0])
        study._storage.set_trial_system_attr(trial._trial_id, f"{key}_train_loss", recorded)
        trials = trials if trials is not None else study.get_trials(deepcopy=False)
        competing = [
            _record(t, key) for t in _ranked(trials) if key in t.system_attrs and t.number != trial.number
        ]
        return self._in_best(mine, [*competing, mine], pausing)

    def _past_constant(self, study, trial, rung: int, value: float, trials, ranked_in: bool) -> bool:
        """A pausing pruner's verdict for ``trial``, which scored ``value`` at ``rung`` and ranked in there or not
        (``ranked_in``), where that is no better than the best constant answer (``constant_floor``): at the
        first rung it goes on if the rung cannot rank (:meth:`_unranked`); at a later rung it waits, whatever
        its rank, for it has had ``reduction_factor`` times the epochs to learn, and its rank among others
        that have not learned either is noise (at the end of the search the best of a rung still goes on:
        :meth:`promotions` with ``last``)."""
        floor = constant_floor(study)
        if not _learned_nothing(value, floor):
            return ranked_in
        if rung > 0:
            return False
        return ranked_in or self._unranked(trial, trials, floor)

    def _unranked(self, trial, trials: list[FrozenTrial], floor: float) -> bool:
        """Can the first rung not rank ``trial`` (no better than ``floor`` there)? True while no other trial has
        done better at any epoch (once one has, some configuration learns, and the rung ranks as ever), and fewer
        than ``reduction_factor`` other trials have gone on past it to find out which configurations learn."""
        others = [t for t in _ranked(trials) if t.number != trial.number]
        if any(not _learned_nothing(v, floor) for t in others for v in t.intermediate_values.values()):
            return False
        return sum(1 for t in others if self._went_on(t)) < self._reduction_factor

    def _went_on(self, t: FrozenTrial) -> bool:
        """Has ``t`` gone on past the first rung: trained beyond it, or still running after its record there?
        The second counts the trials other workers sent on a moment ago: with two workers, the first trials
        reach the rung together, and counting only those that had reported a later epoch sent 5 or 6 on where
        3 should go (SST-2, arm P)."""
        if (t.last_step or 0) > self._min_resource:
            return True
        return t.state == TrialState.RUNNING and _rung_key(0) in t.system_attrs

    def _in_best(self, mine: tuple[float, float], records: list[tuple[float, float]], pausing: bool) -> bool:
        """Is ``mine`` among the best ``1/reduction_factor`` of ``records`` (which hold it)? With fewer records
        than that takes, a pausing pruner says no (wait for more); otherwise ``mine`` must be the best so far."""
        cut = self._cut_off(records, pausing)
        return cut is not None and mine <= cut

    def _cut_off(self, records: list[tuple[float, float]], pausing: bool) -> tuple[float, float] | None:
        """The worst record still among the best ``1/reduction_factor`` of ``records`` (with fewer records than
        that takes, the best so far; None for a pausing pruner, which waits for more)."""
        n_best = len(records) // self._reduction_factor
        if n_best == 0 and pausing:
            return None
        return sorted(records)[max(n_best - 1, 0)]

    def promotions(
        self, trials: list[FrozenTrial], last: bool = False, floor: float | None = None
    ) -> list[FrozenTrial]:
        """The paused trials that are now in the best ``1/reduction_factor`` at the rung they wait at: the
        highest rung first, then the best first (the order ASHA promotes in). ``floor``: the study's
        ``constant_floor``; a trial no better than that at a rung past the first is not among them.

        ``last``: no new trial will start (the trial budget is used up and none is running): as in synchronous
        successive halving, a rung with fewer than ``reduction_factor`` trials lets its best one go on, and a
        trial that has not beaten the constant answer may too, so the search ends with a trial trained to the
        end."""
        found = [
            (-rung, mine, t.number, t)
            for t, rung, mine, records in _waiting(_ranked(trials))
            if self._in_best(mine, records, pausing=not last)
            and (last or rung == 0 or not _learned_nothing(mine[0], floor))
        ]
        return [t for *_, t in sorted(found, key=lambda f: f[:3])]

    def hopeless(self, trials: list[FrozenTrial], budget_left: int) -> set[int]:
        """Numbers of the paused trials that can never be continued, whatever the trials still to come score:
        even if every trial that may yet reach their rung (running, queued, paused lower down, failed and
        perhaps retried, and ``budget_left`` new ones) did worse, they would not be in the best
        ``1/reduction_factor`` there. Their checkpoints need not be kept."""
        live = _ranked(trials)
        out = set()
        for t, rung, mine, records in _waiting(live):
            key = _rung_key(rung)
            to_come = sum(
                1
                for o in live
                if key not in o.system_attrs
                and (o.state != TrialState.PRUNED or PAUSED_ATTR in o.user_attrs)
                and o.state != TrialState.COMPLETE
            )
            at_most = len(records) + to_come + max(budget_left, 0)
            if sum(r < mine for r in records) >= max(at_most // self._reduction_factor, 1):
                out.add(t.number)
        return out


def constant_floor(study: optuna.Study) -> float | None:
    """The validation error a trial must beat to have learned anything: the best constant answer's (any one
    class, every time; on balanced data the training set's majority class may be the validation set's
    minority), less half a validation example, as the study's ``DATA_ATTR`` records them (rounded to 4
    places). None where the study does not record it (one made by an older version)."""
    sizes = study.user_attrs.get(DATA_ATTR) or {}
    constant, n = sizes.get("constant_val_error"), sizes.get("n_validation")
    if not isinstance(constant, (int, float)):
        return None
    return constant - max(0.5 / n if isinstance(n, int) and n > 0 else 0.0, 1e-4)


def _learned_nothing(value: float, floor: float | None) -> bool:
    """Is a validation error of ``value`` no better than the ``constant_floor`` (None: not recorded, so no)?
    Such a trial waits at a rung past the first whatever its rank (the pruner's verdict and its promotions), and
    while every error of the study is, the first-rung guard sends trials on
    (:meth:`SuccessiveHalvingPruner._unranked`)."""
    return floor is not None and value >= floor


def _waiting(live: list[FrozenTrial]):
    """(trial, rung, its record there, every record there) for each paused trial of ``live``."""
    for t in live:
        if t.state != TrialState.PRUNED or PAUSED_ATTR not in t.user_attrs:
            continue
        rung = _current_rung(t) - 1  # the last rung it recorded is the one it waits at
        if rung < 0:
            continue
        key = _rung_key(rung)
        yield t, rung, _record(t, key), [_record(o, key) for o in live if key in o.system_attrs]


def _ranked(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials whose rung records count: not given back past the budget, and not taken over by a retry or a
    continuation (which carries the same records)."""
    gone = replaced(trials)
    return [t for t in trials if t.number not in gone and OVER_BUDGET_ATTR not in t.user_attrs]


def _record(t: FrozenTrial, key: str) -> tuple[float, float]:
    """A trial's (validation error, training loss) at the rung ``key``."""
    return t.system_attrs[key], _train_loss(t.system_attrs.get(f"{key}_train_loss"))


def _train_loss(value) -> float:
    """A recorded training loss, or +inf where there is none (or it is not a number)."""
    try:
        loss = float(value)
    except (TypeError, ValueError):
        return math.inf
    return loss if math.isfinite(loss) else math.inf


def _rung_key(rung: int) -> str:
    return f"completed_rung_{rung}"


def _current_rung(trial: FrozenTrial) -> int:
    rung = 0
    while _rung_key(rung) in trial.system_attrs:
        rung += 1
    return rung
