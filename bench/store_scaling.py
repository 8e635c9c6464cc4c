"""Store scaling: how fast 1, 4 and 8 worker processes get trials through SQLite, a journal file, PostgreSQL.

Each worker does, per trial, what an `hpsearch search` worker does with the store, without the training:
the study-wide budget check (`remaining_budget`), `ask`, the over-budget check, two `suggest` calls, a
heartbeat thread, one `report`, a user attribute, and `tell`. Workers are separate processes that open their
own store and start together; the budget is fixed, so more workers share the same number of trials.

    python -m bench.store_scaling                 # all three stores, 1/4/8 workers, 120 trials each (~2 min)
    python -m bench.store_scaling --trials 60 --workers 1,8 --stores sqlite

Writes bench/results/store_scaling.json and prints the Markdown table for BENCHMARKS.md. PostgreSQL is the
throw-away server of tests/pgserver.py (needs the server binaries; skipped with a note if they are missing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "store_scaling.json"


def _config(storage: str, name: str, n_trials: int):
    from hpsearch.config import load_config

    return load_config(
        None,
        overrides={"storage": storage, "name": name, "n_trials": n_trials},
        sets=["study.heartbeat_interval=5", "study.grace_period=60"],
    )


def _worker(storage: str, name: str, n_trials: int, index: int, barrier, queue) -> None:
    """One worker process: trials until the study-wide budget is met; sends its timings back."""
    import optuna
    from optuna.trial import TrialState

    from hpsearch.search import _heartbeat
    from hpsearch.study import (
        OVER_BUDGET_ATTR,
        close_storages,
        counts,
        is_over_budget,
        open_storage,
        quiet_optuna_warnings,
        remaining_budget,
    )

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    ask_tell, budget, errors, over, done = [], [], [], 0, 0
    try:
        cfg = _config(storage, name, n_trials)
        study = optuna.load_study(
            study_name=name,
            storage=open_storage(storage, cfg),
            sampler=optuna.samplers.RandomSampler(seed=index),
        )
    except Exception as exc:  # noqa: BLE001 (a benchmark reports every failure)
        barrier.wait()
        queue.put({"index": index, "errors": [f"open: {type(exc).__name__}: {exc}"[:300]]})
        return
    barrier.wait()
    with quiet_optuna_warnings():
        while True:
            try:
                started = time.perf_counter()
                c = counts(study)
                left = remaining_budget(study, n_trials)
                budget.append(time.perf_counter() - started)
                if c[TrialState.COMPLETE] >= n_trials or left <= 0:
                    break
                started = time.perf_counter()
                trial = study.ask()
                if is_over_budget(study, trial, n_trials):
                    trial.set_user_attr(OVER_BUDGET_ATTR, "another worker took the last trial of the budget")
                    study.tell(trial, state=TrialState.FAIL)
                    over += 1
                    continue
                with _heartbeat(study, trial):
                    lr = trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
                    trial.suggest_categorical("batch_size", [8, 16, 32, 64])
                    trial.report(lr, 1)
                    trial.set_user_attr("worker", f"bench:{index}")
                    study.tell(trial, lr)
                ask_tell.append(time.perf_counter() - started)
                done += 1
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                if len(errors) > 20:
                    break
    close_storages()
    queue.put(
        {"index": index, "ask_tell": ask_tell, "budget": budget, "errors": errors, "over": over, "done": done}
    )


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def measure(store: str, storage: str, n_workers: int, n_trials: int) -> dict:
    import optuna

    from hpsearch.study import close_storages, open_storage

    name = f"scale-{store}-{n_workers}"
    optuna.create_study(study_name=name, storage=open_storage(storage), direction="minimize")
    close_storages()  # the parent holds no connection while the workers run
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(n_workers + 1), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(storage, name, n_trials, k, barrier, queue))
        for k in range(n_workers)
    ]
    for p in procs:
        p.start()
    barrier.wait()  # every worker has its store open: the clock starts now
    started = time.perf_counter()
    reports = [queue.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - started
    for p in procs:
        p.join()
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    trials = study.get_trials(deepcopy=False)
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    unfinished = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    left_over = sum(t.state in unfinished for t in trials)
    close_storages()
    ask_tell = [x for r in reports for x in r.get("ask_tell", [])]
    budget = [x for r in reports for x in r.get("budget", [])]
    errors = [e for r in reports for e in r.get("errors", [])]
    ms = 1000.0
    return {
        "store": store,
        "workers": n_workers,
        "n_trials": n_trials,
        "complete": complete,
        "exact_budget": complete == n_trials and left_over == 0,
        "over_budget_asks": sum(r.get("over", 0) for r in reports),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:3],
        "wall_s": round(wall, 2),
        "trials_per_s": round(complete / wall, 1) if wall else None,
        "ask_tell_p50_ms": round(_percentile(ask_tell, 0.5) * ms, 1) if ask_tell else None,
        "ask_tell_p95_ms": round(_percentile(ask_tell, 0.95) * ms, 1) if ask_tell else None,
        "budget_check_p50_ms": round(statistics.median(budget) * ms, 1) if budget else None,
    }


def _postgres(tmp: Path):
    spec = importlib.util.spec_from_file_location("pgserver", ROOT / "tests" / "pgserver.py")
    pgserver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pgserver)
    if pgserver.find_pg_bin() is None:
        return None
    return pgserver.start_postgres(tmp)


def table(rows: list[dict]) -> str:
    lines = [
        "| store | workers | trials/s | ask+tell p50 (ms) | ask+tell p95 (ms) | budget check p50 (ms) "
        "| over-budget asks | errors | exact budget |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['store']} | {r['workers']} | {r['trials_per_s']} | {r['ask_tell_p50_ms']} | "
            f"{r['ask_tell_p95_ms']} | {r['budget_check_p50_ms']} | {r['over_budget_asks']} | "
            f"{r['errors']} | {'yes' if r['exact_budget'] else 'NO'} "
            f"({r['complete']}/{r['n_trials']}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=120, help="study-wide budget per measurement")
    parser.add_argument("--workers", default="1,4,8", help="worker process counts, comma-separated")
    parser.add_argument("--stores", default="sqlite,journal,postgresql", help="stores to measure")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workers = [int(w) for w in args.workers.split(",")]
    stores = args.stores.split(",")
    rows, notes = [], []
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="store-scaling-") as tmp:
        tmp = Path(tmp)
        server = _postgres(tmp) if "postgresql" in stores else None
        if "postgresql" in stores and server is None:
            notes.append("postgresql skipped: server binaries not found (apt-get install postgresql)")
        try:
            for store in stores:
                for n in workers:
                    if store == "sqlite":
                        storage = f"sqlite:///{tmp}/scale-{n}.db"
                    elif store == "journal":
                        storage = str(tmp / f"scale-{n}.log")
                    elif server is not None:
                        storage = server.url
                    else:
                        continue
                    try:
                        row = measure(store, storage, n, args.trials)
                    except Exception:  # noqa: BLE001
                        traceback.print_exc()
                        row = {
                            "store": store,
                            "workers": n,
                            "n_trials": args.trials,
                            "complete": 0,
                            "exact_budget": False,
                            "over_budget_asks": None,
                            "errors": 1,
                            "trials_per_s": None,
                            "ask_tell_p50_ms": None,
                            "ask_tell_p95_ms": None,
                            "budget_check_p50_ms": None,
                            "error_samples": ["measurement crashed"],
                        }
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            if server is not None:
                server.stop()
    result = {
        "command": " ".join(["python -m bench.store_scaling", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "optuna": optuna.__version__,
            "load_average_at_start": load_at_start,
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "notes": notes,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table(rows))
    for note in notes:
        print(f"note: {note}")
    return 0 if all(r["errors"] == 0 and r["exact_budget"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
