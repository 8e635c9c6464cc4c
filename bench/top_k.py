"""Does retraining the top k configurations of a search (``hpsearch train-best --top-k``) hand over a better
one than its best trial alone, and how should the k be ranked?

For each arm and seed of a ``bench.run`` result, the arm's k best trials, ranked as ``train-best --top-k``
ranks them (``hpsearch.results.candidate_key``: complete trials first, then pruned ones by the rung they
reached), are retrained for every epoch of the study with

- the trial's own seed (what ``train-best`` runs first; for a complete trial its recorded error after the last
  epoch is used, it reproduces that), and ``--rank-seeds`` fresh seeds (1000, 1001, ...): what ranks them;
- ``--held-out`` more fresh seeds, which no rule looks at: what scores the configuration a rule picks.

A rule that picks by the same runs it is scored on favours the luckiest candidate (the winner's curse again),
so every figure below is the held-out mean of the picked configuration. The rules, at ``train-best``'s cost of
``--seeds rank_seeds + 1``:

  top-1   the search's best trial alone (``--top-k 1``)
  own     the lowest mean over the own seed and the fresh ones: what ``train-best --top-k`` does
  fresh   the lowest mean over the fresh seeds only, since the search picked the own seed for measuring well:
          an alternative, measured and not adopted (BENCHMARKS.md, "Retraining the top k")
  oracle  the lowest held-out mean: what a perfect ranking would pick (an upper bound, not a rule)

Example:
    python -m bench.top_k bench/results/sst2-1202.json --arms C,E --out bench/results/sst2-1202-topk.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.run import RETRAIN_SEED, per_seed_map, read_result, result_config, seed_trainer, trial_params

RULES = ("top-1", "own", "fresh", "oracle")


def candidates(trials: list[dict], k: int) -> list[dict]:
    """An arm's k best trials, as ``train-best --top-k`` ranks them (stopped-diverging trials left out)."""
    from hpsearch.results import candidate_key

    usable = [t for t in trials if t["val_errors"] and not t.get("stopped_diverging")]

    def key(t):  # a complete trial's value is its lowest epoch-end error
        return candidate_key(
            t["state"] == "COMPLETE", len(t["val_errors"]), min(t["val_errors"]), t["number"]
        )

    return sorted(usable, key=key)[:k]


def retrain_seed(cfg, seed: int, by_arm: dict[str, list[dict]], k: int, n_rank: int, n_held: int, workdir):
    """Every candidate of every arm of one seed, trained with its own seed (the study seed is the trials'
    train.seed) and the fresh ones."""
    train = seed_trainer(cfg, seed, workdir)
    n_epochs = cfg.train.n_epochs
    done: dict[tuple, dict[str, Any]] = {}  # arms sharing a configuration share its runs
    out = {}
    for arm, trials in by_arm.items():
        rows = []
        for t in candidates(trials, k):
            params = trial_params(t)
            key = json.dumps(params, sort_keys=True)
            if key not in done:
                complete = t["state"] == "COMPLETE" and len(t["val_errors"]) >= n_epochs
                fresh = [train(params, RETRAIN_SEED + j, n_epochs) for j in range(n_rank + n_held)]
                done[key] = {
                    "own": round(t["val_errors"][n_epochs - 1], 4)
                    if complete
                    else train(params, seed, n_epochs),
                    "own_recorded": complete,
                    "rank": fresh[:n_rank],
                    "held_out": fresh[n_rank:],
                }
            rows.append(
                {
                    "trial": t["number"],
                    "state": t["state"],
                    "epochs_reached": len(t["val_errors"]),
                    "search_val_error": round(min(t["val_errors"]), 4),
                    "learning_rate": t["learning_rate"],
                    "batch_size": t["batch_size"],
                    "params": params,
                    **done[key],
                }
            )
        out[arm] = rows
    return out


def pick(rows: list[dict], rule: str) -> dict:
    score = {
        "top-1": lambda i, r: i,
        "own": lambda i, r: statistics.fmean([r["own"], *r["rank"]]),
        "fresh": lambda i, r: statistics.fmean(r["rank"]),
        "oracle": lambda i, r: statistics.fmean(r["held_out"]),
    }[rule]
    return min(enumerate(rows), key=lambda ir: (score(*ir), ir[0]))[1]


def summarise(per_seed: dict[int, dict[str, list[dict]]]) -> dict[str, Any]:
    arms = sorted({a for by in per_seed.values() for a in by})
    out = {}
    for arm in arms:
        held = {rule: {} for rule in RULES}
        for s, by in per_seed.items():
            if by.get(arm):
                for rule in RULES:
                    held[rule][s] = round(statistics.fmean(pick(by[arm], rule)["held_out"]), 4)
        base = held["top-1"]
        out[arm] = {
            rule: {
                "median": round(statistics.median(v.values()), 4),
                "per_seed": v,
                "vs_top_1": {
                    "better": sum(v[s] < base[s] for s in v),
                    "worse": sum(v[s] > base[s] for s in v),
                    "level": sum(v[s] == base[s] for s in v),
                },
            }
            for rule, v in held.items()
        }
        own_gap = [
            r["own"] - statistics.fmean(r["rank"]) for by in per_seed.values() for r in by.get(arm, [])
        ]
        out[arm]["own_minus_fresh"] = round(statistics.fmean(own_gap), 4) if own_gap else None
    return out


def main(argv: list[str] | None = None) -> int:
    from hpsearch.errors import ConfigError

    ap = argparse.ArgumentParser(prog="python -m bench.top_k", description=__doc__.split("\n\n")[0])
    ap.add_argument("result", type=Path, help="a bench.run result JSON")
    ap.add_argument("--config", type=Path, help="the config the result ran with (default: the one it stored)")
    ap.add_argument("--arms", default="C,E", help="hpsearch arms to retrain (default C,E)")
    ap.add_argument("--k", type=int, default=3, help="configurations per arm (default 3)")
    ap.add_argument("--rank-seeds", type=int, default=2, help="fresh seeds that rank them (default 2)")
    ap.add_argument("--held-out", type=int, default=3, help="fresh seeds that score the pick (default 3)")
    ap.add_argument("--seeds", help="study seeds of the result to use (default all)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        result = read_result(args.result, "result")
        cfg = result_config(args.config, result, "--config")
    except ConfigError as exc:
        ap.error(str(exc))
    arms = args.arms.split(",")
    if "D" in arms:
        ap.error("--arms D: D's trials are not hpsearch's; train-best cannot rank them")
    if set(arms) - set(result["arms"]):
        ap.error(f"--arms {args.arms}: {args.result} has arms {','.join(result['arms'])}")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [int(s) for s in result["seeds"]]
    if set(seeds) - {int(s) for s in result["seeds"]}:
        ap.error(f"--seeds {args.seeds}: {args.result} has seeds {','.join(map(str, result['seeds']))}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # for --jobs 1; per_seed_map sets it in its processes
    with tempfile.TemporaryDirectory(prefix="hpsearch-topk-") as tmp:
        per_seed = per_seed_map(
            args.jobs,
            args.threads,
            retrain_seed,
            seeds,
            lambda s: (
                cfg,
                s,
                {a: result["per_seed"][str(s)][a]["trials"] for a in arms},
                args.k,
                args.rank_seeds,
                args.held_out,
                Path(tmp),
            ),
        )
    summary = summarise(per_seed)
    args.out.write_text(
        json.dumps(
            {
                "command": "python -m bench.top_k " + " ".join(sys.argv[1:] if argv is None else argv),
                "from": str(args.result),
                "k": args.k,
                "rank_seeds": args.rank_seeds,
                "held_out_seeds": args.held_out,
                "summary": summary,
                "per_seed": per_seed,
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    for arm, figures in summary.items():
        print(f"arm {arm}: own seed minus fresh mean {figures['own_minus_fresh']}")
        for rule in RULES:
            f = figures[rule]
            print(f"  {rule:7} held-out median {f['median']:.4f} {f['per_seed']} vs top-1 {f['vs_top_1']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
