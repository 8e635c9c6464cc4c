"""Reading studies back: summaries of a store, trial tables, the best configuration, exports."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from pathlib import Path
from shlex import quote
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.cost import trial_epochs
from hpsearch.pruners import (
    CONTINUES_ATTR,
    EARLY_EVAL_ATTR,
    EARLY_STEP,
    TRAIN_LOSS_ATTR,
    replaced,
    resumed_trial,
)
from hpsearch.study import (
    CONFIG_ATTR,
    DATA_ATTR,
    _summaries,
    best_trial,
    counts,
    describe_storage,
    open_storage,
    visible_trials,
)

STATES = ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")
# why a trial failed when its worker said nothing: the heartbeat stopped and another worker failed it
DIED = "its worker died (no heartbeat for longer than study.grace_period: killed, out of memory, node lost)"
RESUMED_AS = "; resumed as trial "  # ends the reason of a failed trial that a retry resumes
MAX_SUGGESTED_TOP_K = 3  # train-best retrains each configuration with 3 seeds: 3 of them is 9 trainings


def default_stores(directory: str = "studies") -> list[str]:
    """The SQLite stores `hpsearch search` made under ``directory`` by default."""
    from hpsearch.config import sqlite_url

    return [sqlite_url(p) for p in sorted(Path(directory).glob("*.db"))]


def list_studies(storage_url: str) -> list[dict[str, Any]]:
    storage = open_storage(storage_url, create=False)
    out = []
    for summary in _summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        states = {state.name: n for state, n in counts(study).items()}  # one per configuration
        best = best_trial(study)
        cfg = study.user_attrs.get(CONFIG_ATTR, {})
        out.append(
            {
                "study": summary.study_name,
                "storage": describe_storage(storage_url),  # the password masked
                "n_trials": cfg.get("study", {}).get("n_trials"),
                "trials": {state.lower(): states.get(state, 0) for state in STATES},
                "best_value": best.value if best else None,
                "best_trial": best.number if best else None,
                "model": cfg.get("model", {}).get("name"),
            }
        )
    return out


def _duration(t: FrozenTrial) -> float | None:
    if t.datetime_start is None:
        return None
    end = t.datetime_complete or datetime.now()
    return (end - t.datetime_start).total_seconds()


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    trials = visible_trials(study)
    continued_by = {
        t.system_attrs[CONTINUES_ATTR]: t.number
        for t in trials
        if CONTINUES_ATTR in t.system_attrs and "failed_trial" not in t.system_attrs
    }
    resumed_by = {
        t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")
    }
    for t in trials:
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": dict(t.params),
                "epochs_run": t.user_attrs.get("epochs_run", len(t.intermediate_values)),
                # with the part of an epoch a divergence stop or the early evaluation cut short
                "epochs": round(trial_epochs(t), 4)
                if "epochs_run" in t.user_attrs
                else len(t.intermediate_values),
                "best_epoch": t.user_attrs.get("best_epoch"),
                "duration_s": None if _duration(t) is None else round(_duration(t), 1),
                "intermediate_values": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                "retry_of": resumed_trial(t),
                "continues": t.system_attrs.get(CONTINUES_ATTR),  # the paused trial this one goes on with
                "continued_by": continued_by.get(t.number),
                "reason": t.user_attrs.get("prune_reason") or _fail_reason(t, resumed_by.get(t.number)),
                "worker": t.user_attrs.get("worker"),
                "device": t.user_attrs.get("device"),
                "train_seconds": t.user_attrs.get("train_seconds"),
            }
        )
    return rows


def _fail_reason(t: FrozenTrial, resumed_as: int | None) -> str | None:
    if t.state != TrialState.FAIL:
        return t.user_attrs.get("fail_reason")
    reason = t.user_attrs.get("fail_reason") or DIED
    return reason if resumed_as is None else f"{reason}{RESUMED_AS}{resumed_as}"


def learning_curve(t: FrozenTrial) -> list[tuple[int, str, float]]:
    """A trial's intermediate values in step order as (step, label, value): the label is the epoch, or for
    step 0 (``train.early_eval``) the share of epoch 1 it was measured after, e.g. ``0.25``."""
    share = t.user_attrs.get(EARLY_EVAL_ATTR)
    return [
        (step, f"{share:g}" if step == EARLY_STEP and share is not None else str(step), value)
        for step, value in sorted(t.intermediate_values.items())
    ]


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4g}"
    return str(v)


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ["number", "state", "value", "epochs", "duration", "params", "note"]
    lines = [header]
    for r in rows:
        params = " ".join(f"{k}={_fmt_value(v)}" for k, v in r["params"].items())
        note = r["reason"] or ""
        reason, resumed, by = note.rpartition(RESUMED_AS)
        if resumed and r["state"] == "FAIL":  # first, or the 80-character cut drops it after a long reason
            note = f"{RESUMED_AS.removeprefix('; ')}{by}; {reason}"
        if r["continued_by"] is not None:
            note = f"paused after epoch {r['epochs_run']}; continued as trial {r['continued_by']}"
        if r["continues"] is not None:
            note = f"continues trial {r['continues']}" + (f"; {note}" if note else "")
        if r["retry_of"] is not None:
            note = f"retry of {r['retry_of']}" + (f"; {note}" if note else "")
        lines.append(
            [
                str(r["number"]),
                r["state"].lower(),
                "" if r["value"] is None else f"{r['value']:.4f}",
                f"{r['epochs']:.2f}".removesuffix(".00"),
                "" if r["duration_s"] is None else f"{r['duration_s']:.0f}s",
                params,
                note if len(note) <= 80 else f"{note[:79]}…",  # whole in `show --json`
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) + "  " + line[-1] for line in lines
    )


def format_params(params: dict[str, Any], sep: str = ", ") -> str:
    """A trial's hyperparameters for a person: ``learning_rate=0.000545, batch_size=16``."""
    return sep.join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def standard_error(val_error: float, n: int) -> float:
    """One binomial standard error of an error rate measured once on ``n`` examples."""
    return math.sqrt(val_error * (1.0 - val_error) / n)


def best_summary(study: optuna.Study) -> dict[str, Any] | None:
    """The best trial, the noise in its val_error and the complete trials that noise cannot tell from it.

    A val_error on a few hundred validation examples moves by a point or more with nothing but the seed, and
    the best trial is the lowest of many such measurements, so it is also the luckiest. Complete trials whose
    val_error is within one standard error of the best (the one-standard-error rule) are as good as far as
    this study can tell; ``hpsearch train-best --top-k`` ranks them on several seeds. Studies made before the
    data sizes were stored (``DATA_ATTR``) get no standard error.
    """
    best = best_trial(study)
    if best is None:
        return None
    summary: dict[str, Any] = {"trial": best.number, "val_error": best.value, "params": dict(best.params)}
    ranked = retrain_candidates(study)  # complete trials first, by value
    complete = [t for t in ranked if t.state == TrialState.COMPLETE]
    summary["complete_trials"] = len(complete)
    summary["pruned_candidates"] = len(ranked) - len(complete)
    n = (study.user_attrs.get(DATA_ATTR) or {}).get("n_validation")
    if not n:
        return summary
    se = standard_error(best.value, n)
    tied = [t for t in complete if t.number != best.number and t.value <= best.value + se]
    return {
        **summary,
        "n_validation": n,
        "standard_error": round(se, 4),
        "within_one_standard_error": [t.number for t in tied],
    }


def epoch_curve(trial: FrozenTrial) -> dict[int, float]:
    """A trial's validation error at each epoch's end (without train.early_eval's report inside epoch 1)."""
    return {e: v for e, v in trial.intermediate_values.items() if e != EARLY_STEP and v is not None}


def candidate_key(
    complete: bool, epochs_reached: int, error: float, number: int, train_loss: float | None = None
) -> tuple:
    """How ``train-best --top-k`` ranks trials: complete ones by ``error``, their value (the best epoch's
    error); after them, pruned ones by the deepest rung reached, then their lowest epoch-end error (as a
    complete trial's value is; measured on the benchmarks so), then, among equal errors (trials still
    predicting one class), the last training loss, as the pruner breaks such ties."""
    loss = float("inf") if train_loss is None else train_loss
    return (not complete, 0 if complete else -epochs_reached, error, loss, number)


def retrain_candidates(study: optuna.Study) -> list[FrozenTrial]:
    """The trials ``train-best --top-k`` can retrain, best first (``candidate_key``).

    A search with a pruner completes few trials (hpsearch's default completed 1 to 3 of 16 on SST-2), so
    the best pruned ones follow the complete ones: ``--top-k 3`` would otherwise quietly retrain one
    configuration, and a pruned trial retrained better than the one complete trial on 2 of 7 benchmark
    searches (BENCHMARKS.md, "Retraining the top k"). Trials stopped by the divergence rule, or pruned before
    their first epoch's end, have nothing to rank them by and are left out; so is a paused trial that a later
    trial continued (``study.pause_at_rungs``), which would otherwise be the same configuration twice.
    """
    trials = study.get_trials(deepcopy=False)
    gone = replaced(trials)  # a paused trial another continued: the successor carries its curve
    ranked = []
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED) or t.number in gone:
            continue
        complete = t.state == TrialState.COMPLETE
        if not complete and str(t.user_attrs.get("prune_reason", "")).startswith("diverged"):
            continue
        curve = epoch_curve(t)
        if complete and t.value is not None:
            ranked.append((candidate_key(True, len(curve), t.value, t.number), t))
        elif not complete and curve:
            loss = t.user_attrs.get(TRAIN_LOSS_ATTR)
            ranked.append((candidate_key(False, len(curve), min(curve.values()), t.number, loss), t))
    return [t for _, t in sorted(ranked, key=lambda kt: kt[0])]


def describe_best(summary: dict[str, Any], study_name: str, storage: str = "") -> list[str]:
    """``best_summary`` for a person: the best trial with its noise, then what to do about a tie."""
    params = format_params(summary["params"])
    line = f"best: trial {summary['trial']}, val_error {summary['val_error']:.4f}"
    if "standard_error" in summary:
        line += f" ± {summary['standard_error']:.4f}"
        # a study that searched nothing (every value fixed) has no params to name before it
        params += f"{'; ' if params else ''}± is one standard error on {summary['n_validation']} validation examples"
    advice = advice_line(summary, study_name, storage)
    return [f"{line} ({params})", *([advice] if advice else [])]


def tie_line(summary: dict[str, Any], study_name: str, storage: str = "") -> str:
    """The trials within one standard error of the best, and the command that ranks them; "" for none."""
    tied = summary.get("within_one_standard_error")
    if not tied:
        return ""
    k = min(len(tied) + 1, MAX_SUGGESTED_TOP_K)
    where = f" --storage {quote(storage)}" if storage else ""
    return (
        f"within one standard error of it: trial{'s' if len(tied) > 1 else ''} "
        f"{', '.join(map(str, tied))}; one measurement cannot rank them, so retrain the best {k} with"
        f" several seeds before you choose: hpsearch train-best {quote(study_name)}{where} --top-k {k}"
        " -o models/best"
    )


def few_complete_line(summary: dict[str, Any], study_name: str, storage: str = "") -> str:
    """Fewer than MAX_SUGGESTED_TOP_K complete trials, and pruned ones that train-best can retrain: the
    command that compares them; "" otherwise."""
    n, pruned = summary.get("complete_trials"), summary.get("pruned_candidates")
    if n is None or n >= MAX_SUGGESTED_TOP_K or not pruned:
        return ""
    k = min(n + pruned, MAX_SUGGESTED_TOP_K)
    where = f" --storage {quote(storage)}" if storage else ""
    return (
        f"only {n} complete trial{'s' * (n != 1)}; the best pruned ones may retrain better (BENCHMARKS.md,"
        f' "Retraining the top k"), so compare the best {k} on several seeds before you choose:'
        f" hpsearch train-best {quote(study_name)}{where} --top-k {k} -o models/best"
    )


def advice_line(summary: dict[str, Any], study_name: str, storage: str = "") -> str:
    """What to retrain before choosing: the trials the noise cannot rank (``tie_line``), else, with few
    complete trials, the best pruned ones too (``few_complete_line``); "" for nothing."""
    return tie_line(summary, study_name, storage) or few_complete_line(summary, study_name, storage)


def best_config(study: optuna.Study) -> dict[str, Any]:
    """The best trial as config sections: paste ``search_space`` into a config to fix these values."""
    best = best_trial(study)
    if best is None:
        from hpsearch.errors import ConfigError

        raise ConfigError(
            f"study '{study.study_name}' has no complete trial yet; run or resume the search first"
        )
    cfg = study.user_attrs.get(CONFIG_ATTR, {})
    # Values the study held fixed belong to the recipe: without them a pasted config would search them again.
    fixed = {k: v for k, v in cfg.get("search_space", {}).items() if not isinstance(v, dict)}
    noise = best_summary(study) or {}
    return {
        "study": study.study_name,
        "trial": best.number,
        "val_error": best.value,
        **{
            k: noise[k]
            for k in (
                "n_validation",
                "standard_error",
                "within_one_standard_error",
                "complete_trials",
                "pruned_candidates",
            )
            if k in noise
        },
        "best_epoch": best.user_attrs.get("best_epoch"),
        # the seed that carved and sampled the data the trial was measured on (and seeded the sampler)
        "study_settings": {"seed": cfg.get("study", {}).get("seed")},
        "model": _changed(cfg, "model", always=("name",)),
        "data": _changed(cfg, "data", always=("name",)),
        # n_epochs is the study's (the whole schedule, as train-best retrains), not the trial's best epoch:
        # one picked from a single noisy curve is early and fragile
        # less what search_space sets: its value, not train's, is what the trial used
        "train": {
            k: v
            for k, v in _changed(cfg, "train", always=("n_epochs",)).items()
            if k not in cfg.get("search_space", {})
        },
        "search_space": {**fixed, **best.params},
    }


def _changed(cfg: dict[str, Any], section: str, always: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keys of a stored config section that differ from the defaults (the rest need not be pasted)."""
    import dataclasses

    from hpsearch.config import SECTIONS

    defaults = dataclasses.asdict(SECTIONS[section]())
    stored = cfg.get(section, {})
    return {k: v for k, v in stored.items() if k in always or (k in defaults and v != defaults[k])}


def export(study: optuna.Study, fmt: str) -> str:
    rows = trial_rows(study)
    if fmt == "json":
        return json.dumps({"study": study.study_name, "trials": rows}, indent=2, default=str) + "\n"
    names = sorted({k for r in rows for k in r["params"]})
    steps = sorted({int(k) for r in rows for k in r["intermediate_values"]})
    buf = io.StringIO()
    writer = csv.writer(buf)
    base = [
        "number",
        "state",
        "value",
        "epochs_run",
        "epochs",  # with the part of an epoch a divergence stop or the early evaluation cut short
        "best_epoch",
        "duration_s",
        "train_seconds",
        "retry_of",
        "continues",
        "reason",
        "worker",
        "device",
    ]
    writer.writerow(base + [f"params_{n}" for n in names] + [f"val_error_epoch_{s}" for s in steps])
    for r in rows:
        writer.writerow(
            [r[k] for k in base]
            + [r["params"].get(n) for n in names]
            + [r["intermediate_values"].get(str(s)) for s in steps]
        )
    return buf.getvalue()


def _heartbeat_ages(study: optuna.Study, trial_ids: list[int]) -> dict[int, float] | None:
    """Seconds since each running trial's last heartbeat, read from the store's ``trial_heartbeats`` table.

    Optuna 5 has no public reader for heartbeats, so this reads RDBStorage's table directly, read-only, and
    measures the age against the database's clock, as Optuna's own stale check does. None: the store keeps no
    heartbeats (journal file).
    """
    storage = getattr(study._storage, "_backend", study._storage)  # load_study wraps RDBStorage in a cache
    if not isinstance(storage, optuna.storages.RDBStorage):
        return None
    import sqlalchemy
    from optuna.storages._rdb import models

    session = storage.scoped_session()
    try:
        now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
        beat = models.TrialHeartbeatModel
        query = session.query(beat.trial_id, beat.heartbeat).filter(beat.trial_id.in_(trial_ids))
        rows = query.all() if trial_ids else []
    finally:
        session.rollback()
        storage.scoped_session.remove()
    return {trial_id: (now - beat.replace(tzinfo=None)).total_seconds() for trial_id, beat in rows}


def grace_seconds(study: optuna.Study) -> float:
    """How long a running trial may go without a heartbeat before a worker fails and retries it."""
    cfg = study.user_attrs.get(CONFIG_ATTR, {}).get("study", {})
    interval = cfg.get("heartbeat_interval") or 30
    return float(cfg.get("grace_period") or 2 * interval)


def running_status(study: optuna.Study) -> list[dict[str, Any]]:
    """The running trials: worker (host:pid), device, epoch reached, seconds since the last heartbeat, and
    whether it is stale (its worker is presumably dead; the next worker to look fails and retries it)."""
    running = [t for t in visible_trials(study) if t.state == TrialState.RUNNING]
    ages = _heartbeat_ages(study, [t._trial_id for t in running])
    grace = grace_seconds(study)
    n_epochs = study.user_attrs.get(CONFIG_ATTR, {}).get("train", {}).get("n_epochs")
    rows, now = [], datetime.now()
    for t in running:
        age = None if ages is None else ages.get(t._trial_id)
        started = None if t.datetime_start is None else (now - t.datetime_start).total_seconds()
        rows.append(
            {
                "number": t.number,
                "worker": t.user_attrs.get("worker"),
                "device": t.user_attrs.get("device"),
                "epoch": max(t.intermediate_values, default=0),
                "n_epochs": n_epochs,
                "retry_of": resumed_trial(t),
                "resumed_from_epoch": t.user_attrs.get("resumed_from_epoch")
                if "failed_trial" in t.system_attrs
                else None,
                "heartbeat_age_s": None if age is None else round(age, 1),
                "stale": age is not None and age > grace,
                # on a store with heartbeats, none since it started: its worker died before its first one (an
                # older hpsearch recorded the first only once training began), and nothing retries it
                "orphan": ages is not None and age is None and started is not None and started > grace,
                "started_s_ago": None if started is None else round(started, 1),
            }
        )
    return rows


def _span(seconds: float) -> str:
    return (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.0f} min"
        if seconds < 7200
        else f"{seconds / 3600:.0f} h"
    )


def requeue_command(study_name: str, number: int | str, storage: str) -> str:
    """The command that re-queues trial ``number`` by hand, quoted for pasting."""
    return f"hpsearch requeue {quote(study_name)} {number} --storage {quote(storage)}"


def format_running(
    rows: list[dict[str, Any]], grace: float, study_name: str = "STUDY", storage: str = "URL"
) -> str:
    lines = [f"running trials ({len(rows)}):"]
    for r in rows:
        if r.get("orphan"):
            beat = (
                f"no heartbeat in the {_span(r['started_s_ago'])} since it started: its worker died before"
                " its first one (a store an older hpsearch wrote), and nothing retries it by itself; if its"
                f" worker is gone: {requeue_command(study_name, r['number'], storage)}"
            )
        elif r["heartbeat_age_s"] is None:
            beat = "no heartbeat (journal store, or not started yet)"
        else:
            beat = f"last heartbeat {r['heartbeat_age_s']:.0f}s ago"
        line = (
            f"  trial {r['number']}  worker {r['worker'] or '?'}  {r['device'] or ''}"
            f"  epoch {r['epoch']}/{r['n_epochs'] or '?'}  {beat}"
        )
        if r["retry_of"] is not None:
            line += f"  (retry of {r['retry_of']}, resumed after epoch {r['resumed_from_epoch'] or 0})"
        if r["stale"]:
            line += f"  STALE: no heartbeat for over {grace:.0f}s; the next worker fails and retries it"
        lines.append(line)
    return "\n".join(lines)


def state_counts(study: optuna.Study) -> dict[str, int]:
    c = counts(study)
    return {s.name.lower(): c.get(s, 0) for s in TrialState}
