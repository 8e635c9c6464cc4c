"""One worker's search: validate everything, then run trials until the study-wide budget is met.

Order matters: config, search space, device, data and model are checked before the store is opened, so a
mistake costs no GPU time and writes nothing; the store is checked before trial 0.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import Config, check_writable
from hpsearch.cost import epochs_spent
from hpsearch.dashboard import write_study_note, write_trial_note
from hpsearch.errors import StorageError, TrialFailure
from hpsearch.objective import CHECKPOINT_ATTR, Interrupted, Objective
from hpsearch.pruners import CONTINUES_ATTR, PAUSED_ATTR, constant_floor, replaced
from hpsearch.results import best_summary, requeue_command
from hpsearch.space import SearchSpace, parse_space
from hpsearch.study import (
    INTERRUPTED,
    OVER_BUDGET_ATTR,
    RetryTrial,
    _GridSampler,
    best_trial,
    check_storage,
    counts,
    describe_storage,
    is_over_budget,
    local_process,
    open_study,
    queue_copy,
    quiet_optuna_warnings,
    record_data,
    remaining_budget,
    search_notes,
    store_method,
)

MAX_CONSECUTIVE_FAILURES = 3
log = logging.getLogger("hpsearch")


class Reporter:
    """Progress lines on stderr; one line per epoch and per finished trial."""

    def __init__(self, stream: TextIO | None = None, prefix: str = ""):
        self.stream = stream or sys.stderr
        self.prefix = prefix

    def line(self, text: str) -> None:
        self.stream.write(f"{self.prefix}{text}\n")
        self.stream.flush()

    @staticmethod
    def _hp(hp: dict[str, Any]) -> str:
        return f"lr={hp['learning_rate']:.2e} bs={hp['batch_size']}"

    def epoch(self, number: int, hp: dict[str, Any], r, n_epochs: int) -> None:
        self.line(
            f"trial {number} epoch {r.epoch}/{n_epochs}  loss {r.train_loss:.4f}  val_loss {r.val_loss:.4f}"
            f"  val_error {r.val_error:.4f}  {r.samples_per_second:.0f} samples/s  [{self._hp(hp)}]"
        )

    def early(self, number: int, hp: dict[str, Any], r, share: float) -> None:
        self.line(
            f"trial {number} early evaluation at {share:g} of epoch 1  loss {r.train_loss:.4f}"
            f"  val_loss {r.val_loss:.4f}  val_error {r.val_error:.4f}  [{self._hp(hp)}]"
        )

    def diverged(self, number: int, hp: dict[str, Any], r) -> None:
        self.line(f"trial {number} diverged and stopped: {r.reason}  [{self._hp(hp)}]")

    def resumed(self, number: int, epoch: int, original: int | None) -> None:
        self.line(f"trial {number} resumes trial {original} after epoch {epoch} from its checkpoint")

    def continued(self, number: int, epoch: int, paused: int) -> None:
        self.line(f"trial {number} continues trial {paused} after epoch {epoch} from its checkpoint")

    def promoted(self, paused: FrozenTrial, number: int, reduction_factor: int, last: bool = False) -> None:
        why = (
            "is the best at its rung and no new trial will start"
            if last
            else f"is now in the best 1/{reduction_factor} at its rung"
        )
        self.line(
            f"trial {paused.number} (paused after epoch {paused.user_attrs.get(PAUSED_ATTR)}) {why}:"
            f" trial {number} continues it"
        )

    def finished(self, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            self.line(
                f"trial {trial.number} complete: val_error {trial.value:.4f} (best epoch "
                f"{trial.user_attrs.get('best_epoch')})"
            )
        elif trial.state == TrialState.PRUNED:
            self.line(f"trial {trial.number} pruned: {trial.user_attrs.get('prune_reason', '')}")
        else:
            self.line(f"trial {trial.number} failed: {trial.user_attrs.get('fail_reason', '')}")


@dataclass
class SearchResult:
    study_name: str
    storage: str
    counts: dict[str, int]
    best: dict[str, Any] | None  # results.best_summary: the best trial, its params, noise and ties
    stopped_by: str  # budget | timeout | signal | failures
    trials_run: list[int] = field(default_factory=list)  # less those a later trial of this run carries on
    signal: int | None = None  # SIGINT/SIGTERM that stopped this worker


def prepare(cfg: Config):
    """Everything a worker needs before trial 0; every mistake raises ConfigError here."""
    from hpsearch.data import load_data, tokenize
    from hpsearch.models import get_factory
    from hpsearch.train import resolve_device, resolve_precision

    space = parse_space(cfg.search_space, cfg.source)
    if cfg.study.sampler == "grid":
        space.grid()  # raises for a range without finite values
    resolve_precision(cfg.train.precision, resolve_device(cfg.train.device))  # fp16 on a CPU is refused here
    check_storage(cfg.study.storage, wait=cfg.study.store_wait)
    check_writable(cfg.train.checkpoint_dir, "train.checkpoint_dir", folder=True)  # every trial writes there
    data = load_data(cfg.data, seed=cfg.study.seed or 0)
    factory = get_factory(cfg.model, data.label_names, data.train.vocabulary_texts(), cfg.data)
    encoded = tokenize(data, factory.tokenizer, cfg.model.max_length, (cfg.data, factory.key))
    return space, data, factory, encoded


def requeue(study: optuna.Study, number: int, reason: str) -> None:
    """Mark an interrupted trial failed and queue a copy with the same params, checkpoint and learning curve:
    the next worker resumes it where it stopped (the same mechanism as a dead worker's heartbeat retry)."""
    frozen = copy.copy(next(t for t in study.get_trials(deepcopy=False) if t.number == number))
    frozen.state = TrialState.FAIL  # as it is about to be: its note says which trial resumes it
    RetryTrial()(study, frozen)


def continue_paused(study: optuna.Study, paused: FrozenTrial) -> int:
    """Queue the trial that continues ``paused`` (pruned at a rung by a pausing pruner) from its checkpoint,
    with its params, learning curve, rung records and user attributes; returns the new trial's number. The
    paused trial stays as it was (a finished trial cannot change); the new one replaces it in every count."""
    user_attrs = {k: v for k, v in paused.user_attrs.items() if k not in (PAUSED_ATTR, "prune_reason")}
    system_attrs = {
        k: v for k, v in paused.system_attrs.items() if k not in ("failed_trial", "retry_history")
    }
    system_attrs[CONTINUES_ATTR] = paused.number
    return queue_copy(study, paused, user_attrs, system_attrs)


def promote_paused(study: optuna.Study, reporter: Reporter, last: bool = False) -> int:
    """Queue a continuation for every paused trial that now ranks among the best at its rung (see
    :meth:`hpsearch.pruners.SuccessiveHalvingPruner.promotions`; ``last``: no new trial will start); returns
    how many were queued. A paused trial whose checkpoint is gone (the study ended and cleaned up) stays
    pruned."""

    pruner = study.pruner
    if not getattr(pruner, "pauses", False):
        return 0
    queued = 0
    for paused in pruner.promotions(study.get_trials(deepcopy=False), last, constant_floor(study)):
        path = paused.user_attrs.get(CHECKPOINT_ATTR)
        if not path or not Path(path).is_file():
            continue
        reporter.promoted(paused, continue_paused(study, paused), pruner.reduction_factor, last)
        queued += 1
    return queued


def requeue_dead_trial(study: optuna.Study, number: int) -> int:
    """By hand, for a running trial whose worker is gone (a journal-file store has no heartbeat to notice):
    fail it and queue a copy that resumes from its checkpoint. Returns the number of the queued trial.

    Refused for a trial that is not running, or whose heartbeat is younger than the grace period: its worker
    is alive, and failing the trial under it would waste the work it is doing.
    """
    from hpsearch.errors import ConfigError
    from hpsearch.results import grace_seconds, running_status

    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or trial.state != TrialState.RUNNING:
        state = (
            "does not exist"
            if trial is None
            else f"is {'failed' if trial.state == TrialState.FAIL else trial.state.name.lower()}, not running"
        )
        raise ConfigError(
            f"study '{study.study_name}': trial {number} {state}; only a running trial can be"
            " re-queued (see `hpsearch show`)"
        )
    status = next(r for r in running_status(study) if r["number"] == number)
    if status["heartbeat_age_s"] is not None and not status["stale"]:
        raise ConfigError(
            f"study '{study.study_name}': trial {number} is alive (worker {status['worker']},"
            f" last heartbeat {status['heartbeat_age_s']:.0f}s ago,"
            f" grace {grace_seconds(study):.0f}s);"
            " stop its worker first, or wait: a dead worker's trial is retried by itself"
        )
    if local_process(status["worker"]) is True:
        raise ConfigError(
            f"study '{study.study_name}': trial {number} is alive: its worker {status['worker']} runs on this"
            " machine; stop it first (Ctrl-C or SIGTERM re-queues the trial itself)"
        )
    with quiet_optuna_warnings():
        study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", "worker gone; re-queued by hand")
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    requeue(study, number, "re-queued by hand")
    return max(t.number for t in study.get_trials(deepcopy=False))


def _held_elsewhere(study: optuna.Study, cfg: Config) -> str:
    """Which trials other workers hold on a store without heartbeats, and how to take one back if its worker
    is gone."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    held = ", ".join(f"{t.number} (worker {t.user_attrs.get('worker', '?')})" for t in running)
    first = running[0].number if running else "N"
    return (
        f"trial(s) {held} still marked running, and this store has no heartbeat to tell a dead worker. This"
        f" worker stops; if a worker is gone: {requeue_command(cfg.study.name, first, describe_storage(cfg.study.storage))}"
        ", then rerun"
    )


def _orphans_line(study: optuna.Study, cfg: Config) -> str | None:
    """The running trials with no heartbeat since they started, long ago: their worker died before its first
    one (a store an older hpsearch wrote), so no worker will take them for dead; waiting for them is for ever."""
    from hpsearch.results import running_status

    orphans = [r["number"] for r in running_status(study) if r["orphan"]]
    if not orphans:
        return None
    return (
        f"trial(s) {', '.join(map(str, orphans))} marked running with no heartbeat since they started: their"
        " worker died before its first one (a store an older hpsearch wrote), and nothing retries them by"
        " themselves; if their worker is gone:"
        f" {requeue_command(cfg.study.name, orphans[0], describe_storage(cfg.study.storage))}"
        " (this worker then runs the retry)"
    )


def _heartbeat(study: optuna.Study, trial: optuna.Trial):
    """Optuna's thread that refreshes a running trial's heartbeat, made to survive a store that is away for a
    while: Optuna's own ends at the first error, and the trial would then look dead to every other worker."""
    from optuna.storages._heartbeat import HeartbeatThread, get_heartbeat_thread

    thread = get_heartbeat_thread(trial._trial_id, study._storage)
    if isinstance(thread, HeartbeatThread):
        thread._record_heartbeat = _record_heartbeat
    return thread


def _record_heartbeat(trial_id: int, heartbeat, stop_event: threading.Event) -> None:
    interval = heartbeat.get_heartbeat_interval()
    # one try each time on a database server: this loop tries again every second by itself
    beat = store_method(heartbeat, "record_heartbeat_once") or heartbeat.record_heartbeat
    while True:
        try:
            beat(trial_id)
            wait = interval
        except Exception as exc:  # the store is away: try again soon, the trial goes on meanwhile
            log.debug("heartbeat of trial id %d not recorded: %s", trial_id, exc)
            wait = min(interval, 1.0)
        if stop_event.wait(timeout=wait):
            return


def _fail_stale(study: optuna.Study) -> None:
    """Fail the trials whose worker died, each with its retry queued in the same commit."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return
    retry = storage.get_heartbeat_stale_trial_callback()
    fail_stale_trial = store_method(storage, "fail_stale_trial")
    with quiet_optuna_warnings():
        if not isinstance(retry, RetryTrial) or fail_stale_trial is None:
            optuna.storages.fail_stale_trials(study)
            return
        for trial_id in storage._get_stale_trial_ids(study._study_id):
            # read before the commit that fails the trial: a store call inside it would commit it early
            template = functools.partial(retry.template, study, reasons=retry.fail_reasons(study))
            done = fail_stale_trial(trial_id, template)
            if done is not None and done[1] is not None:
                retry.note(study, *done)


def cleanup_checkpoints(study: optuna.Study, keep_paused: bool = True, n_trials: int | None = None) -> None:
    """Delete the checkpoints no one needs: keep the best trial's, those running or queued trials use, and
    (``keep_paused``) those of paused trials that may yet be continued: all of them, or with ``n_trials``
    (the study's trial budget) those the pruner does not find hopeless."""

    trials = study.get_trials(deepcopy=False)
    best = best_trial(study)
    gone = replaced(trials)
    if keep_paused and n_trials is not None and getattr(study.pruner, "pauses", False):
        gone |= study.pruner.hopeless(trials, remaining_budget(study, n_trials))
    keep = {
        t.user_attrs.get(CHECKPOINT_ATTR)
        for t in trials
        if t.state in (TrialState.RUNNING, TrialState.WAITING)
        or (keep_paused and PAUSED_ATTR in t.user_attrs and t.number not in gone)
    }
    if best is not None:
        keep.add(best.user_attrs.get(CHECKPOINT_ATTR))
    # Failing a stale or stopped trial and queueing its retry are two steps: between them no queued trial
    # names the checkpoint yet, so keep a failed trial's checkpoint until its retry exists (or for good, once
    # its retries are used up: it is the only copy of that work).
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    for t in trials:
        path = t.user_attrs.get(CHECKPOINT_ATTR)
        if not path or path in keep or t.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        reason = t.user_attrs.get("fail_reason", "re-queued")  # a stale trial has none: Optuna failed it
        if t.state == TrialState.FAIL and t.number not in retried and "re-queued" in reason:
            continue
        Path(path).unlink(missing_ok=True)
        _remove_partial_writes(Path(path))
    if not keep_paused:  # the search is over: what a killed worker was writing is no one's
        for folder in {Path(p).parent for t in trials if (p := t.user_attrs.get(CHECKPOINT_ATTR))}:
            for partial in folder.glob("trial-*.tmp*"):
                partial.unlink(missing_ok=True)


def _remove_partial_writes(path: Path) -> None:
    """A worker killed while writing ``trial-N.pt`` leaves ``trial-N.tmpPID`` behind (the checkpoint is
    written to it, then renamed); once ``trial-N.pt`` is deleted that file is no one's."""
    for partial in path.parent.glob(f"{path.stem}.tmp*"):
        partial.unlink(missing_ok=True)


class _StopOnSignal:
    """First SIGINT/SIGTERM: finish the running epoch, checkpoint, re-queue the trial, exit. Second: stop now."""

    def __init__(self, stop: threading.Event, reporter: Reporter):
        self.stop, self.reporter, self.previous = stop, reporter, {}
        self.signum: int | None = None  # the first signal received; the CLI exits with 128 + signum
        self.first_at = 0.0

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.stop.is_set():
            # Slurm signals every process of a job and `--workers` passes the signal on too: a repeat within a
            # second is the same request, not a second Ctrl-C.
            if time.monotonic() - self.first_at < 1.0:
                return
            raise KeyboardInterrupt
        self.signum, self.first_at = signum, time.monotonic()
        self.stop.set()
        self.reporter.line(
            f"{signal.Signals(signum).name}: stopping; a running trial finishes its epoch, checkpoints and is"
            " re-queued; press Ctrl-C again to stop at once"
        )

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def run_search(
    cfg: Config,
    worker: int = 0,
    reporter: Reporter | None = None,
    stop: threading.Event | None = None,
    command: list[str] | None = None,
) -> SearchResult:
    """Run trials of ``cfg``'s study until it has ``n_trials`` finished trials (all workers together), the
    timeout passes, or a stop is requested. Safe to run in many processes and nodes at once."""
    reporter = reporter or Reporter()
    stop = stop or threading.Event()
    space, data, factory, encoded = prepare(cfg)
    study = open_study(cfg, space, worker, data)
    record_data(study, data, cfg)
    bar = f"majority-class val_error {data.majority_error():.4f}"
    if (other := data.other_constant_error()) is not None:
        bar += f" (another class's: {other:.4f}, the validation set's largest)"
    reporter.line(
        f"study '{cfg.study.name}' in {describe_storage(cfg.study.storage)}: {len(data.train)} train /"
        f" {len(data.validation)} validation examples, {data.num_labels} classes, model {cfg.model.name}; {bar}"
    )
    for note in search_notes(cfg, space):
        reporter.line(note)
    if cfg.study.pruner == "successive-halving" and cfg.study.pause_at_rungs is None:
        # the rule this study runs by: the default's, or the one it was made with (keep_rung_rule)
        cfg = dataclasses.replace(
            cfg, study=dataclasses.replace(cfg.study, pause_at_rungs=study.pruner.pauses)
        )
        if not study.pruner.pauses:
            reporter.line(
                f"study '{cfg.study.name}' was made when successive halving decided at once at its rungs"
                " (study.pause_at_rungs false, the default before 2026-12-07), so it keeps that rule; give"
                " --set study.pause_at_rungs=true to pause trials at rungs from now on"
            )
    if seen := data.validation_seen_in_train():
        reporter.line(
            f"data: {seen} of {len(data.validation)} validation examples ({seen / len(data.validation):.1%}) are"
            " also training examples (repeated rows), so val_error flatters memorising them; remove the"
            " repeats, or give a data.validation_file that shares no rows with the training file"
        )
    from hpsearch.train import length_grouping_note

    if cfg.train.group_by_length and (
        note := length_grouping_note(
            [len(x) for x in encoded[0]["input_ids"]], data.train.labels, smallest_batch(cfg, space)
        )
    ):
        reporter.line(note)
    write_study_note(study, cfg, command, data)  # what the dashboard shows about this study
    objective = Objective(cfg, space, data, factory, encoded, reporter, stop)
    with _StopOnSignal(stop, reporter) as guard:
        stopped_by, ran = _loop(cfg, study, objective, reporter, stop, space)
    write_study_note(study, cfg, command, data)  # now with this run's trials, the best one and the cost
    result = _result(cfg, study, stopped_by, ran)
    result.signal = guard.signum if stopped_by == "signal" else None
    return result


def smallest_batch(cfg: Config, space: SearchSpace) -> int:
    """The smallest batch size the trials will train with: its batches are the most one-class."""
    for p in space.params:
        if p.name == "batch_size":
            return int(min(p.choices) if p.choices else p.low)
    return int(space.fixed.get("batch_size", cfg.train.batch_size))


def _loop(
    cfg: Config,
    study: optuna.Study,
    objective: Objective,
    reporter: Reporter,
    stop: threading.Event,
    space: SearchSpace,
) -> tuple[str, list[int]]:
    started, failures, ran, waited = time.monotonic(), 0, [], False
    # when to look next for trials no worker will ever take for dead: at most once a grace period, once said
    orphan_check = time.monotonic()
    n_trials, epoch_budget = cfg.study.n_trials, cfg.study.epoch_budget
    while True:
        if stop.is_set():
            return "signal", ran
        if cfg.study.timeout is not None and time.monotonic() - started > cfg.study.timeout:
            reporter.line(f"timeout of {cfg.study.timeout:g} s reached; rerun the same command to go on")
            return "timeout", ran
        _fail_stale(study)
        spent = epochs_spent(study) if epoch_budget is not None else 0.0
        out_of_epochs = epoch_budget is not None and spent >= epoch_budget
        # before counting: a continuation takes its paused trial's place
        c = counts(study) if out_of_epochs else _promote(study, reporter, n_trials)
        finished = c[TrialState.COMPLETE] + c[TrialState.PRUNED]
        if finished >= n_trials:
            reporter.line(
                f"budget met: study '{cfg.study.name}' has {finished}/{n_trials} finished trials; this"
                " worker stops (raise --n-trials to run more)"
            )
            if c[TrialState.WAITING] and not waited:
                reporter.line(
                    f"{c[TrialState.WAITING]} trial(s) queued to resume from a checkpoint are left over from a"
                    f" larger budget; --n-trials {finished + c[TrialState.WAITING]} lets them finish"
                )
            if not c[TrialState.RUNNING] and not c[TrialState.WAITING]:
                cleanup_checkpoints(study, keep_paused=False)  # the search is over: no one continues them
            return "budget", ran
        if out_of_epochs and not c[TrialState.RUNNING] and not c[TrialState.WAITING]:
            reporter.line(
                f"epoch budget met: study '{cfg.study.name}' has trained {spent:.1f} of {epoch_budget:g} epochs"
                f" in {finished} trials; this worker stops (raise --epoch-budget to run more)"
            )
            cleanup_checkpoints(study, keep_paused=False)  # the search is over: no one continues them
            return "budget", ran
        grid = study.sampler if isinstance(study.sampler, _GridSampler) else None
        if grid is not None and grid.is_exhausted(study) and not c[TrialState.WAITING]:
            reporter.line(f"all {space.grid_size()} grid points tried; the grid search is complete")
            return "grid", ran
        grid_taken = grid is not None and grid.unstarted(study) == 0
        left = remaining_budget(study, n_trials, c)
        nothing_to_start = out_of_epochs or grid_taken or left <= 0
        if nothing_to_start and not c[TrialState.WAITING]:
            # Other workers hold the last trials. Wait: if one dies, its trial comes back here to be retried.
            spent_line = (
                f"{spent:.1f} of {epoch_budget:g} epochs trained"
                if out_of_epochs
                else f"every one of the {space.grid_size()} grid points taken"
                if grid_taken and left > 0
                else f"{finished}/{n_trials} trials finished"
            )
            if not _has_heartbeat(study):  # a journal store: nothing tells a dead worker's trial, so say how
                reporter.line(f"{spent_line}; {_held_elsewhere(study, cfg)}")
                return "budget", ran
            if not waited:
                reporter.line(
                    f"{spent_line}, {c[TrialState.RUNNING]} running elsewhere; waiting in case one must be retried"
                )
                waited = True
            if time.monotonic() >= orphan_check:
                orphans = _orphans_line(study, cfg)
                if orphans is not None:
                    reporter.line(orphans)
                orphan_check = (
                    float("inf") if orphans is not None else time.monotonic() + cfg.study.grace_seconds
                )
            stop.wait(min(5.0, cfg.study.heartbeat_interval))
            continue
        with quiet_optuna_warnings():
            trial = study.ask()
        if is_over_budget(study, trial, n_trials):
            paused = study._storage.get_trial(trial._trial_id).system_attrs.get(CONTINUES_ATTR)
            trial.set_user_attr(
                OVER_BUDGET_ATTR,
                "another worker took the last trial of the budget"
                if paused is None
                else f"another worker continued trial {paused} first",
            )
            study.tell(trial, state=TrialState.FAIL)
            continue
        ran.append(trial.number)
        state = _run_one(study, trial, objective, reporter)
        if state == TrialState.FAIL:
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                reporter.line(
                    f"{failures} trials failed in a row; stopping this worker (see `hpsearch show`)"
                )
                return "failures", ran
        elif state is not None:
            failures = 0


def _promote(study: optuna.Study, reporter: Reporter, n_trials: int):
    """Queue the paused trials that may go on, and return the study's counts after that. When no new trial
    will start (the budget is used up, nothing runs or waits), the best paused trial of a rung too small to
    rank goes on as well, so the search ends with a trial trained to the end."""
    queued = promote_paused(study, reporter)
    c = counts(study)
    if queued or c[TrialState.RUNNING] or c[TrialState.WAITING] or remaining_budget(study, n_trials, c) > 0:
        return c
    return counts(study) if promote_paused(study, reporter, last=True) else c


def _has_heartbeat(study: optuna.Study) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)


def _run_one(
    study: optuna.Study, trial: optuna.Trial, objective: Objective, reporter: Reporter
) -> TrialState | None:
    """Run and tell one trial; returns its final state, or None when it was re-queued (after a stop, or by
    another worker that found its heartbeat stale)."""
    try:
        return _run_and_tell(study, trial, objective, reporter)
    except (optuna.exceptions.UpdateFinishedTrialError, StorageError, ValueError):
        if study._storage.get_trial(trial._trial_id).state != TrialState.FAIL:
            raise
        # Another worker's stale check failed this trial while it ran here: this worker's heartbeats were late
        # by more than the grace period (an overloaded machine or store). The retry it queued resumes from the
        # last checkpoint; going on here is safe, crashing would only lose this worker.
        why = (
            "another worker: no heartbeat from this one for longer than study.grace_period"
            if _has_heartbeat(study)
            else "`hpsearch requeue`"
        )
        reporter.line(
            f"trial {trial.number} was failed and re-queued by {why}; its retry resumes from the last"
            " checkpoint and this worker goes on"
            + (" (raise study.grace_period on an overloaded machine)" if _has_heartbeat(study) else "")
        )
        return None


def _run_and_tell(
    study: optuna.Study, trial: optuna.Trial, objective: Objective, reporter: Reporter
) -> TrialState | None:
    value, state = None, TrialState.COMPLETE
    try:
        with _heartbeat(study, trial):
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except TrialFailure as exc:
                state = TrialState.FAIL
                trial.set_user_attr("fail_reason", str(exc))
            except Interrupted as exc:
                trial.set_user_attr("fail_reason", f"{INTERRUPTED} ({exc}); re-queued")
                # Queue the retry before failing the trial: between the two, a failed trial holds no place in
                # the budget and another worker could start a new trial past it.
                requeue(study, trial.number, str(exc))
                study.tell(trial, state=TrialState.FAIL)
                reporter.line(
                    f"trial {trial.number} checkpointed and re-queued; rerun the command to resume it"
                )
                return None
            except optuna.exceptions.UpdateFinishedTrialError:
                raise  # another worker failed this trial as stale: see _run_one
            except Exception as exc:
                state = TrialState.FAIL
                trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
                log.debug("trial %d failed", trial.number, exc_info=True)
    except KeyboardInterrupt:
        trial.set_user_attr(
            "fail_reason", f"{INTERRUPTED} at once (second signal); re-queued from its last epoch"
        )
        requeue(study, trial.number, "interrupted")  # first, as above
        study.tell(trial, state=TrialState.FAIL)
        raise
    try:
        frozen = study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    except Exception as exc:
        raise StorageError(f"storage: could not record trial {trial.number}: {exc}") from None
    reporter.finished(frozen)
    write_trial_note(study, frozen)  # why it was pruned, diverged or failed
    cleanup_checkpoints(study, n_trials=objective.cfg.study.n_trials)
    return state


def _result(cfg: Config, study: optuna.Study, stopped_by: str, ran: list[int]) -> SearchResult:
    c = counts(study)
    best = best_summary(study)
    # a paused trial continued, or a failed trial resumed, by another trial of this run is one trial, not two
    trials = study.get_trials(deepcopy=False)
    gone = replaced([t for t in trials if t.number in ran])
    return SearchResult(
        study_name=cfg.study.name,
        storage=describe_storage(cfg.study.storage),
        counts={state.name.lower(): n for state, n in c.items()},
        best=best,
        stopped_by=stopped_by,
        trials_run=[n for n in ran if n not in gone],
    )
