"""hpsearch's training loop against the HF Trainer's, on the same configurations, rows, seeds and weights.

A search's best error mixes two things: which configurations it tried, and how well the loop trained them. This
takes the search out: every configuration (a learning rate x batch size grid, the config's other
hyperparameters) is trained for the config's ``n_epochs`` with each seed, by

  grouped  hpsearch's loop as searches run it (length-grouped batches, ``train.group_by_length: true``)
  random   hpsearch's loop with random batches (``group_by_length: false``), as the Trainer draws them
  trainer  ``transformers.Trainer.train()`` set up as bench.run's arm D sets up each of its trials

with the same initial weights (``factory.build(seed, dropout)``) and the study seed's training rows, and
records the validation error after every epoch. No divergence stop, no pruning: whole curves.

Example (R8, the question of BENCHMARKS.md's "Loops on R8"):
    python -m bench.loops --config bench/configs/reuters-r8.yaml --seeds 0,1,2,3,4 \
        --learning-rates 3e-4,1e-3,3e-3 --batch-sizes 8,64 --out bench/results/loops-r8.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import (
    DEFAULT_CONFIG,
    RESULTS,
    arm_config,
    hf_trainer,
    parse_seeds,
    per_seed_map,
)

LOOPS = ("grouped", "random", "trainer")


def run_seed(cfg, seed: int, grid: list[tuple[float, int]], loops: list[str], workdir: str) -> list[dict]:
    """Every configuration of ``grid`` through every loop of ``loops`` on study seed ``seed``'s rows."""
    from hpsearch.objective import TUNABLE
    from hpsearch.search import prepare

    Path(workdir).mkdir(parents=True, exist_ok=True)
    seed_cfg = arm_config(cfg, "A", seed, Path(workdir))  # this seed's rows and train.seed; no stop
    space, data, factory, encoded = prepare(seed_cfg)
    fixed = {name: getattr(seed_cfg.train, name) for name in TUNABLE}
    fixed.update(space.fixed)
    out = []
    for (lr, bs), loop in itertools.product(grid, loops):
        hp = {**fixed, "learning_rate": lr, "batch_size": bs, "seed": seed}
        started = time.monotonic()
        if loop == "trainer":
            errors, losses = train_with_trainer(seed_cfg, data, factory, encoded, hp, Path(workdir))
        else:
            train = dataclasses.replace(seed_cfg.train, group_by_length=loop == "grouped")
            errors, losses = train_with_hpsearch(
                dataclasses.replace(seed_cfg, train=train), data, factory, encoded, hp
            )
        out.append(
            {
                "seed": seed,
                "learning_rate": lr,
                "batch_size": bs,
                "loop": loop,
                "val_errors": errors,
                "train_losses": losses,
                "seconds": round(time.monotonic() - started, 1),
            }
        )
        print(
            f"seed {seed} lr {lr:.1e} bs {bs} {loop:8s} best {min(errors):.4f} last {errors[-1]:.4f}",
            flush=True,
        )
    return out


def train_with_hpsearch(cfg, data, factory, encoded, hp) -> tuple[list[float], list[float]]:
    from hpsearch.best_model import _fine_tuning
    from hpsearch.train import resolve_device

    run = _fine_tuning(cfg, data, factory, encoded, hp, resolve_device(cfg.train.device))
    errors, losses = [], []
    try:
        for result in run.epochs():
            errors.append(round(result.val_error, 4))
            losses.append(round(result.train_loss, 4))
    finally:
        run.release()
    return errors, losses


def train_with_trainer(cfg, data, factory, encoded, hp, workdir: Path) -> tuple[list[float], list[float]]:
    from transformers import TrainerCallback

    errors, losses = [], []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(round(float(logs["loss"]), 4))
            if logs and "eval_error" in logs:
                errors.append(round(float(logs["eval_error"]), 4))

    def model_init(trial=None):  # as arm D's: the weights hpsearch's loop starts from
        return factory.build(int(hp["seed"]), float(hp["dropout"]))

    hf_trainer(cfg, hp, data, factory, encoded, workdir, model_init, Record()).train()
    return errors, losses


def paired(runs: list[dict], loop: str, other: str, figure) -> dict[str, Any]:
    """``figure(other's curve) - figure(loop's curve)`` over the (configuration, seed) pairs both ran."""
    by = {(r["seed"], r["learning_rate"], r["batch_size"], r["loop"]): r["val_errors"] for r in runs}
    diffs = [
        figure(by[(s, lr, bs, other)]) - figure(errors)
        for (s, lr, bs, lp), errors in by.items()
        if lp == loop and (s, lr, bs, other) in by
    ]
    if not diffs:
        return {}
    return {
        "pairs": len(diffs),
        "mean": round(statistics.fmean(diffs), 4),
        "median": round(statistics.median(diffs), 4),
        "stderr": round(statistics.stdev(diffs) / len(diffs) ** 0.5, 4) if len(diffs) > 1 else None,
        "other_lower": sum(d < 0 for d in diffs),
        "loop_lower": sum(d > 0 for d in diffs),
    }


def summarise(runs: list[dict], loops: list[str]) -> dict[str, Any]:
    """Per batch size and over all: each loop's mean best and last error, and each other loop's paired
    difference from the first loop named."""
    first = loops[0]
    groups = {"all": runs}
    for bs in sorted({r["batch_size"] for r in runs}):
        groups[f"batch {bs}"] = [r for r in runs if r["batch_size"] == bs]
    out = {}
    for name, group in groups.items():
        entry = {}
        for loop in loops:
            curves = [r["val_errors"] for r in group if r["loop"] == loop]
            entry[loop] = {
                "mean_best": round(statistics.fmean(min(c) for c in curves), 4),
                "mean_last": round(statistics.fmean(c[-1] for c in curves), 4),
            }
            if loop != first:
                entry[loop]["best_minus_" + first] = paired(group, first, loop, min)
                entry[loop]["last_minus_" + first] = paired(group, first, loop, lambda c: c[-1])
        out[name] = entry
    return out


def numbers(flag: str, text: str, kind, low, example: str) -> list:
    """``--learning-rates 1e-4,3e-4`` -> [1e-4, 3e-4]: each at least ``low``, each once."""
    from hpsearch.errors import ConfigError

    try:
        values = [kind(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r}: expected comma-separated numbers, e.g. {flag} {low or 1},2"
        ) from None
    if any(v < low for v in values) or len(set(values)) < len(values):
        raise ConfigError(f"{flag} {text!r}: each value must be >= {low} and given once")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.loops", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--seeds", default="0,1,2", help="study seeds: the rows, the weights and the batch order")
    p.add_argument("--learning-rates", default="3e-4,1e-3,3e-3")
    p.add_argument("--batch-sizes", default="8,64")
    p.add_argument("--loops", default=",".join(LOOPS), help=f"some of {', '.join(LOOPS)}")
    p.add_argument("--set", action="append", default=[], help="a config override, as `hpsearch search --set`")
    p.add_argument("--jobs", type=int, default=2, help="seeds side by side, one process each")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--out", type=Path, default=RESULTS / "loops.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hpsearch.config import check_writable, load_config
    from hpsearch.errors import ConfigError

    try:
        loops = [x.strip() for x in args.loops.split(",")]
        if any(x not in LOOPS for x in loops) or len(set(loops)) < len(loops):
            raise ConfigError(f"--loops {args.loops!r}: choose some of {', '.join(LOOPS)}, each once")
        seeds = parse_seeds(args.seeds)
        if args.jobs < 1 or args.threads < 0:
            raise ConfigError(
                f"--jobs {args.jobs} --threads {args.threads}: jobs must be >= 1, threads >= 0 (0: torch's choice)"
            )
        grid = list(
            itertools.product(
                numbers("--learning-rates", args.learning_rates, float, 0.0, "1e-4,1e-3"),
                numbers("--batch-sizes", args.batch_sizes, int, 1, "8,64"),
            )
        )
        check_writable(args.out, "--out")
        cfg = load_config(args.config, sets=args.set)
        if args.threads:  # this process runs the seeds itself with --jobs 1; spawned ones set it too
            import torch

            torch.set_num_threads(args.threads)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="hpsearch-loops-") as tmp:
            by_seed = per_seed_map(
                args.jobs, args.threads, run_seed, seeds, lambda s: (cfg, s, grid, loops, f"{tmp}/seed{s}")
            )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs = [r for s in seeds for r in by_seed[s]]
    result = {
        "command": "python -m bench.loops " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": str(args.config),
        "n_epochs": cfg.train.n_epochs,
        "total_seconds": round(time.monotonic() - started),
        "summary": summarise(runs, loops),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
