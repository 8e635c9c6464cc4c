"""The dashboard over a real searched study: a real server, its HTTP API, and a real headless browser."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import missing, tiny_config, write_config
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from hpsearch.cli import cli
from hpsearch.config import load_config
from hpsearch.dashboard import (
    NOTE_FOOTER,
    DashboardServer,
    read_note,
    write_note,
    write_study_note,
    write_trial_note,
)

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TRIAL_ATTRS = {"best_epoch", "epochs_run", "train_seconds", "samples_per_second", "device", "worker"}


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> dict:
    """A real 2-trial search through the CLI. Trial 1 is enqueued with a learning rate too small to move off
    the initial (minority-class) answer, so the median pruner stops it after epoch 1, every time."""
    root = tmp_path_factory.mktemp("dash")
    url = f"sqlite:///{root}/studies/t.db"
    config = write_config(
        root / "t.yaml",
        tiny_config(
            study={"name": "t", "n_trials": 2, "pruner": "median", "n_startup_trials": 1},
            data={"demo_size": 400},
            train={"checkpoint_dir": str(root / "checkpoints")},
            search_space={"learning_rate": {"type": "float", "low": 1.0e-5, "high": 3.0e-3, "log": True}},
        ),
    )
    (root / "studies").mkdir()
    study = optuna.create_study(study_name="t", storage=url, direction="minimize")
    study.enqueue_trial({"learning_rate": 2.0e-3, "batch_size": 16})
    study.enqueue_trial({"learning_rate": 1.0e-5, "batch_size": 16})
    result = CliRunner().invoke(cli, ["search", str(config), "--storage", url])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="t", storage=url)
    assert [t.state for t in study.trials] == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
    ], result.output
    return {"root": root, "url": url, "config": config}


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def study_detail(base: str, name: str = "t") -> dict:
    summaries = get_json(f"{base}/api/studies")["study_summaries"]
    study_id = next(s["study_id"] for s in summaries if s["study_name"] == name)
    return {"id": study_id, **get_json(f"{base}/api/studies/{study_id}")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_api_shows_trials_learning_curves_and_attributes(searched):
    with DashboardServer(searched["url"], port=0) as server:
        detail = study_detail(f"http://127.0.0.1:{server.port}")
    assert detail["name"] == "t"
    assert detail["objective_names"] == ["val_error"]
    trials = detail["trials"]
    assert [t["state"] for t in trials] == ["Complete", "Pruned"]
    for t in trials:
        assert [iv["step"] for iv in t["intermediate_values"]] == list(
            range(1, len(t["intermediate_values"]) + 1)
        )
        assert TRIAL_ATTRS <= {a["key"] for a in t["user_attrs"]}
        assert {p["name"] for p in t["params"]} == {"learning_rate", "batch_size"}
    assert len(trials[0]["intermediate_values"]) == 2 and len(trials[1]["intermediate_values"]) == 1
    attrs = {a["key"]: a["value"] for a in trials[1]["user_attrs"]}
    assert attrs["prune_reason"].startswith("pruned by median after epoch 1")


def test_api_shows_the_study_note_and_why_a_trial_was_pruned(searched):
    with DashboardServer(searched["url"], port=0) as server:
        detail = study_detail(f"http://127.0.0.1:{server.port}")
    note = detail["note"]["body"]
    for expected in (
        "## Study `t`",
        "**tiny**",
        "**demo**",
        "360 train / 40 validation",
        "median",
        "2 finished trials, up to 2 epochs each",
        "| learning_rate | float in [1e-05, 0.003], log scale |",
        "| batch_size | one of 16, 32 |",
        "### Launched with",
        f"hpsearch search {searched['config']}",
        "### Cost",
        "device-hours",
        "epochs trained: 3 of 4 without pruning",
    ):
        assert expected in note, expected
    pruned = detail["trials"][1]["note"]["body"]
    assert pruned.startswith("### Trial 1 pruned")
    assert "**Why:** pruned by median after epoch 1: val_error" in pruned
    assert "| 1 |" in pruned and "learning_rate=1e-05" in pruned
    assert detail["trials"][0]["note"]["body"] == ""  # complete trials need no explanation


def test_dashboard_refuses_to_delete_a_study_but_lets_people_edit_notes(searched):
    with DashboardServer(searched["url"], port=0) as server:
        base = f"http://127.0.0.1:{server.port}"
        detail = study_detail(base)
        request = urllib.request.Request(f"{base}/api/studies/{detail['id']}", method="DELETE")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 403
        body = json.dumps({"version": detail["note"]["version"] + 1, "body": detail["note"]["body"] + "mine"})
        request = urllib.request.Request(
            f"{base}/api/studies/{detail['id']}/note",
            data=body.encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 204
    study = optuna.load_study(study_name="t", storage=searched["url"])
    assert len(study.trials) == 2
    assert read_note(study).endswith("mine")


def test_dashboard_command_serves_on_loopback_and_says_where(searched):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "dashboard", "--storage", searched["url"], "--port", str(port)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        line = proc.stderr.readline()
        assert f"at http://127.0.0.1:{port}/dashboard (localhost only" in line, line
        deadline = time.monotonic() + 60
        while True:
            try:
                assert get_json(f"http://127.0.0.1:{port}/api/meta")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert study_detail(f"http://127.0.0.1:{port}")["name"] == "t"
    finally:
        proc.send_signal(signal.SIGTERM)  # what a process manager sends; Ctrl-C takes the same path
        code = proc.wait(30)
        proc.stderr.close()
    assert code == 0


@pytest.mark.parametrize("stores", [0, 2])
def test_dashboard_without_storage_asks_for_one(workdir, monkeypatch, stores):
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    (workdir / "studies").mkdir()
    for i in range(stores):
        (workdir / "studies" / f"s{i}.db").touch()
    result = CliRunner().invoke(cli, ["dashboard", "--port", "0"])
    assert result.exit_code == 2
    assert "--storage" in result.stderr and "Traceback" not in result.output


def test_study_note_masks_the_storage_password(workdir):
    secret_url = "postgresql+psycopg://hp:s3cr3t@db.internal/hpsearch"
    cfg = load_config(write_config(workdir / "c.yaml", tiny_config(study={"storage": secret_url})))
    study = optuna.create_study(study_name="n", storage=f"sqlite:///{workdir}/n.db")
    write_study_note(
        study,
        cfg,
        ["hpsearch", "search", "c.yaml", "--storage", secret_url, f"--set=study.storage={secret_url}"],
    )
    note = read_note(study)
    assert "s3cr3t" not in note
    assert note.count("hp:***@db.internal") == 3


def test_rewriting_the_study_note_keeps_what_people_wrote_below_it(workdir):
    cfg = load_config(write_config(workdir / "c.yaml", tiny_config()))
    study = optuna.create_study(study_name="n", storage=f"sqlite:///{workdir}/n.db")
    write_note(study, "Ran this for the Q3 paper.")
    write_study_note(study, cfg, ["hpsearch", "search", "c.yaml"])
    write_study_note(study, cfg, ["hpsearch", "search", "c.yaml", "--n-trials", "9"])
    note = read_note(study)
    assert note.count(NOTE_FOOTER) == 1 and note.count("## Study") == 1
    assert "--n-trials 9" in note and note.endswith("Ran this for the Q3 paper.")


@pytest.mark.slow
def test_dashboard_page_shows_the_study_and_its_trials_in_chromium(searched, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).is_file():
        missing(f"{CHROMIUM} not found (apt-get install chromium; .ci/run does it)")
    with DashboardServer(searched["url"], port=0) as server, sync_playwright() as p:
        base = f"http://127.0.0.1:{server.port}"
        study_id = study_detail(base)["id"]
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # Placeholders ("Study #1", "0 Trials") render before the API answers: wait for data-bound text.
            page.goto(f"{base}/dashboard/studies/{study_id}", wait_until="domcontentloaded")
            page.get_by_text(f"t (id={study_id})").wait_for(timeout=30_000)
            page.get_by_text(re.compile(r"Best Trial \(number=\d+\)")).wait_for(timeout=30_000)
            page.wait_for_selector(".js-plotly-plot", timeout=30_000)
            page.screenshot(path=str(tmp_path / "study.png"), full_page=True)
            page.goto(f"{base}/dashboard/studies/{study_id}/trials", wait_until="domcontentloaded")
            page.get_by_text(re.compile(r"^2 Trials$")).wait_for(timeout=30_000)
            page.get_by_role("heading", name=re.compile(r"Trial 0 \(trial_id=\d+\)")).wait_for(timeout=30_000)
            page.goto(f"{base}/dashboard/studies/{study_id}/note", wait_until="domcontentloaded")
            page.get_by_role("heading", name="Launched with").wait_for(timeout=30_000)
            assert not errors
        finally:
            browser.close()


@pytest.mark.parametrize(
    ("state", "attrs", "title", "why"),
    [
        (
            TrialState.PRUNED,
            {"prune_reason": "diverged: loss became nan at epoch 1, step 9"},
            "Trial 4 diverged",
            "**Why:** loss became nan at epoch 1, step 9",
        ),
        (
            TrialState.FAIL,
            {"fail_reason": "out of memory even with micro-batch 1 (batch size 64)"},
            "Trial 4 failed",
            "**Why:** out of memory even with micro-batch 1 (batch size 64)",
        ),
    ],
)
def test_trial_note_says_why_a_trial_diverged_or_failed(workdir, state, attrs, title, why):
    study = optuna.create_study(study_name="n", storage=f"sqlite:///{workdir}/n.db")
    for _ in range(4):
        study.add_trial(optuna.trial.create_trial(value=0.2))
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            params={"learning_rate": 0.08},
            distributions={"learning_rate": FloatDistribution(1e-5, 0.1)},
            user_attrs={
                **attrs,
                "device": "cpu",
                "worker": "node1:42",
                "epochs_run": 0,
                "train_seconds": 1.25,
            },
        )
    )
    frozen = study.trials[4]
    write_trial_note(study, frozen)
    note = read_note(study, frozen)
    assert note.startswith(f"### {title}") and why in note
    assert "learning_rate=0.08" in note and "1.2 s on cpu (worker node1:42)" in note
    assert read_note(study, study.trials[3]) == ""


def test_a_host_or_port_the_dashboard_cannot_use_is_one_line_naming_the_flag(searched):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = CliRunner().invoke(cli, ["dashboard", "--storage", searched["url"], "--port", str(port)])
    bad_host = CliRunner().invoke(cli, ["dashboard", "--storage", searched["url"], "--host", "999.1.1.1"])
    for result, fix in ((taken, "pick another --port"), (bad_host, "check --host")):
        assert result.exit_code == 2, result.output
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("hpsearch: error: cannot listen on") and fix in line


@pytest.mark.parametrize("text", ["epoch 1 loss 0.3\nepoch 2 loss 0.2\n", "not json\n", '["op_code"]\n'])
def test_a_log_file_that_is_not_an_optuna_journal_is_one_line(workdir, text):
    log = workdir / "train.log"
    log.write_text(text)
    result = CliRunner().invoke(cli, ["dashboard", "--storage", str(log), "--port", "0"])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("hpsearch: error: storage:") and "not an Optuna journal" in line
    assert log.read_text() == text


def test_a_password_in_the_storage_query_never_reaches_the_dashboard(workdir):
    secret_url = "postgresql+psycopg://hp@db.internal/hpsearch?sslmode=require&password=s3cr3t"
    cfg = load_config(write_config(workdir / "c.yaml", tiny_config(study={"storage": secret_url})))
    url = f"sqlite:///{workdir}/n.db"
    study = optuna.create_study(study_name="n", storage=url)
    study.set_user_attr("hpsearch_config", cfg.to_dict())
    study.add_trial(optuna.trial.create_trial(value=0.2))
    write_study_note(study, cfg, ["hpsearch", "search", "c.yaml", "--storage", secret_url])
    with DashboardServer(url, port=0) as server:
        base = f"http://127.0.0.1:{server.port}"
        study_id = study_detail(base, "n")["id"]
        served = ""
        for path in ("/dashboard", "/api/studies", f"/api/studies/{study_id}", f"/csv/{study_id}"):
            with urllib.request.urlopen(base + path, timeout=30) as response:
                served += response.read().decode()
    assert "s3cr3t" not in served
    assert "password=***" in served
