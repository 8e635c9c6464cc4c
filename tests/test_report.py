"""Reports and cost accounting, on real SQLite studies driven through ask/tell (reading needs no training)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import struct
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import missing
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch.cli import cli
from hpsearch.config import load_config
from hpsearch.cost import compute_cost, epochs_spent
from hpsearch.report import FIGURES, build_figures
from hpsearch.study import CONFIG_ATTR, OVER_BUDGET_ATTR, PARTIAL_EPOCH_ATTR

FIGURE_IDS = [f[0] for f in FIGURES]


def _config(n_epochs: int = 3) -> dict:
    return load_config(None, sets=[f"train.n_epochs={n_epochs}"]).to_dict()


def searched_study(url: str, n_trials: int = 16) -> optuna.Study:
    """A study shaped like an hpsearch one: val_error per epoch, pruned and diverged trials."""
    study = optuna.create_study(
        study_name="r", storage=url, direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.set_user_attr(CONFIG_ATTR, _config())
    for _ in range(n_trials):
        trial = study.ask()
        lr = trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
        bs = trial.suggest_categorical("batch_size", [8, 16, 32])
        trial.set_user_attr("device", "cpu")
        if lr > 2e-2:
            trial.set_user_attr(
                "prune_reason", "diverged: training loss climbed to 1.9 from 0.69 at epoch 1, step 12"
            )
            trial.set_user_attr("train_seconds", 1.5)
            trial.set_user_attr("epochs_run", 0)
            study.tell(trial, state=TrialState.PRUNED)
            continue
        distance = abs(math.log10(lr) + 3.3) / 2 + bs / 200  # best near lr=5e-4, small batches
        for epoch in (1, 2, 3):
            trial.report(min(0.46, 0.05 + distance / epoch), epoch)
            trial.set_user_attr("epochs_run", epoch)
            trial.set_user_attr("train_seconds", 2.0 * epoch)
            trial.set_user_attr("best_epoch", epoch)
            if epoch == 1 and distance > 0.6:
                trial.set_user_attr(
                    "prune_reason", f"pruned by hyperband after epoch 1: val_error {0.46:.4f}"
                )
                break
        else:
            study.tell(trial, 0.05 + distance / 3)
            continue
        study.tell(trial, state=TrialState.PRUNED)
    return study


def external_resources(html: str) -> list[str]:
    """src/href attributes of the page's own tags (the inline plotly.js may mention URLs in its code)."""
    from html.parser import HTMLParser

    found = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(v for k, v in attrs if k in ("src", "href") and v and not v.startswith("#"))

    Tags().feed(html)
    return found


def _figure_call(html: str, fid: str) -> str:
    """The ``Plotly.newPlot("<fid>", data, layout, config)`` call that draws one figure."""
    match = re.search(rf'Plotly\.newPlot\(\s*"{fid}"', html)
    assert match, f"no figure {fid!r}"
    return html[match.start() : html.index("</script>", match.start())]


def test_report_is_one_self_contained_html_file_with_every_figure(workdir):
    url = f"sqlite:///{workdir}/r.db"
    searched_study(url)
    result = CliRunner().invoke(cli, ["report", "r", "--storage", url, "-o", "out/report.html"])
    assert result.exit_code == 0, result.output
    html = (workdir / "out" / "report.html").read_text(encoding="utf-8")
    assert external_resources(html) == []  # nothing is fetched when the file is opened
    assert re.search(r"plotly\.js v\d+\.\d+\.\d+", html)  # the library itself is inline
    for fid in FIGURE_IDS:
        assert f'id="{fid}"' in html, fid
        assert _figure_call(html, fid)
    assert '"type":"log"' in _figure_call(html, "learning-rate")
    assert "diverged (drawn at 1)" in _figure_call(html, "learning-rate")
    assert '"type":"category"' in _figure_call(html, "batch-size")
    assert "learning_rate" in _figure_call(html, "param-importances")
    best = optuna.load_study(study_name="r", storage=url).best_trial
    assert f"<th>trial</th><td>{best.number}</td>" in html
    assert "device-hours" in html and "hpsearch train-best r" in html


def test_report_says_why_importances_are_missing_instead_of_crashing(workdir):
    url = f"sqlite:///{workdir}/r.db"
    study = optuna.create_study(study_name="r", storage=url, direction="minimize")
    study.set_user_attr(CONFIG_ATTR, _config())
    trial = study.ask(
        {
            "learning_rate": FloatDistribution(1e-5, 1e-1, log=True),
            "batch_size": CategoricalDistribution([8, 16]),
        }
    )
    trial.report(0.3, 1)
    study.tell(trial, 0.3)
    result = CliRunner().invoke(cli, ["report", "r", "--storage", url, "-o", "r.html"])
    assert result.exit_code == 0, result.output
    html = (workdir / "r.html").read_text(encoding="utf-8")
    assert re.search(r"id='param-importances'>Not available: importances cannot be computed", html)
    figures = {f.id: f for f in build_figures(study)}
    assert figures["param-importances"].figure is None and figures["learning-rate"].figure is not None


def test_report_of_a_study_with_no_complete_trial_says_so_without_optunas_warning(workdir):
    url = f"sqlite:///{workdir}/r.db"
    optuna.create_study(study_name="r", storage=url).set_user_attr(CONFIG_ATTR, _config())
    result = CliRunner().invoke(cli, ["report", "r", "--storage", url, "-o", "r.html"])
    assert result.exit_code == 0, result.output
    assert [line.split(" (")[0] for line in result.output.splitlines()] == ["wrote r.html"]
    html = (workdir / "r.html").read_text(encoding="utf-8")
    assert "id='param-importances'>Not available: no complete trial yet." in html


def test_report_of_a_missing_study_is_a_one_line_error(workdir):
    url = f"sqlite:///{workdir}/r.db"
    searched_study(url, n_trials=2)
    result = CliRunner().invoke(cli, ["report", "nope", "--storage", url, "-o", "r.html"])
    assert result.exit_code == 2
    assert "study 'nope' not found" in result.stderr and not (workdir / "r.html").exists()


@pytest.mark.slow
def test_report_as_png_files(workdir):
    if importlib.util.find_spec("kaleido") is None:
        missing("kaleido is not installed (pip install -e '.[report]')")
    if not Path("/usr/bin/chromium").is_file():
        missing("chromium not installed (apt-get install chromium; .ci/run does it)")
    url = f"sqlite:///{workdir}/r.db"
    searched_study(url)
    result = CliRunner().invoke(cli, ["report", "r", "--storage", url, "--format", "png", "-o", "figures"])
    assert result.exit_code == 0, result.output
    for fid in FIGURE_IDS:
        data = (workdir / "figures" / f"{fid}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", data[16:24]) == (2000, 1120)  # 1000x560 at scale 2


# --- cost accounting ---------------------------------------------------------------------------------------

T0 = datetime(2026, 1, 5, 10, 0, 0)
LR = {"learning_rate": FloatDistribution(1e-5, 1e-1, log=True)}


def _frozen(number, state, start_s, end_s, value=None, attrs=None, system=None, lr=1e-3) -> FrozenTrial:
    return FrozenTrial(
        number=number,
        state=state,
        value=value,
        datetime_start=T0 + timedelta(seconds=start_s),
        datetime_complete=T0 + timedelta(seconds=end_s),
        params={"learning_rate": lr},
        distributions=LR,
        user_attrs=attrs or {},
        system_attrs=system or {},
        intermediate_values={1: value} if value is not None else {},
        trial_id=number,
    )


@pytest.fixture
def costed_study(workdir) -> str:
    """Five trials with known times: a dead worker's trial, its retry, and a trial given back over budget."""
    url = f"sqlite:///{workdir}/c.db"
    study = optuna.create_study(study_name="c", storage=url, direction="minimize")
    study.set_user_attr(CONFIG_ATTR, _config(n_epochs=3))
    cpu, gpu = {"device": "cpu"}, {"device": "cuda:0 (NVIDIA H100)"}
    study.add_trials(
        [
            _frozen(0, TrialState.COMPLETE, 0, 60, 0.3, {**cpu, "train_seconds": 60.0, "epochs_run": 3}),
            _frozen(1, TrialState.PRUNED, 60, 80, 0.5, {**cpu, "train_seconds": 20.0, "epochs_run": 1}),
            _frozen(2, TrialState.FAIL, 80, 120, None, {**gpu, "train_seconds": 30.0, "epochs_run": 1}),
            # The retry inherits trial 2's attributes and adds to them: 30 s + 60 s, epochs 1 + 2.
            _frozen(
                3,
                TrialState.COMPLETE,
                120,
                240,
                0.2,
                {**gpu, "train_seconds": 90.0, "epochs_run": 3},
                {"failed_trial": 2},
            ),
            _frozen(4, TrialState.FAIL, 240, 241, None, {OVER_BUDGET_ATTR: "another worker took it"}),
        ]
    )
    return url


def test_cost_counts_each_epoch_once_and_times_the_best_trial(costed_study):
    cost = compute_cost(optuna.load_study(study_name="c", storage=costed_study))
    assert cost.device_hours == pytest.approx(170 / 3600, abs=1e-6)
    assert cost.device_hours_by_device == pytest.approx(
        {"cpu": 80 / 3600, "cuda:0 (NVIDIA H100)": 90 / 3600}, abs=1e-6
    )
    assert (cost.n_finished, cost.epochs_trained, cost.epochs_without_pruning) == (3, 7, 9)
    assert cost.epochs_saved == pytest.approx(2 / 9)
    assert (cost.best_trial, cost.time_to_best_s, cost.wall_s) == (3, 240.0, 240.0)


def test_a_running_trials_epochs_count_in_the_unpruned_baseline_as_they_are(costed_study):
    """The epochs trained include a running (or re-queued, or failed) trial's; the unpruned baseline must include
    them too, or a study just re-queued after a kill reads '4 epochs trained of 3 (-33% saved)', and as they
    are: counted at n_epochs, a trial half-way through read as half saved on a study with no pruner at all."""
    study = optuna.load_study(study_name="c", storage=costed_study)
    running = study.ask()
    running.set_user_attr("epochs_run", 2)
    cost = compute_cost(study)
    assert (cost.n_finished, cost.n_started, cost.epochs_spent, cost.epochs_unfinished) == (3, 4, 9, 2)
    assert cost.epochs_without_pruning == 11 and cost.epochs_saved == pytest.approx(2 / 11)
    assert (
        "9 epochs trained of 11 without pruning (3 trials x 3 + 2 epochs of unfinished trials; 18% saved)"
        in cost.summary()
    )
    study.ask()  # started, nothing trained yet: not in either figure
    assert compute_cost(study).epochs_without_pruning == 11
    study.tell(running, state=TrialState.FAIL)  # a failure never retried saves nothing either
    assert compute_cost(study).epochs_saved == pytest.approx(2 / 11)


def test_epoch_budget_counts_cut_short_epochs_and_each_retried_epoch_once(costed_study):
    study = optuna.load_study(study_name="c", storage=costed_study)
    assert epochs_spent(study) == 7  # the seven whole epochs of compute_cost: trial 2 is inside its retry
    study.add_trial(
        _frozen(5, TrialState.PRUNED, 241, 245, None, {"epochs_run": 0, PARTIAL_EPOCH_ATTR: 0.25})
    )
    study.add_trial(_frozen(6, TrialState.PRUNED, 245, 260, 0.4, {"epochs_run": 1, PARTIAL_EPOCH_ATTR: 0.5}))
    assert epochs_spent(study) == pytest.approx(8.75)
    cost = compute_cost(study)
    assert (cost.epochs_spent, cost.epoch_budget) == (8.75, None)  # the study has no epoch budget
    assert "epoch budget" not in cost.summary()
    # the cut-short parts count as trained: 8.75 of the 5 trials x 3 epochs a search without pruning trains
    assert "8.8 epochs trained of 15 without pruning (5 trials x 3; 42% saved)" in cost.summary()
    assert cost.epochs_saved == pytest.approx(1 - 8.75 / 15)
    study.set_user_attr(CONFIG_ATTR, load_config(None, sets=["study.epoch_budget=10"]).to_dict())
    assert "epoch budget 8.8 of 10 spent" in compute_cost(study).summary()
    show = CliRunner().invoke(cli, ["show", "c", "--storage", costed_study])
    rows = {int(r.split()[0]): r for r in show.stdout.splitlines()[1:] if r[:1].isdigit()}
    assert "pruned            0.25 " in rows[5] and " 0.4000  1.50 " in rows[6] and " 0.3000  3 " in rows[0]


def test_show_prints_the_cost_after_the_table_and_in_json(costed_study):
    result = CliRunner().invoke(cli, ["show", "c", "--storage", costed_study])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("cost: "))
    assert "0.0472 device-hours" in line and "7 epochs trained of 9 without pruning" in line
    assert "best trial 3 after 4.0 min of 4.0 min wall time" in line
    result = CliRunner().invoke(cli, ["show", "c", "--storage", costed_study, "--json"])
    cost = json.loads(result.stdout)["cost"]
    assert cost["epochs_trained"] == 7 and cost["time_to_best_s"] == 240.0 and cost["epochs_saved"] == 0.2222


def test_a_paused_trial_and_its_continuation_are_drawn_once(workdir):
    """study.pause_at_rungs: the continuation carries the paused trial's curve, so the figures draw the
    configuration once, as the continuation; the table gives the epochs a divergence stop cut short."""
    from hpsearch.report import render_html

    url = f"sqlite:///{workdir}/r.db"
    study = optuna.create_study(study_name="r", storage=url, direction="minimize")
    study.set_user_attr(CONFIG_ATTR, _config())
    dists = {
        "learning_rate": FloatDistribution(1e-5, 1e-1, log=True),
        "batch_size": CategoricalDistribution([8, 16]),
    }
    make = optuna.trial.create_trial
    study.add_trials(
        [
            make(
                state=TrialState.PRUNED,
                value=0.4,
                params={"learning_rate": 1e-3, "batch_size": 8},
                distributions=dists,
                intermediate_values={1: 0.4},
                user_attrs={
                    "epochs_run": 1,
                    "paused_at_epoch": 1,
                    "prune_reason": "paused by successive-halving",
                },
            ),
            make(
                value=0.3,
                params={"learning_rate": 1e-3, "batch_size": 8},
                distributions=dists,
                intermediate_values={1: 0.4, 2: 0.35, 3: 0.3},
                user_attrs={"epochs_run": 3},
                system_attrs={"continues_trial": 0},
            ),
            make(
                state=TrialState.PRUNED,
                params={"learning_rate": 9e-2, "batch_size": 16},
                distributions=dists,
                user_attrs={
                    "epochs_run": 0,
                    PARTIAL_EPOCH_ATTR: 0.5,
                    "prune_reason": "diverged: loss is NaN",
                },
            ),
        ]
    )
    figures = {f.id: f.figure for f in build_figures(study)}
    assert [d.name for d in figures["intermediate-values"].data] == ["Trial1"]
    for fid in ("learning-rate", "batch-size"):
        drawn = [text.split(" (")[0] for d in figures[fid].data for text in d.text]
        assert sorted(drawn) == ["trial 1", "trial 2"], fid
    html = render_html(study)
    table = html[html.index("id='trials'") :]
    assert "<td>2</td><td>pruned</td><td></td><td>0.50</td>" in table
