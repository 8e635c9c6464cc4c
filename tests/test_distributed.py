"""Many workers on one study, with real subprocesses: exact budget, kill -9 and SIGTERM mid-trial, resume.

Every worker here is a real `python -m hpsearch search` process on a real SQLite file or PostgreSQL server;
the store is read back with Optuna, never only the printed text.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from hpsearch.cli import cli
from hpsearch.cost import compute_cost
from hpsearch.study import OVER_BUDGET_ATTR, close_storages, open_storage, quiet_optuna_warnings
from hpsearch.workers import parse_gpus, plan_workers

ERRORS = re.compile(r"database is locked|Traceback|hpsearch: (internal )?error|Error:", re.IGNORECASE)
# Trials long enough to be caught mid-way: four epochs of a few seconds each.
SLOW_TRIAL = {
    "study": {
        "n_trials": 2,
        "sampler": "random",
        "pruner": "none",
        "heartbeat_interval": 1,
        "grace_period": 3,
    },
    "data": {"demo_size": 800},
    "train": {"n_epochs": 4},
    "search_space": {"batch_size": 16},
}
FAST_TRIAL = {"data": {"demo_size": 200}, "train": {"n_epochs": 1}}


@pytest.fixture(autouse=True)
def _close_connections():
    yield
    close_storages()


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hpsearch", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _start(workdir: Path, log: str, *args: str) -> subprocess.Popen:
    """A worker in the background; its stdout and stderr go to ``log``."""
    out = open(workdir / log, "wb")  # noqa: SIM115 (closed when the process ends, in _finish)
    proc = subprocess.Popen(_command(*args), cwd=workdir, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    proc.log = workdir / log
    proc.out = out
    return proc


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        proc.out.close()
        pytest.fail(f"worker did not finish in {timeout} s:\n{proc.log.read_text()[-3000:]}")
    proc.out.close()
    return code, proc.log.read_text()


def _run(workdir: Path, *args: str, timeout: float = 240) -> tuple[int, str]:
    return _finish(_start(workdir, f"run{time.monotonic_ns()}.log", *args), timeout)


def _study(url: str, name: str = "t") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, create=not url.startswith("sqlite")))


def _wait_until(what: str, check, procs: list[subprocess.Popen], timeout: float = 180, ready: str = "' in "):
    """Poll ``check()`` until it returns something true; fail with the workers' output if they end first.
    The store is opened only once the first worker's log has ``ready`` (by default: the study exists)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"worker exited ({p.returncode}) before {what}:\n{p.log.read_text()[-3000:]}")
        if ready in procs[0].log.read_text():
            found = check()
            if found:
                return found
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def _running_after_epoch(url: str, n: int = 1, min_epoch: int = 1):
    """The running trials once ``n`` of them have a checkpoint of at least ``min_epoch`` epochs."""

    def check():
        running = [t for t in _study(url).get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
        ready = [t for t in running if t.user_attrs.get("epochs_run", 0) >= min_epoch]
        return running if len(ready) >= n and len(ready) == len(running) else None

    return check


def _epochs_trained(output: str, number: int) -> list[int]:
    return [int(e) for e in re.findall(rf"trial {number} epoch (\d+)/", output)]


def _assert_resumed(study: optuna.Study, original: optuna.trial.FrozenTrial, output: str, n_epochs: int):
    """The retry of ``original`` has its params, resumed from its checkpoint, kept its learning curve and
    trained only the epochs that were missing."""
    after = next(t for t in study.trials if t.number == original.number)
    assert after.state == TrialState.FAIL
    [retry] = [t for t in study.trials if t.system_attrs.get("failed_trial") == original.number]
    assert retry.state == TrialState.COMPLETE, retry
    assert retry.params == original.params
    resumed = retry.user_attrs["resumed_from_epoch"]
    assert resumed >= original.user_attrs["epochs_run"] >= 1
    assert {
        s: v for s, v in retry.intermediate_values.items() if s in after.intermediate_values
    } == after.intermediate_values  # the learning curve is kept, so the pruner compares it fairly
    assert sorted(retry.intermediate_values) == list(range(1, n_epochs + 1))
    assert _epochs_trained(output, retry.number) == list(range(resumed + 1, n_epochs + 1))
    assert f"trial {retry.number} resumes trial {original.number} after epoch {resumed}" in output


def _assert_budget_exact(study: optuna.Study, n_trials: int) -> None:
    """Exactly ``n_trials`` finished; every other trial failed and was retried, or was an over-budget ask."""
    trials = study.trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials
    retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    for t in trials:
        if t.state == TrialState.FAIL:
            assert OVER_BUDGET_ATTR in t.user_attrs or t.number in retried, t
        else:
            assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), t  # nothing left running or queued


# --- several workers, one study ---------------------------------------------------------------------------


def _eight_workers(make_config, workdir, storage: str) -> None:
    """8 workers share study w8 (16 trials) while one more worker runs study `solo` in the same store."""
    # A realistic grace period: 9 processes on two cores can delay a heartbeat by seconds.
    config = make_config(study={"n_trials": 16, "name": "w8", "grace_period": 15}, **FAST_TRIAL)
    solo_config = make_config("solo.yaml", study={"n_trials": 3, "name": "solo", "seed": 7}, **FAST_TRIAL)
    parent = _start(workdir, "w8.log", "search", str(config), "--storage", storage, "--workers", "8")
    _wait_until("study w8 exists", lambda: True, [parent])
    solo = _start(workdir, "solo.log", "search", str(solo_config), "--storage", storage)
    (code, output), (solo_code, solo_output) = _finish(parent, timeout=400), _finish(solo, timeout=400)
    assert code == 0, output[-3000:]
    assert solo_code == 0, solo_output[-3000:]
    for text in (output, solo_output):
        assert not ERRORS.search(text), ERRORS.search(text).group(0) + "\n" + text[-3000:]
    for k in range(8):  # every worker ran, said why it stopped, and exited 0
        assert f"[w{k}] budget met: study 'w8' has 16/16 finished trials" in output, output[-3000:]
    study = _study(storage, "w8")
    _assert_budget_exact(study, 16)
    learning_rates = [t.params["learning_rate"] for t in study.trials if t.state.is_finished() and t.params]
    assert len(set(learning_rates)) == len(learning_rates)  # seeds offset by worker: no trial repeated
    workers = {t.user_attrs["worker"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert len(workers) >= 2  # the trials really were shared out
    # The other study in the same store: its own budget, untouched by the 8 workers' asks and stale checks.
    other = _study(storage, "solo")
    assert [t.state for t in other.trials] == [TrialState.COMPLETE] * 3
    assert other.user_attrs["hpsearch_config"]["study"]["n_trials"] == 3


@pytest.mark.slow
def test_eight_workers_on_one_sqlite_study_run_exactly_n_trials_beside_another_study(make_config, workdir):
    _eight_workers(make_config, workdir, f"sqlite:///{workdir}/studies/w8.db")


@pytest.mark.slow
@pytest.mark.postgres
def test_eight_workers_on_one_postgresql_study_run_exactly_n_trials_beside_another_study(
    make_config, workdir, postgres_url
):
    _eight_workers(make_config, workdir, postgres_url)


@pytest.mark.slow
def test_workers_share_an_epoch_budget_and_let_running_trials_finish(make_config, workdir):
    config = make_config(
        study={"n_trials": 100, "pruner": "none", "epoch_budget": 5, "grace_period": 15}, **FAST_TRIAL
    )
    storage = f"sqlite:///{workdir}/studies/t.db"
    code, output = _finish(
        _start(workdir, "eb.log", "search", str(config), "--storage", storage, "--workers", "2")
    )
    assert code == 0, output[-3000:]
    assert json.loads(output.strip().splitlines()[-1])["stopped_by"] == "budget"
    for k in range(2):
        assert f"[w{k}] epoch budget met: study 't' has trained" in output, output[-3000:]
    study = _study(storage)
    # 1-epoch trials: starts stop at 5 epochs; each worker's trial then running finishes, nothing is cut short
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert 5 <= len(finished) <= 6 and all(t.user_attrs["epochs_run"] == 1 for t in finished)
    assert all(t.state == TrialState.COMPLETE or OVER_BUDGET_ATTR in t.user_attrs for t in study.trials)
    assert compute_cost(study).epochs_spent == len(finished)


# --- crash recovery --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_mid_trial_then_a_new_worker_resumes_it_from_its_checkpoint(make_config, workdir):
    url = f"sqlite:///{workdir}/studies/t.db"
    config = make_config(**SLOW_TRIAL)
    worker = _start(workdir, "killed.log", "search", str(config))
    _wait_until("a trial with a checkpoint", _running_after_epoch(url), [worker])
    worker.kill()  # SIGKILL: no handler runs, the trial stays RUNNING in the store
    _finish(worker)
    [dead] = [t for t in _study(url).trials if t.state == TrialState.RUNNING]
    checkpoint = Path(dead.user_attrs["checkpoint_path"])
    assert checkpoint.is_file()

    code, output = _run(workdir, "search", str(config))
    assert code == 0, output[-3000:]
    study = _study(url)
    assert (
        next(t for t in study.trials if t.number == dead.number).user_attrs["epochs_run"]
        == dead.user_attrs["epochs_run"]
    )
    _assert_resumed(study, dead, output, n_epochs=4)
    _assert_budget_exact(study, 2)
    assert not checkpoint.exists()  # the dead trial's checkpoint is gone once its retry has its own


@pytest.mark.slow
@pytest.mark.postgres
def test_sigterm_to_workers_checkpoints_requeues_and_a_rerun_resumes(make_config, workdir, postgres_url):
    # Six trials: the second worker starts once the first has opened the study, and one or two trials are
    # mid-way when the signal comes. With three, a machine busy enough to delay the second worker's start let
    # the first finish the whole budget before it (twice, beside two benchmark jobs on two cores).
    # No trial goes stale here: a long grace period keeps a heartbeat delayed by the load from failing one.
    study = {**SLOW_TRIAL["study"], "n_trials": 6, "grace_period": 15}
    config = make_config(**{**SLOW_TRIAL, "study": study})
    parent = _start(
        workdir, "stopped.log", "search", str(config), "--storage", postgres_url, "--workers", "2"
    )
    running = _wait_until(
        "the second worker past its first epoch",
        _running_after_epoch(postgres_url),
        [parent],
        ready="[w1] trial",
    )
    at_signal = {t.number: len(t.intermediate_values) for t in running}
    parent.send_signal(signal.SIGTERM)  # as Slurm preemption or `kubectl delete` would
    code, output = _finish(parent, timeout=120)
    assert code == 143, output[-3000:]  # 128 + SIGTERM: stopped before the study finished
    study = _study(postgres_url)
    # A trial in its last epoch at the signal ends it complete; the others are checkpointed and re-queued.
    stopped = [t for t in study.trials if t.number in at_signal and t.state != TrialState.COMPLETE]
    for t in study.trials:
        if t.number in at_signal and t.state == TrialState.COMPLETE:
            assert at_signal[t.number] >= 3 and f"trial {t.number} complete" in output
    assert stopped, output[-3000:]
    for t in stopped:
        assert t.state == TrialState.FAIL and "interrupted" in t.user_attrs["fail_reason"]
        assert len(t.intermediate_values) >= at_signal[t.number]  # the running epoch was allowed to end
        assert f"trial {t.number} checkpointed and re-queued" in output
    assert sum(t.state == TrialState.WAITING for t in study.trials) == len(stopped)

    code, output = _run(workdir, "search", str(config), "--storage", postgres_url)
    assert code == 0, output[-3000:]
    study = _study(postgres_url)
    for t in stopped:
        _assert_resumed(study, t, output, n_epochs=4)
    _assert_budget_exact(study, 6)


# What `kill -9` leaves when it lands in `study.ask()` (the sampler drawing), before the worker's heartbeat thread
# has started: one trial taken from the queue and one new trial, both running.
KILLED_IN_ASK = """
import os, sys
import optuna
from hpsearch.config import load_config
from hpsearch.study import open_storage, quiet_optuna_warnings
cfg = load_config(sys.argv[1], overrides={"storage": sys.argv[2]})
study = optuna.create_study(study_name="t", storage=open_storage(sys.argv[2], cfg))
study.set_user_attr("hpsearch_config", cfg.to_dict())  # as a search that made it
study.enqueue_trial({"learning_rate": 1e-3, "batch_size": 16})
with quiet_optuna_warnings():
    study.ask(), study.ask()
os._exit(137)
"""


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_worker_killed_in_ask_leaves_no_trial_running_for_ever(make_config, workdir, store, request):
    """Optuna's stale check skips a running trial with no heartbeat at all; a trial killed before its first
    heartbeat stayed running for ever, counted in the budget, and every other worker waited for it."""
    url = request.getfixturevalue("postgres_url") if store == "postgresql" else f"sqlite:///{workdir}/t.db"
    config = make_config(study={"n_trials": 2}, **FAST_TRIAL)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_IN_ASK, str(config), url], env=_env(), capture_output=True, text=True
    )
    assert killed.returncode == 137, killed.stderr[-3000:]
    assert [t.state for t in _study(url).trials] == [TrialState.RUNNING] * 2

    code, output = _run(workdir, "search", str(config), "--storage", url, timeout=120)
    assert code == 0, output[-3000:]
    assert not ERRORS.search(output), output[-3000:]
    study = _study(url)
    _assert_budget_exact(study, 2)
    retried = {t.system_attrs["failed_trial"] for t in study.trials if "failed_trial" in t.system_attrs}
    assert retried == {0, 1}  # the killed worker's two trials, each run once by their retry
    assert [t.params for t in study.trials if t.system_attrs.get("failed_trial") == 0] == [
        {"learning_rate": 1e-3, "batch_size": 16}
    ]


def test_a_trial_an_older_version_left_running_without_a_heartbeat_is_named_with_its_fix(
    make_config, workdir
):
    """A store an older hpsearch wrote may hold a trial whose worker died before its first heartbeat: no worker
    ever takes it for dead. A worker waiting on it says so, with the command that frees it, and `show` marks
    it; once re-queued by hand, the waiting worker runs its retry and the search ends."""
    url = f"sqlite:///{workdir}/t.db"
    study_cfg = {"n_trials": 2, "heartbeat_interval": 1, "grace_period": 2}
    config = make_config(study=study_cfg, **FAST_TRIAL)
    code, output = _run(workdir, "search", str(config), "--storage", url, "--n-trials", "1")
    assert code == 0, output[-3000:]
    old = optuna.load_study(study_name="t", storage=optuna.storages.RDBStorage(url))  # as an older version
    with quiet_optuna_warnings():
        orphan = old.ask()  # running, and no heartbeat row: its worker died in ask
    time.sleep(3)  # older than the grace period

    worker = _start(workdir, "w.log", "search", str(config), "--storage", url)
    named = lambda: "hpsearch requeue t 1 --storage" in worker.log.read_text()  # noqa: E731
    try:
        _wait_until("the orphan's line", named, [worker])
    finally:
        if worker.poll() is None and not named():  # it would wait for ever
            worker.kill()
            worker.wait()
            worker.out.close()
    said = worker.log.read_text()
    assert f"trial(s) {orphan.number} marked running with no heartbeat since they started" in said
    shown = CliRunner().invoke(cli, ["show", "t", "--storage", url])
    assert shown.exit_code == 0 and "since it started: its worker died before its first one" in shown.output
    assert f"hpsearch requeue t {orphan.number} --storage" in shown.output
    requeued = CliRunner().invoke(cli, ["requeue", "t", str(orphan.number), "--storage", url])
    assert requeued.exit_code == 0, requeued.output
    code, output = _finish(worker, timeout=120)
    assert code == 0, output[-3000:]
    study = _study(url)
    _assert_budget_exact(study, 2)
    [retry] = [t for t in study.trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert retry.state == TrialState.COMPLETE


def test_a_stale_trial_is_never_left_failed_without_its_retry(workdir, monkeypatch):
    """Failing a dead worker's trial and queueing its retry were two commits: a worker killed between them, or
    a store call that failed there, left a failed trial that nothing resumes (its epochs lost, its checkpoint
    kept for ever). Both land together, or neither: the next check retries it."""
    from optuna.storages._rdb.storage import RDBStorage

    from hpsearch.config import load_config
    from hpsearch.search import _fail_stale

    cfg = load_config(
        None,
        overrides={"storage": f"sqlite:///{workdir}/s.db", "name": "s"},
        sets=["study.heartbeat_interval=1", "study.grace_period=1"],
    )
    study = optuna.create_study(study_name="s", storage=open_storage(cfg.study.storage, cfg))
    with quiet_optuna_warnings():
        trial = study.ask()
    study._storage.record_heartbeat(trial._trial_id)  # then its worker dies
    trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    trial.report(0.4, 1)
    trial.set_user_attr("checkpoint_path", str(workdir / "trial-0.pt"))
    time.sleep(2.5)  # stale: older than the grace period, by the store's clock (whole seconds on SQLite)

    real = RDBStorage._get_prepared_new_trial

    def dies_before_the_retry_is_queued(self, study_id, template, session):
        raise RuntimeError("killed")  # what kill -9 or a store error does to the worker checking

    monkeypatch.setattr(RDBStorage, "_get_prepared_new_trial", dies_before_the_retry_is_queued)
    with pytest.raises(RuntimeError, match="killed"):
        _fail_stale(study)
    monkeypatch.setattr(RDBStorage, "_get_prepared_new_trial", real)
    _fail_stale(study)  # the next worker's check
    dead, retry = study.trials
    assert dead.state == TrialState.FAIL
    assert retry.state == TrialState.WAITING and retry.system_attrs["failed_trial"] == 0
    assert retry.params == dead.params and retry.intermediate_values == {1: 0.4}
    assert retry.user_attrs["checkpoint_path"] == str(workdir / "trial-0.pt")


def test_a_retry_of_a_retry_names_the_trial_it_resumes(make_config, workdir):
    """Stopped twice: trial 2 resumes trial 1's checkpoint after epoch 2, which trial 0 never reached; saying it
    resumes trial 0 after epoch 2 (Optuna's failed_trial names the first of the chain) was untrue."""
    import io
    import threading

    from hpsearch.config import load_config
    from hpsearch.results import trial_rows
    from hpsearch.search import Reporter, run_search

    class StopAfterAnEpoch(Reporter):
        def __init__(self, out, stop):
            super().__init__(out)
            self.stop = stop

        def epoch(self, number, hp, r, n_epochs):
            super().epoch(number, hp, r, n_epochs)
            self.stop.set()  # as SIGTERM during the epoch would

    config = make_config(
        study={"n_trials": 1, "pruner": "none"}, data={"demo_size": 200}, train={"n_epochs": 3}
    )
    cfg = load_config(config)
    out = io.StringIO()
    for _ in range(2):
        stop = threading.Event()
        assert run_search(cfg, reporter=StopAfterAnEpoch(out, stop), stop=stop).stopped_by == "signal"
    assert run_search(cfg, reporter=Reporter(out)).stopped_by == "budget"
    text = out.getvalue()
    assert "trial 1 resumes trial 0 after epoch 1 from its checkpoint" in text, text
    assert "trial 2 resumes trial 1 after epoch 2 from its checkpoint" in text, text
    study = _study(cfg.study.storage)
    assert [r["retry_of"] for r in trial_rows(study)] == [None, 0, 1]
    assert sorted(study.trials[2].intermediate_values) == [1, 2, 3]


# --- planning workers (no processes) ----------------------------------------------------------------------


def test_gpus_are_given_one_worker_each_with_cuda_visible_devices():
    plan = plan_workers(gpus=parse_gpus("0,1,3", count=4))
    assert [(w.label, w.env["CUDA_VISIBLE_DEVICES"], w.index) for w in plan] == [
        ("gpu0", "0", 0),
        ("gpu1", "1", 1),
        ("gpu3", "3", 2),
    ]


def test_gpu_indices_follow_the_devices_slurm_made_visible():
    assert parse_gpus("all", visible="4,5", count=2) == ["4", "5"]
    assert parse_gpus("1", visible="4,5", count=2) == ["5"]


@pytest.mark.parametrize(
    ("spec", "count", "message"),
    [
        ("all", 0, "no CUDA GPU is visible"),
        ("0", 0, "--gpus '0': no CUDA GPU is visible on this machine; use --workers N"),  # not "use 0..-1"
        ("0,x", 2, "expected `all` or GPU indices"),
        ("0,0", 2, "listed twice"),
        ("0,3", 2, "no GPU 3 on this machine"),
    ],
)
def test_bad_gpu_lists_are_rejected_with_the_fix(spec, count, message):
    from hpsearch.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_gpus(spec, count=count)


def test_worker_numbers_start_at_worker_index_so_nodes_do_not_repeat_each_other():
    assert [w.index for w in plan_workers(3, first_index=4)] == [4, 5, 6]
    assert [w.label for w in plan_workers(2)] == ["w0", "w1"]


def test_gpus_without_a_gpu_is_one_line_and_writes_nothing(make_config, workdir):
    if _gpu_count() > 0:
        pytest.skip("this machine has a GPU; the message is for machines without one")
    result = CliRunner().invoke(cli, ["search", str(make_config()), "--gpus", "all"])
    assert result.exit_code == 2 and "no CUDA GPU is visible" in result.stderr, result.output
    assert not (workdir / "studies").exists()


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def test_a_trial_asked_while_a_stopped_trial_is_re_queued_is_over_the_budget(workdir, monkeypatch):
    """SIGTERM on one node while the others go on: the stopped trial is failed and re-queued in two steps.
    A worker that asks in between must not find its place in the budget free, or the retry (which always
    runs) and the new trial together run one trial past n_trials."""
    import io

    from hpsearch import search
    from hpsearch.config import load_config
    from hpsearch.objective import Interrupted
    from hpsearch.study import is_over_budget, quiet_optuna_warnings, remaining_budget

    cfg = load_config(None, overrides={"storage": f"sqlite:///{workdir}/s.db", "name": "stop", "n_trials": 2})
    study = optuna.create_study(study_name="stop", storage=open_storage(cfg.study.storage, cfg))
    asked_meanwhile = []
    real_requeue = search.requeue

    def another_worker_asks_in_between(study, number, reason):
        trial = study.ask()
        asked_meanwhile.append(is_over_budget(study, trial, 2))
        real_requeue(study, number, reason)

    monkeypatch.setattr(search, "requeue", another_worker_asks_in_between)

    def objective(trial):
        trial.report(0.4, 1)
        raise Interrupted("stopped after epoch 1")

    with quiet_optuna_warnings():
        study.ask()  # the other trial of the budget, running elsewhere
        trial = study.ask()
        assert search._run_one(study, trial, objective, search.Reporter(io.StringIO())) is None
    assert asked_meanwhile == [True]
    stopped, retry = study.trials[1], study.trials[3]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["fail_reason"].startswith("interrupted")
    assert retry.state == TrialState.WAITING and retry.system_attrs["failed_trial"] == 1
    assert retry.intermediate_values == {1: 0.4}
    # the asked trial is given back (the search loop marks it over budget); the two others fill the budget
    asked = study.trials[2]
    study._storage.set_trial_user_attr(asked._trial_id, OVER_BUDGET_ATTR, "test")
    study._storage.set_trial_state_values(asked._trial_id, TrialState.FAIL)
    assert remaining_budget(study, 2) == 0


def test_a_worker_whose_trial_another_worker_failed_as_stale_goes_on(workdir):
    """Heartbeats late under load: another worker fails and re-queues the trial while it still runs here.
    This worker must not crash; the retry resumes elsewhere and the budget still counts the trial once."""
    import io

    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from hpsearch.config import load_config
    from hpsearch.search import Reporter, _run_one
    from hpsearch.study import quiet_optuna_warnings

    cfg = load_config(
        None,
        overrides={"storage": f"sqlite:///{workdir}/s.db", "name": "late"},
        sets=["study.heartbeat_interval=1"],
    )
    study = optuna.create_study(study_name="late", storage=open_storage(cfg.study.storage, cfg))

    def objective(trial):
        trial.report(0.4, 1)
        # What another worker's fail_stale_trials does when this one's heartbeat is late:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(study, study.trials[trial.number])
        trial.report(0.3, 2)  # raises: the trial is finished
        return 0.3

    out = io.StringIO()
    with quiet_optuna_warnings():
        trial = study.ask()
        assert _run_one(study, trial, objective, Reporter(out)) is None
    assert "was failed and re-queued by another worker" in out.getvalue()
    old, retry = study.trials
    assert old.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.intermediate_values == {1: 0.4}


def test_workers_are_not_started_when_the_study_already_has_its_trials(make_config, workdir):
    from hpsearch.config import load_config
    from hpsearch.study import CONFIG_ATTR

    url, config = f"sqlite:///{workdir}/studies/t.db", make_config()
    study = optuna.create_study(study_name="t", storage=open_storage(url))
    study.set_user_attr(CONFIG_ATTR, load_config(str(config)).to_dict())  # as a search that made it
    for _ in range(3):
        study.tell(study.ask(), 0.5)
    result = CliRunner().invoke(cli, ["search", str(config), "--workers", "4"])
    assert result.exit_code == 0, result.output
    assert "budget met: study 't' has 3/3 finished trials; no worker started" in result.stderr
    assert len(_study(url).trials) == 3


def test_a_mistake_only_the_first_worker_can_see_is_reported_once_and_writes_nothing(make_config, workdir):
    config = make_config(data={"name": None, "train_file": "missing.csv"})
    result = CliRunner().invoke(cli, ["search", str(config), "--workers", "3"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("[w0] hpsearch: error: ") and "missing.csv" in errors[0]
    assert "[w1]" not in result.stderr and "[w2]" not in result.stderr
    assert not (workdir / "studies").exists()


def test_a_failed_trials_checkpoint_is_kept_until_its_retry_is_queued(workdir):
    """Failing a stale trial and queueing its retry are two steps; a cleanup in between must not delete it."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from hpsearch.search import cleanup_checkpoints

    study = optuna.create_study(study_name="c", storage=open_storage(f"sqlite:///{workdir}/c.db"))
    checkpoint = workdir / "trial-0.pt"
    checkpoint.write_bytes(b"epoch 2")
    stale = study.ask()
    stale.set_user_attr("checkpoint_path", str(checkpoint))
    study._storage.set_trial_state_values(stale._trial_id, TrialState.FAIL)  # step 1 of the stale check
    other = study.ask()
    study.tell(other, 0.5)
    cleanup_checkpoints(study)  # another worker finished a trial in between
    assert checkpoint.exists()
    RetryHeartbeatStaleTrialCallback()(study, study.trials[0])  # step 2: the retry names the checkpoint
    retry = study.ask()
    retry.set_user_attr("checkpoint_path", str(workdir / "trial-2.pt"))  # its first epoch saved its own
    study.tell(retry, 0.4)
    cleanup_checkpoints(study)
    assert not checkpoint.exists()


def test_a_signal_that_lands_while_workers_start_reaches_the_one_starting_and_no_more_start(monkeypatch):
    """Ctrl-C while `--workers 3` is starting its children: the one being started when it landed gets it too
    (it was not yet in the list the handler signals), and the ones after it are not started."""
    import io

    from hpsearch import workers as w

    # a worker: says it is ready, then waits for SIGTERM (exit 0) or gives up after 30 s (exit 3)
    script = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0));"
        " print(\"study 's' in x: 1 train / 1 validation\", flush=True); time.sleep(30); sys.exit(3)"
    )
    real_start = w._start

    def start(worker, command, out, lock):
        if worker.label == "w1":  # the signal lands as the second worker starts
            os.kill(os.getpid(), signal.SIGTERM)
        return real_start(worker, command, out, lock)

    monkeypatch.setattr(w, "_start", start)
    workers = plan_workers(n_workers=3)
    log = io.StringIO()
    code, received = w.run_workers(workers, [sys.executable, "-c", script], out=log)
    assert received == signal.SIGTERM, log.getvalue()
    assert [x.process is not None for x in workers] == [True, True, False]
    # the second stopped on the signal (exit 0, or killed by it if it came before its handler), not after its
    # 30 s wait (exit 3)
    assert workers[0].process.returncode == 0 and workers[1].process.returncode in (0, -signal.SIGTERM)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_the_trial_resumes_from_its_last_epoch(make_config, workdir):
    """First SIGINT: finish the epoch. A second one, more than a second later: stop mid-epoch, keep the finished
    epochs and the checkpoint, re-queue the trial; a rerun trains only the epoch that was cut short."""
    # Epochs of several seconds (12,000 rows at batch 8: ~4 s at 2,500 samples/s, this machine on a fast day),
    # so both signals land inside epoch 2.
    config = make_config(
        study={**SLOW_TRIAL["study"], "n_trials": 1, "grace_period": 15},
        data={"demo_size": 12000},
        train={"n_epochs": 2},
        search_space={"batch_size": 8},
    )
    url = f"sqlite:///{workdir}/studies/t.db"  # tiny_config's study is named t
    proc = _start(workdir, "ctrl-c.log", "search", str(config))
    # The epoch-1 line is printed just before the worker checks for a stop and starts epoch 2; the checkpoint
    # in the store comes earlier, and a signal between the two stopped the trial after epoch 1 (seen in CI).
    _wait_until("the trial past its first epoch", lambda: "trial 0 epoch 1/2" in proc.log.read_text(), [proc])
    time.sleep(0.5)  # inside epoch 2
    proc.send_signal(signal.SIGINT)
    time.sleep(1.5)  # a repeat within a second counts as the same request (Slurm signals every process)
    proc.send_signal(signal.SIGINT)
    code, output = _finish(proc, timeout=120)
    assert code == 130, output[-3000:]
    assert "Traceback" not in output
    [stopped, retry] = _study(url).trials
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs["fail_reason"].startswith("interrupted at once (second signal)"), output[-2000:]
    assert list(stopped.intermediate_values) == [1]  # epoch 2 was cut short, epoch 1 kept
    assert retry.state == TrialState.WAITING
    assert Path(stopped.user_attrs["checkpoint_path"]).is_file()

    code, output = _run(workdir, "search", str(config))
    assert code == 0, output[-3000:]
    study = _study(url)
    _assert_resumed(study, stopped, output, n_epochs=2)
    _assert_budget_exact(study, 1)


def test_checkpoints_that_cannot_be_written_cost_no_trial(make_config, workdir):
    """A full disk under train.checkpoint_dir (here: a 1 MiB limit on file size, which the 1.8 MB checkpoints
    pass and the store does not): trials train on and complete, the partial files are removed, each failed
    write is one line."""
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    config = make_config(study={"n_trials": 2, "pruner": "none"}, data={"demo_size": 200})
    proc = subprocess.run(
        _command("search", str(config)),
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
        preexec_fn=small_files,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("not written") == 4 and "training goes on" in proc.stderr  # 2 trials x 2 epochs
    assert "Traceback" not in proc.stderr
    trials = _study(f"sqlite:///{workdir}/studies/t.db").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(len(t.intermediate_values) == 2 for t in trials)
    assert not [p for p in (workdir / "checkpoints").rglob("*") if p.is_file()]


def test_a_stop_during_the_last_epoch_leaves_the_trial_complete(make_config, workdir):
    """SIGTERM while a trial trains its last epoch: it has trained every epoch, so it is complete, not failed
    and queued for a rerun that would only finish it."""
    import io
    import threading

    from hpsearch.config import load_config
    from hpsearch.search import Reporter, run_search

    stop = threading.Event()

    class StopInLastEpoch(Reporter):
        def epoch(self, number, hp, r, n_epochs):
            super().epoch(number, hp, r, n_epochs)
            if r.epoch == n_epochs - 1:  # as the signal handler would, half a second into the last epoch
                threading.Timer(0.5, stop.set).start()

    # 5,400 training rows: an epoch of 2 s or more on this CPU, so the stop lands inside the last one.
    config = make_config(study={"n_trials": 2, "pruner": "none"}, data={"demo_size": 6000})
    cfg = load_config(config)
    out = io.StringIO()
    result = run_search(cfg, reporter=StopInLastEpoch(out), stop=stop)
    assert result.stopped_by == "signal" and result.trials_run == [0], out.getvalue()
    [trial] = _study(cfg.study.storage).trials
    assert trial.state == TrialState.COMPLETE and sorted(trial.intermediate_values) == [1, 2]


def test_a_stop_after_a_rung_epoch_lets_the_pruner_decide_first(make_config, workdir):
    """SIGTERM during an epoch after which the pruner stops the trial: the trial is pruned (here paused) there,
    not failed and re-queued for a retry that would train one more epoch before the pruner stops it."""
    import io
    import threading

    from hpsearch.config import load_config
    from hpsearch.search import Reporter, run_search

    stop = threading.Event()

    class StopInEpochTwo(Reporter):
        def epoch(self, number, hp, r, n_epochs):
            super().epoch(number, hp, r, n_epochs)
            if r.epoch == 2:
                stop.set()  # as the signal handler would during the epoch: the pruner is asked after this line

    # nothing learns in epoch 1 on 180 rows, so the first rung cannot rank and the trial goes on past it; at
    # the second rung (epoch 2) a pausing pruner pauses it whatever it scored: alone, nothing to rank it by
    config = make_config(
        study={"n_trials": 2, "pause_at_rungs": True, "reduction_factor": 2},
        data={"demo_size": 200},
        train={"n_epochs": 4},
    )
    cfg = load_config(config)
    result = run_search(cfg, reporter=StopInEpochTwo(io.StringIO()), stop=stop)
    assert result.stopped_by == "signal" and result.trials_run == [0]
    [trial] = _study(cfg.study.storage).trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["paused_at_epoch"] == 2


def test_a_checkpoint_that_cannot_be_written_leaves_the_previous_one_and_no_partial_file(workdir):
    """A full disk (here: a 1 MiB limit on file size; Python ignores SIGXFSZ, so the write fails with EFBIG)."""
    import resource

    import torch

    from hpsearch.objective import CheckpointNotWritten, load_checkpoint, save_checkpoint

    path = workdir / "trial-0.pt"
    save_checkpoint(path, {"epoch": 1})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises(CheckpointNotWritten, match="not written"):
            save_checkpoint(path, {"epoch": 2, "model": torch.zeros(1 << 19)})  # 2 MiB
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert load_checkpoint(str(path))["epoch"] == 1
    assert [p.name for p in workdir.iterdir()] == ["trial-0.pt"]  # no trial-0.tmpPID taking the space left
