"""The fine-tuning loop. Knows torch and transformers, never Optuna or click.

``FineTuning(...).epochs()`` yields one :class:`EpochResult` per epoch; the caller decides what to report,
when to checkpoint (``state_dict()``) and when to stop. A diverging trial ends the generator at once with a result
marked ``diverged`` (see :class:`DivergenceRule` for the rules); with ``train.divergence_stop: false`` the
rule is only recorded (``EpochResult.divergence``) and training goes on.

A batch that does not fit in memory is split into micro-batches with gradient accumulation, so the batch size,
a statistical hyperparameter, never changes; only when a micro-batch of one does not fit does the trial fail.
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hpsearch.config import TrainSection
from hpsearch.errors import ConfigError, TrialFailure

# Explosion: an exponential moving average (EMA) of the training loss this many times above its value after
# DIVERGENCE_MIN_STEPS steps (the EMA needs that long to settle).
DIVERGENCE_FACTOR = 2.0
DIVERGENCE_MIN_STEPS = 8
EMA_DECAY = 0.9  # the EMA spans about ten steps
# Worse than chance: the median training loss of the last quarter of epoch 1 (CHANCE_AFTER), at most
# CHANCE_MAX_STEPS steps but at least DIVERGENCE_MIN_STEPS steps and CHANCE_MIN_SAMPLES examples, is above
# CHANCE_FACTOR x ln(number of classes), the loss of a uniform guess. On SST-2 with max_grad_norm=1, learning rates
# >= ~1.4e-2 bounce at 0.8-1.6 for the whole run without exploding past 2x their (already high) start, and never
# learn. The cap keeps the wait from growing with the epoch (a quarter of a 20k-row epoch at batch 16 is 313 steps
# of a hopeless trial); the floor keeps a few small batches from deciding (bench.divergence: over 10 batches of 16
# a learner's median reached 0.755, over 256 examples no learner's passed 0.710).
CHANCE_FACTOR = 1.15
CHANCE_AFTER = 0.25
CHANCE_MAX_STEPS = 100
CHANCE_MIN_SAMPLES = 256
# Out of memory: torch.OutOfMemoryError, and the allocation failures some libraries report as a plain
# RuntimeError (a cuBLAS or cuDNN workspace, the CPU allocator); accelerate's find_executable_batch_size reads
# the same messages.
OOM_MESSAGES = (
    " out of memory.",
    "MPS backend out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "DefaultCPUAllocator: can't allocate memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and any(m in str(exc) for m in OOM_MESSAGES)
    )


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
    diverged: bool = False  # the trial stopped inside this epoch; val_* are NaN/1.0
    early: bool = False  # the early evaluation part-way through epoch 1 (train.early_eval), not an epoch end
    reason: str = ""  # why it stopped
    divergence: str = ""  # the first time a divergence rule fired, even when divergence_stop is off

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.train_seconds if self.train_seconds > 0 else 0.0

    @property
    def padding_efficiency(self) -> float:
        """Real tokens / padded tokens in this epoch's training batches."""
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0


@dataclass
class DivergenceRule:
    """The divergence stop's three rules, fed one training loss per optimizer step.

    ``check`` returns why the trial is diverging, or "": the loss is NaN or infinite; its EMA is more than
    ``factor`` times its value after ``min_steps`` steps (an explosion); or the median loss of the last
    :meth:`chance_wait` steps is above ``chance_factor`` times ``chance_loss``, a uniform guess (a learning rate
    that bounces without exploding, and never learns). The median, not the mean, because a learner can hit a
    burst of bad batches: all-MiniLM-L6-v2 at learning rate 3e-4, batch 8, had 5 steps at losses of 1-2.8 in
    epoch 1 that lifted the EMA over the bar for 13 steps, and ended at 0.22 error; the old mean-based rule
    stopped it (BENCHMARKS.md, "Divergence stop"). The loop and ``bench.divergence`` (which replays recorded
    losses through other settings) share this one definition.
    """

    chance_loss: float  # ln(number of classes)
    steps_per_epoch: int
    batch_size: int
    min_steps: int = DIVERGENCE_MIN_STEPS
    factor: float = DIVERGENCE_FACTOR
    chance_factor: float = CHANCE_FACTOR
    chance_after: float = CHANCE_AFTER
    chance_max_steps: float = CHANCE_MAX_STEPS
    chance_min_samples: int = CHANCE_MIN_SAMPLES
    chance_median: bool = True  # False: the EMA, as before 2026-12 (bench.divergence compares them)
    loss_start: float | None = None  # the EMA after min_steps steps
    loss_ema: float | None = None
    recent: list[float] = field(default_factory=list)  # the last chance_wait() losses

    def chance_wait(self) -> int:
        """Steps the worse-than-chance rule waits and looks back: a quarter of epoch 1, at most chance_max_steps,
        but never fewer than min_steps nor than chance_min_samples examples."""
        quarter = min(self.chance_after * self.steps_per_epoch, self.chance_max_steps)
        return math.ceil(max(self.min_steps, self.chance_min_samples / self.batch_size, quarter))

    def check(self, loss: float, step: int, where: str = "") -> str:
        """``step`` counts steps since the start of training, from 1; ``where`` ends the reason."""
        where = where or f"step {step}"
        if not math.isfinite(loss):
            return f"loss became {loss} at {where}"
        ema = self.loss_ema = (
            loss if self.loss_ema is None else EMA_DECAY * self.loss_ema + (1 - EMA_DECAY) * loss
        )
        if self.loss_start is None and step >= self.min_steps:
            self.loss_start = ema
        if self.loss_start is not None and ema > self.factor * self.loss_start:
            return f"training loss climbed to {ema:.3g} from {self.loss_start:.3g} at {where}"
        wait = self.chance_wait()
        self.recent = [*self.recent[1 - wait :], loss] if wait > 1 else [loss]
        typical = statistics.median(self.recent) if self.chance_median else ema
        if step >= wait and typical > self.chance_factor * self.chance_loss:
            what = f"median training loss of the last {wait} steps" if self.chance_median else "training loss"
            return f"{what} {typical:.3g} is worse than a uniform guess ({self.chance_loss:.3g}) at {where}"
        return ""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no GPU is visible; use `device: auto` or `cpu`")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "train.device: mps requested but this machine has no Apple GPU (or torch was built without it);"
            " use `device: auto` or `cpu`"
        )
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` on ``device``, or None for fp32.

    ``auto`` is bf16 on GPUs that have it, fp16 (with a loss scaler) on older GPUs, fp32 elsewhere. fp16 is
    refused on a CPU: CPUs have no fast fp16 matmuls, and bf16 needs no scaler.
    """
    if name == "fp32" or (name == "auto" and device.type != "cuda"):
        return None
    if name == "fp16" and device.type == "cpu":
        raise ConfigError(
            "train.precision: fp16 needs a GPU (a CPU has no fast fp16 and would need a loss scaler);"
            " use `precision: bf16` or `fp32` on cpu"
        )
    # Native bf16 only (compute capability 8.0+, or ROCm): torch.cuda.is_bf16_supported() also says yes on a V100
    # or T4, where bf16 is emulated without tensor cores, far slower than fp16.
    native = device.type == "cuda" and bool(
        torch.version.hip or torch.cuda.get_device_capability(device)[0] >= 8
    )
    if name == "bf16" and device.type == "cuda" and not native:
        raise ConfigError(
            f"train.precision: bf16 is not supported by {torch.cuda.get_device_name()};"
            " use `precision: fp16` or `auto`"
        )
    if name == "bf16" or (name == "auto" and native):
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
        order = [
            i
            for s in range(0, len(order), mega)
            for i in sorted(order[s : s + mega], key=lambda i: -lengths[i])
        ]
    out = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(out)
    return out


LENGTH_GIVES_CLASS = 0.25  # grouped batches this much purer in one class than random ones: the search says so
# (measured: +0.45 on an NLI set where grouped batches trained to 0.38 against 0.27; +0.17 on one where both trained
# alike; Reuters R8 +0.06, SST-2 +0.02)


def length_grouping_note(lengths: list[int], labels: list[int], batch_size: int) -> str | None:
    """A line for the search when batches grouped by length are much more one class than random batches:
    where text length tells the classes apart (an NLI set whose neutral hypotheses run longer), such batches
    train worse, one class at a time. Measured on the training rows with the batching the trials use."""

    def purity(grouped: bool) -> float:
        shares = [
            max(Counter(labels[i] for i in b).values()) / len(b)
            for b in batches(lengths, batch_size, 0, grouped)
            if len(b) > 1
        ]
        return sum(shares) / len(shares) if shares else 0.0

    grouped, shuffled = purity(True), purity(False)
    if grouped - shuffled < LENGTH_GIVES_CLASS:
        return None
    return (
        f"data: text length tells the classes apart: batches of {batch_size} grouped by length hold"
        f" {grouped:.0%} of one class on average, random ones {shuffled:.0%}; such batches can train worse"
        " (one class at a time); set train.group_by_length: false to compare (more padding, slower epochs)"
    )


def collate(
    encoded: dict[str, list], labels: list[int], idx: list[int], pad_id: int
) -> dict[str, torch.Tensor]:
    """Pad to the longest example in this batch (dynamic padding); one tensor per field, built from lists."""
    seqs = [encoded["input_ids"][i] for i in idx]
    width = max(len(s) for s in seqs)
    batch = {
        "input_ids": torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], dtype=torch.long),
        "attention_mask": torch.tensor(
            [[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long
        ),
        "labels": torch.tensor([labels[i] for i in idx], dtype=torch.long),
    }
    if "token_type_ids" in encoded:
        types = [encoded["token_type_ids"][i] for i in idx]
        batch["token_type_ids"] = torch.tensor([t + [0] * (width - len(t)) for t in types], dtype=torch.long)
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

    def __init__(
        self,
        model: nn.Module,
        train_enc: dict[str, list],
        train_labels: list[int],
        val_enc: dict[str, list],
        val_labels: list[int],
        hp: dict[str, Any],
        settings: TrainSection,
        pad_id: int,
        device: torch.device | None = None,
    ):
        self.settings, self.hp, self.pad_id = settings, hp, pad_id
        self.train_enc, self.train_labels = train_enc, train_labels
        self.val_enc, self.val_labels = val_enc, val_labels
        self.device = device or resolve_device(settings.device)
        self.dtype = resolve_precision(settings.precision, self.device)
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere and later: ~8x fp32 speed
            torch.backends.cudnn.allow_tf32 = True
        self.model = model.to(self.device)
        self.batch_size = int(hp["batch_size"])
        self.micro_batch_size = self.batch_size
        self.eval_micro_batch_size = settings.eval_batch_size
        self.lengths = [len(x) for x in train_enc["input_ids"]]
        self.steps_per_epoch = math.ceil(len(train_labels) / self.batch_size)
        total = self.steps_per_epoch * settings.n_epochs
        num_labels = getattr(getattr(model, "config", None), "num_labels", None) or max(train_labels) + 1
        self.rule = DivergenceRule(
            math.log(num_labels) if num_labels > 1 else math.inf, self.steps_per_epoch, self.batch_size
        )
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # biases and LayerNorm
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": float(hp["weight_decay"])},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            # one kernel, not one per tensor
            lr=float(hp["learning_rate"]),
            fused=self.device.type in ("cuda", "cpu"),
        )
        warmup = int(total * float(hp["warmup_ratio"]))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _schedule(hp["lr_scheduler"], warmup, total)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.epoch = 0  # epochs finished
        self.divergence = ""  # the first divergence rule that fired

    @classmethod
    def on(
        cls,
        model: nn.Module,
        data: Any,
        encoded: tuple[dict, dict],
        hp: dict[str, Any],
        settings: TrainSection,
        pad_id: int,
        device: torch.device | None = None,
    ) -> FineTuning:
        """A run of ``model`` on ``data`` (an ``hpsearch.data.TextData``) and its ``(train, validation)`` token ids."""
        train_enc, val_enc = encoded
        return cls(
            model, train_enc, data.train.labels, val_enc, data.validation.labels, hp, settings, pad_id, device
        )

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
            "loss_start": self.rule.loss_start,
            "loss_ema": self.rule.loss_ema,
            "recent_losses": self.rule.recent,
            "divergence": self.divergence,
            "rng": {
                "torch": torch.get_rng_state(),
                "python": random.getstate(),
                # the training GPU's only: a process resuming it may see fewer GPUs (CUDA_VISIBLE_DEVICES)
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # empty when saved without a scaler (bf16, fp32, CPU): resumed on an fp16 GPU, the scaler starts anew
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.micro_batch_size = state["micro_batch_size"]
        self.rule.loss_start = state["loss_start"]
        self.rule.loss_ema = state.get("loss_ema")
        self.rule.recent = list(state.get("recent_losses", []))
        self.divergence = state.get("divergence", "")
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        cuda = state["rng"]["cuda"]
        if isinstance(cuda, list):  # older checkpoints: every visible GPU's state; training ran on the first
            cuda = cuda[0] if cuda else None
        if cuda is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda, self.device)

    # --- the loop --------------------------------------------------------------------------------------------

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cuda":
            # Pinned host memory lets the copy overlap with the previous step's kernels.
            return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        return {k: v.to(self.device) for k, v in batch.items()}

    def _autocast(self):
        return torch.autocast(
            self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        )

    def _forward_backward(self, batch: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        """Forward and backward of one micro-batch, its loss weighted by its share of the batch."""
        with self._autocast():
            loss = self.model(**batch).loss
        self.scaler.scale(loss * scale).backward()
        return loss.detach()

    def _accumulate(self, idx: list[int]) -> torch.Tensor:
        """Gradients of the mean loss over ``idx``, micro-batch by micro-batch; returns that mean loss."""
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for s in range(0, len(idx), self.micro_batch_size):
            part = idx[s : s + self.micro_batch_size]
            batch = self._to_device(collate(self.train_enc, self.train_labels, part, self.pad_id))
            share = len(part) / len(idx)
            total += self._forward_backward(batch, share) * share
        return total

    def _free_after_oom(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _step(self, idx: list[int]) -> torch.Tensor:
        """One optimizer step on one batch, split into micro-batches that fit in memory.

        Out of memory halves the micro-batch and redoes the whole batch; the effective batch size (the statistical
        hyperparameter) never changes. The halving sticks for the rest of the trial.
        """
        while True:
            out_of_memory = False
            try:
                total = self._accumulate(idx)
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
                out_of_memory = True  # handled below, once the traceback (and the tensors it holds) is gone
            if not out_of_memory:
                break
            self._free_after_oom()
            if self.micro_batch_size == 1:
                raise TrialFailure(
                    f"out of memory even with micro-batch 1 (batch size {self.batch_size},"
                    f" device {self.device})"
                )
            self.micro_batch_size = max(1, self.micro_batch_size // 2)
        out_of_memory = False
        try:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), float(self.hp["max_grad_norm"]))
            # AdamW's state (2 x the parameters) is allocated at the first step
            self.scaler.step(self.optimizer)
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            out_of_memory = True
        if out_of_memory:  # smaller micro-batches cannot help: the parameters, gradients and state do not fit
            self._free_after_oom()
            raise TrialFailure(
                f"out of memory in the optimizer step (device {self.device}): the model's parameters, gradients"
                " and AdamW state do not fit; micro-batches cannot help. Use a smaller model, train.precision:"
                " bf16, or a device with more memory"
            )
        scale = self.scaler.get_scale()  # 1.0 without a scaler
        self.scaler.update()
        # A lowered scale: fp16 gradients overflowed and the optimizer step was skipped; so is the schedule's.
        if self.scaler.get_scale() >= scale:
            self.scheduler.step()
        return total

    def evaluate(self) -> tuple[float, float]:
        """(validation loss, validation error) over the whole validation set; halves its batch when out of memory."""
        while True:
            out_of_memory = False
            try:
                return self._evaluate(self.eval_micro_batch_size)
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
                out_of_memory = True
            if out_of_memory:
                self._free_after_oom()
                if self.eval_micro_batch_size == 1:
                    raise TrialFailure(f"out of memory evaluating one example (device {self.device})")
                self.eval_micro_batch_size //= 2

    def _evaluate(self, batch_size: int) -> tuple[float, float]:
        self.model.eval()
        order = sorted(range(len(self.val_labels)), key=lambda i: len(self.val_enc["input_ids"][i]))
        loss_sum = torch.zeros((), device=self.device)
        wrong = torch.zeros((), dtype=torch.long, device=self.device)
        try:
            with torch.inference_mode(), self._autocast():
                for s in range(0, len(order), batch_size):
                    idx = order[s : s + batch_size]
                    batch = self._to_device(collate(self.val_enc, self.val_labels, idx, self.pad_id))
                    out = self.model(**batch)
                    loss_sum += out.loss.float() * len(idx)  # summed on the device: one sync per evaluation
                    wrong += (out.logits.argmax(-1) != batch["labels"]).sum()
        finally:
            self.model.train()
        return float(loss_sum) / len(order), int(wrong) / len(order)

    def early_eval_step(self, share: float | None) -> int:
        """The step of epoch 1 after ``share`` of it (``train.early_eval``), or 0 for none: at least one step
        in, and before the epoch's last step, whose evaluation is the epoch's own."""
        if not share:
            return 0
        step = max(1, round(share * self.steps_per_epoch))
        return step if step < self.steps_per_epoch else 0

    def epochs(self, early_eval: float | None = None) -> Iterator[EpochResult]:
        """Train the remaining epochs, yielding after each one and at once on divergence; with ``early_eval``
        (a share of epoch 1) also after that share of epoch 1, a result with ``early=True``."""
        seed = int(self.hp["seed"])
        stop = getattr(self.settings, "divergence_stop", True)
        early = self.early_eval_step(early_eval) if self.epoch == 0 else 0
        self.model.train()
        while self.epoch < self.settings.n_epochs:
            plan = batches(
                self.lengths, self.batch_size, seed * 1000 + self.epoch, self.settings.group_by_length
            )
            reason, loss_sum, samples, real, padded, train_seconds = "", 0.0, 0, 0, 0, 0.0
            early_seconds = 0.0  # the early evaluation's time, counted in epoch 1's eval_seconds
            for step, idx in enumerate(plan, start=1):
                started = time.perf_counter()
                # a sync point per step (a few µs on a GPU): divergence shows at once
                loss = float(self._step(idx))
                train_seconds += time.perf_counter() - started
                real += sum(self.lengths[i] for i in idx)
                padded += max(self.lengths[i] for i in idx) * len(idx)
                samples += len(idx)
                loss_sum += loss * len(idx)
                at = self.epoch * self.steps_per_epoch + step  # steps since the start of training
                found = self.rule.check(loss, at, f"epoch {self.epoch + 1}, step {at}")
                if found and not self.divergence:
                    self.divergence = found
                if found and stop:
                    reason = found
                    break
                if self.epoch == 0 and step == early:
                    started = time.perf_counter()
                    val_loss, val_error = self.evaluate()
                    early_seconds = time.perf_counter() - started
                    so_far = (train_seconds, samples, real, padded)
                    yield self._result(
                        so_far, loss_sum / samples, val_loss, val_error, early_seconds, early=True
                    )
            if reason:
                so_far = (train_seconds, samples, real, padded)
                yield self._result(
                    so_far, math.nan, math.nan, 1.0, early_seconds, diverged=True, reason=reason
                )
                return
            started = time.perf_counter()
            val_loss, val_error = self.evaluate()
            eval_seconds = time.perf_counter() - started + early_seconds
            so_far = (train_seconds, samples, real, padded)
            end = self._result(so_far, loss_sum / max(1, samples), val_loss, val_error, eval_seconds)
            self.epoch += 1  # before the yield: the caller checkpoints state_dict() there
            yield end

    def _result(self, so_far, train_loss, val_loss, val_error, eval_seconds, **flags) -> EpochResult:
        """A result of the epoch in progress (``self.epoch + 1``); ``so_far`` is its (train seconds, samples,
        real tokens, padded tokens) up to now."""
        train_seconds, samples, real, padded = so_far
        return EpochResult(
            self.epoch + 1,
            train_loss,
            val_loss,
            val_error,
            train_seconds,
            eval_seconds,
            samples,
            real,
            padded,
            self.micro_batch_size,
            divergence=self.divergence,
            **flags,
        )

    def release(self) -> None:
        """Free the model, optimizer state and cached GPU blocks so memory does not grow across trials."""
        if getattr(self, "model", None) is None:
            return
        self.optimizer.zero_grad(set_to_none=True)
        self.model = self.optimizer = self.scheduler = self.scaler = None
        if self.device.type == "cuda":
            # HF modules hold reference cycles: collect them now so their GPU memory is free for the next trial.
            # A full collection costs ~0.3 s with transformers loaded, so a CPU trial leaves it to Python.
            gc.collect()
            torch.cuda.empty_cache()
