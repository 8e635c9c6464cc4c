"""Throw-away PostgreSQL server for the test-suite (stdlib only).

Usage::

    server = start_postgres(tmp_path)
    try:
        ...  # use server.url, e.g. optuna.create_study(storage=server.url)
    finally:
        server.stop()

``PgServer`` is also a context manager.  Run ``python tests/pgserver.py`` to
start one by hand: it prints the URL and stops the server on Enter, EOF,
SIGINT or SIGTERM.

The server listens on 127.0.0.1 only, on a free port, with trust
authentication and durability switched off (fsync, synchronous_commit,
full_page_writes) since the data is thrown away.

Root: ``initdb``/``postgres`` refuse to run as root, so when the current
process is root the cluster is owned by and run as the ``postgres`` system
user (created with ``useradd --system`` if missing).  Its files then live in
a fresh ``tempfile.mkdtemp()`` directory (mode 0755, owned by ``postgres``)
instead of under ``base_dir``, because pytest's tmp dirs (e.g.
``/tmp/pytest-of-root/...``) are mode 0700 and not traversable by
``postgres``.  That directory is removed by ``stop()``.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["PgServer", "find_pg_bin", "start_postgres", "DB_NAME", "SUPERUSER"]

DB_NAME = "hpsearch_test"
SUPERUSER = "postgres"  # the database role in the URL
SYSTEM_USER = "postgres"  # OS user that runs the server when we are root
ENV_PG_BIN = "HPSEARCH_PG_BIN"  # optional override: directory holding initdb/pg_ctl

# Unix socket paths are limited to ~107 bytes (sun_path).
_MAX_SOCKET_DIR_LEN = 80

_SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "'128MB'",
    "huge_pages": "off",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "timezone": "'UTC'",
}


def _bin_dir_ok(d: Path) -> bool:
    return all(os.access(d / name, os.X_OK) for name in ("initdb", "pg_ctl"))


def _version_key(d: Path) -> tuple:
    # /usr/lib/postgresql/<version>/bin -> numeric sort on <version>
    parts = re.findall(r"\d+", d.parent.name)
    return tuple(int(p) for p in parts) or (-1,)


def find_pg_bin() -> Path | None:
    """Return the directory holding ``initdb`` and ``pg_ctl``, or None.

    Looks at ``$HPSEARCH_PG_BIN``, then ``initdb`` on PATH (symlinks resolved,
    so the sibling tools of the same version are used), then the newest
    ``/usr/lib/postgresql/*/bin``.
    """
    override = os.environ.get(ENV_PG_BIN)
    if override and _bin_dir_ok(Path(override)):
        return Path(override)
    on_path = shutil.which("initdb")
    if on_path:
        for cand in (Path(on_path).resolve().parent, Path(on_path).parent):
            if _bin_dir_ok(cand):
                return cand
    cands = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    cands = [c for c in cands if _bin_dir_ok(c)]
    if cands:
        return max(cands, key=_version_key)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    proc = subprocess.run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            SYSTEM_USER,
        ],
        capture_output=True,
        text=True,
    )
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root and could not create the {SYSTEM_USER!r} system user "
            f"(useradd exit {proc.returncode}): {proc.stderr.strip()}"
        ) from None


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(server log empty)"


class PgServer:
    """A running throw-away PostgreSQL server; see :func:`start_postgres`."""

    def __init__(
        self,
        *,
        bin_dir: Path,
        work_dir: Path,
        data_dir: Path,
        socket_dir: Path,
        owns_socket_dir: bool,
        log_file: Path,
        port: int,
        run_as: pwd.struct_passwd | None,
    ):
        self.bin_dir = bin_dir
        self.work_dir = work_dir
        self.data_dir = data_dir
        self.socket_dir = socket_dir
        self.log_file = log_file
        self.port = port
        self.host = "127.0.0.1"
        self.user = SUPERUSER
        self.dbname = DB_NAME
        self._owns_socket_dir = owns_socket_dir
        self._run_as = run_as
        self._stopped = False
        self._lock = threading.Lock()

    # -- URLs -------------------------------------------------------------
    @property
    def url(self) -> str:
        """SQLAlchemy URL (``postgresql+psycopg://...``)."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{self.dbname}"

    @property
    def libpq_url(self) -> str:
        """Plain libpq URL for ``psycopg.connect`` / ``psql``."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    # -- lifecycle --------------------------------------------------------
    def _run(self, args, *, as_server_user: bool, timeout: float, check: bool = True):
        return _run(
            args,
            run_as=self._run_as if as_server_user else None,
            cwd=self.work_dir,
            timeout=timeout,
            check=check,
            log_file=self.log_file,
        )

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m immediate``) and remove its files.

        Idempotent; safe to call from atexit.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._run(
                    [
                        str(self.bin_dir / "pg_ctl"),
                        "stop",
                        "-D",
                        str(self.data_dir),
                        "-m",
                        "immediate",
                        "-w",
                        "-t",
                        "30",
                    ],
                    as_server_user=True,
                    timeout=60,
                    check=False,
                )
        finally:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            if self._owns_socket_dir:
                shutil.rmtree(self.socket_dir, ignore_errors=True)
            with contextlib.suppress(Exception):
                atexit.unregister(self.stop)

    def restart(self, down_seconds: float = 0.0) -> None:
        """Shut the server down (``-m fast``: clients are cut off, as in a fail-over or a reboot), stay down
        for ``down_seconds``, and start it again on the same port with the same data."""
        pg_ctl = str(self.bin_dir / "pg_ctl")
        self._run(
            [pg_ctl, "stop", "-D", str(self.data_dir), "-m", "fast", "-w"], as_server_user=True, timeout=60
        )
        time.sleep(down_seconds)
        self._run(
            [
                pg_ctl,
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-o",
                f"-p {self.port}",
            ],
            as_server_user=True,
            timeout=60,
        )

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<PgServer {self.url} {state}>"


def _run(args, *, run_as, cwd, timeout, check, log_file):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", TZ="UTC")
    kwargs = {}
    if run_as is not None:
        env["HOME"] = str(cwd)
        env["USER"] = env["LOGNAME"] = run_as.pw_name
        kwargs = dict(user=run_as.pw_uid, group=run_as.pw_gid, extra_groups=[])
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(
            f"{Path(args[0]).name} timed out after {timeout}s\n"
            f"--- server log ({log_file}) ---\n{_tail(log_file)}"
        ) from e
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, args))} failed with exit {proc.returncode}\n"
            f"--- output ---\n{(proc.stdout + proc.stderr).strip()}\n"
            f"--- server log ({log_file}) ---\n{_tail(log_file)}"
        )
    return proc


def start_postgres(
    base_dir: Path, *, settings: dict[str, str] | None = None, timeout: float = 60.0
) -> PgServer:
    """Create a fresh cluster, start it and create the ``hpsearch_test`` database.

    When not running as root the cluster lives in a fresh ``pg-*`` directory
    under ``base_dir``; as root, in a private mkdtemp directory under the
    system temp dir instead (see the module docstring).  Extra ``settings`` are
    appended to postgresql.conf (values written verbatim).  Raises RuntimeError
    (including the server log tail) when anything fails.
    """
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise RuntimeError(
            "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
            "/usr/lib/postgresql/*/bin; install them, e.g. `apt-get install -y postgresql`"
        )

    run_as = None
    if os.geteuid() == 0:
        run_as = _ensure_system_user()

    base_dir = Path(base_dir)
    # work_dir is always a directory of our own, removed whole by stop()
    if run_as is None:
        base_dir.mkdir(parents=True, exist_ok=True)
        work_dir = Path(tempfile.mkdtemp(prefix="pg-", dir=base_dir))
    else:
        work_dir = Path(tempfile.mkdtemp(prefix="hpsearch-pg-"))
        os.chown(work_dir, run_as.pw_uid, run_as.pw_gid)
    os.chmod(work_dir, 0o755)

    data_dir = work_dir / "data"
    log_file = work_dir / "postgres.log"
    socket_dir = work_dir / "sock"
    owns_socket_dir = False
    if len(str(socket_dir)) > _MAX_SOCKET_DIR_LEN:
        socket_dir = Path(tempfile.mkdtemp(prefix="pgsock-"))
        owns_socket_dir = True
    else:
        socket_dir.mkdir()
    if run_as is not None:
        os.chown(socket_dir, run_as.pw_uid, run_as.pw_gid)
    os.chmod(socket_dir, 0o755)

    server = PgServer(
        bin_dir=bin_dir,
        work_dir=work_dir,
        data_dir=data_dir,
        socket_dir=socket_dir,
        owns_socket_dir=owns_socket_dir,
        log_file=log_file,
        port=0,
        run_as=run_as,
    )
    atexit.register(server.stop)
    try:
        server._run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            as_server_user=True,
            timeout=timeout,
        )

        conf = dict(_SERVER_SETTINGS)
        conf["unix_socket_directories"] = f"'{socket_dir}'"
        conf.update(settings or {})
        # port is passed on the pg_ctl command line so it can be retried
        with open(data_dir / "postgresql.conf", "a") as f:
            f.write("\n# --- tests/pgserver.py ---\n")
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")

        last_err: Exception | None = None
        for _attempt in range(5):
            port = _free_port()
            try:
                server._run(
                    [
                        str(bin_dir / "pg_ctl"),
                        "start",
                        "-D",
                        str(data_dir),
                        "-l",
                        str(log_file),
                        "-w",
                        "-t",
                        str(int(timeout)),
                        "-o",
                        f"-p {port}",
                    ],
                    as_server_user=True,
                    timeout=timeout + 10,
                )
            except RuntimeError as e:
                # retry only when another process grabbed the port meanwhile
                if "already in use" not in _tail(log_file, 10):
                    raise
                last_err = e
                server._run(
                    [str(bin_dir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "immediate"],
                    as_server_user=True,
                    timeout=30,
                    check=False,
                )
                log_file.unlink(missing_ok=True)
                continue
            server.port = port
            break
        else:
            raise RuntimeError(f"PostgreSQL did not start after 5 attempts:\n{last_err}")

        # the client tools don't need to run as the server user
        server._run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(server.port), "-U", SUPERUSER, DB_NAME],
            as_server_user=False,
            timeout=timeout,
        )
    except BaseException:
        server.stop()
        raise
    return server


def _main() -> int:
    base = Path(tempfile.mkdtemp(prefix="pgserver-main-"))
    t0 = time.monotonic()
    server = start_postgres(base)
    print(server.url, flush=True)
    print(
        f"(started in {time.monotonic() - t0:.2f}s, data in {server.data_dir}; "
        f"press Enter or send EOF/SIGTERM to stop)",
        file=sys.stderr,
        flush=True,
    )

    def _on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        sys.stdin.readline()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
        print("stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
