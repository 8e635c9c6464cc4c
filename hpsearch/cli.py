"""The command line: parse, load the config, call one library function, translate errors.

The only module that imports click. Bad input exits 2 with one line; runtime failures exit 1.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from shlex import quote

import click
import yaml

from hpsearch.config import STORAGE_ENV, check_writable, load_config, sqlite_url
from hpsearch.errors import ConfigError, HpsearchError, StorageError


class _Fail(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"hpsearch: error: {self.format_message()}", err=True)


class HpsearchGroup(click.Group):
    """Every error leaves as one line on stderr: 2 for bad input, 1 for runtime failures."""

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        self.command_name = command.name if command else name  # for the message after a Ctrl-C
        return name, command, rest

    def main(self, args=None, prog_name=None, **kwargs):
        debug = "--debug" in (sys.argv[1:] if args is None else list(args))
        self.argv = ["hpsearch", *(sys.argv[1:] if args is None else args)]  # for the study note
        try:
            return super().main(args, prog_name or "hpsearch", standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
            sys.exit(2)
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
            click.echo(f"hpsearch: error: {exc.format_message()}{hint}", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt):
            # click turns Ctrl-C into Abort; the search has already re-queued its running trial by then.
            command = getattr(self, "command_name", None)
            click.echo(
                "hpsearch: interrupted; rerun the command to resume (a trial that was running is re-queued"
                " from its last epoch)"
                if command == "search"
                else "hpsearch: interrupted; train-best does not resume: rerun it to start over, with an -o"
                " folder that is new or empty"
                if command == "train-best"
                else "hpsearch: interrupted",
                err=True,
            )
            sys.exit(130)
        except Exception as exc:  # a bug, not a user mistake: still one line unless --debug
            if debug:
                traceback.print_exc()
            full = _disk_full(exc)
            if full is not None:
                click.echo(
                    f"hpsearch: error: the disk is full ({full}); free some space, then rerun the command (a"
                    " search resumes where it stopped)",
                    err=True,
                )
                sys.exit(1)
            click.echo(
                f"hpsearch: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the "
                "traceback)",
                err=True,
            )
            sys.exit(1)


def _disk_full(exc: BaseException) -> str | None:
    """What ran out of space, when ``exc`` or an error behind it is a full disk (Optuna reports SQLite's as a
    commit of invalid data, "e.g. exceeding max length"); None otherwise."""
    import errno

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc.strerror)
        if "database or disk is full" in str(exc):
            return "SQLite: database or disk is full"
        exc = exc.__cause__ or exc.__context__
    return None


def _translate(func):
    """Library errors -> exit codes, in one place."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            raise _Fail(str(exc), 2) from None
        except (StorageError, HpsearchError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            raise _Fail(str(exc), 1) from None
        finally:
            from hpsearch.study import close_storages

            close_storages()

    return wrapper


storage_option = click.option(
    "--storage",
    metavar="URL",
    help=f"Study store: sqlite:///studies/NAME.db, postgresql+psycopg://USER:PASS@HOST/DB, or a journal file "
    f"(*.log). Default: the config's study.storage (search), then ${STORAGE_ENV}, else studies/STUDY.db.",
)


def format_option(*choices: str, help: str = "Output format."):
    """``--format`` with the first choice as default, shared by the commands that print results."""
    return click.option(
        "--format", "fmt", type=click.Choice(choices), default=choices[0], show_default=True, help=help
    )


def _check_not_a_store(output: str, ext: str) -> None:
    """``-o`` of export and report is overwritten: refuse a file that holds a study store (a typo such as
    ``-o studies/demo.db`` would replace every trial with a CSV or HTML file)."""
    from hpsearch.study import store_kind

    kind = store_kind(output)
    if kind is not None:
        raise ConfigError(
            f"-o {output}: is {kind}, which writing the {ext.upper()} file would destroy with its trials; give"
            f" another file name, e.g. -o {Path(output).with_suffix('.' + ext)}"
        )


def _storage_for(study: str | None, storage: str | None) -> str:
    return storage or os.environ.get(STORAGE_ENV) or sqlite_url(f"studies/{study}.db")


@click.group(cls=HpsearchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="hpsearch")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Hyperparameter search for fine-tuning transformer text classifiers, on Optuna.

    \b
    Quick start:
      hpsearch search studies/demo.yaml        # run (or resume) a search
      hpsearch show demo                       # its trials
      hpsearch best demo                       # the best hyperparameters, ready to paste
    """
    ctx.obj = {"debug": debug}
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    import optuna  # noqa: F401  (quiet Optuna's per-trial INFO lines; hpsearch prints its own)

    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.WARNING)


@cli.command()
@click.argument("config_file", metavar="CONFIG", type=click.Path(dir_okay=False))
@storage_option
@click.option("--study-name", help="Study name (default: study.name, else the config file's name).")
@click.option(
    "--n-trials", type=int, help="Total finished trials for the study, counting those already stored."
)
@click.option(
    "--timeout", type=float, help="Seconds this invocation may search before it stops starting trials."
)
@click.option(
    "--epoch-budget",
    type=float,
    help="Epochs all trials may train together (all workers); no trial starts once they have.",
)
@click.option("--sampler", help="tpe (default), random, grid, cmaes, gp or qmc.")
@click.option("--pruner", help="successive-halving (default, ASHA), hyperband, median, percentile or none.")
@click.option("--seed", type=int, help="Sampler seed.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override any config key, e.g. --set train.n_epochs=2 (repeatable; values are YAML).",
)
@click.option(
    "--workers",
    "n_workers",
    type=click.IntRange(min=1),
    metavar="N",
    help="Start N worker processes on this study (CPU); each line is prefixed with [wK].",
)
@click.option(
    "--gpus",
    metavar="all|0,1,3",
    help="Start one worker process per GPU, with CUDA_VISIBLE_DEVICES set; lines prefixed with [gpuK].",
)
@click.option(
    "--worker-index",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="This worker's number (the first one with --workers/--gpus); offsets the sampler seed so "
    "workers do not repeat each other. Give each node its own range.",
)
@_translate
def search(
    config_file,
    storage,
    study_name,
    n_trials,
    timeout,
    epoch_budget,
    sampler,
    pruner,
    seed,
    sets,
    n_workers,
    gpus,
    worker_index,
):
    """Run or resume the search described by CONFIG.

    Every trial fine-tunes the model and reports its validation error after each epoch; trials that fall
    behind are pruned, diverging ones stopped at once. Running the same command again resumes the study:
    --n-trials is the total for the study, so `--n-trials 8` after 5 finished trials runs 3 more.
    --epoch-budget caps the compute instead: the epochs all trials train together, pruned ones included.

    Many workers share one study and its budget: --workers 4 (CPU) or --gpus all start one process each;
    the same command on another node (same --storage) joins the study. A worker killed mid-trial is noticed
    by the heartbeat and its trial resumes from its last epoch's checkpoint. Ctrl-C or SIGTERM lets the
    running epoch finish, checkpoints and re-queues the trial, and exits 130 or 143; rerun to resume.

    \b
    Example:
      hpsearch search studies/demo.yaml --study-name demo-2ep --n-trials 12 --set train.n_epochs=2
      hpsearch search studies/sst2.yaml --gpus all --storage postgresql+psycopg://hp@db/hpsearch
      hpsearch search studies/demo.yaml --workers 2
      hpsearch search studies/demo.yaml --study-name demo-eb --epoch-budget 40 --n-trials 1000
    """
    from hpsearch.search import run_search

    cfg = load_config(
        config_file,
        overrides={
            "storage": storage,
            "name": study_name,
            "n_trials": n_trials,
            "timeout": timeout,
            "epoch_budget": epoch_budget,
            "sampler": sampler,
            "pruner": pruner,
            "seed": seed,
        },
        sets=sets,
    )
    if n_workers is not None or gpus is not None:
        _search_with_workers(cfg, config_file, n_workers, gpus, worker_index)
        return
    result = run_search(cfg, worker=worker_index, command=getattr(cli, "argv", None))
    _summary(cfg, result)
    click.echo(
        json.dumps(
            {
                "study": result.study_name,
                **_best_json(result.best),
                "trials": result.counts,
                "stopped_by": result.stopped_by,
            }
        )
    )
    if result.stopped_by == "failures":
        raise _Fail(f"trials keep failing; see `hpsearch show {quote(result.study_name)}` for the reasons", 1)
    if result.signal is not None:
        sys.exit(128 + result.signal)  # stopped before the study finished: 130 (SIGINT) or 143 (SIGTERM)


def _search_with_workers(cfg, config_file, n_workers, gpus, first_index) -> None:
    """--workers/--gpus: one `hpsearch search` process per worker, same arguments, then the study summary."""
    from hpsearch.cost import epochs_spent
    from hpsearch.results import best_summary, describe_best, state_counts
    from hpsearch.study import check_resumable, check_storage, describe_storage, load_existing_study
    from hpsearch.workers import finished_trials, parse_gpus, plan_workers, run_workers

    if n_workers is not None and gpus is not None:
        raise ConfigError("give either --workers N (CPU) or --gpus LIST, not both")
    check_storage(cfg.study.storage, wait=cfg.study.store_wait)
    done = finished_trials(cfg.study.storage, cfg.study.name)
    if done is not None and done >= cfg.study.n_trials:
        check_resumable(cfg)  # settings the study was not made with are refused, as one worker refuses them
        click.echo(
            f"budget met: study '{cfg.study.name}' has {done}/{cfg.study.n_trials} finished trials;"
            " no worker started (raise --n-trials to run more)",
            err=True,
        )
        click.echo(
            json.dumps(
                {"study": cfg.study.name, "trials": {"finished": done}, "stopped_by": "budget", "workers": 0}
            )
        )
        return
    plan = plan_workers(
        n_workers, parse_gpus(gpus, os.environ.get("CUDA_VISIBLE_DEVICES")) if gpus else None, first_index
    )
    ctx = click.get_current_context()
    command = [
        sys.executable,
        "-m",
        "hpsearch",
        *(["--debug"] if ctx.obj.get("debug") else []),
        "search",
        config_file,
    ]
    for name, value in ctx.params.items():
        if name in ("config_file", "n_workers", "gpus", "worker_index") or value is None or value == ():
            continue
        flag = "--" + name.replace("_", "-")
        command += [x for v in value for x in ("--set", v)] if name == "sets" else [flag, str(value)]
    click.echo(
        f"hpsearch: starting {len(plan)} workers on study '{cfg.study.name}': "
        + ", ".join(w.label for w in plan),
        err=True,
    )
    code, signum = run_workers(plan, command)
    if signum is None and code not in (0, 1):
        sys.exit(code)  # the first worker rejected the input (exit 2) and said why; no other worker started
    if finished_trials(cfg.study.storage, cfg.study.name) is None:
        sys.exit(code or 1)  # the first worker stopped before it created the study, and said why
    study = load_existing_study(cfg.study.storage, cfg.study.name)
    counts = {k: v for k, v in state_counts(study).items() if v}
    best = best_summary(study)
    done = counts.get("complete", 0) + counts.get("pruned", 0)
    budget_met = done >= cfg.study.n_trials or (
        cfg.study.epoch_budget is not None and epochs_spent(study) >= cfg.study.epoch_budget
    )
    click.echo(
        f"study '{cfg.study.name}': {done}/{cfg.study.n_trials} trials finished by {len(plan)}"
        f" workers ({', '.join(f'{n} {state}' for state, n in counts.items())})",
        err=True,
    )
    if best is not None:
        storage = describe_storage(cfg.study.storage)
        click.echo("\n".join(describe_best(best, cfg.study.name, storage)), err=True)
    click.echo(
        json.dumps(
            {
                "study": cfg.study.name,
                **_best_json(best),
                "trials": counts,
                "stopped_by": "signal" if signum else "budget" if budget_met else "failures",
                "workers": len(plan),
            }
        )
    )
    if signum is not None:
        sys.exit(128 + signum)
    if code != 0:
        raise _Fail(
            f"a worker failed; see its [label] lines above and `hpsearch show {quote(cfg.study.name)}`", 1
        )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _best_json(best: dict | None) -> dict:
    """A search's closing JSON keys for results.best_summary: the best trial, and how far to trust it."""
    out = {
        "best_trial": best["trial"] if best else None,
        "best_value": best["val_error"] if best else None,
        "best_params": best["params"] if best else {},
    }
    noise = ("standard_error", "within_one_standard_error")
    return out | {f"best_{k}": best[k] for k in noise if best and k in best}


def _summary(cfg, result) -> None:
    done = result.counts.get("complete", 0) + result.counts.get("pruned", 0)
    lines = [
        f"study '{result.study_name}': {done}/{cfg.study.n_trials} trials finished "
        f"({result.counts.get('complete', 0)} complete, {result.counts.get('pruned', 0)} pruned, "
        f"{result.counts.get('fail', 0)} failed); this run: {_plural(len(result.trials_run), 'trial')}, stopped by "
        f"{result.stopped_by}",
    ]
    if result.best is not None:
        from hpsearch.results import describe_best

        lines += describe_best(result.best, result.study_name, result.storage)
    lines.append(f"inspect: hpsearch show {quote(result.study_name)} --storage {quote(result.storage)}")
    lines.append(f"dashboard: hpsearch dashboard --storage {quote(result.storage)}")
    if result.storage != cfg.study.storage:  # describe_storage masked its password
        lines.append("(the password is masked above: give your own --storage URL, or set $HPSEARCH_STORAGE)")
    click.echo("\n".join(lines), err=True)


@cli.command()
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_translate
def studies(storage, as_json):
    """List the studies in a store, with trial counts by state and the best value.

    Without --storage (and $HPSEARCH_STORAGE) every SQLite store under studies/ is listed.

    \b
    Example:
      hpsearch studies --storage postgresql+psycopg://hp@db/hpsearch
    """
    from hpsearch.results import default_stores, list_studies
    from hpsearch.study import describe_storage

    urls = (
        [storage or os.environ.get(STORAGE_ENV)]
        if (storage or os.environ.get(STORAGE_ENV))
        else default_stores()
    )
    if not urls:
        raise ConfigError("no study stores under studies/; pass --storage URL or run `hpsearch search` first")
    rows = []
    for url in urls:
        try:
            rows += list_studies(url)
        except ConfigError as exc:
            if len(urls) == 1:
                raise
            click.echo(f"hpsearch: skipped {url}: {exc}", err=True)  # one bad file hides no other store
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no studies in {', '.join(describe_storage(u) for u in urls)}", err=True)
    for r in rows:
        t = r["trials"]
        best = "-" if r["best_value"] is None else f"{r['best_value']:.4f} (trial {r['best_trial']})"
        click.echo(
            f"{r['study']}: {t['complete']} complete, {t['pruned']} pruned, {t['running']} running, "
            f"{t['waiting']} waiting, {t['fail']} failed"
            + ("" if r["n_trials"] is None else f" of n_trials={r['n_trials']}")  # None: not made by hpsearch
            + f"; best val_error {best};"
            f" {r['storage']}"
        )


@cli.command()
@click.argument("study")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_translate
def show(study, storage, as_json):
    """Show a study's trials: number, state, value, params, epochs run, duration.

    Below the table, the best trial with the noise in its val_error (one binomial standard error on the
    validation examples) and the complete trials within that noise of it, which one measurement cannot rank;
    then the cost, then the running trials: worker (host:pid), device, epoch reached, seconds since the last
    heartbeat, and STALE when the worker is presumably dead (the next worker fails and retries the trial).

    \b
    Example:
      hpsearch show demo
      hpsearch show demo --json | jq '.trials[0]'
    """
    from hpsearch import results
    from hpsearch.cost import compute_cost
    from hpsearch.study import describe_storage, load_existing_study

    url = _storage_for(study, storage)
    st = load_existing_study(url, study)
    rows = results.trial_rows(st)
    running = results.running_status(st)
    cost = compute_cost(st)
    best = results.best_summary(st)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "study": study,
                    "counts": results.state_counts(st),
                    "trials": rows,
                    "best": best,
                    "running": running,
                    "cost": cost.to_dict(),
                },
                indent=2,
                default=str,
            )
        )
        return
    click.echo(results.format_table(rows))
    if best is not None:
        click.echo("\n".join(results.describe_best(best, study, describe_storage(url))))
    click.echo(f"cost: {cost.summary()}")
    if running:
        click.echo(results.format_running(running, results.grace_seconds(st), study, describe_storage(url)))


@cli.command()
@click.argument("study")
@click.argument("trial_number", metavar="TRIAL", type=int)
@storage_option
@_translate
def requeue(study, trial_number, storage):
    """Fail a running trial whose worker is gone and queue it to resume from its last checkpoint.

    On a database store (SQLite, PostgreSQL, MySQL) the heartbeat does this by itself once the grace period has
    passed. A journal-file store has no heartbeat: a killed worker's trial stays running there until you requeue
    it. A trial whose heartbeat is recent, or whose worker (host:pid) is a live process on this machine, is
    refused, since its worker is alive.

    \b
    Example:
      hpsearch show demo --storage /shared/hpsearch.log      # find the trial left running
      hpsearch requeue demo 7 --storage /shared/hpsearch.log
    """
    from hpsearch.search import requeue_dead_trial
    from hpsearch.study import load_existing_study

    queued = requeue_dead_trial(load_existing_study(_storage_for(study, storage), study), trial_number)
    click.echo(
        f"trial {trial_number} failed and re-queued as trial {queued}; the next worker resumes it", err=True
    )


@cli.command()
@click.argument("study")
@storage_option
@format_option("yaml", "json")
@_translate
def best(study, storage, fmt):
    """Print the best trial's hyperparameters, ready to paste into a config.

    Plain values under search_space fix those hyperparameters (searched and fixed alike); model, data and
    train carry the study's settings that differ from the defaults, and n_epochs the study's (the whole
    learning-rate schedule, as train-best retrains; the comment names the trial's best epoch).

    \b
    Example:
      hpsearch best demo > best.yaml
    """
    from hpsearch.results import advice_line, best_config
    from hpsearch.study import describe_storage, load_existing_study

    url = _storage_for(study, storage)
    cfg = best_config(load_existing_study(url, study))
    if fmt == "json":
        click.echo(json.dumps(cfg, indent=2))
        return
    noise = f" ± {cfg['standard_error']:.4f}" if "standard_error" in cfg else ""
    click.echo(
        f"# best trial {cfg['trial']} of study '{cfg['study']}': val_error {cfg['val_error']:.4f}{noise}"
        f" at epoch {cfg['best_epoch']} of {cfg['train'].get('n_epochs', '?')}"
    )
    advice = advice_line(cfg, study, describe_storage(url))
    if advice:
        click.echo(f"# {advice}")
    click.echo(
        yaml.safe_dump(
            {
                "study": cfg["study_settings"],
                **{k: cfg[k] for k in ("model", "data", "train", "search_space")},
            },
            sort_keys=False,
        ).rstrip()
    )


@cli.command()
@click.argument("study")
@storage_option
@format_option("csv", "json")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, writable=True), help="File to write (default: stdout)."
)
@_translate
def export(study, storage, fmt, output):
    """Export every trial (params, values, learning curves, reasons) as CSV or JSON.

    \b
    Example:
      hpsearch export demo --format csv -o demo.csv
    """
    from hpsearch.results import export as export_trials
    from hpsearch.study import load_existing_study

    if output:
        check_writable(output, "-o")
        _check_not_a_store(output, fmt)
    text = export_trials(load_existing_study(_storage_for(study, storage), study), fmt)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command()
@click.option(
    "--storage",
    metavar="URL",
    help=f"Study store to show. Default: ${STORAGE_ENV}, else the one studies/*.db (ask when several).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 exposes the dashboard to the network.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--allow-writes",
    is_flag=True,
    help="Let the page delete and rename studies and tell trials (off: only notes can be edited).",
)
@_translate
def dashboard(storage, host, port, allow_writes):
    """Serve optuna-dashboard over a study store: learning curves, params, per-trial attributes and notes.

    Each study has a note (model, data, search space, budget, the launching command, the cost) and each
    pruned, diverged or failed trial a note saying why. Stop with Ctrl-C.

    \b
    Example:
      hpsearch dashboard                                   # the one store under studies/
      hpsearch dashboard --storage sqlite:///studies/demo.db --port 8081
      ssh -L 8080:localhost:8080 gpu-node                  # then open http://localhost:8080 here
    """
    from hpsearch.dashboard import DashboardServer, default_storage
    from hpsearch.study import describe_storage

    url = storage or default_storage()
    server = DashboardServer(url, host=host, port=port, allow_writes=allow_writes)
    where = (
        "localhost only; pass --host 0.0.0.0 to expose it"
        if server.loopback_only
        else f"listening on {host}: anyone who can reach this address can read the studies"
    )
    click.echo(
        f"hpsearch: dashboard for {describe_storage(url)} at {server.url} ({where}); Ctrl-C stops it",
        err=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("hpsearch: dashboard stopped", err=True)


@cli.command()
@click.argument("study")
@storage_option
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),
    help="HTML file to write, or a folder for --format png.",
)
@format_option(
    "html",
    "png",
    help="html: one self-contained file (plotly.js inline); png: one image per figure (needs kaleido "
    "and Chrome/Chromium).",
)
@_translate
def report(study, storage, output, fmt):
    """Write a report of STUDY: optimization history, learning curves, learning rate and batch size against
    validation error, parameter importances, the best trial and what the study cost.

    The HTML file needs no server and no network: send it, open it anywhere.

    \b
    Example:
      hpsearch report demo -o demo.html
      hpsearch report demo --format png -o demo-figures/
    """
    from hpsearch.report import write_html, write_pngs
    from hpsearch.study import load_existing_study

    if fmt == "png" and Path(output).suffix.lower() in (
        ".html",
        ".htm",
        ".png",
        ".pdf",
        ".svg",
        ".csv",
        ".json",
    ):
        raise ConfigError(
            f"-o {output}: --format png writes a folder of PNG files, not a {Path(output).suffix} file; give a"
            f" folder (e.g. -o {Path(output).with_suffix('')}/), or --format html for one file"
        )
    check_writable(output, "-o", folder=fmt == "png")
    if fmt == "html":
        _check_not_a_store(output, "html")
    st = load_existing_study(_storage_for(study, storage), study)
    if fmt == "png":
        paths = write_pngs(st, output)
        click.echo(f"wrote {len(paths)} PNG files to {output}: {', '.join(p.name for p in paths)}", err=True)
        return
    path = write_html(st, output)
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained)", err=True)


@cli.command("train-best")
@click.argument("study")
@storage_option
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="New (or empty) folder for the model, tokenizer, hyperparameters.yaml and results.json.",
)
@click.option(
    "--seeds",
    "n_seeds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Seeds per configuration; the first is the trial's own seed.",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Retrain the k best trials (complete ones, then the best pruned ones); the one with the lowest"
    " mean val_error is saved.",
)
@click.option(
    "--trial",
    "numbers",
    type=click.IntRange(min=0),
    multiple=True,
    help="Retrain this trial instead of the best (repeat it to compare several, e.g. those the search names"
    " within one standard error of the best); the one with the lowest mean val_error is saved.",
)
@click.option(
    "--epochs",
    type=click.Choice(["all", "best"]),
    default="all",
    show_default=True,
    help="Train every epoch of the study's schedule (all), or stop after the trial's best epoch (best).",
)
@click.option(
    "--from-checkpoint",
    is_flag=True,
    help="Export the best trial's kept checkpoint (its last epoch) instead of retraining.",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    help="Device to train on (default: the study's train.device).",
)
@_translate
def train_best(study, storage, output, n_seeds, top_k, numbers, epochs, from_checkpoint, device):
    """Turn the best trial into a model: retrain its configuration with several seeds for the study's
    n_epochs (--epochs best: the trial's best epoch), report the mean and spread of the validation error
    after the last epoch, and save the best model with save_pretrained.

    Results (per seed, mean, std, min, max) go to stdout as JSON and to OUTPUT/results.json. The folder loads
    with AutoModelForSequenceClassification.from_pretrained(OUTPUT) and AutoTokenizer.from_pretrained(OUTPUT).

    \b
    Example:
      hpsearch train-best demo -o models/demo-best
      hpsearch train-best demo --seeds 5 --top-k 3 -o models/demo-top3
      hpsearch train-best demo --epochs best -o models/demo-best-epoch
      hpsearch train-best demo --trial 3 --trial 7 -o models/demo-3-or-7
    """
    from hpsearch.best_model import export_checkpoint
    from hpsearch.best_model import train_best as retrain
    from hpsearch.study import load_existing_study

    ctx = click.get_current_context()
    if numbers and ctx.get_parameter_source("top_k") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--trial names the trials to retrain and --top-k picks the best k; give one")
    if from_checkpoint:
        flags = {"n_seeds": "--seeds", "top_k": "--top-k", "numbers": "--trial", "epochs": "--epochs"}
        given = [
            flag
            for name, flag in flags.items()
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            raise click.UsageError(
                f"{' and '.join(given)} set how to retrain, but --from-checkpoint exports the trial's"
                " checkpoint without retraining; drop one or the other"
            )
    check_writable(output, "-o", folder=True)
    if device:
        from hpsearch.best_model import check_device

        check_device(device)  # a device this machine lacks: say so before any data is loaded
    st = load_existing_study(_storage_for(study, storage), study)
    if from_checkpoint:
        result = export_checkpoint(st, output, device=device)
    else:
        result = retrain(
            st, output, n_seeds=n_seeds, top_k=top_k, device=device, epochs=epochs, numbers=list(numbers)
        )
    click.echo(
        f"saved trial {result['chosen_trial']} (seed {result['saved_seed']}, val_error "
        f"{result['saved_val_error']:.4f}) to {output}",
        err=True,
    )
    click.echo(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))


def main() -> None:
    cli()
