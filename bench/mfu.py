"""Model FLOPs utilisation of hpsearch's training step for a BERT-base-sized classifier.

Measures the device's matmul peak (a large square matmul in the training precision), then times optimizer steps of
``hpsearch.train.FineTuning`` on a randomly initialised BERT-base-sized model (no download) and reports
achieved FLOP/s over that peak. Meant for a GPU; on a CPU it runs the same code on a small model, as a check.

FLOPs per step: 6 x (non-embedding parameters) x tokens for the dense layers (forward 2, backward 4), plus
12 x layers x hidden x sequence x tokens for attention scores and values, the usual transformer estimate.

Example:
    python -m bench.mfu                        # BERT-base, batch 32 x 128 tokens, 30 timed steps (GPU)
    python -m bench.mfu --small --steps 3      # a CPU check of the same code path
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype, size: int, repeats: int) -> float:
    """FLOP/s of a ``size`` x ``size`` matmul in ``dtype``: the ceiling the model is measured against."""
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def step_flops(config, batch: int, seq: int, n_params: int) -> float:
    tokens = batch * seq
    return 6 * n_params * tokens + 12 * config.num_hidden_layers * config.hidden_size * seq * tokens


def measure(small: bool, batch: int, seq: int, steps: int, precision: str) -> dict:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from hpsearch.config import TrainSection
    from hpsearch.train import FineTuning, resolve_device, resolve_precision

    device = resolve_device("auto")
    dtype = resolve_precision(precision, device) or torch.float32
    if small:
        arch = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
    else:
        arch = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    config = BertConfig(vocab_size=30522, num_labels=2, **arch)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    dense = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    n_rows = batch * (steps + 3)
    ids = torch.randint(1000, 30000, (n_rows, seq)).tolist()
    labels = torch.randint(0, 2, (n_rows,)).tolist()
    hp = {
        "learning_rate": 2e-5,
        "batch_size": batch,
        "weight_decay": 0.0,
        "warmup_ratio": 0.0,
        "dropout": 0.1,
        "seed": 0,
        "lr_scheduler": "constant",
        "max_grad_norm": 1.0,
    }
    run = FineTuning(
        model,
        {"input_ids": ids},
        labels,
        {"input_ids": ids[:batch]},
        labels[:batch],
        hp,
        TrainSection(device=device.type, precision=precision),
        pad_id=0,
        device=device,
    )
    plan = [list(range(s, s + batch)) for s in range(0, n_rows, batch)]
    for idx in plan[:3]:  # warm-up: kernels chosen, allocator filled
        run._step(idx)
    sync(device)
    started = time.perf_counter()
    for idx in plan[3:]:
        run._step(idx)
    sync(device)
    seconds = (time.perf_counter() - started) / steps
    peak = matmul_peak(
        device, dtype, 8192 if device.type == "cuda" else 1024, 20 if device.type == "cuda" else 3
    )
    achieved = step_flops(config, batch, seq, dense) / seconds
    out = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "precision": str(dtype).removeprefix("torch."),
        "model": "small BERT" if small else "BERT-base",
        "dense_parameters": dense,
        "batch": batch,
        "seq": seq,
        "micro_batch_size": run.micro_batch_size,
        "seconds_per_step": round(seconds, 4),
        "samples_per_second": round(batch / seconds, 1),
        "achieved_tflops": round(achieved / 1e12, 3),
        "matmul_peak_tflops": round(peak / 1e12, 3),
        "mfu": round(achieved / peak, 3),
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    run.release()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mfu", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--small", action="store_true", help="a 2-layer, 128-wide BERT instead of BERT-base (CPU check)"
    )
    p.add_argument("--batch", type=int, default=32, help="examples per optimizer step")
    p.add_argument("--seq", type=int, default=128, help="tokens per example (no padding)")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps, after 3 warm-up steps")
    p.add_argument("--precision", default="auto", help="train.precision: auto, bf16, fp16 or fp32")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.small, args.batch, args.seq, args.steps, args.precision), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
