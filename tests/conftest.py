"""Shared fixtures: a working directory per test, small configs, the SST-2 files, a throw-away PostgreSQL."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import yaml

# Tests never reach a hub: a hub id in a test is a mistake, not a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread per process: tests start several workers at once on a 2-core machine, and oversubscribed
# threads ran 14x slower per step than one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("HPSEARCH_STORAGE", None)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HPSEARCH_SHARED", ROOT.parent / "shared"))
SST2 = SHARED / "data" / "sst2"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_spec = importlib.util.spec_from_file_location(
    "hpsearch_tests_pgserver", Path(__file__).parent / "pgserver.py"
)
pgserver = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = pgserver
_spec.loader.exec_module(pgserver)


def missing(reason: str) -> None:
    """A test's real dependency is absent: fail loudly in CI, skip with the reason on a user's clone."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must provide it)")
    pytest.skip(reason)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run in a fresh folder, so default stores (studies/NAME.db) and checkpoints land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_config(**sections) -> dict:
    """A config that searches in seconds: tiny model, small demo data, two epochs."""
    cfg = {
        "study": {"name": "t", "n_trials": 3, "seed": 0, "heartbeat_interval": 1, "grace_period": 3},
        "model": {"name": "tiny", "max_length": 32},
        "data": {"name": "demo", "demo_size": 300},
        "train": {"n_epochs": 2, "batch_size": 32},
        "search_space": {
            "learning_rate": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True},
            "batch_size": {"type": "categorical", "choices": [16, 32]},
        },
    }
    for section, values in sections.items():
        if values is None:
            cfg.pop(section, None)
        else:
            cfg.setdefault(section, {}).update(values)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def two_data_folders(workdir: Path) -> Path:
    """A tiny config reading ``train.tsv`` from the current folder, and folders ``a`` (200 rows) and ``b``
    (150) holding other rows: two workers of one study reading one relative path from other folders."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    for folder, n in (("a", 200), ("b", 150)):
        (workdir / folder).mkdir()
        body = "".join(f"{words[i % 10]} {words[(i * 3) % 10]} row {i}\t{i % 2}\n" for i in range(n))
        (workdir / folder / "train.tsv").write_text("sentence\tlabel\n" + body, encoding="utf-8")
    data = {"name": None, "train_file": "train.tsv", "text_column": "sentence"}
    return write_config(workdir / "study.yaml", tiny_config(data=None) | {"data": data})


@pytest.fixture
def make_config(workdir):
    """``make_config(study={...}, train={...})`` writes a tiny config in the work dir and returns its path."""

    def make(name: str = "study.yaml", **sections) -> Path:
        return write_config(workdir / name, tiny_config(**sections))

    return make


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    if not (SST2 / "train.tsv").is_file():
        missing(
            f"SST-2 files not found at {SST2}: tests that need them run with ../shared beside the checkout"
        )
    return SST2


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """One throw-away PostgreSQL server on loopback for the whole session."""
    if pgserver.find_pg_bin() is None:
        missing("PostgreSQL server binaries not installed (apt-get install postgresql; .ci/run does it)")
    server = pgserver.start_postgres(tmp_path_factory.mktemp("pg"))
    yield server
    server.stop()


@pytest.fixture
def postgres_url(pg_server, request) -> str:
    """A fresh, empty database on the session's server for this test."""
    import psycopg

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    with psycopg.connect(pg_server.libpq_url, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}"')
        con.execute(f'CREATE DATABASE "{name}"')
    return pg_server.url.rsplit("/", 1)[0] + "/" + name
