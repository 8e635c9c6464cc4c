"""The Optuna objective: the only module that touches both a Trial and the training loop.

Per epoch, in this order (optuna-examples' pytorch_checkpoint): report the validation error at ``step=epoch``,
save the checkpoint and record its path on the trial, then ask ``should_prune``. A retried trial (its worker
died or was stopped) inherits the path and its learning curve, and resumes after the last saved epoch; so
does the trial that continues one paused at a rung (``study.pause_at_rungs``).
With ``train.early_eval``, the validation error part-way through epoch 1 is reported at step 0 and the pruner
asked there too (no checkpoint: a trial stopped before epoch 1 ends starts again); the trial's value is the
best epoch end.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

import optuna

from hpsearch.config import HYPERPARAMETERS, Config
from hpsearch.data import TextData
from hpsearch.models import ModelFactory
from hpsearch.pruners import (
    CONTINUES_ATTR,
    EARLY_EVAL_ATTR,
    EARLY_STEP,
    PAUSED_ATTR,
    TRAIN_LOSS_ATTR,
    resumed_trial,
)
from hpsearch.space import SearchSpace, suggest
from hpsearch.study import CHECKPOINT_KEY_ATTR, PARTIAL_EPOCH_ATTR

CHECKPOINT_ATTR = "checkpoint_path"
TUNABLE = tuple(HYPERPARAMETERS)  # the train keys a search space may set


class Interrupted(Exception):
    """A stop was requested (SIGINT/SIGTERM); the trial's last epoch is checkpointed and it must be re-queued."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def hyperparameters(cfg: Config, trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """The train section's values, overridden by the fixed and searched values of the search space."""
    values = {name: getattr(cfg.train, name) for name in TUNABLE}
    values.update(suggest(trial, space))
    return values


def checkpoint_path(cfg: Config, trial_number: int, key: str | None = None) -> Path:
    """``train.checkpoint_dir/STUDY/KEY/trial-N.pt``, KEY the study's own (``CHECKPOINT_KEY_ATTR``, given by
    :func:`hpsearch.study.open_study`); without one, ``STUDY/trial-N.pt``."""
    folder = Path(cfg.train.checkpoint_dir).resolve() / cfg.study.name
    return (folder / key if key else folder) / f"trial-{trial_number}.pt"


class CheckpointNotWritten(Exception):
    """The checkpoint could not be written (disk full, folder gone or read-only); the previous one is intact."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file first: a worker killed mid-write leaves the previous checkpoint intact, and
    a write that fails (a full disk) removes its partial file and raises :class:`CheckpointNotWritten`."""
    import shutil

    import torch

    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as a RuntimeError from its zip writer
        tmp.unlink(missing_ok=True)
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        why = (
            f"the disk is full ({free / 2**20:.1f} MiB free)"
            if free is not None and free < 2**30
            else str(exc).strip().splitlines()[0][:200]
        )
        raise CheckpointNotWritten(f"checkpoint {path} not written: {why}") from None


def load_checkpoint(path: str) -> dict[str, Any] | None:
    import torch

    if not path or not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


class Objective:
    """Callable objective for one worker: data, tokenization and pretrained weights are shared by its trials."""

    def __init__(
        self,
        cfg: Config,
        space: SearchSpace,
        data: TextData,
        factory: ModelFactory,
        encoded: tuple[dict, dict],
        reporter: Any = None,
        stop: threading.Event | None = None,
    ):
        self.cfg, self.space, self.data, self.factory = cfg, space, data, factory
        self.encoded = encoded  # (train, validation) token ids
        self.reporter = reporter
        self.stop = stop or threading.Event()

    def __call__(self, trial: optuna.Trial) -> float:
        from hpsearch.train import FineTuning, resolve_device

        cfg = self.cfg
        hp = hyperparameters(cfg, trial, self.space)
        device = resolve_device(cfg.train.device)
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        curve = dict(frozen.intermediate_values)  # inherited when this trial retries a dead one
        trial.set_user_attr("worker", worker_name())
        trial.set_user_attr("device", str(device) if device.type != "cuda" else _gpu_name())
        # the model goes straight into the run: no local reference keeps its weights alive past run.release()
        run = FineTuning.on(
            self.factory.build(int(hp["seed"]), float(hp["dropout"])),
            self.data,
            self.encoded,
            hp,
            cfg.train,
            self.factory.tokenizer.pad_token_id,
            device,
        )
        expected = frozen.user_attrs.get(CHECKPOINT_ATTR, "")  # set when this trial retries or continues one
        resumed = load_checkpoint(expected)
        if resumed is None and expected and self.reporter:
            self.reporter.line(
                f"trial {trial.number}: checkpoint {expected} is gone or on another machine's disk, so it trains"
                " from epoch 1; put train.checkpoint_dir on a filesystem every worker sees"
            )
        if resumed is not None:
            run.load_state_dict(resumed)
            trial.set_user_attr("resumed_from_epoch", run.epoch)
            retry_of, paused = resumed_trial(frozen), frozen.system_attrs.get(CONTINUES_ATTR)
            if retry_of is None and paused is not None:
                from hpsearch.dashboard import write_trial_note  # the paused trial's note names its successor

                before = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == paused)
                write_trial_note(trial.study, before, continued_as=trial.number)
                if self.reporter:
                    self.reporter.continued(trial.number, run.epoch, paused)
            elif self.reporter:
                self.reporter.resumed(trial.number, run.epoch, retry_of)
        val_losses = list(frozen.user_attrs.get("val_losses", []))
        train_seconds = float(frozen.user_attrs.get("train_seconds", 0.0))
        path = checkpoint_path(cfg, trial.number, trial.study.user_attrs.get(CHECKPOINT_KEY_ATTR))
        try:
            for result in run.epochs(cfg.train.early_eval):
                if result.early:
                    self._early(trial, hp, result, curve, train_seconds)
                    continue
                train_seconds += result.train_seconds + result.eval_seconds
                if result.diverged:
                    trial.set_user_attr("prune_reason", f"diverged: {result.reason}")
                    trial.set_user_attr("train_seconds", round(train_seconds, 3))
                    trial.set_user_attr("epochs_run", result.epoch - 1)
                    # the part of an epoch the stop cut short, for study.epoch_budget
                    trial.set_user_attr(PARTIAL_EPOCH_ATTR, round(result.samples / len(self.data.train), 4))
                    if self.reporter:
                        self.reporter.diverged(trial.number, hp, result)
                    raise optuna.TrialPruned(f"diverged: {result.reason}")
                if result.epoch not in curve:
                    trial.report(result.val_error, result.epoch)
                curve[result.epoch] = result.val_error
                val_losses.append(round(result.val_loss, 5))
                not_written = ""
                try:
                    save_checkpoint(
                        path,
                        {
                            **run.state_dict(),
                            "config": cfg.to_dict(),
                            "hyperparameters": hp,
                            "trial": trial.number,
                            "label_names": self.data.label_names,
                        },
                    )
                except CheckpointNotWritten as exc:
                    # The trial's measurements do not need the checkpoint: train on, and say what a crash now
                    # would cost (a retry resumes from the last checkpoint that was written, or from scratch).
                    not_written = (
                        f"trial {trial.number}: {exc}; training goes on, a retry would redo epoch"
                        f" {result.epoch} (free space under train.checkpoint_dir)"
                    )
                best_epoch = min(_epoch_ends(curve), key=lambda e: (curve[e], e))
                self._record(trial, path, result, curve, best_epoch, val_losses, train_seconds)
                if self.reporter:
                    self.reporter.epoch(trial.number, hp, result, cfg.train.n_epochs)
                    if not_written:
                        self.reporter.line(not_written)
                if result.epoch == cfg.train.n_epochs:
                    break  # every epoch trained: complete, whatever the pruner or a stop request say
                # The pruner's decision first: a stop request after a rung epoch must not cost the retry an
                # epoch the pruner would have saved.
                if trial.should_prune():
                    self._stop_at_rung(trial, result)
                if self.stop.is_set():
                    raise Interrupted(f"stopped after epoch {result.epoch}")
            return min(curve[e] for e in _epoch_ends(curve))
        finally:
            run.release()

    def _stop_at_rung(self, trial: optuna.Trial, result) -> None:
        """The pruner said no after this epoch: prune the trial, or with study.pause_at_rungs pause it (its
        checkpoint is kept; the search continues it if it later ranks among the best at this rung)."""
        pruner = trial.study.pruner
        figures = f"val_error {result.val_error:.4f}, train loss {result.train_loss:.4f}"
        if getattr(pruner, "pauses", False):
            trial.set_user_attr(PAUSED_ATTR, result.epoch)
            reason = (
                f"paused by {self.cfg.study.pruner} after epoch {result.epoch}: {figures} not (yet) in the"
                f" best 1/{pruner.reduction_factor} of the trials at this rung; continued from its checkpoint"
                " if it gets there"
            )
        else:
            reason = f"pruned by {self.cfg.study.pruner} after epoch {result.epoch}: {figures}"
        trial.set_user_attr("prune_reason", reason)
        raise optuna.TrialPruned(f"val_error {result.val_error:.4f} at epoch {result.epoch}")

    def _early(self, trial, hp, result, curve, train_seconds: float) -> None:
        """Report the early evaluation at step 0 and let the pruner stop the trial there."""
        share = round(result.samples / len(self.data.train), 4)
        if EARLY_STEP not in curve:
            trial.report(result.val_error, EARLY_STEP)
        curve[EARLY_STEP] = result.val_error
        trial.set_user_attr(EARLY_EVAL_ATTR, share)
        trial.set_user_attr(TRAIN_LOSS_ATTR, round(result.train_loss, 5))
        if self.reporter:
            self.reporter.early(trial.number, hp, result, share)
        if trial.should_prune():
            trial.set_user_attr(
                "prune_reason",
                f"pruned by {self.cfg.study.pruner} at the early evaluation ({share:g} of epoch 1):"
                f" val_error {result.val_error:.4f}, train loss {result.train_loss:.4f}",
            )
            trial.set_user_attr("epochs_run", 0)
            trial.set_user_attr(PARTIAL_EPOCH_ATTR, share)  # for study.epoch_budget
            trial.set_user_attr(
                "train_seconds", round(train_seconds + result.train_seconds + result.eval_seconds, 3)
            )
            raise optuna.TrialPruned(f"val_error {result.val_error:.4f} at {share:g} of epoch 1")

    @staticmethod
    def _record(trial, path, result, curve, best_epoch, val_losses, train_seconds) -> None:
        attrs = {
            CHECKPOINT_ATTR: str(path),
            "best_epoch": best_epoch,
            "epochs_run": result.epoch,
            "val_losses": val_losses,
            TRAIN_LOSS_ATTR: round(result.train_loss, 5),  # the pruner breaks ties in val_error with it
            "train_seconds": round(train_seconds, 3),
            "samples_per_second": round(result.samples_per_second, 1),
            "padding_efficiency": round(result.real_tokens / max(1, result.padded_tokens), 4),
            "micro_batch_size": result.micro_batch_size,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if (
            result.divergence
        ):  # a rule fired but train.divergence_stop is off: how often would it have been wrong?
            trial.set_user_attr("divergence_observed", result.divergence)


def _epoch_ends(curve: dict[int, float]) -> list[int]:
    """The steps of a learning curve that are epoch ends: all but the early evaluation's."""
    return [e for e in curve if e != EARLY_STEP]


def _gpu_name() -> str:
    import torch

    return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
