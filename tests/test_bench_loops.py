"""bench.loops: hpsearch's loop and the HF Trainer's on the same configurations, rows, seeds and weights."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT))
from bench import loops  # noqa: E402

SMALL = [
    "--config", str(ROOT / "studies" / "demo.yaml"), "--set", "data.demo_size=200", "--set", "train.n_epochs=2",
    "--jobs", "1",
]  # fmt: skip


def test_every_loop_starts_from_the_same_weights_on_the_same_rows(tmp_path):
    """At learning rate 0 nothing trains, so the three loops score the same on every epoch only if they start from
    the same weights and score the same validation rows."""
    out = tmp_path / "loops.json"
    argv = [*SMALL, "--seeds", "0,1", "--learning-rates", "0,3e-3", "--batch-sizes", "16", "--out", str(out)]
    assert loops.main(argv) == 0
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert len(runs) == 2 * 2 * 3 and {r["loop"] for r in runs} == set(loops.LOOPS)
    assert all(len(r["val_errors"]) == 2 and len(r["train_losses"]) == 2 for r in runs)
    for seed in (0, 1):
        frozen = {tuple(r["val_errors"]) for r in runs if r["seed"] == seed and r["learning_rate"] == 0}
        assert len(frozen) == 1
    summary = result["summary"]["all"]["trainer"]["last_minus_grouped"]
    assert summary["pairs"] == 4 and summary["other_lower"] + summary["loop_lower"] <= 4


@pytest.mark.parametrize(
    "flags",
    [
        ["--loops", "grouped,trainr"],
        ["--loops", "random,random"],
        ["--learning-rates", "1e-3,fast"],
        ["--learning-rates=-1e-3"],
        ["--batch-sizes", "0"],
        ["--seeds", "0,0"],
        ["--jobs", "0"],
        ["--threads=-1"],
    ],
)
def test_a_bad_flag_is_one_line_and_exit_2(tmp_path, capsys, flags):
    out = tmp_path / "loops.json"
    assert loops.main([*SMALL, *flags, "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --") and not out.exists()
