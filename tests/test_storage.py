"""Stores for many workers: SQLite, PostgreSQL, MySQL URLs, journal files; the study-wide budget; status."""

from __future__ import annotations

import time

import optuna
import pytest
from click.testing import CliRunner
from conftest import two_data_folders
from optuna.trial import TrialState

from hpsearch.cli import cli
from hpsearch.config import load_config, mask_password
from hpsearch.errors import ConfigError
from hpsearch.results import running_status, visible_trials
from hpsearch.study import (
    OVER_BUDGET_ATTR,
    _normalise_url,
    close_storages,
    counts,
    is_over_budget,
    open_storage,
    quiet_optuna_warnings,
    remaining_budget,
)


@pytest.fixture(autouse=True)
def _close_connections():
    """Give back the database connections a test opened (psycopg warns about ones left to the GC)."""
    yield
    close_storages()


def _one_line_error(result) -> str:
    """The CLI's contract for bad input: exit 2, one line on stderr, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpsearch: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://hp:pw@db/hpsearch",
            "postgresql+psycopg://hp:pw@db/hpsearch",
        ),  # psycopg 3, not psycopg2
        ("postgres://hp@db/hpsearch", "postgresql+psycopg://hp@db/hpsearch"),
        ("postgresql+psycopg://hp@db/hpsearch", "postgresql+psycopg://hp@db/hpsearch"),
        ("mysql://hp@db/hpsearch", "mysql+pymysql://hp@db/hpsearch"),
        ("mysql+pymysql://hp@db/hpsearch", "mysql+pymysql://hp@db/hpsearch"),
        ("sqlite:///studies/x.db", "sqlite:///studies/x.db"),
    ],
)
def test_short_database_urls_name_the_installed_driver(url, expected):
    assert _normalise_url(url) == expected


def test_mysql_url_without_its_driver_is_one_line_naming_the_extra(make_config, workdir):
    try:
        import pymysql  # noqa: F401

        pytest.skip("PyMySQL is installed; this test is about the message when it is not")
    except ImportError:
        pass
    config = make_config()
    line = _one_line_error(
        CliRunner().invoke(cli, ["search", str(config), "--storage", "mysql://hp:secret@db/hp"])
    )
    assert "hpsearch[mysql]" in line and "secret" not in line
    assert not (workdir / "studies").exists() and not (workdir / "checkpoints").exists()


def test_unreachable_postgresql_is_waited_for_then_one_line_and_writes_nothing(make_config, workdir, caplog):
    """Nothing answers: a worker waits for study.store_wait (a server restarting), saying so at once, then
    stops with one line naming the fix; nothing is written."""
    config = make_config(study={"store_wait": 3})
    url = "postgresql+psycopg://hp:secret@127.0.0.1:1/hpsearch"  # port 1: nothing listens
    line = _one_line_error(CliRunner().invoke(cli, ["search", str(config), "--storage", url]))
    [said] = [r.getMessage() for r in caplog.records if "waiting for it" in r.getMessage()]  # at once, once
    assert "waiting for it for up to 3 s" in said and "study.store_wait" in said and "secret" not in said
    assert line.startswith("hpsearch: error: storage: cannot reach") and "127.0.0.1" in line
    assert "(waited " in line and "study.store_wait)" in line  # it did wait, for the setting's seconds
    assert "start the database server, or fix the host and port" in line and "secret" not in line
    assert not (workdir / "studies").exists() and not (workdir / "checkpoints").exists()


def test_without_store_wait_a_refused_connection_fails_at_once_and_a_restarting_server_is_waited_for(caplog):
    """A refused connection reads the same for a server that is down as for a wrong port: with study.store_wait
    unset it fails at once, naming the setting. A server that answers it is starting up is restarting: it is
    waited for (the answers a real PostgreSQL gives in each case; the timing of a real restart cannot be
    hit on cue)."""
    from hpsearch.study import _wait_for_server

    url = "postgresql+psycopg://hp@db/hp"
    refused = 'connection failed: connection to server at "10.0.0.5", port 5432 failed: Connection refused'
    calls = []

    def refuse():
        calls.append(1)
        raise RuntimeError(refused)

    with pytest.raises(ConfigError, match="study.store_wait=300 waits for it") as error:
        _wait_for_server(url, refuse, None)
    assert len(calls) == 1 and "Connection refused" in str(error.value) and "waiting" not in caplog.text

    answers = iter(
        [
            "FATAL:  the database system is shutting down",
            refused,  # then down: the same restart
            "FATAL:  the database system is starting up",
        ]
    )

    def restart():
        answer = next(answers, None)
        if answer is not None:
            raise RuntimeError(answer)
        return "open"

    assert _wait_for_server(url, restart, None) == "open"
    [said] = [r.getMessage() for r in caplog.records if "waiting for it" in r.getMessage()]
    assert "it is restarting" in said


@pytest.mark.postgres
def test_a_worker_started_while_the_database_is_down_waits_for_it(
    make_config, workdir, pg_server, postgres_url, caplog
):
    """A worker started during a database restart (a node rebooted with the server, a fail-over) with
    study.store_wait set waits for the server instead of exiting as if its URL were wrong, then searches."""
    import threading

    import psycopg

    config = make_config(study={"n_trials": 2, "store_wait": 60}, train={"n_epochs": 1})
    down = threading.Thread(target=pg_server.restart, args=(4.0,))
    down.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the server is down
        try:
            psycopg.connect(pg_server.libpq_url, connect_timeout=2).close()
        except psycopg.OperationalError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the server did not go down")
    result = CliRunner().invoke(cli, ["search", str(config), "--storage", postgres_url])
    down.join()
    assert result.exit_code == 0, result.output
    assert "waiting for it for up to 60 s (study.store_wait" in caplog.text
    study = optuna.load_study(study_name="t", storage=open_storage(postgres_url))
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 2


def test_a_read_only_command_does_not_wait_for_a_database_that_is_away(workdir, caplog):
    """`show` at a terminal says at once that the server does not answer (exit 2), rather than waiting."""
    result = CliRunner().invoke(cli, ["show", "t", "--storage", "postgresql+psycopg://hp@127.0.0.1:1/hp"])
    line = _one_line_error(result)
    assert "cannot reach" in line or "cannot open" in line
    assert "waiting for it" not in caplog.text and "(waited " not in line


@pytest.mark.postgres
def test_missing_postgresql_database_is_one_line_and_creates_nothing(make_config, workdir, pg_server):
    import psycopg

    config = make_config()
    url = pg_server.url.rsplit("/", 1)[0] + "/no_such_db"
    line = _one_line_error(CliRunner().invoke(cli, ["search", str(config), "--storage", url]))
    assert "no_such_db" in line
    with psycopg.connect(pg_server.libpq_url) as con:
        names = {r[0] for r in con.execute("SELECT datname FROM pg_database")}
    assert "no_such_db" not in names


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["search", "show", "studies"])
@pytest.mark.parametrize(
    "wrong, fix",
    [
        ("database", "create the database, or fix its name in the URL"),
        ("user", "check the user name in the URL"),
        ("host", "check the host name in the URL"),
    ],
)
def test_a_wrong_database_user_or_host_reads_alike_from_every_command(
    make_config, pg_server, command, wrong, fix
):
    """The same wrong URL gave "cannot reach ...: connection failed: ..." from `search` and "cannot open ...:
    (psycopg.OperationalError) ..." with no fix from the read-only commands. One form now, naming the part."""
    base = pg_server.url.rsplit("/", 1)[0]
    url = {
        "database": f"{base}/no_such_db",
        "user": base.split("://")[0] + "://nobody_here:secret@" + base.split("@", 1)[1] + "/postgres",
        "host": "postgresql+psycopg://hp:secret@no-such-host.invalid/hpsearch",
    }[wrong]
    args = [str(make_config())] if command == "search" else ["demo"] if command == "show" else []
    line = _one_line_error(CliRunner().invoke(cli, [command, *args, "--storage", url]))
    assert line.startswith(f"hpsearch: error: storage: cannot reach {mask_password(url)}: "), line
    assert line.endswith(f"; {fix}") and "OperationalError" not in line and "secret" not in line, line


@pytest.mark.postgres
@pytest.mark.parametrize("command", [["show", "demo"], ["studies"], ["best", "demo"], ["export", "demo"]])
def test_reading_an_empty_postgresql_database_creates_no_tables(postgres_url, command):
    """A read-only command pointed at a database without Optuna's tables says so and leaves it as it was."""
    import psycopg

    line = _one_line_error(CliRunner().invoke(cli, [*command, "--storage", postgres_url]))
    assert "holds no studies yet" in line and "hpsearch search" in line
    libpq = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq) as con:
        tables = con.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    assert tables == []


@pytest.mark.postgres
def test_search_on_postgresql_lands_in_the_server(make_config, postgres_url):
    config = make_config(study={"n_trials": 2}, train={"n_epochs": 1})
    result = CliRunner().invoke(cli, ["search", str(config), "--storage", postgres_url])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="t", storage=open_storage(postgres_url))
    assert sum(t.state.is_finished() for t in study.trials) == 2
    listed = CliRunner().invoke(cli, ["studies", "--storage", postgres_url])
    assert listed.exit_code == 0 and "t: 2 complete" in listed.output


@pytest.mark.postgres
def test_a_password_in_the_url_is_masked_and_the_paste_lines_say_so(make_config, postgres_url):
    url = postgres_url.replace("@", ":s3cret@", 1)  # the test server trusts loopback: any password works
    config = make_config(study={"n_trials": 1}, train={"n_epochs": 1})
    result = CliRunner().invoke(cli, ["search", str(config), "--storage", url])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output and ":***@" in result.stderr
    assert "the password is masked above: give your own --storage URL" in result.stderr
    assert "this run: 1 trial, stopped by budget" in result.stderr


@pytest.mark.parametrize("form", ["path", "journal-url"])
def test_journal_file_store_holds_a_study(make_config, workdir, form, caplog):
    path = workdir / "shared" / "studies.log"
    storage = str(path) if form == "path" else f"journal:{path}"
    config = make_config(study={"n_trials": 2}, train={"n_epochs": 1})
    result = CliRunner().invoke(cli, ["search", str(config), "--storage", storage])
    assert result.exit_code == 0, result.output
    assert path.is_file() and not (workdir / "studies").exists()
    # the folder was made: a node where the shared file system is not mounted would search on its own
    assert f"storage: made folder {path.parent} for a new journal" in caplog.text
    caplog.clear()
    again = CliRunner().invoke(cli, ["search", str(config), "--storage", storage])  # done: opens, ends
    assert again.exit_code == 0 and "made folder" not in caplog.text, again.output
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.load_study(study_name="t", storage=JournalStorage(JournalFileBackend(str(path))))
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 2
    shown = CliRunner().invoke(cli, ["show", "t", "--storage", storage])
    assert shown.exit_code == 0 and "complete" in shown.output


def test_a_rerun_on_a_journal_store_names_the_trial_held_elsewhere_and_how_to_requeue_it(
    make_config, workdir
):
    """A journal store has no heartbeat: a worker with nothing left to start cannot wait for a dead worker's
    trial to turn stale, so it says which trial is held, by which worker, and the requeue command."""
    path = workdir / "studies.log"
    config = make_config(study={"n_trials": 1}, train={"n_epochs": 1})
    assert CliRunner().invoke(cli, ["search", str(config), "--storage", str(path)]).exit_code == 0
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.load_study(study_name="t", storage=JournalStorage(JournalFileBackend(str(path))))
    held = study.ask()  # a worker that started trial 1 and was killed
    held.set_user_attr("worker", "gone-node:4242")
    result = CliRunner().invoke(cli, ["search", str(config), "--storage", str(path), "--n-trials", "2"])
    assert result.exit_code == 0, result.output
    assert "trial(s) 1 (worker gone-node:4242) still marked running" in result.stderr
    assert f"hpsearch requeue t 1 --storage {path}, then rerun" in result.stderr
    assert "waiting in case" not in result.stderr  # it does not wait: nothing would ever end the wait
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.RUNNING]


def test_reading_a_missing_journal_file_does_not_create_it(workdir):
    line = _one_line_error(CliRunner().invoke(cli, ["studies", "--storage", "nowhere/studies.log"]))
    assert "does not exist" in line
    assert not (workdir / "nowhere").exists()


def _study(workdir, n_trials=2, heartbeat=False, **study):
    """A real SQLite study; with ``heartbeat`` its storage beats and retries as a worker's does."""
    storage = f"sqlite:///{workdir}/s.db"
    cfg = load_config(
        None,
        overrides={"storage": storage, "name": "b", "n_trials": n_trials},
        sets=[f"study.{k}={v}" for k, v in study.items()],
    )
    storage = open_storage(cfg.study.storage, cfg if heartbeat else None)
    study = optuna.create_study(study_name="b", storage=storage, load_if_exists=True)
    study.set_user_attr("hpsearch_config", cfg.to_dict())  # as open_study records it: grace period, n_epochs
    return cfg, study


def test_asks_past_the_budget_are_over_budget_and_hidden(workdir):
    _, study = _study(workdir, n_trials=2)
    asked = [study.ask() for _ in range(3)]  # three workers ask at once for a budget of two
    assert [is_over_budget(study, t, 2) for t in asked] == [False, False, True]
    asked[2].set_user_attr(OVER_BUDGET_ATTR, "another worker took the last trial of the budget")
    study.tell(asked[2], state=TrialState.FAIL)
    assert counts(study)[TrialState.FAIL] == 0 and counts(study)[TrialState.RUNNING] == 2
    assert [t.number for t in visible_trials(study)] == [0, 1]
    assert remaining_budget(study, 2) == 0


def test_a_retry_of_a_counted_trial_is_never_over_budget(workdir):
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    _, study = _study(workdir, n_trials=2)
    first, second = study.ask(), study.ask()
    first.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    first.report(0.4, 1)
    study.tell(first, state=TrialState.FAIL)  # its worker died
    RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(study, study.trials[0])
    study.tell(second, 0.3)
    retry = study.ask()  # pops the queued retry, numbered after both
    assert retry.number == 2 and not is_over_budget(study, retry, 2)
    assert retry.params == study.trials[0].params
    assert study.trials[2].intermediate_values == {1: 0.4}
    assert remaining_budget(study, 2) == 0


def test_running_trials_show_their_worker_epoch_and_heartbeat_and_turn_stale(workdir):
    cfg, study = _study(workdir, n_trials=2, heartbeat=True, heartbeat_interval=1, grace_period=1)
    from optuna.storages._heartbeat import get_heartbeat_thread

    with quiet_optuna_warnings():  # hpsearch runs its own ask/tell loop with heartbeats, as here
        trial = study.ask()
    trial.set_user_attr("worker", "node7:4242")
    trial.report(0.5, 1)
    with get_heartbeat_thread(trial._trial_id, study._storage):  # a live worker beats every second
        time.sleep(0.2)
        [live] = running_status(study)
    assert live["number"] == 0 and live["worker"] == "node7:4242" and live["epoch"] == 1
    assert live["heartbeat_age_s"] is not None and not live["stale"]
    time.sleep(2.5)  # no heartbeat for longer than the grace period: the worker is presumably dead
    [dead] = running_status(study)
    assert dead["stale"] and dead["heartbeat_age_s"] > 1


def test_show_lists_running_trials_with_heartbeat(workdir):
    cfg, study = _study(workdir, n_trials=2, heartbeat=True, heartbeat_interval=1, grace_period=30)
    with quiet_optuna_warnings():
        trial = study.ask()
    trial.set_user_attr("worker", "node7:4242")
    study._storage.record_heartbeat(trial._trial_id)
    result = CliRunner().invoke(cli, ["show", "b", "--storage", cfg.study.storage])
    assert result.exit_code == 0, result.output
    assert "running trials (1):" in result.output and "node7:4242" in result.output
    assert "last heartbeat" in result.output and "STALE" not in result.output


def test_open_storage_rejects_a_path_that_is_not_a_url():
    with pytest.raises(ConfigError, match="not a storage URL"):
        open_storage("studies/x.db")


def test_requeue_by_hand_resumes_a_dead_workers_trial_on_a_journal_store(workdir):
    """A journal store has no heartbeat: a killed worker's trial stays RUNNING until someone re-queues it."""
    storage = str(workdir / "studies.log")
    cfg = load_config(None, overrides={"storage": storage, "name": "j", "n_trials": 2})
    study = optuna.create_study(study_name="j", storage=open_storage(storage))
    study.set_user_attr("hpsearch_config", cfg.to_dict())
    trial = study.ask()  # its worker is gone: nothing will ever tell it
    trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    trial.report(0.4, 1)
    trial.set_user_attr("checkpoint_path", str(workdir / "trial-0.pt"))
    shown = CliRunner().invoke(cli, ["show", "j", "--storage", storage])
    assert "no heartbeat" in shown.output
    result = CliRunner().invoke(cli, ["requeue", "j", "0", "--storage", storage])
    assert result.exit_code == 0, result.output
    old, queued = optuna.load_study(study_name="j", storage=open_storage(storage)).trials
    assert old.state == TrialState.FAIL and queued.state == TrialState.WAITING
    assert queued.params == old.params and queued.intermediate_values == {1: 0.4}
    assert queued.user_attrs["checkpoint_path"] == str(workdir / "trial-0.pt")
    assert queued.system_attrs["failed_trial"] == 0
    again = _one_line_error(CliRunner().invoke(cli, ["requeue", "j", "0", "--storage", storage]))
    assert "trial 0 is failed, not running" in again


def test_requeue_refuses_a_trial_whose_worker_is_alive(workdir):
    cfg, study = _study(workdir, n_trials=2, heartbeat=True, heartbeat_interval=1, grace_period=30)
    with quiet_optuna_warnings():
        trial = study.ask()
    study._storage.record_heartbeat(trial._trial_id)
    line = _one_line_error(CliRunner().invoke(cli, ["requeue", "b", "0", "--storage", cfg.study.storage]))
    assert "is alive" in line
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    line = _one_line_error(CliRunner().invoke(cli, ["requeue", "b", "5", "--storage", cfg.study.storage]))
    assert "trial 5 does not exist" in line


def _open_together(url: str, n: int) -> list[str]:
    """``n`` processes open the study at ``url`` in the same instant; what each saw ("ok" or its error)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_and_create, args=(url, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    seen = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    return seen


def _open_and_create(url: str, barrier, results) -> None:
    barrier.wait()
    try:
        optuna.create_study(study_name="together", storage=open_storage(url), load_if_exists=True)
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 (the test reports what each worker saw)
        results.put(f"{type(exc).__name__}: {exc}")
    finally:
        close_storages()


@pytest.mark.postgres
def test_workers_started_together_on_an_empty_postgresql_database_all_open_it(postgres_url):
    """Nodes of one Slurm or Kubernetes job start at once: all create Optuna's tables in the same second."""
    assert _open_together(postgres_url, 6) == ["ok"] * 6
    assert optuna.get_all_study_names(open_storage(postgres_url)) == ["together"]


@pytest.mark.parametrize("empty_file", [False, True])
def test_workers_started_together_on_a_new_sqlite_file_all_open_it(workdir, empty_file):
    """Workers started at once on one node (separate commands, each its --worker-index) on a SQLite file that
    does not exist yet, or is empty: none takes another's half-made tables for a foreign file, and the losers
    of the race to stamp Optuna's schema version try again."""
    from hpsearch.study import _is_schema_race

    assert _is_schema_race("(sqlite3.IntegrityError) UNIQUE constraint failed: alembic_version.version_num")
    for attempt in range(3):  # the race is lost in about 2 of 3 launches of 8 workers
        url = f"sqlite:///{workdir}/together{attempt}.db"
        if empty_file:
            (workdir / f"together{attempt}.db").touch()
        assert _open_together(url, 8) == ["ok"] * 8
        assert optuna.get_all_study_names(open_storage(url)) == ["together"]


def test_a_resumed_study_does_not_repeat_the_first_runs_hyperparameters(workdir):
    """Rerunning the same command (same seed, same worker number) must not draw the same trials again."""
    from hpsearch.space import parse_space, suggest
    from hpsearch.study import open_study

    def config(db: str):
        return load_config(
            None, overrides={"storage": f"sqlite:///{workdir}/{db}", "name": "again", "sampler": "random"}
        )

    cfg = config("s.db")
    space = parse_space(cfg.search_space, cfg.source)
    drawn = []
    with quiet_optuna_warnings():  # open_study's storage has heartbeats, as a worker's does
        for _run in range(2):  # the first run, then the rerun that resumes it
            study = open_study(cfg, space)
            trial = study.ask()
            drawn.append(suggest(trial, space)["learning_rate"])
            study.tell(trial, 0.5)
        assert drawn[0] != drawn[1]
        fresh = open_study(config("t.db"), space)
        assert suggest(fresh.ask(), space)["learning_rate"] == drawn[0]  # a new study is still reproducible


def _fail(study, trial, reason: str | None = None) -> None:
    if reason is not None:
        study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def test_preemptions_do_not_use_up_a_trials_retries_and_a_retry_drops_the_failure_note(workdir):
    """max_retries counts dead workers; a trial stopped by SIGTERM three times and then killed once is
    retried all the same, and no finished retry shows an old failure's note."""
    from hpsearch.study import RetryTrial

    _, study = _study(workdir, n_trials=1)
    retry = RetryTrial(max_retry=1)
    with quiet_optuna_warnings():
        trial = study.ask()
        trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
        trial.set_user_attr("checkpoint_path", str(workdir / "trial-0.pt"))
        trial.report(0.4, 1)
        for n in range(3):  # preempted three times: each retry resumes, none counts against max_retries
            _fail(study, trial, "interrupted (stopped after epoch 1); re-queued")
            retry(study, study.trials[trial.number])
            trial = study.ask()
            assert trial.number == n + 1 and "fail_reason" not in study.trials[trial.number].user_attrs
        _fail(study, trial)  # killed: a stale heartbeat, no note of its own
        retry(study, study.trials[trial.number])
        trial = study.ask()  # the one retry max_retries=1 allows for a death
        assert trial.number == 4 and trial.params == study.trials[0].params
        assert study.trials[4].system_attrs["retry_history"] == [0, 1, 2, 3]
        assert study.trials[4].system_attrs["failed_trial"] == 0
        assert study.trials[4].user_attrs["checkpoint_path"] == str(workdir / "trial-0.pt")
        assert study.trials[4].intermediate_values == {1: 0.4}
        _fail(study, trial, "worker gone; re-queued by hand")  # a second death: past max_retries
        retry(study, study.trials[trial.number])
    assert len(study.trials) == 5 and counts(study)[TrialState.WAITING] == 0
    # Every failed trial says why and which trial resumed it: in show/export, and in the dashboard's note.
    from hpsearch.dashboard import read_note
    from hpsearch.results import trial_rows

    reasons = {r["number"]: r["reason"] for r in trial_rows(study)}
    assert reasons[0] == "interrupted (stopped after epoch 1); re-queued; resumed as trial 1"
    assert reasons[3].startswith("its worker died (no heartbeat") and reasons[3].endswith(
        "resumed as trial 4"
    )
    assert reasons[4] == "worker gone; re-queued by hand"  # no retry left
    note = read_note(study, study.trials[3])
    assert "its worker died" in note and "Trial 4 resumes it from its last checkpoint" in note


@pytest.mark.postgres
def test_a_worker_rides_out_a_postgresql_restart(pg_server, postgres_url):
    """A fail-over or a server reboot cuts every connection for a few seconds: the trial's writes wait for the
    server and land, and its heartbeat comes back, so no other worker takes the trial for dead."""
    import threading

    from hpsearch.search import _heartbeat

    cfg = load_config(
        None,
        overrides={"storage": postgres_url, "name": "pg"},
        sets=["study.heartbeat_interval=1", "study.grace_period=30"],
    )
    study = optuna.create_study(study_name="pg", storage=open_storage(postgres_url, cfg))
    study.set_user_attr("hpsearch_config", cfg.to_dict())
    with quiet_optuna_warnings():
        trial = study.ask()
    trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    with _heartbeat(study, trial):
        down = threading.Thread(target=pg_server.restart, args=(3.0,))
        down.start()
        time.sleep(1.5)  # the server is going down or down
        trial.report(0.4, 1)  # waits for the server, then lands
        trial.set_user_attr("epochs_run", 1)
        down.join()
        back = time.monotonic()

        def beat_since_back():  # a heartbeat recorded after the server came back: the thread lived on
            [status] = running_status(study)
            age = status["heartbeat_age_s"]  # None until the first heartbeat row is there
            return status if age is not None and age < time.monotonic() - back else None

        deadline = back + 30
        while (status := beat_since_back()) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status is not None and not status["stale"]
    study.tell(trial, 0.4)
    close_storages()
    [stored] = optuna.load_study(study_name="pg", storage=open_storage(postgres_url)).trials
    assert stored.state == TrialState.COMPLETE and stored.intermediate_values == {1: 0.4}
    assert stored.user_attrs["epochs_run"] == 1


@pytest.mark.postgres
def test_a_database_restart_longer_than_the_grace_period_fails_no_live_trial(pg_server, postgres_url):
    """Down for longer than the grace period: no worker can record a heartbeat meanwhile, so every running
    trial's heartbeat is old when the server is back. The first worker to check must not fail a live trial
    before its worker has had time to record one (here a worker that started after the restart, and so never
    saw the outage itself); the trial goes on."""
    from hpsearch.search import _fail_stale, _heartbeat

    cfg = load_config(
        None,
        overrides={"storage": postgres_url, "name": "pg"},
        sets=["study.heartbeat_interval=1", "study.grace_period=4"],
    )
    study = optuna.create_study(study_name="pg", storage=open_storage(postgres_url, cfg))
    with quiet_optuna_warnings():
        trial = study.ask()
    trial.report(0.4, 1)
    with _heartbeat(study, trial):
        time.sleep(1.5)  # the thread's first heartbeat is in (a trial with none is never stale)
        assert running_status(study)[0]["heartbeat_age_s"] is not None
        pg_server.restart(8.0)  # twice the grace period
        other = optuna.load_study(study_name="pg", storage=open_storage(postgres_url, cfg))
        for _ in range(16):  # the other worker's loop, over twice the grace period once the server is back
            _fail_stale(other)
            assert other.trials[0].state == TrialState.RUNNING
            time.sleep(0.5)
        trial.report(0.3, 2)
    study.tell(trial, 0.3)
    [stored] = optuna.load_study(study_name="pg", storage=open_storage(postgres_url)).trials
    assert stored.state == TrialState.COMPLETE and stored.intermediate_values == {1: 0.4, 2: 0.3}


def _lose_answers(storage, monkeypatch, plan: list[str]) -> list[str]:
    """The server commits a write, and the connection drops before the worker hears so: a moment no real
    restart hits on cue, so the commit's answer is replaced by the error SQLAlchemy raises for a lost server,
    for the writes in ``plan`` (a trial "made", "taken" from the queue, "finished"), in that order."""
    import sqlalchemy.exc
    from optuna.storages._rdb import models
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    lost: list[str] = []

    @event.listens_for(storage.scoped_session.session_factory, "after_flush")
    def look(session, _context):
        for obj in [*session.new, *session.dirty]:
            if isinstance(obj, models.TrialModel) and len(lost) < len(plan):
                made, state = obj in session.new, obj.state
                what = (
                    "made"
                    if made
                    else "finished"
                    if state.is_finished()
                    else "taken"
                    if state.name == "RUNNING"
                    else ""
                )
                if what == plan[len(lost)]:
                    session.info["lose"] = what

    real_commit = Session.commit

    def commit(session):  # the commit lands; its answer does not
        real_commit(session)
        if what := session.info.pop("lose", ""):
            lost.append(what)
            raise sqlalchemy.exc.OperationalError(
                "COMMIT", {}, ConnectionError("server closed the connection")
            )

    monkeypatch.setattr(Session, "commit", commit)
    return lost


@pytest.mark.postgres
def test_a_write_whose_answer_was_lost_is_not_done_twice(postgres_url, monkeypatch):
    """Trying a write again after a lost connection must not make a second trial, leave a queued trial running
    with no worker on it (both counted against the budget for ever: neither has a heartbeat to go stale), nor
    fail the tell of a trial the first try already finished."""
    storage = open_storage(postgres_url)
    study = optuna.create_study(study_name="lost", storage=storage)
    plan = ["made", "taken", "finished", "made", "finished"]
    lost = _lose_answers(storage, monkeypatch, plan)
    with quiet_optuna_warnings():
        study.enqueue_trial({"learning_rate": 1e-3})  # a trial made from a template, as a retry or requeue is
        queued = study.ask()
        study.tell(queued, 0.3)
        trial = study.ask()  # a bare trial
        study.tell(trial, 0.2)
    assert lost == plan
    close_storages()
    stored = optuna.load_study(study_name="lost", storage=open_storage(postgres_url)).trials
    assert [(t.number, t.state, t.value) for t in stored] == [
        (0, TrialState.COMPLETE, 0.3),
        (1, TrialState.COMPLETE, 0.2),
    ]
    assert (queued.number, trial.number) == (0, 1)
    assert stored[0].system_attrs["fixed_params"] == {"learning_rate": 1e-3}


def test_requeue_by_hand_refuses_a_worker_alive_on_this_machine(workdir):
    """A journal store has no heartbeat; the worker's host and pid tell a live worker on this machine."""
    import socket
    import subprocess

    storage = str(workdir / "studies.log")
    cfg = load_config(None, overrides={"storage": storage, "name": "j", "n_trials": 2})
    study = optuna.create_study(study_name="j", storage=open_storage(storage))
    study.set_user_attr("hpsearch_config", cfg.to_dict())
    trial = study.ask()
    worker = subprocess.Popen(["sleep", "60"])
    try:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{worker.pid}")
        line = _one_line_error(CliRunner().invoke(cli, ["requeue", "j", "0", "--storage", storage]))
        assert "is alive" in line and str(worker.pid) in line
        assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    finally:
        worker.kill()
        worker.wait()
    result = CliRunner().invoke(cli, ["requeue", "j", "0", "--storage", storage])  # now it is gone
    assert result.exit_code == 0, result.output
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


def test_a_killed_workers_partial_checkpoint_goes_with_its_trials_checkpoint(workdir):
    """A worker killed while writing trial-N.pt leaves trial-N.tmpPID; it is deleted with trial-N.pt, and at
    the end of the search whatever its trial."""
    from hpsearch.search import cleanup_checkpoints

    _, study = _study(workdir, n_trials=3)
    files = {}
    for value in (0.3, 0.5):
        trial = study.ask()
        path = workdir / f"trial-{trial.number}.pt"
        path.write_bytes(b"epoch 1")
        files[trial.number] = (path, workdir / f"trial-{trial.number}.tmp4242")
        files[trial.number][1].write_bytes(b"half of epoch 2")
        trial.set_user_attr("checkpoint_path", str(path))
        study.tell(trial, value)
    orphan = workdir / "trial-9.tmp77"  # killed before its first checkpoint existed
    orphan.write_bytes(b"half")
    cleanup_checkpoints(study)
    assert files[0][0].exists() and files[0][1].exists()  # the best trial's checkpoint stays, and so...
    assert not files[1][0].exists() and not files[1][1].exists()  # ...a replaced one goes, partial and all
    assert orphan.exists()
    cleanup_checkpoints(study, keep_paused=False)  # the search is over
    assert files[0][0].exists() and not files[0][1].exists() and not orphan.exists()


def test_the_grace_period_defaults_to_two_heartbeat_intervals(workdir):
    """One late heartbeat must not make a live worker's trial look dead: without study.grace_period, a trial is
    stale after two intervals, for the stale check and for `show` alike."""
    from hpsearch.results import grace_seconds

    cfg, study = _study(workdir, heartbeat=True, heartbeat_interval=5)
    assert cfg.study.grace_period is None
    assert open_storage(cfg.study.storage, cfg).grace_period == 10
    assert grace_seconds(study) == 10


def test_a_study_another_worker_made_since_the_listing_keeps_its_settings(workdir, monkeypatch):
    """Two searches starting together on a new study: the one whose listing came before the other's create
    found no study, 'created' it (Optuna loads it) and wrote its own settings over the other's."""
    import hpsearch.study as study_module
    from hpsearch.space import parse_space
    from hpsearch.study import CONFIG_ATTR, open_study

    url = f"sqlite:///{workdir}/race.db"
    first = load_config(None, overrides={"storage": url, "name": "race"}, sets=["train.n_epochs=3"])
    second = load_config(None, overrides={"storage": url, "name": "race"}, sets=["train.n_epochs=2"])
    space = parse_space(first.search_space, first.source)
    with quiet_optuna_warnings():
        open_study(first, space)
        monkeypatch.setattr(study_module, "check_resumable", lambda cfg, data=None: None)  # listed before
        monkeypatch.setattr(study_module, "_summaries", lambda storage: [])  # the first one's create
        with pytest.raises(ConfigError, match="train.n_epochs is 2 but study 'race' was created with 3"):
            open_study(second, space)
    stored = optuna.load_study(study_name="race", storage=url).user_attrs[CONFIG_ATTR]
    assert stored["train"]["n_epochs"] == 3


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_two_workers_making_one_study_at_once_cannot_both_write_their_settings(
    workdir, monkeypatch, store, request
):
    """Both found no study, and no settings in the one they made: the second's whole start-up falls between
    the first's read of the settings and its write. The first one's write must not go over the second's
    settings (both would search, with other epochs, into one study): it is refused, the second's kept."""
    import hpsearch.study as study_module
    from hpsearch.space import parse_space
    from hpsearch.study import CONFIG_ATTR, open_study

    url = request.getfixturevalue("postgres_url") if store == "postgresql" else f"sqlite:///{workdir}/race.db"
    first = load_config(None, overrides={"storage": url, "name": "race"}, sets=["train.n_epochs=3"])
    second = load_config(None, overrides={"storage": url, "name": "race"}, sets=["train.n_epochs=2"])
    space = parse_space(first.search_space, first.source)
    real = optuna.Study.user_attrs
    cue = {"armed": True}

    def read_then_the_other_worker_starts(study):
        attrs = real.fget(study)
        if cue.pop("armed", False) and CONFIG_ATTR not in attrs:
            open_study(second, space)  # the second worker, start to end, in between
        return attrs

    monkeypatch.setattr(study_module, "check_resumable", lambda cfg, data=None: None)  # both listed first
    monkeypatch.setattr(study_module, "_summaries", lambda storage: [])
    monkeypatch.setattr(optuna.Study, "user_attrs", property(read_then_the_other_worker_starts))
    with (
        quiet_optuna_warnings(),
        pytest.raises(ConfigError, match="train.n_epochs is 3 but study 'race' was created with 2"),
    ):
        open_study(first, space)
    monkeypatch.undo()
    stored = optuna.load_study(study_name="race", storage=open_storage(url, create=False)).user_attrs[
        CONFIG_ATTR
    ]
    assert stored["train"]["n_epochs"] == 2 and not cue


def _data_from(workdir, folder, cfg, monkeypatch):
    from hpsearch.data import load_data

    monkeypatch.chdir(workdir / folder)
    try:
        return load_data(cfg.data, seed=0)
    finally:
        monkeypatch.chdir(workdir)


def test_a_journal_study_records_the_data_it_was_measured_on(workdir, monkeypatch):
    """The data sizes behind a study's errors are stored on a journal file as on a database (they were not:
    the claim only read them there), so a resume on other data is refused."""
    from hpsearch.space import parse_space
    from hpsearch.study import DATA_ATTR, data_sizes, open_study, record_data

    cfg = load_config(str(two_data_folders(workdir)), overrides={"storage": f"journal:{workdir}/j.log"})
    space = parse_space(cfg.search_space, cfg.source)
    data = _data_from(workdir, "a", cfg, monkeypatch)
    with quiet_optuna_warnings():
        record_data(open_study(cfg, space, 0, data), data, cfg)
    stored = optuna.load_study(
        study_name=cfg.study.name, storage=open_storage(cfg.study.storage, create=False)
    )
    assert stored.user_attrs[DATA_ATTR] == data_sizes(data)
    other = _data_from(workdir, "b", cfg, monkeypatch)
    with pytest.raises(ConfigError, match=r"n_train 135 \(study: 180\)"):
        open_study(cfg, space, 1, other)


@pytest.mark.parametrize("key", ["settings", "data"])
def test_two_workers_making_one_journal_study_at_once_cannot_both_write_theirs(workdir, monkeypatch, key):
    """A journal file has no insert-if-absent: a worker that read no settings (or data sizes) and then wrote
    its own could go over those of a worker that wrote in between, and both searched one study. The read and
    the write are now one hold of the journal's lock: the other worker, a real thread with its own store,
    starts while the first is about to write and must wait for it, then is refused."""
    import threading

    from optuna.storages.journal import JournalStorage

    import hpsearch.study as study_module
    from hpsearch.space import parse_space
    from hpsearch.study import CONFIG_ATTR, DATA_ATTR, data_sizes, open_study, record_data

    config, url = str(two_data_folders(workdir)), f"journal:{workdir}/race.log"
    epochs = {"settings": (3, 2), "data": (3, 3)}[key]
    first, second = (
        load_config(config, overrides={"storage": url, "name": "race"}, sets=[f"train.n_epochs={n}"])
        for n in epochs
    )
    data = {"a": _data_from(workdir, "a", first, monkeypatch)}
    data["b"] = _data_from(workdir, "b", first, monkeypatch) if key == "data" else data["a"]
    space = parse_space(first.search_space, first.source)
    attr = CONFIG_ATTR if key == "settings" else DATA_ATTR
    real = JournalStorage.set_study_user_attr
    outcome: dict[str, object] = {}

    def the_second_worker():
        try:
            record_data(open_study(second, space, 1, data["b"]), data["b"], second)
            outcome["second"] = "went on"
        except ConfigError as exc:
            outcome["second"] = str(exc)

    def about_to_write(storage, study_id, name, value):
        if name == attr and threading.current_thread() is threading.main_thread() and "thread" not in outcome:
            outcome["thread"] = threading.Thread(target=the_second_worker)
            outcome["thread"].start()
            outcome["thread"].join(timeout=3)  # before, it ran start to end here; now it waits for the lock
        return real(storage, study_id, name, value)

    monkeypatch.setattr(study_module, "check_resumable", lambda cfg, data=None: None)  # both listed first
    monkeypatch.setattr(study_module, "_summaries", lambda storage: [])
    monkeypatch.setattr(JournalStorage, "set_study_user_attr", about_to_write)
    with quiet_optuna_warnings():
        record_data(open_study(first, space, 0, data["a"]), data["a"], first)
        outcome["thread"].join(timeout=60)
    monkeypatch.undo()
    expected = {
        "settings": "train.n_epochs is 2 but study 'race' was created with 3",
        "data": "differ from those study 'race' was measured on: n_train 135 (study: 180)",
    }[key]
    assert expected in outcome["second"], outcome["second"]
    attrs = optuna.load_study(study_name="race", storage=open_storage(url, create=False)).user_attrs
    assert attrs[CONFIG_ATTR]["train"]["n_epochs"] == 3 and attrs[DATA_ATTR] == data_sizes(data["a"])
