"""Config -> ``optuna.Study``: storage, heartbeat and retry, sampler, pruner, direction, study-wide budget.

The study is built here and nowhere else.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import os
import random
import sqlite3
import threading
import time
import uuid
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage
from optuna.storages.journal._file import get_lock_file
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import HYPERPARAMETERS, Config, check_writable, mask_password
from hpsearch.errors import ConfigError, StorageError
from hpsearch.pruners import CONTINUES_ATTR, DATA_ATTR, OVER_BUDGET_ATTR, SuccessiveHalvingPruner, replaced
from hpsearch.space import SearchSpace

_log = logging.getLogger("hpsearch")
DIRECTION = "minimize"  # the study minimises validation error
CONFIG_ATTR = "hpsearch_config"
# study user attribute: this study's own folder under train.checkpoint_dir/NAME/, so two studies of one name (in
# two stores, or one deleted and made anew) never write, resume from or delete each other's checkpoints
CHECKPOINT_KEY_ATTR = "checkpoint_key"
PARTIAL_EPOCH_ATTR = "partial_epoch"  # user attribute: the share of an epoch trained before a divergence stop
# system attribute of a trial on a database server: a token of the write that made it or took it from the queue,
# which finds that write's outcome when its answer was lost with the connection (PatientRDBStorage)
TOKEN_ATTR = "hpsearch_write_token"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Keys that change what a trial measures: resuming a study with other values would mix incomparable trials.
IDENTITY_KEYS = {
    "model": ("name", "max_length", "revision"),
    "data": (
        "name",
        "subset",
        "train_split",
        "validation_split",
        "train_file",
        "validation_file",
        "text_column",
        "text_pair_column",
        "label_column",
        "validation_fraction",
        "max_train_samples",
        "max_validation_samples",
        "demo_size",
    ),
    # the fixed training values: `best` and `train-best` read them from the study (a searched one is each
    # trial's own param, so only its fixed value is checked)
    "train": ("n_epochs", *HYPERPARAMETERS),
}


@contextlib.contextmanager
def quiet_optuna_warnings():
    """Silence the warnings Optuna gives for what hpsearch does on purpose: heartbeats are experimental API,
    and our own ask/tell loop runs the heartbeat thread and stale-trial check that ``Study.optimize`` would."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings(
            "ignore", message="Heartbeat of storage is supposed to be used with Study.optimize"
        )
        yield


class SignedSymlinkLock(JournalFileSymlinkLock):
    """Optuna's symlink lock (the same ``.lock`` link to the journal, so Optuna's own writers, such as
    optuna-dashboard, share it) whose holder writes ``host:pid`` beside it, in ``.lock.owner``, with the
    link's inode and time, so a signature left by an earlier holder is never taken for this one's. A lock
    left by a process of this machine that is no longer running (a worker killed in the middle of a write)
    is cleared at once, with one line saying so, instead of after Optuna's 30 s of raw warnings. An
    unsigned lock, or one held on another machine, is waited out as Optuna does. Unlike Optuna's, a Ctrl-C
    while waiting leaves the holder's lock alone. The thread holding it may take it again
    (:class:`ClaimingJournalStorage` reads and writes under one hold; the write takes the lock itself)."""

    holder: int | None = None
    depth = 0

    def acquire(self) -> bool:
        if self.holder == threading.get_ident():
            self.depth += 1
            return True
        pause, seen, changed = 0.001, None, time.monotonic()
        while True:
            try:
                os.symlink(self._lock_target_file, self._lock_file)
            except FileExistsError:
                pass
            else:
                self._sign()
                self.holder, self.depth = threading.get_ident(), 1
                return True
            try:
                link = os.lstat(self._lock_file)
            except OSError:
                continue  # released meanwhile
            key = (link.st_ino, link.st_mtime_ns)
            if key != seen:
                seen, changed = key, time.monotonic()
            owner = self._owner(key)
            dead = local_process(owner) is False
            if dead or time.monotonic() - changed > (self.grace_period or 1e9):
                self._clear(key, owner if dead else None)
                pause = 0.001
                continue
            time.sleep(pause)
            pause = min(2 * pause, 0.5)

    def release(self) -> None:
        if self.holder == threading.get_ident() and self.depth > 1:
            self.depth -= 1
            return
        self.holder, self.depth = None, 0
        with contextlib.suppress(OSError):  # first: a signature must never outlive its lock's release
            os.unlink(f"{self._lock_file}.owner")
        super().release()

    def _sign(self) -> None:
        import socket

        try:
            link = os.lstat(self._lock_file)
            draft = f"{self._lock_file}.owner.{uuid.uuid4().hex}"
            with open(draft, "w", encoding="utf-8") as f:
                f.write(f"{link.st_ino} {link.st_mtime_ns} {socket.gethostname()}:{os.getpid()}")
            os.replace(draft, f"{self._lock_file}.owner")
        except OSError:  # unsigned: waited out as Optuna's lock is
            _log.debug("journal lock %s not signed", self._lock_file, exc_info=True)

    def _owner(self, key: tuple[int, int]) -> str | None:
        try:
            with open(f"{self._lock_file}.owner", encoding="utf-8") as f:
                ino, mtime, owner = f.read().split(" ", 2)
            return owner if (int(ino), int(mtime)) == key else None
        except (OSError, ValueError):
            return None

    def _clear(self, key: tuple[int, int], dead: str | None) -> None:
        """Remove the lock seen as ``key``, and only that one: another waiter may have cleared it and taken
        the lock since this one looked. ``dead``: its holder, gone; None: held past the grace period."""
        aside = f"{self._lock_file}{uuid.uuid4().hex}.rename"
        try:
            os.rename(self._lock_file, aside)
            link = os.lstat(aside)
        except OSError:
            return
        if (link.st_ino, link.st_mtime_ns) != key:  # another's fresh lock: put it back
            with contextlib.suppress(OSError):
                os.rename(aside, self._lock_file)
            return
        os.unlink(aside)
        # the cleared lock's signature (or, rarely, that of a lock taken since: unsigned, it is waited out)
        with contextlib.suppress(OSError):
            os.unlink(f"{self._lock_file}.owner")
        _log.warning(
            "journal %s: cleared the lock left by %s",
            self._lock_target_file,
            f"{dead}, a process no longer running"
            if dead
            else f"a writer that held it for over {self.grace_period} s",
        )


def journal_lock(path: str) -> SignedSymlinkLock:
    """The lock a journal file's writers share: Optuna's symlink lock, whose holder signs it."""
    return SignedSymlinkLock(path)


class ClaimingJournalStorage(JournalStorage):
    """A journal store that claims a study attribute as :class:`BeatingRDBStorage` does: read and written under
    one hold of the journal's lock, which every writer of the file takes (the write takes it again)."""

    def claim_study_user_attr(self, study_id: int, key: str, value: Any) -> Any:
        with get_lock_file(self._backend._lock):
            there = self.get_study_user_attrs(study_id).get(key)  # read after the last write
            if there is None:
                self.set_study_user_attr(study_id, key, value)
        return there


def local_process(owner: str | None) -> bool | None:
    """Is ``owner`` (``host:pid``, as a trial or a journal lock records its worker) a running process? None
    when that cannot be told from here: another machine, not a pid, or this very process."""
    import socket

    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _journal_path(url: str) -> str | None:
    if url.startswith("journal:"):
        return url.removeprefix("journal:").removeprefix("//")
    if "://" not in url and url.endswith(".log"):
        return url
    return None


def _sqlite_path(url: str) -> Path | None:
    """The file a SQLite URL opens, as SQLAlchemy reads the URL: ``%XX`` decoded, options after ``?`` cut off."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        from urllib.parse import unquote

        return Path(unquote(url.removeprefix("sqlite:///").split("?", 1)[0]))
    return None


def _check_sqlite_url(url: str) -> None:
    """Refuse the SQLite URLs that would lose the study or write somewhere else than asked."""
    if url.startswith("sqlite:") and (_sqlite_path(url) is None or url.rstrip("/") == "sqlite:"):
        raise ConfigError(
            f"storage: {url} is an in-memory SQLite store, gone when the process ends with every trial;"
            " give a file: sqlite:///studies/NAME.db"
        )
    if url.startswith("sqlite:///") and "?" in url:
        raise ConfigError(
            f"storage: {url}: SQLite URL options ({url.split('?', 1)[1]}) are not supported; give the plain"
            f" file URL {url.split('?', 1)[0]} (read-only commands never write to the store)"
        )


def _check_optuna_file(path: Path, allow_empty: bool = False) -> None:
    """``path`` must be an Optuna store (or, with ``allow_empty``, a database with no tables yet): opening any
    other SQLite file with Optuna would write its 13 tables (and WAL mode) into it."""
    from urllib.parse import quote

    def read(mode: str) -> set[str]:
        con = sqlite3.connect(f"file:{quote(str(path))}?{mode}", uri=True)  # `#`, `?`, `%` are the name's
        try:
            return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()

    try:
        # A read-only connection to a WAL store creates its -wal and -shm files and cannot remove them, so a
        # refused command left both behind. With neither there, no write is pending: the file alone is read.
        side = [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm")]
        tables = None
        if not any(f.exists() for f in side) and os.access(path.parent, os.W_OK):
            with contextlib.suppress(sqlite3.DatabaseError):  # a writer started meanwhile: read as below
                tables = read("immutable=1")
        if tables is None:
            tables = read("mode=ro")
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError):  # a SQLite file this process cannot open
            raise ConfigError(f"storage: cannot open {path} ({exc}): {_why_unopenable(path)}") from None
        raise ConfigError(f"storage: {path} is not a SQLite file ({exc}); check --storage") from None
    if allow_empty and tables <= _optuna_tables():
        return  # no tables yet, or another worker started at the same time is creating them
    if (tables or not allow_empty) and ("studies" not in tables or "trials" not in tables):
        what = (
            "an empty file"
            if not tables
            else f"a SQLite file of other tables ({', '.join(sorted(tables)[:3])})"
        )
        raise ConfigError(
            f"storage: {path} is {what}, not a study store; check --storage or run `hpsearch search` first"
        )


def _why_unopenable(path: Path) -> str:
    """Why SQLite could not open an existing store, and the fix: a store in WAL mode (every store a search
    made) needs to write its -shm file beside it even to be read."""
    import shutil

    folder = path.resolve().parent
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY) or not os.access(folder, os.W_OK)
        full = shutil.disk_usage(folder).free < 2**20
    except OSError:
        read_only = full = False
    if read_only:
        return (
            f"{folder} is read-only, and SQLite must write a store's -shm file beside it even to read it;"
            " copy the store to a folder you can write and give that copy to --storage"
        )
    if full:
        return f"the disk holding {folder} is full; free some space there"
    return "check the file's permissions and its disk"


def _check_journal_file(path: Path) -> None:
    """``path`` must be an Optuna journal: one JSON operation per line. Any other text file (a training log
    ending in .log) would be read as a broken journal, or have Optuna's operations appended to it."""
    with open(path, "rb") as f:
        first = f.readline()
    if not first.strip() or not first.endswith(b"\n"):
        return  # a new, empty journal, or its first operation still being written
    try:
        op = json.loads(first)
    except ValueError:
        op = None
    if not isinstance(op, dict) or "op_code" not in op:
        raise ConfigError(
            f"storage: {path} is not an Optuna journal file (one JSON operation a line); check --storage"
        )
    damage = _journal_tail_damage(path)
    if damage is not None:
        try:  # a writer appends a whole operation under Optuna's lock: holding it, no write is half done
            with get_lock_file(journal_lock(str(path))):
                damage = _journal_tail_damage(path)
        except OSError:
            pass  # a folder no one can write: no writer either, so what was read stands
    if damage is not None:
        line, offset, what = damage
        raise ConfigError(
            f"storage: the last operation in journal {path} (line {line}) {what}; Optuna would append after it"
            f" and then refuse to read the whole journal. Keep a copy, then cut it off: truncate -s {offset}"
            f" {path}"
        )


def _journal_tail_damage(path: Path) -> tuple[int, int, str] | None:
    """The journal's last line when Optuna could not read it: (line number, its byte offset, what is wrong).
    Optuna skips such a line while it is the last one (a write cut short by a full disk or a killed worker),
    but it appends new operations right after it, and a broken line among others makes it refuse the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        start, tail = size, b""
        while start > 0:  # back to the newline before the last line
            step = min(1 << 16, start)
            start -= step
            f.seek(start)
            tail = f.read(step) + tail
            if tail.rfind(b"\n", 0, len(tail) - 1) >= 0:
                break
        cut = tail.rfind(b"\n", 0, len(tail) - 1) + 1
        last, offset = tail[cut:], start + cut
        if not last:
            return None
        if not last.endswith(b"\n"):
            what = f"was cut short ({len(last)} bytes with no newline: a full disk or a killed worker)"
        else:
            try:
                json.loads(last)
                return None
            except ValueError:
                what = "is not a JSON operation"
        f.seek(0)
        line = f.read(offset).count(b"\n") + 1
    return line, offset, what


def _journal_damage(path: Path) -> str:
    """Where a journal that Optuna refuses to read is broken, for the error message."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                json.loads(line)
            except ValueError:
                return (
                    f"line {number} is not a whole JSON operation, so Optuna reads none of the journal; keep a"
                    f" copy, then delete or repair that line (sed -i '{number}d' {path})"
                )
    return "Optuna cannot read it"


def store_kind(path: str | Path) -> str | None:
    """What study store the file at ``path`` holds ("a SQLite database", "an Optuna journal", or one of a SQLite
    database's side files), or None: a command that writes a report or an export must never write over one."""
    path = Path(path)
    for suffix in ("-wal", "-shm", "-journal"):
        base = path.with_name(path.name.removesuffix(suffix))
        if path.name.endswith(suffix) and base.is_file() and store_kind(base) == "a SQLite database":
            return f"the {suffix.lstrip('-')} file of the SQLite database {base}"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(0)
            first = f.readline(1 << 20)
    except OSError:
        return None  # missing, a folder or unreadable: the caller's own checks say so
    if head == b"SQLite format 3\x00":
        return "a SQLite database"
    try:
        op = json.loads(first)
    except ValueError:
        return None
    return "an Optuna journal" if isinstance(op, dict) and "op_code" in op else None


def _optuna_tables() -> set[str]:
    from optuna.storages._rdb.models import BaseModel

    return {*BaseModel.metadata.tables, "alembic_version"}


def _normalise_url(url: str) -> str:
    """Accept the short scheme `postgresql://` with psycopg 3 installed (SQLAlchemy defaults to psycopg2)."""
    if url.startswith(("postgresql://", "postgres://")):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("mysql://"):
        return "mysql+pymysql://" + url.split("://", 1)[1]
    return url


def _driver_hint(url: str) -> str:
    """The install command for the database driver ``url`` needs."""
    if url.startswith("mysql"):
        return "for MySQL run `pip install 'hpsearch[mysql]'` (PyMySQL)"
    return "for PostgreSQL run `pip install 'hpsearch[postgres]'` (psycopg 3)"


_ENGINES: list = []  # database engines this process opened; close_storages() returns their connections


def close_storages() -> None:
    """Close the database connections this process opened (psycopg warns about connections left to the GC).
    Safe at any time: an engine used again afterwards simply reconnects."""
    while _ENGINES:
        _ENGINES.pop().dispose()


def describe_storage(url: str) -> str:
    return mask_password(url) or ""


def open_storage(url: str, cfg: Config | None = None, create: bool = True) -> optuna.storages.BaseStorage:
    """Open (and with ``create``, initialise) the store at ``url``; a bad or unreachable URL is a ConfigError.

    ``create=False`` is for read-only commands: a SQLite or journal file that does not exist is an error,
    never an empty new file.
    """
    journal = _journal_path(url)
    if journal is not None:
        if not create and not Path(journal).is_file():
            raise ConfigError(f"storage: journal file {journal} does not exist; check --storage")
        if Path(journal).is_file():
            _check_journal_file(Path(journal))
        folder = Path(journal).parent
        if not folder.exists():  # a journal is the store of a shared file system: is it mounted here?
            _log.warning(
                "storage: made folder %s for a new journal; if it should be on a shared file system, that is not"
                " mounted on this node, and this worker's trials stay here",
                folder,
            )
        folder.mkdir(parents=True, exist_ok=True)
        try:
            return ClaimingJournalStorage(JournalFileBackend(journal, lock_obj=journal_lock(journal)))
        except ValueError as exc:  # a broken line before others (json.JSONDecodeError is a ValueError)
            _log.debug("journal %s unreadable: %s", journal, exc)
            raise ConfigError(f"storage: journal {journal}: {_journal_damage(Path(journal))}") from None
    if "://" not in url:
        raise ConfigError(
            f"storage: {describe_storage(url)!r} is not a storage URL; use sqlite:///studies/NAME.db,"
            " postgresql+psycopg://USER@HOST/DB, or a journal file ending in .log"
        )
    url = _normalise_url(url)
    _check_sqlite_url(url)
    engine_kwargs: dict[str, Any] = {}
    path = _sqlite_path(url)
    if path is not None:
        if not create and not path.is_file():
            raise ConfigError(
                f"storage: no study store at {path}; check --storage or run `hpsearch search` first"
            )
        if path.is_file():
            _check_optuna_file(path, allow_empty=create)
        path.parent.mkdir(parents=True, exist_ok=True)
        if create:  # the journal mode lives in the file: a read-only command must not rewrite it
            _enable_wal(path)
        # Workers on one node wait for the write lock instead of failing with "database is locked".
        engine_kwargs = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
        if not create and _has_no_optuna_tables(url):
            raise ConfigError(
                f"storage: {describe_storage(url)} holds no studies yet (no Optuna tables); check --storage"
                " or run `hpsearch search` first"
            )
    heartbeat: dict[str, Any] = {}
    if cfg is not None:
        retry = RetryTrial(max_retry=cfg.study.max_retries)
        heartbeat = {
            "heartbeat_interval": cfg.study.heartbeat_interval,
            "grace_period": cfg.study.grace_seconds,
            # Re-queue a dead worker's trial with its params, user attrs (checkpoint path) and learning curve.
            "heartbeat_stale_trial_callback": retry,
        }
    # a worker waits for a database server that is away; a read-only command says so at once
    wait = cfg.study.store_wait if cfg is not None and create and path is None else 0

    def attempt() -> optuna.storages.BaseStorage:
        for n in range(1, 6):
            try:
                with quiet_optuna_warnings():
                    kind = BeatingRDBStorage if path is not None else PatientRDBStorage
                    storage = kind(url, engine_kwargs=engine_kwargs, **heartbeat)
                _ENGINES.append(storage.engine)
                if (
                    isinstance(storage, PatientRDBStorage)
                    and cfg is not None
                    and cfg.study.store_wait is not None
                ):
                    storage.outage_seconds = float(cfg.study.store_wait)
                return storage
            except ImportError as exc:
                raise ConfigError(
                    f"storage: {describe_storage(url)} needs a driver ({exc}); {_driver_hint(url)}"
                ) from None
            except Exception as exc:  # sqlalchemy raises ArgumentError, OperationalError, ...
                first = _first_line(exc)
                if n < 5 and _is_schema_race(first):
                    time.sleep(0.2 + random.random())  # let the winner finish the tables
                    continue
                if _server_away(first) or (path is None and hasattr(exc, "orig")):
                    raise  # a database server's answer: _wait_for_server waits, or says what to fix
                raise ConfigError(f"storage: cannot open {describe_storage(url)}: {first}") from None
        raise AssertionError("unreachable")

    return _wait_for_server(url, attempt, wait)


def _has_no_optuna_tables(url: str) -> bool:
    """Is the database at ``url`` reachable and without Optuna's ``studies`` table? A read-only command must
    not create Optuna's tables in it. Unreachable or unknown: False, and opening it says what is wrong."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
    except Exception:
        return False
    try:
        return not sqlalchemy.inspect(engine).has_table("studies")
    except Exception:
        return False
    finally:
        engine.dispose()


INTERRUPTED = "interrupted"  # how the fail_reason of a trial stopped by a signal (and re-queued) begins


class RetryTrial:
    """Queue a copy of a failed trial that resumes it: params, user attributes (its checkpoint) and learning
    curve, less the failure's own note. ``max_retry`` counts the times a worker died under the trial (stale
    heartbeat, or `hpsearch requeue`); a stop by SIGTERM or Ctrl-C (a preemption) does not count: a trial
    preempted three times and then killed once must not be lost."""

    def __init__(self, max_retry: int | None = None) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        template = self.template(study, trial)
        if template is not None:
            self.note(study, trial, _queue(study, template))

    def template(
        self, study: optuna.Study, trial: FrozenTrial, reasons: dict[int, str] | None = None
    ) -> FrozenTrial | None:
        """The queued trial that resumes ``trial``, or None when its retries are used up. ``reasons``: the
        study's failed trials' ``fail_reason`` by number (:meth:`fail_reasons`), read now when not given."""
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if self.max_retry is not None:
            reasons = dict(self.fail_reasons(study) if reasons is None else reasons)
            # the trial itself may still be running: a stopped worker queues the retry before it fails it
            reasons[trial.number] = trial.user_attrs.get("fail_reason", "")
            deaths = sum(1 for n in history if not reasons.get(n, "").startswith(INTERRUPTED))
            if deaths > self.max_retry:
                return None
        system_attrs = {"failed_trial": trial.number, **trial.system_attrs, "retry_history": history}
        user_attrs = {k: v for k, v in trial.user_attrs.items() if k != "fail_reason"}
        return copy_template(trial, user_attrs, system_attrs)

    @staticmethod
    def fail_reasons(study: optuna.Study) -> dict[int, str]:
        return {
            t.number: t.user_attrs.get("fail_reason", "")
            for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        }

    @staticmethod
    def note(study: optuna.Study, trial: FrozenTrial, number: int) -> None:
        try:  # the dashboard's note on the failed trial: why, and which trial resumes it
            from hpsearch.dashboard import write_trial_note

            write_trial_note(study, trial, resumed_as=number)
        except Exception:  # a note must never cost the retry
            _log.debug("no note for failed trial %d", trial.number, exc_info=True)


def copy_template(trial: FrozenTrial, user_attrs: dict, system_attrs: dict) -> FrozenTrial:
    """A queued trial with ``trial``'s params and learning curve and these attributes."""
    return optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs=user_attrs,
        system_attrs=system_attrs,
        intermediate_values=trial.intermediate_values,
    )


def queue_copy(study: optuna.Study, trial: FrozenTrial, user_attrs: dict, system_attrs: dict) -> int:
    """Queue a trial that takes over ``trial``: its params and learning curve, these attributes; returns the
    new trial's number (a retry of a failed trial, the continuation of a paused one)."""
    return _queue(study, copy_template(trial, user_attrs, system_attrs))


def _queue(study: optuna.Study, template: FrozenTrial) -> int:
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return study._storage.get_trial_number_from_id(trial_id)


# How long a worker waits for a database server that went away (a restart, a fail-over) before it gives up.
OUTAGE_SECONDS = 120.0
_PATIENT = (  # besides the methods PatientRDBStorage defines itself
    "set_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "set_study_user_attr",
    "get_study_id_from_name",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "get_trial",
    "get_all_trials",
    "get_trial_id_from_study_id_trial_number",
    "get_best_trial",
    "record_heartbeat",
)


def _lost_connection(exc: BaseException) -> bool:
    """True for a database that cannot be reached (refused, reset, shut down), not for a bad query."""
    import sqlalchemy.exc

    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
    return isinstance(cause, sqlalchemy.exc.OperationalError) or bool(
        isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated
    )


class BeatingRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose trials have a heartbeat from the moment they run: the commit that makes a trial (or takes
    one from the queue) running records its first heartbeat. Optuna's stale check skips a running trial with
    no heartbeat at all, and its first one came only once the worker's heartbeat thread started; a worker
    killed in between (during ``study.ask``, while the sampler draws) left a trial running for ever, counted
    in the budget, that every other worker waited for."""

    def _first_beat(self, session, trial_id: int) -> None:
        if self.heartbeat_interval is not None:
            from optuna.storages._rdb import models

            session.add(models.TrialHeartbeatModel(trial_id=trial_id))

    def _get_prepared_new_trial(self, study_id: int, template_trial: FrozenTrial | None, session):
        trial = super()._get_prepared_new_trial(study_id, template_trial, session)
        if trial.state == TrialState.RUNNING:
            self._first_beat(session, trial.trial_id)
        return trial

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        if state == TrialState.RUNNING:
            return self._take_waiting_trial(trial_id)
        return super().set_trial_state_values(trial_id, state, values)

    def _take_waiting_trial(self, trial_id: int) -> bool:
        return self._take(trial_id)

    def fail_stale_trial(
        self, trial_id: int, retry: Callable[[FrozenTrial], FrozenTrial | None]
    ) -> tuple[FrozenTrial, int | None] | None:
        """Fail a stale running trial and queue ``retry(failed trial)`` in one commit (``retry`` must not call
        the store: that would commit this session early); returns the failed trial and the retry's number, or
        None when the trial is no longer running (another worker failed it first, or it finished). Optuna
        fails every stale trial, then queues the retries: a worker killed, or a store call that failed, in
        between left a failed trial that nothing would ever resume."""
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
            # the study's row, as a trial made at the same time takes it: the retry's number is its own
            models.StudyModel.find_or_raise_by_id(trial.study_id, session, for_update=True)
            # a conditional write, which takes the store's write lock: another worker may have failed it since
            failed = (
                session.query(models.TrialModel)
                .filter(models.TrialModel.trial_id == trial_id)
                .filter(models.TrialModel.state == TrialState.RUNNING)
                .update(
                    {"state": TrialState.FAIL, "datetime_complete": datetime.datetime.now()},
                    synchronize_session=False,
                )
            )
            if not failed:
                return None
            session.expire_all()
            frozen = self._build_frozen_trial_from_trial_model(
                models.TrialModel.find_or_raise_by_id(trial_id, session)
            )
            template = retry(frozen)
            number = None
            if template is not None:
                number = self._get_prepared_new_trial(trial.study_id, template, session).number
        return frozen, number

    def claim_study_user_attr(self, study_id: int, key: str, value: Any) -> Any:
        """Set the study's ``key`` to ``value`` unless it is set: returns None when this call set it, else the
        value there. One insert that the table's unique (study, key) makes atomic, where Optuna's
        ``set_study_user_attr`` reads, then writes: two workers making one study at the same moment both found
        no settings there, and the last one's overwrote the first's."""
        import sqlalchemy.exc
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        encoded = json.dumps(value)
        try:
            with _create_scoped_session(self.scoped_session) as session:
                study = models.StudyModel.find_or_raise_by_id(study_id, session)
                there = models.StudyUserAttributeModel.find_by_study_and_key(study, key, session)
                if there is not None:
                    return json.loads(there.value_json)
                session.add(models.StudyUserAttributeModel(study_id=study_id, key=key, value_json=encoded))
        except sqlalchemy.exc.IntegrityError:  # another worker's insert came first
            with _create_scoped_session(self.scoped_session) as session:
                study = models.StudyModel.find_or_raise_by_id(study_id, session)
                return json.loads(
                    models.StudyUserAttributeModel.find_by_study_and_key(study, key, session).value_json
                )
        return None

    def _take(self, trial_id: int, token: str | None = None, again: bool = False) -> bool:
        """WAITING -> RUNNING, as RDBStorage does, with the first heartbeat (and ``token``) in the same commit."""
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        attrs = models.TrialSystemAttributeModel
        with _create_scoped_session(self.scoped_session) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            if again and token is not None:
                mark = attrs.find_by_trial_and_key(trial, TOKEN_ATTR, session)
                if mark is not None and mark.value_json == json.dumps(token):
                    return True
            self.check_trial_is_updatable(trial_id, trial.state)
            if trial.state != TrialState.WAITING:
                return False
            trial.state, trial.datetime_start = TrialState.RUNNING, datetime.datetime.now()
            if token is not None:
                self._set_trial_attr_without_commit(session, attrs, trial_id, TOKEN_ATTR, token)
            self._first_beat(session, trial_id)
        return True


class PatientRDBStorage(BeatingRDBStorage):
    """RDBStorage on a database server that rides out a restart: a call that finds the server gone is tried
    again (1 s, 2 s, ... up to 10 s apart) for up to ``OUTAGE_SECONDS``, with one warning, instead of
    crashing a worker in the middle of a trial it has paid for.

    A write whose commit landed but whose answer was lost with the connection is not done twice: a trial made
    or taken from the queue carries a token (system attribute ``TOKEN_ATTR``) that the next try looks for
    first, and a trial already finished in the state asked for counts as the answer that was lost."""

    outage_seconds = OUTAGE_SECONDS
    _warned_at = -float("inf")
    _down_seen_at = -float("inf")  # when a call last found the database away

    def _ride_out(self, attempt: Callable[[bool], Any]) -> Any:
        """``attempt(again)`` until it does not fail for a lost connection; ``again`` is True on every try
        after the first, when the first may have landed."""
        started, wait, again = time.monotonic(), 1.0, False
        while True:
            try:
                return attempt(again)
            except Exception as exc:
                if not _lost_connection(exc) or time.monotonic() - started > self.outage_seconds:
                    raise
                self._down_seen_at = time.monotonic()
                if time.monotonic() - self._warned_at > self.outage_seconds:
                    self._warned_at = time.monotonic()  # once per outage, not once per thread
                    _log.warning(
                        "storage: lost the database (%s); trying again for up to %.0f s",
                        _first_line(getattr(exc.__cause__, "orig", exc.__cause__) or exc)[:200],
                        self.outage_seconds,
                    )
                time.sleep(wait)
                wait = min(10.0, wait * 2)
                again = True

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """One try at a time (RDBStorage's own five quick tries would make a second trial when the first one's
        commit landed), each after the first looking for the token of the trial the first may have made."""
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        if template_trial is None:  # what RDBStorage makes without a template: a bare running trial
            template_trial = FrozenTrial(
                number=-1,
                state=TrialState.RUNNING,
                value=None,
                datetime_start=datetime.datetime.now(),
                datetime_complete=None,
                params={},
                distributions={},
                user_attrs={},
                system_attrs={},
                intermediate_values={},
                trial_id=-1,
            )
        template = copy.deepcopy(template_trial)
        template.system_attrs = {**template.system_attrs, TOKEN_ATTR: uuid.uuid4().hex}

        def attempt(again: bool) -> FrozenTrial:
            made, frozen = None, copy.deepcopy(template)
            with _create_scoped_session(self.scoped_session) as session:
                if again:
                    made = (
                        session.query(models.TrialSystemAttributeModel.trial_id)
                        .join(models.TrialModel)
                        .filter(models.TrialModel.study_id == study_id)
                        .filter(models.TrialSystemAttributeModel.key == TOKEN_ATTR)
                        .filter(
                            models.TrialSystemAttributeModel.value_json
                            == json.dumps(template.system_attrs[TOKEN_ATTR])
                        )
                        .scalar()
                    )
                if made is None:
                    models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
                    trial = self._get_prepared_new_trial(study_id, template, session)
                    frozen.number, frozen._trial_id = trial.number, trial.trial_id
            return frozen if made is None else optuna.storages.RDBStorage.get_trial(self, made)

        return self._ride_out(attempt)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        if state == TrialState.RUNNING:
            return self._take_waiting_trial(trial_id)

        def attempt(again: bool) -> bool:
            try:
                return optuna.storages.RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # the first try finished the trial, and its answer was lost: done, not an error
                if again and state.is_finished():
                    stored = optuna.storages.RDBStorage.get_trial(self, trial_id)
                    if stored.state == state and (values is None or stored.values == list(values)):
                        return True
                raise

        return self._ride_out(attempt)

    def claim_study_user_attr(self, study_id: int, key: str, value: Any) -> Any:
        # a try after a lost answer finds its own value there: the same settings, which pass every check
        return self._ride_out(
            lambda again: BeatingRDBStorage.claim_study_user_attr(self, study_id, key, value)
        )

    def _take_waiting_trial(self, trial_id: int) -> bool:
        """WAITING -> RUNNING with a token in the same commit: when the answer is lost, the next try tells this
        worker's take (True) from another's (False), so the trial is never left running with no worker on it."""
        token = uuid.uuid4().hex
        return self._ride_out(lambda again: self._take(trial_id, token, again))

    def fail_stale_trial(
        self, trial_id: int, retry: Callable[[FrozenTrial], FrozenTrial | None]
    ) -> tuple[FrozenTrial, int | None] | None:
        # a try after a lost answer finds the trial failed (and its retry made): None, as for another's
        return self._ride_out(lambda again: BeatingRDBStorage.fail_stale_trial(self, trial_id, retry))

    def record_heartbeat_once(self, trial_id: int) -> None:
        """One try at the heartbeat, for the heartbeat thread, which tries again every second by itself: the
        patient call's growing waits (up to 10 s) would leave the heartbeat older than the outage was."""
        try:
            optuna.storages.RDBStorage.record_heartbeat(self, trial_id)
        except Exception as exc:
            if _lost_connection(exc):
                self._down_seen_at = time.monotonic()
            raise

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials, or none while the database has been back for less than the grace period: no
        worker could record a heartbeat while it was away, so every running trial would look dead to the first
        worker that reaches it again, before the trial's own worker has been able to record one."""

        def attempt(again: bool) -> list[int]:
            if self._back_lately():
                return []
            return optuna.storages.RDBStorage._get_stale_trial_ids(self, study_id)

        return self._ride_out(attempt)

    def _back_lately(self) -> bool:
        """Was the database away (as this process saw it, or a server restart) within the grace period?"""
        import sqlalchemy

        grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
        if time.monotonic() - self._down_seen_at < grace:
            return True
        uptime = {
            "postgresql": "SELECT EXTRACT(EPOCH FROM (now() - pg_postmaster_start_time()))",
            "mysql": "SELECT VARIABLE_VALUE FROM performance_schema.global_status WHERE VARIABLE_NAME = 'Uptime'",
        }.get(self.engine.dialect.name)
        if uptime is None:
            return False
        try:
            with self.engine.connect() as con:
                seconds = float(con.execute(sqlalchemy.text(uptime)).scalar() or 0.0)
        except Exception as exc:
            if _lost_connection(exc):
                raise
            _log.debug("no server uptime: %s", exc)
            return False
        return seconds < grace


def _patient(name: str):
    method = getattr(optuna.storages.RDBStorage, name)

    def call(self, *args, **kwargs):
        return self._ride_out(lambda again: getattr(optuna.storages.RDBStorage, name)(self, *args, **kwargs))

    call.__name__ = call.__qualname__ = name
    call.__doc__ = method.__doc__
    return call


for _name in _PATIENT:
    setattr(PatientRDBStorage, _name, _patient(_name))


def _is_schema_race(message: str) -> bool:
    """Workers on several nodes started together on an empty database all create Optuna's tables at once; all
    but one fail with these. Trying again finds the tables there (seen with 6 workers on a fresh PostgreSQL)."""
    signs = (
        "already exists",
        "duplicate key value",
        "UniqueViolation",
        "DuplicateTable",
        "UNIQUE constraint failed",  # SQLite: two processes both stamping alembic_version in one new file
    )
    return any(s in message for s in signs)


def check_storage(url: str, wait: float | None = 0) -> None:
    """Check that the store answers, writing nothing: a typo in a URL must not cost a GPU-hour of data loading.
    A database server that is away is waited for as :func:`_wait_for_server` says."""
    journal = _journal_path(url)
    file = (
        Path(journal) if journal is not None else _sqlite_path(_normalise_url(url)) if "://" in url else None
    )
    if "://" not in url and journal is None:
        open_storage(url, create=False)  # raises the "not a storage URL" message
    if "://" in url:
        _check_sqlite_url(url)
    if file is not None:
        if file.is_dir():
            raise ConfigError(f"storage: {file} is a folder; give a file, e.g. {file / 'NAME.db'}")
        if file.exists() and not os.access(file, os.W_OK):
            why = (
                f"its file system ({file.resolve().parent}) is mounted read-only; copy the store to one you can"
                " write and give that copy to --storage"
                if os.statvfs(file).f_flag & os.ST_RDONLY
                else "the file is read-only; check its permissions"
            )
            raise ConfigError(f"storage: cannot write {file}: {why}")
        if file.is_file():
            if journal is None:
                _check_optuna_file(file, allow_empty=True)
            else:
                _check_journal_file(file)
        check_writable(file, "storage:")
        return
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(_normalise_url(url), pool_pre_ping=True)
    except ImportError as exc:
        raise ConfigError(
            f"storage: {describe_storage(url)} needs a database driver ({exc}); {_driver_hint(url)}"
        ) from None
    except Exception as exc:
        raise ConfigError(f"storage: {describe_storage(url)} is not a valid storage URL ({exc})") from None

    def answer() -> None:
        with engine.connect() as con:
            con.execute(sqlalchemy.text("SELECT 1"))

    try:
        _wait_for_server(url, answer, wait)
    finally:
        engine.dispose()


# How a database server that is away answers (refused, cut off, no socket; or _RESTARTING), unlike
# a bad host name, user, password or database, which no wait would mend. PostgreSQL (libpq) and MySQL wording.
_AWAY = (
    "connection refused",
    "timeout expired",
    "timed out",
    "server closed the connection",
    "connection reset",
    "no such file or directory",  # a Unix socket not there while the server is down
    "can't connect to mysql server",
    "lost connection to mysql server",
)


# What a server says while it restarts, which no wrong URL produces.
_RESTARTING = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "server shutdown in progress",
)


def _first_line(error: object) -> str:
    """The first line of an error (or its text), short enough for a one-line message."""
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else "no answer"


def _server_away(message: str) -> bool:
    return any(sign in message.lower() for sign in _AWAY + _RESTARTING)


# What a database server (or the name lookup before it) answers for a wrong part of the URL, and the fix.
_WRONG_PART = (
    (("resolve host", "translate host name", "name or service not known", "unknown mysql server host"),
     "check the host name in the URL"),
    (("password", "access denied"), "check the user and password in the URL"),
    (('role "',), "check the user name in the URL"),
    (("database", "unknown database"), "create the database, or fix its name in the URL"),
)  # fmt: skip


def _refused(url: str, first: str) -> ConfigError:
    """The one line for a database that cannot be used as given, alike from every command: the server's (or
    the name lookup's) ``first`` line and what to fix."""
    low = first.lower()
    fix = next((f for signs, f in _WRONG_PART if any(sign in low for sign in signs)), "check --storage")
    return ConfigError(f"storage: cannot reach {describe_storage(url)}: {first}; {fix}")


def _wait_for_server(url: str, attempt: Callable[[], Any], wait: float | None) -> Any:
    """``attempt()`` until it does not fail for a database server that is away (1 s, 2 s, ... up to 10 s apart),
    with one warning at once. For up to ``wait`` seconds (``study.store_wait``); when that is None (not set),
    only while the server answers that it is restarting, for up to ``OUTAGE_SECONDS``: a refused connection
    reads the same for a server that is down as for a wrong host or port, which must fail at once. Any other
    failure, or one that outlasts the wait, is a ConfigError naming the fix."""
    started, pause, warned, restarting = time.monotonic(), 1.0, False, False
    while True:
        try:
            return attempt()
        except ConfigError:
            raise
        except Exception as exc:
            first = _first_line(getattr(exc, "orig", exc))
            if not _server_away(first):
                raise _refused(url, first) from None
            # once seen restarting, a refusal next is the same restart (shutting down, then down, then up)
            restarting = restarting or any(sign in first.lower() for sign in _RESTARTING)
            limit = wait if wait is not None else OUTAGE_SECONDS if restarting else 0
            waited = time.monotonic() - started
            if waited >= limit:
                setting = ": study.store_wait" if wait is not None else ""
                after = f" (waited {waited:.0f} s{setting})" if warned else ""
                fix = "start the database server, or fix the host and port in the URL" + (
                    ""
                    if warned or wait is not None
                    else " (for workers launched while it restarts: --set study.store_wait=300 waits for it)"
                )
                raise ConfigError(
                    f"storage: cannot reach {describe_storage(url)}: {first}{after}; {fix}"
                ) from None
            if not warned:
                warned = True
                _log.warning(
                    "storage: cannot reach %s (%s); waiting for it for up to %.0f s%s",
                    describe_storage(url),
                    first,
                    limit,
                    " (study.store_wait; check the host and port if it does not come back)"
                    if wait is not None
                    else ": it is restarting",
                )
            time.sleep(min(pause, limit - waited))
            pause = min(10.0, 2 * pause)


def _enable_wal(path: Path) -> None:
    """WAL lets readers (dashboard, `show`) work while workers write; the setting lives in the file."""
    for attempt in range(1, 21):
        try:
            with sqlite3.connect(path, timeout=60) as con:
                con.execute("PRAGMA journal_mode=WAL")
            con.close()
            return
        except sqlite3.Error as exc:
            # workers started together: another one holds the file while it creates Optuna's tables, and
            # switching the journal mode does not wait for it
            if attempt < 20 and "locked" in str(exc):
                time.sleep(0.1 + random.random() / 2)
                continue
            raise ConfigError(f"storage: cannot open SQLite file {path}: {exc}") from None


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler calls ``Study.stop()`` when the grid is used up, which raises outside
    ``Study.optimize``; the search loop checks ``is_exhausted`` itself instead."""

    def after_trial(self, study, trial, state, values) -> None:
        pass

    def unstarted(self, study) -> int:
        """Grid points no trial has taken yet (running or finished). With none left, Optuna's sampler hands
        the next trial a point another worker is still running: a repeat, so the search loop waits instead."""
        taken = {t.system_attrs["grid_id"] for t in self._holders(study) if t.state != TrialState.WAITING}
        return len(set(range(len(self._all_grids))) - taken)

    def _get_unvisited_grid_ids(self, study) -> list[int]:
        """Optuna's, less its one flaw here: a trial asked past the budget and given back (failed, never
        run) counted its point as visited, so a later run with more trials never ran that point."""
        holders = self._holders(study)
        every = set(range(self._n_min_trials))
        visited = {t.system_attrs["grid_id"] for t in holders if t.state.is_finished()}
        running = {t.system_attrs["grid_id"] for t in holders if t.state == TrialState.RUNNING}
        return sorted(every - visited - running) or sorted(every - visited)

    def _holders(self, study) -> list[FrozenTrial]:
        """The trials that hold a point of this grid; one given back holds none."""
        return [
            t
            for t in study._storage.get_all_trials(study._study_id, deepcopy=False)
            if "grid_id" in t.system_attrs
            and OVER_BUDGET_ATTR not in t.user_attrs
            and self._same_search_space(t.system_attrs["search_space"])
        ]


def make_sampler(
    cfg: Config, space: SearchSpace, worker: int = 0, n_existing: int = 0
) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded with ``study.seed`` + the worker's number, so workers do not repeat each
    other. ``n_existing`` (the study's trials so far) also moves the seed of a resumed study: with the seed alone
    a rerun would draw the same first hyperparameters as the first run did. 7919, a prime far above any number
    of workers, keeps the two offsets apart; a new study keeps the plain seed, so a search is reproducible.

    Grid and QMC keep the plain seed: every worker and rerun must walk the same sequence (the grid's shuffled
    order, whose indices the trials record; the scrambled Sobol points), and the study's trials say which of its
    points are taken. With another seed each worker would visit another order's points: repeats and gaps.
    With ``study.seed: null`` Optuna's grid shuffles with seed 0 in every process, and QMC takes its seed from
    the study's name (Optuna's own choice would be another random one in each process)."""
    shared = cfg.study.sampler in ("grid", "qmc")
    offset = 0 if shared else worker + 7919 * n_existing
    seed = None if cfg.study.seed is None else cfg.study.seed + offset
    if cfg.study.sampler == "qmc" and seed is None:
        seed = zlib.crc32(cfg.study.name.encode())
    n_startup = cfg.study.n_startup_trials
    name = cfg.study.sampler
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return _GridSampler(space.grid(), seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(
            seed=seed, n_startup_trials=n_startup, warn_independent_sampling=False
        )
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup)
    with quiet_optuna_warnings():  # "QMCSampler is experimental": a Python warning with a source line
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)


def search_notes(cfg: Config, space: SearchSpace) -> list[str]:
    """What the sampler and pruner will do with this space and these epochs that their names do not say
    (Optuna's own warnings about it are off: they would repeat every trial)."""
    notes, s = [], cfg.study
    drawn = [p.name for p in space.params if p.type == "categorical"]
    if s.sampler == "cmaes" and drawn:
        modelled = ", ".join(p.name for p in space.params if p.type != "categorical")
        notes.append(
            f"sampler cmaes: {', '.join(drawn)} (categorical) is drawn at random in every trial; CMA-ES models"
            f" only the float and int ranges ({modelled})"
        )
    if s.sampler in ("cmaes", "gp") and s.pruner != "none":
        notes.append(
            f"sampler {s.sampler}: learns from complete trials only, so trials are drawn at random until"
            f" {s.n_startup_trials} have completed (study.n_startup_trials), and pruned ones teach it nothing;"
            f" with the {s.pruner} pruner that may be most of the study (tpe learns from pruned trials too)"
        )
    if s.pruner != "none" and cfg.train.n_epochs == 1 and cfg.train.early_eval is None:
        notes.append(
            f"pruner {s.pruner}: with train.n_epochs 1 a trial's only epoch is its last, so nothing is pruned"
            " (the divergence stop still acts); train.early_eval (e.g. 0.25) gives successive-halving, median"
            " and percentile a point part-way through it to prune at"
        )
    return notes


def make_pruner(cfg: Config) -> optuna.pruners.BasePruner:
    """Epochs are the resource: rungs at epochs 1, r, r**2, ... for successive halving (r: reduction_factor).

    The default, asynchronous successive halving (ASHA), lets a trial past a rung when its error there is in
    the best 1/r of the errors any trial reported at that rung so far, ties broken by the epoch's training loss
    (:class:`hpsearch.pruners.SuccessiveHalvingPruner`); hyperband runs several such brackets with later first
    rungs, one of which never prunes, so it spends more epochs (see BENCHMARKS.md).
    """
    n_epochs, name, r = cfg.train.n_epochs, cfg.study.pruner, cfg.study.reduction_factor
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=n_epochs, reduction_factor=r)
    if name == "successive-halving":
        return SuccessiveHalvingPruner(reduction_factor=r, min_resource=1, pause=cfg.study.pauses_at_rungs)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.study.n_startup_trials, n_warmup_steps=0)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=cfg.study.n_startup_trials)
    return optuna.pruners.NopPruner()


def _check_same_study(cfg: Config, stored: dict[str, Any], study_name: str) -> None:
    """Refuse to add trials that measure something else to an existing study."""
    current = cfg.to_dict()
    searched = set(stored.get("search_space", {})) & set(current["search_space"])
    for section, keys in IDENTITY_KEYS.items():
        for key in keys:
            if section == "train" and key in searched:
                continue
            old, new = stored.get(section, {}).get(key), current[section][key]
            if old != new:
                raise ConfigError(
                    f"{cfg.named(f'{section}.{key}')} is {new!r} but study '{study_name}' was created with"
                    f" {old!r}; trials would not be comparable. Use another --study-name, or"
                    f" {_set_back(cfg, f'{section}.{key}', old)}"
                )
    old_seed, new_seed = stored.get("study", {}).get("seed"), current["study"]["seed"]
    if old_seed != new_seed:
        raise ConfigError(
            f"{cfg.named('study.seed')} is {new_seed!r} but study '{study_name}' was created with {old_seed!r};"
            f" the seed also carves and samples the data, so trials would not be comparable."
            f" {_set_back(cfg, 'study.seed', old_seed).capitalize()} (workers of one study differ by"
            " --worker-index, not --seed), or use another --study-name"
        )
    old_space, new_space = stored.get("search_space", {}), current["search_space"]
    if json.dumps(old_space, sort_keys=True) != json.dumps(new_space, sort_keys=True):
        changed = sorted(k for k in {*old_space, *new_space} if old_space.get(k) != new_space.get(k))
        flagged = [f"search_space.{k}" for k in changed if cfg.origins.get(f"search_space.{k}")]
        where = f"--set {', '.join(flagged)}" if len(flagged) == len(changed) else cfg.source
        raise ConfigError(
            f"{where}: search_space differs from the one study '{study_name}' was created with"
            f" (changed: {', '.join(changed)}); use another --study-name for a new space"
        )


def _set_back(cfg: Config, key: str, old: Any) -> str:
    """The fix for a value a resumed study was not created with: the study's value, where this one came from."""
    import yaml

    value = yaml.safe_dump(old, default_flow_style=True).strip().removesuffix("...").strip()
    flag = cfg.origins.get(key)
    if flag == "--set":
        return f"give --set {key}={value}"
    if flag:
        return f"drop {flag}" if old is None else f"give {flag} {value}"
    return f"set it back to {value} in {cfg.source}"


def keep_rung_rule(cfg: Config, stored: dict[str, Any], study: optuna.Study) -> Config:
    """A study made while successive halving decided at once at its rungs (``pause_at_rungs: false``, stored
    by every study before pausing became the default on 2026-12-07) keeps that rule when ``cfg`` leaves the
    key out: its pruned trials have no checkpoints to continue, and its workers should not rank by two rules.
    Sets ``study``'s pruner to match; returns the config to store and search with."""
    if not (
        cfg.study.pause_at_rungs is None
        and cfg.study.pruner == "successive-halving"
        and stored.get("study", {}).get("pause_at_rungs") is False
    ):
        return cfg
    cfg = dataclasses.replace(cfg, study=dataclasses.replace(cfg.study, pause_at_rungs=False))
    study.pruner = make_pruner(cfg)
    return cfg


def open_study(cfg: Config, space: SearchSpace, worker: int = 0, data: Any = None) -> optuna.Study:
    """Create or resume the study described by ``cfg`` (explicit name, ``load_if_exists``, direction,
    heartbeat and retry), after checking that a resumed study measures the same thing (with ``data``, the
    loaded data too: a data file changed under the same name is other data)."""
    check_resumable(cfg, data)  # before the store is opened to write
    storage = open_storage(cfg.study.storage, cfg)
    name = cfg.study.name
    existing = {s.study_name: s for s in _summaries(storage)}
    if name in existing:
        sampler = make_sampler(cfg, space, worker, n_existing=existing[name].n_trials)
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=make_pruner(cfg))
        _check_resumed(cfg, study, data)  # again: another worker may have made the study meanwhile
    else:
        try:
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                sampler=make_sampler(cfg, space, worker),
                pruner=make_pruner(cfg),
                direction=DIRECTION,
                load_if_exists=True,
            )
        except Exception as exc:
            raise StorageError(f"storage: could not create study '{name}': {exc}") from None
        if study.user_attrs.get(CONFIG_ATTR):  # another worker made it since the listing: its settings hold
            _check_resumed(cfg, study, data)
    stored = _claim(study, CONFIG_ATTR, cfg.to_dict())
    if stored is not None:  # the settings there now, which another worker may have written since the checks
        _check_same_study(cfg, stored, name)
        cfg = keep_rung_rule(cfg, stored, study)
    study.set_user_attr(CONFIG_ATTR, cfg.to_dict())  # a resumed study keeps the latest (budget, timeout, ...)
    if CHECKPOINT_KEY_ATTR not in study.user_attrs:
        # Two workers creating the study at once may both write one; the last wins, and a trial records the
        # path it wrote, so a checkpoint written under the other key is still found and cleaned up.
        study.set_user_attr(CHECKPOINT_KEY_ATTR, uuid.uuid4().hex[:8])
    return study


def store_method(storage: optuna.storages.BaseStorage, name: str) -> Callable | None:
    """``storage``'s own method ``name`` (one of the stores open_storage opens adds), looked for under Optuna's
    cache too, which wraps a database store; None for a store without it."""
    return getattr(storage, name, None) or getattr(getattr(storage, "_backend", None), name, None)


def _claim(study: optuna.Study, key: str, value: Any) -> Any:
    """Store ``value`` as the study's ``key`` unless one is there: None when this one was stored, else the one
    there. Atomic on the stores open_storage opens (their ``claim_study_user_attr``); on any other store, a
    read, then a write."""
    claim = store_method(study._storage, "claim_study_user_attr")
    if claim is not None:
        return claim(study._study_id, key, value)
    there = study.user_attrs.get(key)
    if there is None:
        study.set_user_attr(key, value)
    return there


def check_resumable(cfg: Config, data: Any = None) -> None:
    """Refuse the settings (and with ``data``, the data) an existing study was not created with, opening the
    store read-only: a refused resume must not write to it (opening it to write switches a SQLite file made
    by Optuna to WAL mode). Nothing to check when the store or the study does not exist yet."""
    try:
        storage = open_storage(cfg.study.storage, create=False)
    except ConfigError:
        return  # no store yet, or one open_storage(create=True) reports on
    name = cfg.study.name
    if name not in {s.study_name for s in _summaries(storage)}:
        return
    _check_resumed(cfg, optuna.load_study(study_name=name, storage=storage), data)


def _check_resumed(cfg: Config, study: optuna.Study, data: Any = None) -> None:
    """The checks before ``study`` takes more trials: same settings, same data (with ``data``), minimising."""
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored:
        _check_same_study(cfg, stored, study.study_name)
    else:  # queued trials alone are fine: a study seeded with optuna's enqueue_trial
        ran = sum(1 for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING)
        if ran:
            raise ConfigError(
                f"storage: study '{study.study_name}' has {ran} trial(s) but no hpsearch settings (it was made"
                " outside hpsearch, e.g. with optuna.create_study), so what they measured is unknown and new"
                f" trials would not be comparable; use another --study-name"
            )
    if data is not None and study.user_attrs.get(DATA_ATTR):
        _check_same_data(cfg, study.user_attrs[DATA_ATTR], data_sizes(data), study.study_name)
    if study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise ConfigError(
            f"storage: study '{study.study_name}' maximises; hpsearch studies minimise val_error"
        )


def _summaries(storage) -> list[optuna.study.StudySummary]:
    try:
        return optuna.get_all_study_summaries(storage, include_best_trial=False)
    except Exception as exc:
        raise StorageError(f"storage: could not list studies: {_first_line(exc)}") from None


def load_existing_study(storage_url: str, name: str) -> optuna.Study:
    """A study for reading (show, best, export, report); never creates anything."""
    storage = open_storage(storage_url, create=False)
    names = [s.study_name for s in _summaries(storage)]
    if name not in names:
        from hpsearch.config import did_you_mean

        hint = did_you_mean(name, names) if names else "; the store has no studies yet"
        raise ConfigError(f"study '{name}' not found in {describe_storage(storage_url)}{hint}")
    return optuna.load_study(study_name=name, storage=storage)


def visible_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials, less the ones a worker asked for past the budget and gave back untouched."""
    return [t for t in study.get_trials(deepcopy=False) if OVER_BUDGET_ATTR not in t.user_attrs]


def counts(study: optuna.Study) -> Counter:
    """Visible trials by state, one per configuration: a paused trial that another continues, and a failed
    trial that a retry resumes, count as that one (running, queued or finished)."""
    trials = visible_trials(study)
    gone = replaced(trials)
    return Counter(t.state for t in trials if t.number not in gone)


def remaining_budget(study: optuna.Study, n_trials: int, c: Counter | None = None) -> int:
    """Trials this study may still start: ``n_trials`` minus finished, running and queued ones.
    Pass ``c`` (from :func:`counts`) when the caller has just counted, to save a read of every trial."""
    c = counts(study) if c is None else c
    return n_trials - (
        c[TrialState.COMPLETE] + c[TrialState.PRUNED] + c[TrialState.RUNNING] + c[TrialState.WAITING]
    )


def is_over_budget(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """True when ``trial`` (just asked for) lies past the budget because other workers asked first.

    Trial numbers order the asks: the trials numbered before this one that still count are the ones that won.
    A retry of a dead worker's trial always runs, and so does the continuation of a paused trial: each
    replaces one that was already counted. Two workers may queue a continuation of the same paused trial at
    once; the one numbered first runs, the other is over the budget.
    """
    trials = study.get_trials(deepcopy=False)
    me = next(t for t in trials if t.number == trial.number)
    if "failed_trial" in me.system_attrs:
        return False
    if CONTINUES_ATTR in me.system_attrs:
        return any(
            t.number < me.number
            and t.system_attrs.get(CONTINUES_ATTR) == me.system_attrs[CONTINUES_ATTR]
            and "failed_trial" not in t.system_attrs
            and OVER_BUDGET_ATTR not in t.user_attrs
            for t in trials
        )
    gone = replaced(trials)
    ahead = sum(
        1
        for t in trials
        if t.number < trial.number
        and t.number not in gone
        and t.state != TrialState.FAIL
        and OVER_BUDGET_ATTR not in t.user_attrs
    )
    return ahead >= n_trials


def data_sizes(data: Any) -> dict[str, Any]:
    """The sizes behind a study's validation errors, as ``DATA_ATTR`` stores them."""
    return {
        "n_train": len(data.train),
        "n_validation": len(data.validation),
        "n_classes": data.num_labels,
        "majority_val_error": round(data.majority_error(), 4),
        "constant_val_error": round(data.constant_error(), 4),
    }


def _check_same_data(cfg: Config, stored: dict[str, Any], sizes: dict[str, Any], study_name: str) -> None:
    """Refuse to resume a study on data that differ from its own under the same config: a data file edited,
    replaced or read from another folder (relative paths), which the config's keys cannot tell."""
    changed = [k for k in sizes if k in stored and stored[k] != sizes[k]]
    if changed:
        what = ", ".join(f"{k} {sizes[k]} (study: {stored[k]})" for k in changed)
        files = [f for f in (cfg.data.train_file, cfg.data.validation_file) if f]
        source = f"the data files ({', '.join(files)})" if files else f"data set {cfg.data.name!r}"
        where = " (relative paths are read from the current folder)" if files else ""
        raise ConfigError(
            f"data: {source} differ from those study '{study_name}' was measured on: {what}; trials would not"
            f" be comparable. Restore the study's data{where}, or use another --study-name"
        )


def record_data(study: optuna.Study, data: Any, cfg: Config) -> None:
    """Store the sizes behind the study's validation errors (``DATA_ATTR``); rewritten by every worker alike,
    once checked against the sizes there: another worker, on other data files, may have stored its own since
    this one's checks (the claim makes the first store atomic, as for the settings)."""
    sizes = data_sizes(data)
    stored = _claim(study, DATA_ATTR, sizes)
    if stored is not None and stored != sizes:
        _check_same_data(cfg, stored, sizes, study.study_name)
        study.set_user_attr(DATA_ATTR, sizes)  # the same data; sizes a newer version records are added


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None
