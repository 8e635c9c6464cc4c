"""A study as one self-contained HTML page (plotly.js inline, no server, no CDN), or as PNG files.

Figures: optimization history, intermediate values (the learning curves), learning rate vs validation error
(log axis), batch size vs validation error, parameter importances; then the best trial, the cost summary and a
table of every trial. A figure that cannot be drawn for this study (importances need two complete trials that
differ) is replaced by a sentence saying why.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.pruners import replaced

# (id, title, what it shows); the id is the figure's element id in the HTML and its PNG file name.
FIGURES = (
    ("optimization-history", "Optimization history", "val_error of each complete trial and the best so far."),
    (
        "intermediate-values",
        "Learning curves",
        "val_error reported after each epoch; pruned trials stop early.",
    ),
    (
        "learning-rate",
        "Learning rate vs validation error",
        "The lowest val_error each trial reached, against its learning rate (log axis).",
    ),
    (
        "batch-size",
        "Batch size vs validation error",
        "The lowest val_error each trial reached, by batch size.",
    ),
    (
        "param-importances",
        "Parameter importances",
        "How much of the variation in val_error each hyperparameter explains (PED-ANOVA).",
    ),
)
DIVERGED_Y = 1.0  # diverged trials report no val_error; they are drawn at the worst possible value
_STYLE = {
    "complete": dict(color="#1f77b4", symbol="circle"),
    "pruned": dict(color="#ff7f0e", symbol="circle-open"),
    "diverged": dict(color="#d62728", symbol="x"),
}


@dataclass
class Figure:
    id: str
    title: str
    caption: str
    figure: Any = None  # a plotly Figure, or None with ``missing`` saying why
    missing: str = ""


def _require_plotly() -> None:
    import importlib.util

    if importlib.util.find_spec("plotly") is None:
        raise ConfigError("the report needs plotly; run `pip install 'hpsearch[report]'`")


def _kind(t: FrozenTrial) -> str | None:
    if t.state == TrialState.COMPLETE:
        return "complete"
    if t.state == TrialState.PRUNED:
        return "diverged" if str(t.user_attrs.get("prune_reason", "")).startswith("diverged") else "pruned"
    return None


def _lowest_error(t: FrozenTrial) -> float:
    values = [v for v in t.intermediate_values.values() if math.isfinite(v)]
    return min(values) if values else DIVERGED_Y


def _hover(t: FrozenTrial) -> str:
    from hpsearch.results import format_params

    params = format_params(t.params, "<br>")
    reason = t.user_attrs.get("prune_reason", "")
    return f"trial {t.number} ({t.state.name.lower()})<br>{params}" + (f"<br>{reason[:90]}" if reason else "")


def _param_scatter(trials: list[FrozenTrial], param: str, log: bool):
    import plotly.graph_objects as go

    fig = go.Figure()
    for kind in ("complete", "pruned", "diverged"):
        group = [t for t in trials if _kind(t) == kind and param in t.params]
        if not group:
            continue
        name = f"{kind} (drawn at {DIVERGED_Y:g})" if kind == "diverged" else kind
        fig.add_trace(
            go.Scatter(
                x=[t.params[param] if log else str(t.params[param]) for t in group],
                y=[_lowest_error(t) for t in group],
                mode="markers",
                name=name,
                marker=dict(size=11, line=dict(width=2), **_STYLE[kind]),
                text=[_hover(t) for t in group],
                hovertemplate="%{text}<br>val_error %{y:.4f}<extra></extra>",
            )
        )
    if log:
        fig.update_xaxes(type="log", title=param, exponentformat="e")
    else:
        order = sorted(
            {t.params[param] for t in trials if param in t.params}, key=lambda v: (str(type(v)), v)
        )
        fig.update_xaxes(
            type="category", title=param, categoryorder="array", categoryarray=[str(v) for v in order]
        )
    fig.update_yaxes(title="lowest val_error")
    return fig


def _searched(study: optuna.Study, name: str, trials: list[FrozenTrial]) -> str:
    """Why ``name`` has no figure, or "" when it was searched."""
    if any(name in t.params for t in trials):
        return ""
    space = study.user_attrs.get("hpsearch_config", {}).get("search_space", {})
    if name in space and not isinstance(space[name], dict):
        return f"{name} was not searched in this study (fixed at {space[name]})."
    return f"no finished trial has a {name} yet."


def _importances(study: optuna.Study):
    """(figure, "") or (None, why not): PED-ANOVA needs enough complete trials that differ."""
    import warnings

    from optuna.visualization import plot_param_importances

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None, "no complete trial yet."  # Optuna would log a warning line and draw nothing
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fig = plot_param_importances(study, target_name="val_error")
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return None, f"importances cannot be computed for this study ({exc})."
    # Optuna warns (and returns equal importances) when too few trials separate good from bad.
    said = [
        str(w.message)
        for w in caught
        if issubclass(w.category, UserWarning)
        and not issubclass(w.category, optuna.exceptions.ExperimentalWarning)
    ]
    if said or not fig.data:
        why = said[0] if said else "no complete trial varies the searched hyperparameters"
        return None, f"importances cannot be computed for this study yet: {why} Run more trials."
    return fig, ""


def build_figures(study: optuna.Study) -> list[Figure]:
    """Every figure of the report; the ones this study cannot have carry the reason instead."""
    _require_plotly()
    from optuna.visualization import plot_intermediate_values, plot_optimization_history

    everything = study.get_trials(deepcopy=False)
    gone = replaced(everything)  # a paused trial another continued: the successor carries its curve
    trials = [t for t in everything if _kind(t) is not None and t.number not in gone]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    figs = [Figure(*spec) for spec in FIGURES]
    by_id = {f.id: f for f in figs}
    if complete:
        by_id["optimization-history"].figure = plot_optimization_history(study, target_name="val_error")
    else:
        by_id["optimization-history"].missing = "no complete trial yet."
    if any(t.intermediate_values for t in trials):
        fig = plot_intermediate_values(study)
        drawn_twice = {f"Trial{n}" for n in gone}
        fig.data = [d for d in fig.data if d.name not in drawn_twice]  # one curve each
        fig.update_xaxes(title="epoch", dtick=1)
        fig.update_yaxes(title="val_error")
        by_id["intermediate-values"].figure = fig
    else:
        by_id["intermediate-values"].missing = "no trial has reported a validation error yet."
    for fid, param, log in (("learning-rate", "learning_rate", True), ("batch-size", "batch_size", False)):
        why = _searched(study, param, trials)
        if why:
            by_id[fid].missing = why
        else:
            by_id[fid].figure = _param_scatter(trials, param, log)
    by_id["param-importances"].figure, by_id["param-importances"].missing = _importances(study)
    for f in figs:
        if f.figure is not None:
            f.figure.update_layout(title=f.title, height=460, margin=dict(l=60, r=30, t=60, b=50))
    return figs


# --- HTML ---------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",sans-serif;margin:0;color:#222;
background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{margin:0 0 4px}h2{margin:32px 0 4px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin:0 0 16px}.caption{color:#555;margin:4px 0 8px}
.card{background:#fff;border:1px solid #e3e3e3;border-radius:8px;padding:12px 16px;margin:12px 0}
.missing{color:#8a6d3b;background:#fcf8e3;border:1px solid #faebcc;border-radius:6px;padding:12px}
table{border-collapse:collapse;font-size:14px}
td,th{padding:4px 10px;border-bottom:1px solid #eee;text-align:left}
th{background:#f3f3f3}.num{text-align:right;font-variant-numeric:tabular-nums}
code{background:#f1f1f1;padding:1px 4px;border-radius:3px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}
@media(max-width:900px){.grid{grid-template-columns:1fr}}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4g}"
    return "" if v is None else str(v)


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _best_html(study: optuna.Study, best: FrozenTrial | None) -> str:
    if best is None:
        return '<p class="missing">No complete trial yet.</p>'
    a = best.user_attrs
    rows = [
        ("trial", best.number),
        ("val_error", best.value),
        ("best epoch", a.get("best_epoch")),
        ("epochs run", a.get("epochs_run")),
    ]
    rows += [(k, v) for k, v in best.params.items()]
    rows += [
        ("train seconds", a.get("train_seconds")),
        ("samples/s", a.get("samples_per_second")),
        ("device", a.get("device")),
        ("worker", a.get("worker")),
        ("finished", best.datetime_complete and f"{best.datetime_complete:%Y-%m-%d %H:%M:%S}"),
    ]
    from hpsearch.results import learning_curve

    curve = ", ".join(f"{label}: {v:.4f}" for _, label, v in learning_curve(best))
    rows.append(("val_error by epoch", curve))
    from hpsearch.config import mask_password
    from hpsearch.study import CONFIG_ATTR

    stored = study.user_attrs.get(CONFIG_ATTR, {}).get("study", {}).get("storage")
    where = f" --storage {mask_password(stored)}" if stored else ""
    return (
        _table(rows) + f'<p class="caption">Get the model: <code>hpsearch train-best {_e(study.study_name)}'
        f"{_e(where)} -o best-model</code></p>"
    )


def _cost_html(cost) -> str:
    rows = [("compute", f"{cost.device_hours:.3g} device-hours")]
    rows += [(f"  on {dev}", f"{h:.3g} h") for dev, h in sorted(cost.device_hours_by_device.items())]
    if cost.epochs_without_pruning:
        rows.append(
            (
                "epochs trained",
                f"{cost.epochs_trained_text} of {cost.baseline_text}",
            )
        )
    else:
        rows.append(("epochs trained", cost.epochs_trained_text))
    if cost.epoch_budget is not None:
        rows.append(("epoch budget", f"{cost.epochs_spent:.1f} of {cost.epoch_budget:g} epochs spent"))
    if cost.time_to_best_s is not None:
        from hpsearch.cost import format_seconds

        rows.append(
            (
                "time to best trial",
                f"{format_seconds(cost.time_to_best_s)} (trial {cost.best_trial}) of "
                f"{format_seconds(cost.wall_s or 0)} wall time",
            )
        )
    return _table(rows)


def _trials_html(study: optuna.Study) -> str:
    from hpsearch.results import trial_rows

    rows = trial_rows(study)
    names = sorted({k for r in rows for k in r["params"]})
    head = "".join(
        f"<th>{_e(h)}</th>" for h in ["trial", "state", "val_error", "epochs", "train s", *names, "why"]
    )
    body = []
    for r in rows:
        cells = [
            r["number"],
            r["state"].lower(),
            _fmt(r["value"]),
            f"{r['epochs']:.2f}".removesuffix(".00"),  # as `show` gives it, cut-short epochs included
            _fmt(r["train_seconds"]),
            *(_fmt(r["params"].get(n)) for n in names),
            (r["reason"] or "")[:100],
        ]
        body.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_html(study: optuna.Study) -> str:
    """The whole report as one HTML string with plotly.js inline."""
    from plotly.offline import get_plotlyjs

    from hpsearch.config import mask_password
    from hpsearch.cost import compute_cost
    from hpsearch.results import state_counts
    from hpsearch.study import CONFIG_ATTR, best_trial

    cfg = study.user_attrs.get(CONFIG_ATTR, {})
    counts = state_counts(study)
    cost, best = compute_cost(study), best_trial(study)
    sub = (
        f"model {cfg.get('model', {}).get('name', '?')}"
        f" on {cfg.get('data', {}).get('name') or 'local files'}; "
        f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed trials; "
        f"store {mask_password(cfg.get('study', {}).get('storage')) or '?'}; "
        f"written {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    )
    parts = [
        f"<h1>Study <code>{_e(study.study_name)}</code></h1><p class='sub'>{_e(sub)}</p>",
        "<div class='grid'><section><h2>Best trial</h2><div class='card' id='best-trial'>"
        f"{_best_html(study, best)}</div></section>"
        f"<section><h2>Cost</h2><div class='card' id='cost'>{_cost_html(cost)}</div></section></div>",
    ]
    config = {"displaylogo": False, "responsive": True}
    for f in build_figures(study):
        parts.append(
            f"<section id='section-{f.id}'><h2>{_e(f.title)}</h2><p class='caption'>{_e(f.caption)}</p>"
        )
        if f.figure is None:
            parts.append(f"<p class='missing' id='{f.id}'>Not available: {_e(f.missing)}</p></section>")
        else:
            div = f.figure.to_html(full_html=False, include_plotlyjs=False, div_id=f.id, config=config)
            parts.append(f"<div class='card'>{div}</div></section>")
    parts.append(
        f"<section><h2>All trials</h2><div class='card' id='trials'>{_trials_html(study)}</div></section>"
    )
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>hpsearch report: "
        f"{_e(study.study_name)}</title><style>{_CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head>"
        f"<body><main>{''.join(parts)}</main></body></html>\n"
    )


def write_html(study: optuna.Study, path: str | Path) -> Path:
    path = Path(path)
    text = render_html(study)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- PNG ----------------------------------------------------------------------------------------------------


def write_pngs(
    study: optuna.Study, directory: str | Path, width: int = 1000, height: int = 560
) -> list[Path]:
    """One PNG per available figure, drawn by kaleido in a headless Chrome/Chromium (one browser for all)."""
    import importlib.util
    from importlib.metadata import version

    if importlib.util.find_spec("kaleido") is None or int(version("kaleido").split(".")[0]) < 1:
        raise ConfigError(
            "--format png needs kaleido >= 1.0 (and Chrome or Chromium); run `pip install 'kaleido>=1'`"
            " or write HTML with --format html"
        )
    figs = [f for f in build_figures(study) if f.figure is not None]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{f.id}.png" for f in figs]
    import plotly.io as pio

    try:
        pio.write_images([f.figure for f in figs], paths, width=width, height=height, scale=2)
    except Exception as exc:  # kaleido raises its own types when no browser can be started
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise HpsearchError(
            f"cannot render PNG files: kaleido could not drive Chrome/Chromium ({first}); install "
            "chromium (or run `plotly_get_chrome`), or use --format html"
        ) from None
    return paths
