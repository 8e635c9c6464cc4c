"""End-to-end smoke: a search through the CLI lands in a real SQLite store."""

import json

import optuna
from click.testing import CliRunner

from hpsearch.cli import cli


def test_search_writes_trials_to_the_default_sqlite_store(make_config, workdir):
    config = make_config()
    result = CliRunner().invoke(cli, ["search", str(config)])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{workdir}/studies/t.db")
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 3
    assert json.loads(result.stdout.strip().splitlines()[-1])["study"] == "t"
