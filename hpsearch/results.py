"""Reading studies back: summaries of a store, trial tables, the best configuration, exports."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.study import CONFIG_ATTR, OVER_BUDGET_ATTR, _summaries, best_trial, open_storage

STATES = ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")


def visible_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials, less the ones a worker asked for past the budget and gave back untouched."""
    return [t for t in study.get_trials(deepcopy=False) if OVER_BUDGET_ATTR not in t.user_attrs]


def default_stores(directory: str = "studies") -> list[str]:
    """The SQLite stores `hpsearch search` made under ``directory`` by default."""
    return [f"sqlite:///{p.as_posix()}" for p in sorted(Path(directory).glob("*.db"))]


def list_studies(storage_url: str) -> list[dict[str, Any]]:
    storage = open_storage(storage_url, create=False)
    out = []
    for summary in _summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = visible_trials(study)
        states = Counter(t.state.name for t in trials)
        best = best_trial(study)
        cfg = study.user_attrs.get(CONFIG_ATTR, {})
        out.append({
            "study": summary.study_name,
            "storage": storage_url,
            "n_trials": cfg.get("study", {}).get("n_trials"),
            "trials": {state.lower(): states.get(state, 0) for state in STATES},
            "best_value": best.value if best else None,
            "best_trial": best.number if best else None,
            "model": cfg.get("model", {}).get("name"),
        })
    return out


def _duration(t: FrozenTrial) -> float | None:
    if t.datetime_start is None:
        return None
    end = t.datetime_complete or datetime.now()
    return (end - t.datetime_start).total_seconds()


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in visible_trials(study):
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": dict(t.params),
            "epochs_run": t.user_attrs.get("epochs_run", len(t.intermediate_values)),
            "best_epoch": t.user_attrs.get("best_epoch"),
            "duration_s": None if _duration(t) is None else round(_duration(t), 1),
            "intermediate_values": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            "retry_of": t.system_attrs.get("failed_trial"),
            "reason": t.user_attrs.get("prune_reason") or t.user_attrs.get("fail_reason"),
            "worker": t.user_attrs.get("worker"),
            "device": t.user_attrs.get("device"),
            "train_seconds": t.user_attrs.get("train_seconds"),
        })
    return rows


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
        if r["retry_of"] is not None:
            note = f"retry of {r['retry_of']}" + (f"; {note}" if note else "")
        lines.append([
            str(r["number"]), r["state"].lower(), "" if r["value"] is None else f"{r['value']:.4f}",
            str(r["epochs_run"] or 0), "" if r["duration_s"] is None else f"{r['duration_s']:.0f}s", params,
            note[:80],
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1] for line in lines)


def best_config(study: optuna.Study) -> dict[str, Any]:
    """The best trial as config sections: paste ``search_space`` into a config to fix these values."""
    best = best_trial(study)
    if best is None:
        from hpsearch.errors import ConfigError

        raise ConfigError(f"study '{study.study_name}' has no complete trial yet; run or resume the search first")
    cfg = study.user_attrs.get(CONFIG_ATTR, {})
    return {
        "study": study.study_name,
        "trial": best.number,
        "val_error": best.value,
        "best_epoch": best.user_attrs.get("best_epoch"),
        "search_space": dict(best.params),
        "train": {"n_epochs": best.user_attrs.get("best_epoch") or cfg.get("train", {}).get("n_epochs")},
        "model": {"name": cfg.get("model", {}).get("name")},
    }


def export(study: optuna.Study, fmt: str) -> str:
    rows = trial_rows(study)
    if fmt == "json":
        return json.dumps({"study": study.study_name, "trials": rows}, indent=2, default=str) + "\n"
    names = sorted({k for r in rows for k in r["params"]})
    steps = sorted({int(k) for r in rows for k in r["intermediate_values"]})
    buf = io.StringIO()
    writer = csv.writer(buf)
    base = ["number", "state", "value", "epochs_run", "best_epoch", "duration_s", "train_seconds", "retry_of",
            "reason", "worker", "device"]
    writer.writerow(base + [f"params_{n}" for n in names] + [f"val_error_epoch_{s}" for s in steps])
    for r in rows:
        writer.writerow([r[k] for k in base] + [r["params"].get(n) for n in names]
                        + [r["intermediate_values"].get(str(s)) for s in steps])
    return buf.getvalue()


def state_counts(study: optuna.Study) -> dict[str, int]:
    c = Counter(t.state for t in visible_trials(study))
    return {s.name.lower(): c.get(s, 0) for s in TrialState}
