"""Record every step's training loss over a grid of learning rates and batch sizes, then replay the losses
through the divergence stop with other settings, to compare them without training again.

``record`` trains each (batch size, learning rate) of the grid with the stop off (the rule only records), for
``--n-epochs`` epochs, and writes each run's per-step losses and validation error per epoch. ``replay`` feeds
those losses to :class:`hpsearch.train.DivergenceRule` under each setting below and reports, per setting, the
runs it stops that went on to learn (false stops: a good configuration thrown away), the hopeless runs it stops,
and what the stopped runs cost (share of an epoch trained). A run "learned" when its best validation error is 2
points under the majority-class error (``bench.run.went_on_to_learn``, the benchmark's own definition).

How the default was chosen (BENCHMARKS.md, "Divergence stop"): the recordings in bench/results, each file's
``grids`` naming what it holds, replayed with
    python -m bench.divergence replay bench/results/losses-*.json
and recorded like this (the tiny model on the benchmark's 2,000 SST-2 rows, ~25 min here):
    python -m bench.divergence record --config bench/configs/sst2.yaml --lrs 1e-4:1e-1:10 \
        --batch-sizes 8,16,32,64 --n-epochs 9 --out bench/results/losses-tiny-2000.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.run import went_on_to_learn
from hpsearch.train import DivergenceRule

# name -> DivergenceRule settings; the first is the default, the others what it was compared with
SETTINGS: dict[str, dict[str, Any]] = {
    "median (default)": {},
    "median, no 256-example floor": {"chance_min_samples": 0},
    "median, no 100-step cap": {"chance_max_steps": math.inf},
    "EMA": {"chance_median": False},
    "EMA, no floor, no cap (before 2026-12)": {
        "chance_median": False,
        "chance_min_samples": 0,
        "chance_max_steps": math.inf,
    },
}


@dataclasses.dataclass
class RecordingRule(DivergenceRule):
    """The rule as the loop runs it, keeping every loss it is fed."""

    losses: list[float] = dataclasses.field(default_factory=list)

    def check(self, loss: float, step: int, where: str = "") -> str:
        self.losses.append(round(loss, 5))
        return super().check(loss, step, where)


def log_grid(spec: str) -> list[float]:
    """``1e-4:1e-2:9`` -> 9 learning rates spaced evenly on a log scale from 1e-4 to 1e-2."""
    low, high, n = spec.split(":")
    lo, hi, count = float(low), float(high), int(n)
    return [lo * (hi / lo) ** (i / max(1, count - 1)) for i in range(count)]


def record(args: argparse.Namespace) -> int:
    import torch

    from hpsearch.config import HYPERPARAMETERS, load_config
    from hpsearch.search import prepare
    from hpsearch.train import FineTuning

    torch.set_num_threads(args.threads)
    # prepare() checks that a store answers; this one is thrown away
    with tempfile.TemporaryDirectory(prefix="hpsearch-divergence-") as tmp:
        cfg = load_config(args.config, overrides={"storage": f"sqlite:///{tmp}/unused.db"}, sets=args.set)
        _, data, factory, encoded = prepare(cfg)
    settings = dataclasses.replace(cfg.train, divergence_stop=False, n_epochs=args.n_epochs)
    out: dict[str, Any] = {
        "config": str(args.config),
        "set": args.set,
        "model": cfg.model.name,
        "n_train": len(data.train.labels),
        "majority_val_error": data.majority_error(),
        "n_labels": len(data.label_names),
        "runs": [],
    }
    for batch_size in args.batch_sizes:
        for lr in log_grid(args.lrs):
            hp = {name: getattr(cfg.train, name) for name in HYPERPARAMETERS}
            hp.update(learning_rate=lr, batch_size=batch_size)
            model = factory.build(int(hp["seed"]), float(hp["dropout"]))
            run = FineTuning.on(model, data, encoded, hp, settings, factory.tokenizer.pad_token_id)
            run.rule = RecordingRule(run.rule.chance_loss, run.rule.steps_per_epoch, batch_size)
            errors = [round(r.val_error, 4) for r in run.epochs()]
            run.release()
            out["runs"].append(
                {
                    "learning_rate": lr,
                    "batch_size": batch_size,
                    "steps_per_epoch": run.steps_per_epoch,
                    "val_errors": errors,
                    "losses": run.rule.losses,
                }
            )
            print(f"batch {batch_size} lr {lr:.2e}: val_error {errors}", file=sys.stderr, flush=True)
            args.out.write_text(json.dumps(out) + "\n", encoding="utf-8")  # after every run: partial results
    return 0


def first_stop(run: dict[str, Any], n_labels: int, **settings: Any) -> int | None:
    """The step at which the rule with ``settings`` stops this run, or None."""
    rule = DivergenceRule(math.log(n_labels), run["steps_per_epoch"], run["batch_size"], **settings)
    return next((step for step, loss in enumerate(run["losses"], start=1) if rule.check(loss, step)), None)


def replay(args: argparse.Namespace) -> int:
    for path in args.files:
        rec = json.loads(path.read_text(encoding="utf-8"))
        runs = rec["runs"]
        learners = [r for r in runs if went_on_to_learn(r["val_errors"], rec["majority_val_error"])]
        print(
            f"\n{path.name}: {rec['model']}, {rec['n_train']} training rows, {len(runs)} runs"
            f" ({len(learners)} learned)"
        )
        print(
            "| setting | learners stopped (false stops) | hopeless runs stopped | epochs a stop cost (mean, max) |"
        )
        print("| --- | --- | ---: | ---: |")
        for name, settings in SETTINGS.items():
            false, stopped, costs = [], 0, []
            for r in runs:
                step = first_stop(r, rec["n_labels"], **settings)
                if step is None:
                    continue
                costs.append(step / r["steps_per_epoch"])
                if r in learners:
                    false.append(
                        f"lr {r['learning_rate']:.2g} bs {r['batch_size']} (best {min(r['val_errors'])})"
                    )
                else:
                    stopped += 1
            cost = f"{sum(costs) / len(costs):.2f}, {max(costs):.2f}" if costs else "-"
            print(
                f"| {name} | {len(false)}{': ' + '; '.join(false) if false else ''} | {stopped} of {len(runs) - len(learners)} | {cost} |"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.divergence", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="train a grid with the stop off and write every step's loss")
    rec.add_argument("--config", type=Path, required=True, help="study config (data, model, train settings)")
    rec.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    rec.add_argument("--lrs", default="1e-4:1e-2:9", help="LOW:HIGH:N, log-spaced learning rates")
    rec.add_argument(
        "--batch-sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[8, 32],
        help="comma-separated",
    )
    rec.add_argument("--n-epochs", type=int, default=2, help="epochs per run (enough to see who learns)")
    rec.add_argument("--threads", type=int, default=1, help="torch threads")
    rec.add_argument("--out", type=Path, required=True, help="JSON file to write")
    rep = sub.add_parser("replay", help="replay recorded losses through each setting of the rule")
    rep.add_argument("files", nargs="+", type=Path, help="files written by record")
    args = p.parse_args(argv)
    return record(args) if args.command == "record" else replay(args)


if __name__ == "__main__":
    sys.exit(main())
