"""Turn a study's best trial into a model: retrain its configuration with several seeds, or export its
checkpoint.

Retraining follows the trial's recipe exactly: the same data and tokenizer, the trial's hyperparameters, the
learning-rate schedule laid out over the study's ``n_epochs``, trained to its end (``epochs="all"``, the default)
or stopped after the trial's best epoch (``epochs="best"``). The first seed is the trial's own, so that run
reproduces what the trial measured after as many epochs; the others show the spread a new seed brings. The
model of the best configuration's best seed is saved with ``save_pretrained``.

Why every epoch by default: a trial's best epoch is picked from one noisy curve, so it is often early (the
learning rate still high) and the error there is the luckiest of several draws. Retraining the configurations
that searches handed over (bench/results, 2 data sets, 4 arms, 3-4 seeds) for every epoch instead of the best
one lowered 6 of 7 arm-task medians (by up to 2.3 points; the seventh rose 1.0).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import Config, config_from_dict
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.objective import CHECKPOINT_ATTR, TUNABLE
from hpsearch.pruners import CONTINUES_ATTR, OVER_BUDGET_ATTR
from hpsearch.results import epoch_curve, retrain_candidates
from hpsearch.space import parse_space
from hpsearch.study import CONFIG_ATTR, DATA_ATTR, best_trial

# An exported checkpoint must measure what its trial reported; further apart than this, it is not that model.
MISMATCH = 0.01
# How long a retraining run trains: the study's n_epochs (the whole schedule), or the trial's best epoch.
EPOCHS = ("all", "best")


@dataclass
class SeedRun:
    seed: int
    val_error: float
    val_loss: float
    epochs: int
    train_seconds: float
    diverged: str = ""


@dataclass
class Candidate:
    """One configuration (a trial's) retrained with several seeds."""

    trial: int
    trial_val_error: float  # the trial's value, its error at its best epoch (a pruned trial: its lowest)
    n_epochs: int  # epochs trained (see retrain_epochs)
    hyperparameters: dict[str, Any]
    runs: list[SeedRun] = field(default_factory=list)
    # what the trial measured after n_epochs: what the first seed (the trial's own) reproduces
    trial_val_error_at_n_epochs: float | None = None
    pruned_after_epoch: int | None = None  # a pruned trial filling --top-k: the last epoch it trained

    @property
    def errors(self) -> list[float]:
        return [r.val_error for r in self.runs]

    def stats(self) -> dict[str, float]:
        e = self.errors
        return {
            "mean": statistics.fmean(e),
            "std": statistics.stdev(e) if len(e) > 1 else 0.0,
            "min": min(e),
            "max": max(e),
        }


def study_config(study: optuna.Study) -> Config:
    """The config stored on the study by `hpsearch search` (the same data, model and training settings)."""
    stored = study.user_attrs.get(CONFIG_ATTR)
    if not stored:
        raise ConfigError(
            f"study '{study.study_name}' was not made by `hpsearch search` (no {CONFIG_ATTR} user "
            "attribute); there is no recipe to retrain"
        )
    return config_from_dict(stored, source=f"study '{study.study_name}'")


def top_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The k best complete trials; where fewer than k are complete, the best pruned ones fill the list
    (``hpsearch.results.retrain_candidates``)."""
    ranked = retrain_candidates(study)  # complete trials first
    if not ranked or ranked[0].state != TrialState.COMPLETE:
        raise ConfigError(
            f"study '{study.study_name}' has no complete trial yet; run or resume the search first"
        )
    return ranked[:k]


def chosen_trials(study: optuna.Study, numbers: list[int]) -> list[FrozenTrial]:
    """The trials ``--trial`` names, in that order: complete ones, or pruned ones with an epoch to rank them
    by (what ``--top-k`` may pick). Any other is refused with what became of it and the number to give."""
    trials = study.get_trials(deepcopy=False)
    allowed = {t.number: t for t in retrain_candidates(study)}
    out = []
    for n in dict.fromkeys(numbers):
        if n in allowed:
            out.append(allowed[n])
            continue
        t = next((t for t in trials if t.number == n and OVER_BUDGET_ATTR not in t.user_attrs), None)
        after = [u.number for u in trials if n in (u.system_attrs.get("retry_history") or ())]
        after += [u.number for u in trials if u.system_attrs.get(CONTINUES_ATTR) == n]
        if t is None:
            why = f"study '{study.study_name}' has no trial {n}; `hpsearch show` lists them"
        elif after:
            why = f"trial {after[-1]} took it over (its retry or continuation): give --trial {after[-1]}"
        elif t.state in (TrialState.RUNNING, TrialState.WAITING):
            why = f"it is still {t.state.name.lower()}; wait for it to finish"
        elif t.state == TrialState.FAIL:
            why = f"it failed ({t.user_attrs.get('fail_reason', 'no reason recorded')}); nothing to retrain"
        else:  # pruned before its first epoch ended: diverged, or stopped early
            why = f"it was stopped in its first epoch ({t.user_attrs.get('prune_reason', 'pruned')})"
        raise ConfigError(f"--trial {n}: {why}")
    return out


def trial_hyperparameters(cfg: Config, trial: FrozenTrial) -> dict[str, Any]:
    """What the trial trained with: train defaults, then the space's fixed values, then its params."""
    values = {name: getattr(cfg.train, name) for name in TUNABLE}
    values.update(parse_space(cfg.search_space, cfg.source).fixed)
    values.update(trial.params)
    return values


def retrain_epochs(cfg: Config, trial: FrozenTrial, epochs: str) -> int:
    """Epochs to retrain ``trial`` for: the study's ``n_epochs`` ("all") or the trial's best epoch ("best")."""
    if epochs == "best":
        return int(trial.user_attrs.get("best_epoch") or cfg.train.n_epochs)
    return cfg.train.n_epochs


def _check_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(
            f"-o {output}: exists and is not an empty folder; pick a new folder (nothing is overwritten)"
        )


@contextlib.contextmanager
def _staged(output: Path):
    """A hidden folder beside ``output`` that the model is written into, renamed to ``output`` only once every
    file is there: Ctrl-C, a full disk or a crash while training or saving leaves no folder that looks like a
    finished model (or that a rerun's ``-o`` would refuse). Made before any training, so that an ``-o`` that
    cannot be written is refused before the work, not after it."""
    output = output.resolve()
    staging = output.parent / f".{output.name}.partial-{secrets.token_hex(4)}"
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as exc:
        raise ConfigError(
            f"-o {output}: cannot write there ({exc.strerror or exc}); give a folder you can write"
        ) from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone once renamed; else the partial files go


def _publish(staging: Path, output: Path) -> None:
    """Rename the complete ``staging`` folder to ``output`` (a missing or empty folder, as ``_check_output``
    found it)."""
    output = output.resolve()
    umask = os.umask(0)
    os.umask(umask)
    try:
        for file in staging.iterdir():  # safetensors writes the weights 0600: colleagues could not read them
            file.chmod(0o666 & ~umask)
        if output.is_dir() and not any(output.iterdir()):
            output.rmdir()
        os.rename(staging, output)
    except OSError as exc:
        raise HpsearchError(
            f"-o {output}: could not put the model there ({exc.strerror or exc}); nothing was saved"
        ) from None


def check_device(device_name: str | None, study_device: str = "auto") -> Any:
    """The device to retrain or export on: ``--device``, else the study's ``train.device``. One the machine lacks
    is refused with the flag that fixes it (a study searched on GPUs is often exported on a laptop)."""
    from hpsearch.train import resolve_device

    try:
        return resolve_device(device_name or study_device)
    except ConfigError as exc:
        given = f"--device {device_name}" if device_name else "by the study, whose search ran on it"
        why = str(exc).split(";")[0].replace(" requested", f" requested ({given})", 1)
        raise ConfigError(f"{why}; give --device cpu (or --device auto) to run here") from None


def _on_device(cfg: Config, device_name: str | None, log: TextIO) -> tuple[Config, Any]:
    """The study's config and the device to train on; a study that trained in fp16 on GPUs, retrained or exported
    on a CPU (``--device cpu``, which has no fp16), runs in fp32 there, and says so."""
    import dataclasses

    device = check_device(device_name, cfg.train.device)
    if cfg.train.precision == "fp16" and device.type == "cpu":
        log.write("train.precision: the study trained in fp16, which a CPU does not have; fp32 here\n")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="fp32"))
    return cfg, device


def _prepare(cfg: Config):
    from hpsearch.data import load_data, tokenize
    from hpsearch.models import get_factory

    data = load_data(cfg.data, seed=cfg.study.seed or 0)  # the same split and subsample as the search
    factory = get_factory(cfg.model, data.label_names, data.train.vocabulary_texts(), cfg.data)
    encoded = tokenize(data, factory.tokenizer, cfg.model.max_length, (cfg.data, factory.key))
    return data, factory, encoded


def _fine_tuning(cfg, data, factory, encoded, hp, device, model=None):
    from hpsearch.train import FineTuning

    model = model if model is not None else factory.build(int(hp["seed"]), float(hp["dropout"]))
    return FineTuning.on(model, data, encoded, hp, cfg.train, factory.tokenizer.pad_token_id, device)


def _train_one(cfg, data, factory, encoded, hp, n_epochs, device) -> tuple[SeedRun, dict | None]:
    """Train one seed for ``n_epochs``; returns its result and the model weights (on the CPU)."""
    run = _fine_tuning(cfg, data, factory, encoded, hp, device)
    seconds, last = 0.0, None
    try:
        for result in run.epochs():
            seconds += result.train_seconds + result.eval_seconds
            if result.diverged:
                return SeedRun(int(hp["seed"]), 1.0, math.nan, result.epoch - 1, seconds, result.reason), None
            last = result
            if result.epoch >= n_epochs:
                break
        weights = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
        return SeedRun(int(hp["seed"]), last.val_error, last.val_loss, last.epoch, round(seconds, 3)), weights
    finally:
        run.release()


def _data_changed(study: optuna.Study, data) -> str:
    """A warning where the data here is not the data the study's trials measured ("" where it is, or the study
    predates the stored sizes): a changed or moved file, read from another folder (relative paths)."""
    stored = study.user_attrs.get(DATA_ATTR) or {}
    here = {"n_train": len(data.train), "n_validation": len(data.validation), "n_classes": data.num_labels}
    if not stored or all(stored.get(k) == v for k, v in here.items()):
        return ""
    said = ", ".join(f"{k} {stored.get(k)}" for k in here)
    found = ", ".join(f"{k} {v}" for k, v in here.items())
    return (
        f"the study's trials were measured on {said}, the data here has {found}: the data files changed since"
        " the search (relative paths are read from the current folder)"
    )


def _save(
    output: Path, factory, weights: dict, cfg: Config, meta: dict[str, Any], results: dict[str, Any]
) -> None:
    """Write the model, its tokenizer, hyperparameters.yaml and results.json into ``output`` (a staging folder)."""
    try:
        _write(output, factory, weights, cfg, meta, results)
    except Exception as exc:  # a full disk, a quota (safetensors has its own error); _staged removes the rest
        raise HpsearchError(f"could not write the model ({_first_line(exc)}); nothing was saved") from exc


def _write(
    output: Path, factory, weights: dict, cfg: Config, meta: dict[str, Any], results: dict[str, Any]
) -> None:
    model = factory.build(int(meta["seed"]), float(meta["hyperparameters"]["dropout"]))
    model.load_state_dict(weights)
    output.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Writing model shards" bar would bury the results on stderr
    model.save_pretrained(output)
    # The study's max_length goes with the tokenizer: `tokenizer(texts, truncation=True)` then cuts where the
    # trials did (a hub tokenizer would say 512, the built-in one nothing).
    tokenizer, before = factory.tokenizer, factory.tokenizer.model_max_length
    tokenizer.model_max_length = cfg.model.max_length
    try:
        tokenizer.save_pretrained(output)
    finally:
        tokenizer.model_max_length = before
    (output / "hyperparameters.yaml").write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def _meta(
    study, cfg, cand: Candidate, seed: int, val_error: float, extra: dict | None = None
) -> dict[str, Any]:
    return {
        "study": study.study_name,
        "trial": cand.trial,
        "model": cfg.model.name,
        "max_length": cfg.model.max_length,
        "seed": seed,
        "n_epochs": cand.n_epochs,
        "schedule_epochs": cfg.train.n_epochs,
        "val_error": val_error,
        "hyperparameters": {**cand.hyperparameters, "seed": seed},
        **(extra or {}),
        "data": cfg.to_dict()["data"],
    }


def train_best(
    study: optuna.Study,
    output: str | Path,
    n_seeds: int = 3,
    top_k: int = 1,
    device: str | None = None,
    log: TextIO | None = None,
    epochs: str = "all",
    numbers: list[int] | None = None,
) -> dict[str, Any]:
    """Retrain the top-k trials' configurations (``numbers``: those trials instead) with ``n_seeds`` seeds
    each; save the best in ``output``.

    Each run trains for ``retrain_epochs(cfg, trial, epochs)`` and is scored after its last epoch (no pick
    among epochs). The chosen configuration is the one with the lowest mean validation error over its seeds
    (the trial's own seed included: leaving it out, as selected for luck, measured no better; BENCHMARKS.md,
    "Retraining the top k"); the saved model is its seed with the lowest validation error. Returns what
    ``results.json`` holds.
    """
    log = log or sys.stderr
    if n_seeds < 1 or top_k < 1:
        raise ConfigError(f"--seeds and --top-k must be >= 1, got --seeds {n_seeds} --top-k {top_k}")
    if epochs not in EPOCHS:
        raise ConfigError(f"--epochs {epochs!r}: expected one of {', '.join(EPOCHS)}")
    output = Path(output)
    _check_output(output)
    cfg = study_config(study)
    trials = chosen_trials(study, numbers) if numbers else top_trials(study, top_k)
    cfg, device_ = _on_device(cfg, device, log)
    with _staged(output) as staging:
        if not numbers:
            _say_which(trials, top_k, log)
        results = _retrain(study, cfg, trials, n_seeds, device_, log, epochs, output, staging)
        _publish(staging, output)
    return results


def _retrain(study, cfg, trials, n_seeds, device_, log, epochs, output, staging) -> dict[str, Any]:
    data, factory, encoded = _prepare(cfg)
    warning = _data_changed(study, data)
    if warning:
        warning += ", so these runs do not repeat its trials"
        log.write(f"warning: {warning}\n")
    candidates, kept = [], {}  # kept: trial -> (seed, val_error, weights) of its best seed, in CPU memory
    for t in trials:
        hp = trial_hyperparameters(cfg, t)
        n_epochs = retrain_epochs(cfg, t, epochs)
        pruned = t.state == TrialState.PRUNED
        curve = epoch_curve(t)
        cand = Candidate(
            t.number,
            float(min(curve.values()) if pruned else t.value),
            n_epochs,
            {k: v for k, v in hp.items() if k != "seed"},
            trial_val_error_at_n_epochs=curve.get(n_epochs),
            pruned_after_epoch=max(curve) if pruned else None,
        )
        for i in range(n_seeds):
            seed = int(hp["seed"]) + i  # the first is the trial's own seed: that run reproduces the trial
            run, weights = _train_one(cfg, data, factory, encoded, {**hp, "seed": seed}, n_epochs, device_)
            cand.runs.append(run)
            log.write(
                f"trial {t.number} seed {seed}: val_error {run.val_error:.4f} after {run.epochs} epochs"
                f" ({run.train_seconds:.1f} s)"
                + (f"; diverged: {run.diverged}" if run.diverged else "")
                + (f"; {_reported(cand)}" if i == 0 else "")
                + "\n"
            )
            log.flush()
            if weights is not None and (t.number not in kept or run.val_error < kept[t.number][1]):
                kept[t.number] = (seed, run.val_error, weights)
        candidates.append(cand)
        log.write(_describe(cand) + "\n")
    usable = [c for c in candidates if c.trial in kept]
    if not usable:
        raise HpsearchError("every retraining run diverged; nothing to save (see the lines above)")
    rank = {c.trial: i for i, c in enumerate(candidates)}  # equal means: the better-ranked trial
    chosen = min(usable, key=lambda c: (c.stats()["mean"], rank[c.trial]))
    seed, val_error, weights = kept[chosen.trial]
    results = {
        "study": study.study_name,
        "chosen_trial": chosen.trial,
        "saved_seed": seed,
        "saved_val_error": val_error,
        "output": str(output),
        "epochs": epochs,
        "warning": warning,
        "candidates": [
            {
                "trial": c.trial,
                "trial_val_error": c.trial_val_error,
                "trial_val_error_at_n_epochs": c.trial_val_error_at_n_epochs,
                "pruned_after_epoch": c.pruned_after_epoch,
                "n_epochs": c.n_epochs,
                "hyperparameters": c.hyperparameters,
                "val_error": c.stats(),
                "runs": [asdict(r) for r in c.runs],
            }
            for c in candidates
        ],
        "config": cfg.to_dict(),
    }
    _save(
        staging,
        factory,
        weights,
        cfg,
        _meta(study, cfg, chosen, seed, val_error, {"val_error_over_seeds": chosen.stats()}),
        results,
    )
    return results


def export_checkpoint(
    study: optuna.Study, output: str | Path, device: str | None = None, log: TextIO | None = None
) -> dict[str, Any]:
    """Save the best trial's kept checkpoint as a model, without retraining; its validation error is measured.

    The checkpoint holds the trial's last epoch, which is its best epoch only when the curve did not turn up.
    """
    from hpsearch.objective import load_checkpoint

    log = log or sys.stderr
    output = Path(output)
    _check_output(output)
    cfg = study_config(study)
    best = best_trial(study)
    if best is None:
        raise ConfigError(
            f"study '{study.study_name}' has no complete trial yet; run or resume the search first"
        )
    path = best.user_attrs.get(CHECKPOINT_ATTR, "")
    try:
        state = load_checkpoint(path)
        if state is not None and not (isinstance(state, dict) and {"model", "epoch"} <= state.keys()):
            raise ValueError("it holds no model weights and epoch")
    except Exception as exc:  # truncated (a crash or a full disk during the search), or not a checkpoint
        raise ConfigError(
            f"the checkpoint of best trial {best.number} ({path}) cannot be read ({_first_line(exc)}); retrain"
            " instead (drop --from-checkpoint)"
        ) from None
    if state is None:
        raise ConfigError(
            f"the checkpoint of best trial {best.number} ({path or 'none recorded'}) is gone; retrain"
            " instead (drop --from-checkpoint)"
        )
    hp = trial_hyperparameters(cfg, best)
    cfg, device_ = _on_device(cfg, device, log)
    with _staged(output) as staging:
        results = _export(study, cfg, best, path, state, hp, device_, log, output, staging)
        _publish(staging, output)
    return results


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0][:200] if text else type(exc).__name__


def _mismatch(exc: BaseException) -> str:
    """The first mismatch of a ``load_state_dict`` error, whose first line only names the model class."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return lines[1][:300].rstrip(".")
    return _first_line(exc)


def _export(study, cfg, best, path, state, hp, device_, log, output, staging) -> dict[str, Any]:
    data, factory, encoded = _prepare(cfg)
    model = factory.build(int(hp["seed"]), float(hp["dropout"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:  # another vocabulary or label count: the tiny model's is built from the data
        changed = _data_changed(study, data)
        raise ConfigError(
            f"the checkpoint of best trial {best.number} ({path}) does not fit the model built from the data"
            f" here ({_mismatch(exc)}"
            + (f"; {changed}" if changed else "; the data or model files changed since the search")
            + "); restore them, or retrain (drop --from-checkpoint)"
        ) from None
    run = _fine_tuning(cfg, data, factory, encoded, hp, device_, model)
    try:
        val_loss, val_error = run.evaluate()
        weights = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
    finally:
        run.release()
    epoch = int(state["epoch"])
    reported = best.intermediate_values.get(epoch)
    log.write(
        f"trial {best.number}: checkpoint of epoch {epoch} (best epoch {best.user_attrs.get('best_epoch')}),"
        f" val_error {val_error:.4f}"
        + (f"; the trial reported {reported:.4f}" if reported is not None else "")
        + "\n"
    )
    warning = ""
    if reported is not None and abs(val_error - reported) > MISMATCH:
        # Same weights, same data: a different tokenizer or data (a changed file, another library version) is
        # the likely cause, and the exported model would not be the one the study measured.
        warning = (
            f"the exported model measures val_error {val_error:.4f} where trial {best.number} reported"
            f" {reported:.4f} at epoch {epoch}: the tokenizer or data here differ from the search's"
            f" (model {cfg.model.name!r}); check the data files, or retrain (drop --from-checkpoint)"
        )
        log.write(f"warning: {warning}\n")
    trained = max((e for e in best.intermediate_values if e > 0), default=epoch)
    if epoch < trained:  # a later checkpoint could not be written (a full disk during the search)
        warning = (
            f"the checkpoint holds epoch {epoch} of the {trained} trial {best.number} trained (later ones could"
            f" not be written), so the model is not the one that reported {best.value:.4f};"
            " retrain instead (drop --from-checkpoint)"
        )
        log.write(f"warning: {warning}\n")
    cand = Candidate(
        best.number,
        float(best.value),
        epoch,
        {k: v for k, v in hp.items() if k != "seed"},
        [SeedRun(int(hp["seed"]), val_error, val_loss, epoch, 0.0)],
    )
    results = {
        "study": study.study_name,
        "chosen_trial": best.number,
        "saved_seed": int(hp["seed"]),
        "saved_val_error": val_error,
        "output": str(output),
        "from_checkpoint": path,
        "epoch": epoch,
        "trial_val_error_at_epoch": reported,
        "warning": warning,
        "config": cfg.to_dict(),
    }
    _save(
        staging,
        factory,
        weights,
        cfg,
        _meta(study, cfg, cand, int(hp["seed"]), val_error, {"from_checkpoint": path}),
        results,
    )
    return results


def _say_which(trials: list[FrozenTrial], top_k: int, log: TextIO) -> None:
    """One stderr line on which trials --top-k retrains, where they are not simply the k best complete."""
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if pruned:
        n = len(trials) - len(pruned)
        named = ", ".join(f"trial {t.number} (pruned after epoch {max(epoch_curve(t))})" for t in pruned)
        log.write(
            f"--top-k {top_k}: the study has {n} complete trial{'s' * (n != 1)}; also retraining the best"
            f" pruned, deepest rung first: {named}\n"
        )
    elif len(trials) < top_k:
        log.write(f"--top-k {top_k}: the study has {len(trials)} trial(s) to rank; retraining those\n")


def _reported(c: Candidate) -> str:
    """What the trial measured, to hold a retrained run against: after as many epochs, and at its best."""
    if c.pruned_after_epoch is not None:
        return f"the trial was pruned after epoch {c.pruned_after_epoch}, its lowest {c.trial_val_error:.4f}"
    at = c.trial_val_error_at_n_epochs
    if at is None or at == c.trial_val_error:
        return f"the trial reported {c.trial_val_error:.4f}"
    return (
        f"the trial reported {at:.4f} after {c.n_epochs} epochs ({c.trial_val_error:.4f} at its best epoch)"
    )


def _describe(c: Candidate) -> str:
    s = c.stats()
    return (
        f"trial {c.trial}: val_error mean {s['mean']:.4f}, std {s['std']:.4f}, min {s['min']:.4f},"
        f" max {s['max']:.4f} over {len(c.runs)} seeds ({c.n_epochs} epochs; {_reported(c)})"
    )
