"""The fine-tuning loop. Knows torch and transformers, never Optuna or click.

``FineTuning(...).epochs()`` yields one :class:`EpochResult` per epoch; the caller decides what to report,
when to checkpoint (``state_dict()``) and when to stop. A loss that turns NaN or infinite, or that climbs far above
where it started, ends the generator at once with a result marked ``diverged``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hpsearch.config import TrainSection
from hpsearch.errors import TrialFailure

# Divergence: an exponential moving average of the training loss this many times above its starting value.
DIVERGENCE_FACTOR = 2.0
DIVERGENCE_MIN_STEPS = 8  # let the EMA settle before judging
OOM_ERRORS = (torch.OutOfMemoryError,)


@dataclass
class EpochResult:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    val_error: float
    train_seconds: float  # time inside training steps this epoch
    eval_seconds: float
    samples: int  # training examples seen this epoch
    real_tokens: int
    padded_tokens: int
    micro_batch_size: int
    diverged: bool = False
    reason: str = ""

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.train_seconds if self.train_seconds > 0 else 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from hpsearch.errors import ConfigError

        raise ConfigError("train.device: cuda requested but no GPU is visible; use `device: auto` or `cpu`")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if name == "fp32" or (name == "auto" and device.type != "cuda"):
        return None
    if name == "bf16" or (name == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def batches(lengths: list[int], batch_size: int, seed: int, group_by_length: bool) -> list[list[int]]:
    """Shuffled batches of indices; with ``group_by_length``, each run of 50 batches is sorted by length first,
    so a batch pads to similar lengths while the order stays random (HF's ``group_by_length`` idea)."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        mega = 50 * batch_size
        order = [i for s in range(0, len(order), mega)
                 for i in sorted(order[s:s + mega], key=lambda i: -lengths[i])]
    out = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(out)
    return out


def collate(encoded: dict[str, list], labels: list[int], idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest example in this batch (dynamic padding)."""
    width = max(len(encoded["input_ids"][i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        seq = encoded["input_ids"][i]
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([labels[i] for i in idx])}
    if "token_type_ids" in encoded:
        types = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq = encoded["token_type_ids"][i]
            types[row, : len(seq)] = torch.tensor(seq)
        batch["token_type_ids"] = types
    return batch


def _schedule(kind: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1 - progress)

    return factor


class FineTuning:
    """One trial's training run: model, optimizer and schedule, resumable from ``state_dict()``."""

    def __init__(self, model: nn.Module, train_enc: dict[str, list], train_labels: list[int],
                 val_enc: dict[str, list], val_labels: list[int], hp: dict[str, Any], settings: TrainSection,
                 pad_id: int, device: torch.device | None = None):
        self.settings, self.hp, self.pad_id = settings, hp, pad_id
        self.train_enc, self.train_labels = train_enc, train_labels
        self.val_enc, self.val_labels = val_enc, val_labels
        self.device = device or resolve_device(settings.device)
        self.dtype = resolve_precision(settings.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.model = model.to(self.device)
        self.batch_size = int(hp["batch_size"])
        self.micro_batch_size = self.batch_size
        self.lengths = [len(x) for x in train_enc["input_ids"]]
        steps_per_epoch = math.ceil(len(train_labels) / self.batch_size)
        total = steps_per_epoch * settings.n_epochs
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # biases and LayerNorm
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": float(hp["weight_decay"])}, {"params": no_decay, "weight_decay": 0.0}],
            lr=float(hp["learning_rate"]), fused=self.device.type == "cuda",
        )
        warmup = int(total * float(hp["warmup_ratio"]))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(hp["lr_scheduler"], warmup, total))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.epoch = 0  # epochs finished
        self.loss_start: float | None = None

    # --- checkpoint ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after ``self.epoch`` as if never interrupted."""
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "micro_batch_size": self.micro_batch_size,
            "loss_start": self.loss_start,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.micro_batch_size = state["micro_batch_size"]
        self.loss_start = state["loss_start"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    # --- the loop --------------------------------------------------------------------------------------------

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cuda":
            return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        return {k: v.to(self.device) for k, v in batch.items()}

    def _forward_backward(self, batch: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            loss = self.model(**batch).loss
        self.scaler.scale(loss * scale).backward()
        return loss.detach()

    def _step(self, idx: list[int]) -> torch.Tensor:
        """One optimizer step on one batch, split into micro-batches that fit in memory.

        Out of memory halves the micro-batch and redoes the batch; the effective batch size (the statistical
        hyperparameter) never changes.
        """
        while True:
            try:
                self.optimizer.zero_grad(set_to_none=True)
                total = torch.zeros((), device=self.device)
                for s in range(0, len(idx), self.micro_batch_size):
                    part = idx[s:s + self.micro_batch_size]
                    batch = self._to_device(collate(self.train_enc, self.train_labels, part, self.pad_id))
                    total += self._forward_backward(batch, len(part) / len(idx)) * (len(part) / len(idx))
                break
            except OOM_ERRORS:
                self.optimizer.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if self.micro_batch_size == 1:
                    raise TrialFailure(f"out of memory even with micro-batch 1 (batch size {self.batch_size})")
                self.micro_batch_size = max(1, self.micro_batch_size // 2)
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), float(self.hp["max_grad_norm"]))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return total

    def _divergence(self, loss: float, ema: float | None, step: int) -> tuple[float, str]:
        if not math.isfinite(loss):
            return loss, f"loss became {loss} at epoch {self.epoch + 1}, step {step}"
        ema = loss if ema is None else 0.9 * ema + 0.1 * loss
        if self.loss_start is None and step == DIVERGENCE_MIN_STEPS:
            self.loss_start = ema
        if self.loss_start is not None and ema > DIVERGENCE_FACTOR * self.loss_start:
            return ema, (f"training loss climbed to {ema:.3g} from {self.loss_start:.3g} at epoch {self.epoch + 1},"
                         f" step {step}")
        return ema, ""

    def evaluate(self) -> tuple[float, float]:
        """(validation loss, validation error) over the whole validation set."""
        self.model.eval()
        order = sorted(range(len(self.val_labels)), key=lambda i: len(self.val_enc["input_ids"][i]))
        loss_sum, wrong = 0.0, 0
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                                                    enabled=self.dtype is not None):
            for s in range(0, len(order), self.settings.eval_batch_size):
                idx = order[s:s + self.settings.eval_batch_size]
                batch = self._to_device(collate(self.val_enc, self.val_labels, idx, self.pad_id))
                out = self.model(**batch)
                loss_sum += float(out.loss) * len(idx)  # a sync point, once per eval batch
                wrong += int((out.logits.argmax(-1) != batch["labels"]).sum())
        self.model.train()
        return loss_sum / len(order), wrong / len(order)

    def epochs(self) -> Iterator[EpochResult]:
        """Train the remaining epochs, yielding after each one (and at once on divergence)."""
        seed = int(self.hp["seed"])
        self.model.train()
        while self.epoch < self.settings.n_epochs:
            plan = batches(self.lengths, self.batch_size, seed * 1000 + self.epoch, self.settings.group_by_length)
            ema, reason, loss_sum, samples, real, padded = None, "", 0.0, 0, 0, 0
            train_seconds = 0.0
            for step, idx in enumerate(plan, start=1):
                started = time.perf_counter()
                loss = float(self._step(idx))  # a sync point per step: divergence is caught at once
                train_seconds += time.perf_counter() - started
                width = max(self.lengths[i] for i in idx)
                real += sum(self.lengths[i] for i in idx)
                padded += width * len(idx)
                samples += len(idx)
                loss_sum += loss * len(idx)
                ema, reason = self._divergence(loss, ema, step)
                if reason:
                    break
            if reason:
                yield EpochResult(self.epoch + 1, float("nan"), float("nan"), 1.0, train_seconds, 0.0, samples, real,
                                  padded, self.micro_batch_size, diverged=True, reason=reason)
                return
            started = time.perf_counter()
            val_loss, val_error = self.evaluate()
            eval_seconds = time.perf_counter() - started
            self.epoch += 1
            yield EpochResult(self.epoch, loss_sum / max(1, samples), val_loss, val_error, train_seconds,
                              eval_seconds, samples, real, padded, self.micro_batch_size)

    def release(self) -> None:
        """Free the model and optimizer so memory does not grow across trials."""
        del self.model, self.optimizer, self.scheduler
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
