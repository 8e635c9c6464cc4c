"""The throw-away PostgreSQL helper (tests/pgserver.py) really works."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("hpsearch_tests_pgserver", _HERE / "pgserver.py")
pgserver = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = pgserver
_spec.loader.exec_module(pgserver)

psycopg = pytest.importorskip("psycopg")
optuna = pytest.importorskip("optuna")

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        pgserver.find_pg_bin() is None,
        reason="PostgreSQL server binaries not installed (apt-get install postgresql)",
    ),
]


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def test_start_query_optuna_stop(tmp_path):
    server = pgserver.start_postgres(tmp_path)
    try:
        assert server.url.startswith("postgresql+psycopg://")
        assert "@127.0.0.1:" in server.url and server.url.endswith("/hpsearch_test")
        assert server.libpq_url == _libpq(server.url)

        with psycopg.connect(_libpq(server.url), connect_timeout=5) as conn:
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE t (id serial PRIMARY KEY, name text)")
                cur.execute("INSERT INTO t (name) VALUES (%s)", ("hello",))
                cur.execute("SELECT name FROM t")
                assert cur.fetchall() == [("hello",)]
                cur.execute("SHOW max_connections")
                assert int(cur.fetchone()[0]) >= 200
                cur.execute("SHOW fsync")
                assert cur.fetchone()[0] == "off"
                cur.execute("SHOW listen_addresses")
                assert cur.fetchone()[0] == "127.0.0.1"

        storage = optuna.storages.RDBStorage(url=server.url)
        study = optuna.create_study(storage=storage, study_name="smoke", direction="minimize")
        study.optimize(lambda t: (t.suggest_float("x", -10, 10) - 2) ** 2, n_trials=3)
        assert len(study.trials) == 3

        # a second, independent storage sees the same trials through the database
        storage2 = optuna.storages.RDBStorage(url=server.url)
        again = optuna.load_study(study_name="smoke", storage=storage2)
        assert len(again.trials) == 3
        assert again.best_value == study.best_value
        # close pooled connections before the server goes away
        storage.engine.dispose()
        storage2.engine.dispose()
    finally:
        server.stop()

    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(_libpq(server.url), connect_timeout=3)
    assert not server.data_dir.exists()
    server.stop()  # idempotent


def test_two_servers_get_distinct_ports(tmp_path):
    a = pgserver.start_postgres(tmp_path / "a")
    try:
        b = pgserver.start_postgres(tmp_path / "b")
        try:
            assert a.port != b.port
        finally:
            b.stop()
    finally:
        a.stop()
