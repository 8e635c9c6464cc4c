"""optuna-dashboard over an hpsearch store, and the notes it shows.

The dashboard already draws every trial's learning curve (the validation error reported at each epoch), its
params and user attributes (best_epoch, epochs_run, train_seconds, samples_per_second, device, worker,
prune_reason/fail_reason). hpsearch adds the words: a study note (model, data, search space, budget, the
command that launched it, what it cost) and a note on every pruned, diverged or failed trial saying why.

Notes live in the study's system attributes in optuna-dashboard's layout, so the dashboard shows and edits
them.
Text a person writes below the study note's closing rule is kept when hpsearch rewrites its part.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import warnings
from datetime import datetime
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import STORAGE_ENV, Config, mask_password, sqlite_url
from hpsearch.errors import ConfigError
from hpsearch.pruners import EARLY_STEP, PAUSED_ATTR
from hpsearch.results import DIED, advice_line, best_summary, format_params

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# The end of the part of the study note hpsearch writes; whatever follows it belongs to people and is kept.
NOTE_FOOTER = "*hpsearch rewrites the text above this line at each search; notes below it are kept.*\n\n---\n"


# --- which store --------------------------------------------------------------------------------------------


def default_storage(directory: str = "studies") -> str:
    """``$HPSEARCH_STORAGE``, else the one SQLite store under ``studies/``; anything else needs --storage."""
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    stores = sorted(Path(directory).glob("*.db"))
    if len(stores) == 1:
        return sqlite_url(stores[0])
    if not stores:
        raise ConfigError(
            f"no study store under {directory}/; pass --storage URL (e.g. sqlite:///studies/demo.db)"
            " or run `hpsearch search` first"
        )
    names = ", ".join(p.name for p in stores)
    raise ConfigError(
        f"{len(stores)} study stores under {directory}/ ({names}); pick one with --storage,"
        f" e.g. --storage {sqlite_url(stores[0])}"
    )


# --- the server ---------------------------------------------------------------------------------------------


class _ThreadedWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open polling connection must not keep the process alive


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # the page polls every few seconds: one log line each is noise
        pass


def _notes_only(app, allow_writes: bool):
    """Refuse the dashboard's destructive requests (delete or rename a study, tell a trial, migrate the
    schema) unless allowed: trials are paid for in device-hours. Reading and editing notes always work."""

    def guarded(environ, start_response):
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "").rstrip("/")
        if allow_writes or method in ("GET", "HEAD") or (method == "PUT" and path.endswith("/note")):
            return app(environ, start_response)
        body = json.dumps(
            {
                "reason": "hpsearch dashboard: only notes can be edited; restart it with"
                " --allow-writes to delete, rename or tell from the page"
            }
        ).encode()
        start_response(
            "403 Forbidden", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return guarded


class DashboardServer:
    """optuna-dashboard's WSGI app on a threaded wsgiref server that can be stopped (``run_server`` cannot).

    Use as a context manager, or ``serve_forever()``; ``port=0`` picks a free port.
    """

    def __init__(
        self, storage_url: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, allow_writes: bool = False
    ):
        from optuna_dashboard import wsgi

        from hpsearch.study import open_storage

        storage = open_storage(storage_url, create=False)
        self.storage_url = storage_url
        try:
            self.httpd = make_server(
                host,
                port,
                _notes_only(wsgi(storage), allow_writes),
                server_class=_ThreadedWSGIServer,
                handler_class=_QuietHandler,
            )
        except OSError as exc:  # a flag's mistake: exit 2
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                + (
                    "pick another --port"
                    if exc.errno in (errno.EADDRINUSE, errno.EACCES)
                    else "check --host: an address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
                )
            ) from None
        self.host, self.port = host, self.httpd.server_port
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/dashboard"

    @property
    def loopback_only(self) -> bool:
        return self.host in LOOPBACK

    def serve_forever(self) -> None:
        """Serve until Ctrl-C or SIGTERM (both leave as KeyboardInterrupt)."""
        import signal

        def stop(signum, frame):
            raise KeyboardInterrupt

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, stop)
        try:
            self.httpd.serve_forever()
        finally:
            self.httpd.server_close()

    def __enter__(self) -> DashboardServer:
        # Already bound and listening: the first request is answered as soon as the thread runs.
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="dashboard")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)


# --- notes --------------------------------------------------------------------------------------------------


def read_note(study: optuna.Study, trial: FrozenTrial | None = None) -> str:
    """The study's note, or a trial's (a FrozenTrial works, unlike ``optuna_dashboard.get_note``)."""
    from optuna_dashboard._note import get_note_from_system_attrs

    attrs = study._storage.get_study_system_attrs(study._study_id)
    return get_note_from_system_attrs(attrs, None if trial is None else trial._trial_id)["body"]


def write_note(study: optuna.Study, body: str, trial: FrozenTrial | None = None) -> None:
    """Save a note as optuna-dashboard does, bumping its version; for a FrozenTrial too."""
    from optuna_dashboard._note import note_ver_key, save_note_with_version

    trial_id = None if trial is None else trial._trial_id
    attrs = study._storage.get_study_system_attrs(study._study_id)
    version = int(attrs.get(note_ver_key(trial_id), 0)) + 1
    save_note_with_version(study._storage, study._study_id, trial_id, version, body)


def mask_command(argv: list[str] | None) -> str:
    """A command line for people to read and rerun, passwords in storage URLs masked."""
    import shlex

    return " ".join(shlex.quote(mask_password(word) or "") for word in argv or [])


def _distribution(spec: Any) -> str:
    if not isinstance(spec, dict):
        return f"fixed at {spec}"
    if spec.get("type") == "categorical":
        return "one of " + ", ".join(str(c) for c in spec.get("choices", []))
    scale = ", log scale" if spec.get("log") else f", step {spec['step']}" if spec.get("step") else ""
    return f"{spec.get('type')} in [{spec.get('low'):g}, {spec.get('high'):g}]{scale}"


RUNG_RULES = {  # the study note's words for study.pause_at_rungs
    True: "; a trial not yet among the best at a rung pauses there and is continued once it is",
    False: "; each rung decides at once",
}


def study_note_text(
    cfg: Config,
    command: str = "",
    data: Any = None,
    cost: Any = None,
    best: FrozenTrial | None = None,
    noise: dict[str, Any] | None = None,
) -> str:
    """The study note's Markdown: what is searched, on what, with what budget, launched how, at what cost.
    ``noise`` is ``results.best_summary``: the best val_error's standard error and the trials within it."""
    s, m, d, t = cfg.study, cfg.model, cfg.data, cfg.train
    source = (
        d.name if d.name else f"{d.train_file}" + (f" + {d.validation_file}" if d.validation_file else "")
    )
    if d.subset:
        source += f"/{d.subset}"
    lines = [f"## Study `{s.name}`", ""]
    what = f"Fine-tunes **{m.name}** (max_length {m.max_length}) on **{source}**"
    if data is not None:
        what += (
            f" ({len(data.train):,} train / {len(data.validation):,} validation examples,"
            f" {data.num_labels} classes; always answering the majority class gives val_error"
            f" {data.majority_error():.4f}"
        )
        if (other := data.other_constant_error()) is not None:
            what += f", always answering the validation set's largest class {other:.4f}"
        what += ")"
    lines += [what + ", minimising **val_error** (the validation error rate) reported after every epoch.", ""]
    budget = f"{s.n_trials} finished trials, up to {t.n_epochs} epochs each"
    if s.epoch_budget:
        budget += f"; {s.epoch_budget:g} epochs in all"
    if s.timeout:
        budget += f"; {s.timeout:g} s per invocation"
    lines += [
        "| setting | value |",
        "| --- | --- |",
        f"| sampler | {s.sampler} (seed {s.seed}, {s.n_startup_trials} startup trials) |",
        f"| pruner | {s.pruner}"
        + (" (epochs are the resource)" if s.pruner in ("hyperband", "successive-halving") else "")
        + (RUNG_RULES[s.pauses_at_rungs] if s.pruner == "successive-halving" else "")
        + " |",
        f"| budget | {budget} |",
        f"| device / precision | {t.device} / {t.precision} |",
        f"| storage | `{mask_password(s.storage)}` |",
        "",
        "### Search space",
        "",
        "| hyperparameter | searched over |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {_distribution(spec)} |" for name, spec in cfg.search_space.items()]
    lines += ["", "### Launched with", "", "```", command or "(unknown)", "```", ""]
    if best is not None:
        params = format_params(best.params)
        se = (
            f" ± {noise['standard_error']:.4f} (one standard error)"
            if noise and "standard_error" in noise
            else ""
        )
        lines += [
            f"**Best so far:** trial {best.number}, val_error {best.value:.4f}{se} at epoch "
            f"{best.user_attrs.get('best_epoch')} ({params}).",
            "",
        ]
        advice = advice_line(noise or {}, s.name, mask_password(s.storage))
        if advice:
            lines += [advice[0].upper() + advice[1:] + ".", ""]
    if cost is not None:
        lines += [
            "### Cost",
            "",
            f"- compute: {cost.device_hours:.3g} device-hours"
            + "".join(f"; {dev}: {h:.3g}" for dev, h in sorted(cost.device_hours_by_device.items())),
        ]
        if cost.epochs_without_pruning:
            lines.append(f"- epochs trained: {cost.epochs_trained_text} of {cost.baseline_text}")
        if cost.time_to_best_s is not None:
            from hpsearch.cost import format_seconds

            lines.append(
                f"- time to the best trial: {format_seconds(cost.time_to_best_s)} of "
                f"{format_seconds(cost.wall_s or 0)} wall time (trial {cost.best_trial})"
            )
        lines.append("")
    lines += [f"_Updated {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}._", "", NOTE_FOOTER]
    return "\n".join(lines)


def _keep_user_text(old: str) -> str:
    """What a person wrote in the study note: below hpsearch's footer, or the whole note if hpsearch never
    wrote one."""
    if not old.strip():
        return ""
    if NOTE_FOOTER in old:
        return old.split(NOTE_FOOTER, 1)[1]
    return old


def write_study_note(
    study: optuna.Study,
    cfg: Config,
    command: list[str] | str | None = None,
    data: Any = None,
) -> None:
    """Write (or refresh) the study note, with the best trial and the cost so far."""
    from hpsearch.cost import compute_cost
    from hpsearch.study import best_trial

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val_error"])  # the dashboard's axis label, instead of "Objective 0"
    cost = compute_cost(study) if study.get_trials(deepcopy=False) else None
    best = best_trial(study)
    text = mask_command(command.split() if isinstance(command, str) else command)
    body = study_note_text(cfg, text, data, cost, best, best_summary(study) if best else None)
    write_note(study, body + _keep_user_text(read_note(study)))


def trial_note_text(
    trial: FrozenTrial, resumed_as: int | None = None, continued_as: int | None = None
) -> str:
    """Why a pruned, diverged or failed trial stopped, its learning curve and where it ran; for a failed
    trial that was retried, ``resumed_as``, the retry's number; for a paused one continued, ``continued_as``."""
    attrs = trial.user_attrs
    prune, fail = attrs.get("prune_reason", ""), attrs.get("fail_reason", "")
    if trial.state == TrialState.PRUNED and prune.startswith("diverged"):
        title, reason = f"Trial {trial.number} diverged", prune.removeprefix("diverged: ")
        hint = (
            "Its training loss went wrong, so it was stopped at once instead of being trained to the end;"
            " the usual cause is a learning rate too high for this batch size."
        )
    elif trial.state == TrialState.PRUNED and PAUSED_ATTR in attrs:
        title, reason = f"Trial {trial.number} paused", prune
        hint = (
            "Its validation error was not yet among the best at this rung (or too few trials had reached it to"
            " tell), so it waits there with its checkpoint. Once enough later trials rank below it, a new trial"
            " continues it from that checkpoint (`hpsearch show` names it); otherwise it stays pruned."
            if continued_as is None
            else f"It paused there until enough later trials ranked below it; trial {continued_as} continues it"
            " from its checkpoint, with its hyperparameters and curve."
        )
    elif trial.state == TrialState.PRUNED:
        title, reason = f"Trial {trial.number} pruned", prune or "pruned"
        hint = (
            "Its validation error was behind the other trials' at the same epoch (or tied with theirs at a"
            " higher training loss, as when every trial still predicts one class), so the pruner stopped it."
        )
    else:
        title, reason = f"Trial {trial.number} failed", fail or DIED
        hint = (
            "The search went on without it; `hpsearch show` lists every failure, `--debug` shows tracebacks."
            if resumed_as is None
            else f"Trial {resumed_as} resumes it from its last checkpoint, with its hyperparameters and curve."
        )
    lines = [f"### {title}", "", f"**Why:** {reason}", "", hint, ""]
    from hpsearch.results import learning_curve

    curve = learning_curve(trial)
    if curve:
        losses = iter(attrs.get("val_losses", []))  # one per epoch end, none for an early evaluation
        lines += ["| epoch | val_error | val_loss |", "| --- | --- | --- |"]
        lines += [
            f"| {label} | {value:.4f} | {next(losses, '') if step != EARLY_STEP else ''} |"
            for step, label, value in curve
        ]
        lines.append("")
    params = format_params(trial.params)
    n = int(attrs.get("epochs_run", len(curve)))
    seconds, device, worker = (
        attrs.get("train_seconds", 0),
        attrs.get("device", "?"),
        attrs.get("worker", "?"),
    )
    where = f"{seconds:.1f} s on {device} (worker {worker})"
    ran = (
        f"Stopped during epoch {n + 1} after {where}"
        if title.endswith("diverged")
        else (f"Ran {n} epoch{'' if n == 1 else 's'}, {where}")
    )
    lines += [f"Params: {params}.", "", f"{ran}."]
    return "\n".join(lines) + "\n"


def write_trial_note(
    study: optuna.Study, trial: FrozenTrial, resumed_as: int | None = None, continued_as: int | None = None
) -> None:
    """Note why ``trial`` stopped early; complete trials need no note."""
    if trial.state in (TrialState.PRUNED, TrialState.FAIL):
        write_note(study, trial_note_text(trial, resumed_as, continued_as), trial)
