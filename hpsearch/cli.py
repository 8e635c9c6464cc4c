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

import click
import yaml

from hpsearch.config import STORAGE_ENV, load_config
from hpsearch.errors import ConfigError, HpsearchError, StorageError


class _Fail(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"hpsearch: error: {self.format_message()}", err=True)


class HpsearchGroup(click.Group):
    """Every error leaves as one line on stderr: 2 for bad input, 1 for runtime failures."""

    def main(self, args=None, prog_name=None, **kwargs):
        debug = "--debug" in (sys.argv[1:] if args is None else list(args))
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
        except click.exceptions.Abort:
            click.echo("hpsearch: aborted", err=True)
            sys.exit(130)
        except KeyboardInterrupt:
            click.echo("hpsearch: interrupted; the running trial was re-queued, rerun the command to resume",
                       err=True)
            sys.exit(130)
        except Exception as exc:  # a bug, not a user mistake: still one line unless --debug
            if debug:
                traceback.print_exc()
            click.echo(f"hpsearch: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the "
                       "traceback)", err=True)
            sys.exit(1)


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

    return wrapper


storage_option = click.option(
    "--storage", metavar="URL",
    help=f"Study store: sqlite:///studies/NAME.db, postgresql+psycopg://USER:PASS@HOST/DB, or a journal file "
         f"(*.log). Default: ${STORAGE_ENV}, else studies/STUDY.db.",
)


def _storage_for(study: str | None, storage: str | None) -> str:
    return storage or os.environ.get(STORAGE_ENV) or f"sqlite:///studies/{study}.db"


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
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    import optuna  # noqa: F401  (quiet Optuna's per-trial INFO lines; hpsearch prints its own)

    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.WARNING)


@cli.command()
@click.argument("config_file", metavar="CONFIG", type=click.Path(dir_okay=False))
@storage_option
@click.option("--study-name", help="Study name (default: study.name, else the config file's name).")
@click.option("--n-trials", type=int, help="Total finished trials for the study, counting those already stored.")
@click.option("--timeout", type=float, help="Seconds this invocation may search before it stops starting trials.")
@click.option("--sampler", help="tpe (default), random, grid, cmaes, gp or qmc.")
@click.option("--pruner", help="hyperband (default), successive-halving, median, percentile or none.")
@click.option("--seed", type=int, help="Sampler seed.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override any config key, e.g. --set train.n_epochs=2 (repeatable; values are YAML).")
@click.option("--worker-index", type=int, default=0, hidden=True, help="Worker number, offsets the sampler seed.")
@_translate
def search(config_file, storage, study_name, n_trials, timeout, sampler, pruner, seed, sets, worker_index):
    """Run or resume the search described by CONFIG.

    Every trial fine-tunes the model and reports its validation error after each epoch; trials that fall
    behind are pruned, diverging ones stopped at once. Running the same command again resumes the study:
    --n-trials is the total for the study, so `--n-trials 8` after 5 finished trials runs 3 more.

    \b
    Example:
      hpsearch search studies/demo.yaml --n-trials 12 --set train.n_epochs=2
    """
    from hpsearch.search import run_search

    cfg = load_config(config_file, overrides={
        "storage": storage, "name": study_name, "n_trials": n_trials, "timeout": timeout, "sampler": sampler,
        "pruner": pruner, "seed": seed,
    }, sets=sets)
    result = run_search(cfg, worker=worker_index)
    _summary(cfg, result)
    click.echo(json.dumps({"study": result.study_name, "best_trial": result.best_number,
                           "best_value": result.best_value, "best_params": result.best_params,
                           "trials": result.counts, "stopped_by": result.stopped_by}))
    if result.stopped_by == "failures":
        raise _Fail("trials keep failing; see `hpsearch show " + result.study_name + "` for the reasons", 1)


def _summary(cfg, result) -> None:
    done = result.counts.get("complete", 0) + result.counts.get("pruned", 0)
    lines = [
        f"study '{result.study_name}': {done}/{cfg.study.n_trials} trials finished "
        f"({result.counts.get('complete', 0)} complete, {result.counts.get('pruned', 0)} pruned, "
        f"{result.counts.get('fail', 0)} failed); this run: {len(result.trials_run)} trials, stopped by "
        f"{result.stopped_by}",
    ]
    if result.best_number is not None:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in
                           result.best_params.items())
        lines.append(f"best: trial {result.best_number}, val_error {result.best_value:.4f} ({params})")
    lines.append(f"inspect: hpsearch show {result.study_name} --storage {result.storage}")
    lines.append(f"dashboard: optuna-dashboard {result.storage}")
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

    urls = [storage or os.environ.get(STORAGE_ENV)] if (storage or os.environ.get(STORAGE_ENV)) else default_stores()
    if not urls:
        raise ConfigError("no study stores under studies/; pass --storage URL or run `hpsearch search` first")
    rows = [row for url in urls for row in list_studies(url)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        t = r["trials"]
        best = "-" if r["best_value"] is None else f"{r['best_value']:.4f} (trial {r['best_trial']})"
        click.echo(f"{r['study']}: {t['complete']} complete, {t['pruned']} pruned, {t['running']} running, "
                   f"{t['waiting']} waiting, {t['fail']} failed of n_trials={r['n_trials']}; best val_error {best};"
                   f" {r['storage']}")


@cli.command()
@click.argument("study")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_translate
def show(study, storage, as_json):
    """Show a study's trials: number, state, value, params, epochs run, duration.

    \b
    Example:
      hpsearch show demo
      hpsearch show demo --json | jq '.trials[0]'
    """
    from hpsearch.results import format_table, state_counts, trial_rows
    from hpsearch.study import load_existing_study

    st = load_existing_study(_storage_for(study, storage), study)
    rows = trial_rows(st)
    if as_json:
        click.echo(json.dumps({"study": study, "counts": state_counts(st), "trials": rows}, indent=2, default=str))
        return
    click.echo(format_table(rows))


@cli.command()
@click.argument("study")
@storage_option
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True,
              help="Output format.")
@_translate
def best(study, storage, fmt):
    """Print the best trial's hyperparameters, ready to paste into a config.

    Plain values under search_space fix those hyperparameters; n_epochs is the best trial's best epoch.

    \b
    Example:
      hpsearch best demo > best.yaml
    """
    from hpsearch.results import best_config
    from hpsearch.study import load_existing_study

    cfg = best_config(load_existing_study(_storage_for(study, storage), study))
    if fmt == "json":
        click.echo(json.dumps(cfg, indent=2))
        return
    click.echo(f"# best trial {cfg['trial']} of study '{cfg['study']}': val_error {cfg['val_error']:.4f}"
               f" at epoch {cfg['best_epoch']}")
    click.echo(yaml.safe_dump({k: cfg[k] for k in ("model", "train", "search_space")}, sort_keys=False).rstrip())


@cli.command()
@click.argument("study")
@storage_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="Output format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="File to write (default: stdout).")
@_translate
def export(study, storage, fmt, output):
    """Export every trial (params, values, learning curves, reasons) as CSV or JSON.

    \b
    Example:
      hpsearch export demo --format csv -o demo.csv
    """
    from hpsearch.results import export as export_trials
    from hpsearch.study import load_existing_study

    text = export_trials(load_existing_study(_storage_for(study, storage), study), fmt)
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


def main() -> None:
    cli()
