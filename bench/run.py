"""Run every benchmark arm on one study config and write the figures to ``bench/results/NAME.json``.

Arms, all on the same data, model, search space, trial budget, epochs and seeds:

  A  random search, no pruning, no divergence stop        (hpsearch.search.run_search, sampler=random)
  B  TPE, no pruning, no divergence stop                   (run_search, sampler=tpe)
  C  hpsearch's default: TPE + successive halving (ASHA) + divergence stop (run_search)
  D  transformers' Trainer.hyperparameter_search(backend="optuna"), its default pruner (MedianPruner at every
     evaluation) and TPE, seeded like the others
  E  C given A's compute instead of its trial budget: as many trials as A's epochs buy (study.epoch_budget),
     the question a user who pays for GPU-hours asks
  F  C with an early evaluation part-way through epoch 1 (train.early_eval, 0.25 unless the config sets one);
     not in the default arms: it pays off on large training sets only (BENCHMARKS.md, "Early evaluation")
  P  C run by --workers worker processes sharing its study (2 unless given), as `hpsearch search --workers`
     runs it: does the default keep its savings when several GPUs work on one study? Not in the default arms;
     give --jobs 1, for its workers take the cores

Each arm runs once per study seed, arms interleaved seed by seed so a busy machine slows them alike. Then the
throughput of hpsearch's loop and the Trainer's on the same model, data and batch size.

Example:
    python -m bench.run            # the default config, 5 arms x 3 seeds (~40 min on 2 shared cores)
    python -m bench.run --quick    # a few-minute smoke run
    python -m bench.run --config studies/my.yaml --seeds 0,1,2,3
    python -m bench.run --model all-minilm-l6-v2 --arms C,D --seeds 0 --n-trials 1 --n-epochs 1 \
        --max-train-samples 200 --out /tmp/minilm.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "sst2.yaml"
RESULTS = Path(__file__).resolve().parent / "results"
F_EARLY_EVAL = 0.25  # arm F's share of epoch 1 for train.early_eval
ARMS = {
    "A": "random search, no pruning",
    "B": "TPE, no pruning",
    "C": "hpsearch default: TPE + successive halving (ASHA, trials paused at rungs) + divergence stop",
    "D": "Trainer.hyperparameter_search (optuna, default pruner)",
    "E": "hpsearch default with A's compute: no trial limit, study.epoch_budget = A's epochs",
    "F": f"hpsearch default + an early evaluation (train.early_eval, {F_EARLY_EVAL} unless the config sets one)",
    "G": "hpsearch default with study.pause_at_rungs true (trials paused at rungs; = C since 2026-12-07)",
    "I": "hpsearch default, rungs deciding at once (study.pause_at_rungs false: the default until 2026-12-07)",
    "P": "hpsearch default, run by --workers worker processes sharing its study (as hpsearch search --workers)",
}
ISSUE_ARMS = ("A", "B", "C", "D")  # the arms whose best errors set the target
P_WORKERS = 2  # arm P's worker processes unless --workers says
E_TRIAL_FACTOR = 100  # arm E's trial limit, in units of the config's n_trials: the epoch budget decides
TARGET_MARGIN = 0.005  # "within 0.5 points of the best found by any arm"
# the issue's proxy: a trial with learning rate >= 1e-3 (or a NaN loss) counts as diverging
DIVERGING_LR = 1e-3
LEARNED_MARGIN = 0.02  # a trial "learned" when its best error is 2 points below the majority-class error


# --- recording --------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident memory of this process now (Linux), else its peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_bytes() -> int | None:
    import torch

    return torch.cuda.memory_allocated() if torch.cuda.is_available() else None


class Recorder:
    """Per-trial timeline of one arm: epochs, validation errors and times since the arm started."""

    def __init__(self, n_train: int):
        self.n_train = n_train
        self.started = time.monotonic()
        self.trials: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []  # one per epoch end (or early stop), in time order
        self.early_counted: dict[int, list[float]] = {}  # per trial: what its early evaluation recorded
        self.continues: dict[int, int] = {}  # trial number -> the first trial of its configuration
        self.at: float | None = None  # a replayed call's time.monotonic() (arm P's workers), else now

    def trial(self, number: int, hp: dict[str, Any]) -> dict[str, Any]:
        """The record of ``number``'s configuration: a trial that continues a paused one adds to its record."""
        from hpsearch.config import HYPERPARAMETERS

        number = self.continues.get(number, number)
        if number not in self.trials:
            self.trials[number] = {
                "number": number,
                "learning_rate": float(hp["learning_rate"]),
                "batch_size": int(hp["batch_size"]),
                # every training value the trial used (searched or fixed), for the retraining; the seed
                # is the retraining's own
                "params": {k: v for k, v in hp.items() if k in HYPERPARAMETERS and k != "seed"},
                "epochs": 0.0,
                "val_errors": [],
                "train_losses": [],
                "busy_seconds": 0.0,
                "samples": 0,
                "real_tokens": 0,
                "padded_tokens": 0,
                "train_seconds": 0.0,
                "nan_loss": False,
                "stopped_diverging": "",
                "divergence_observed": "",
            }
        return self.trials[number]

    def epoch(
        self,
        number: int,
        hp: dict[str, Any],
        val_error: float | None,
        epochs: float,
        train_loss: float | None,
        busy: float,
        samples: int = 0,
        real: int = 0,
        padded: int = 0,
        train_seconds: float = 0.0,
        early: bool = False,
    ) -> None:
        """One epoch end, divergence stop or (``early``) early evaluation. The figures are the epoch's so far;
        what an early evaluation already recorded of the same epoch is taken off."""
        t = self.trial(number, hp)
        figures = [epochs, busy, samples, real, padded, train_seconds]
        before = self.early_counted.pop(number, [0.0] * len(figures))
        if early:
            self.early_counted[number] = figures
            t["early_val_error"] = val_error
            val_error, train_loss = None, None  # val_errors and train_losses hold epoch ends only
        epochs, busy, samples, real, padded, train_seconds = (
            a - b for a, b in zip(figures, before, strict=True)
        )
        t["epochs"] += epochs
        t["busy_seconds"] += busy
        t["samples"] += samples
        t["real_tokens"] += real
        t["padded_tokens"] += padded
        t["train_seconds"] += train_seconds
        if train_loss is not None and not math.isfinite(train_loss):
            t["nan_loss"] = True
        if train_loss is not None:
            t["train_losses"].append(train_loss if math.isfinite(train_loss) else None)
        if val_error is not None:
            t["val_errors"].append(val_error)
        now = time.monotonic() if self.at is None else self.at
        self.events.append(
            {"t": now - self.started, "trial": number, "epochs": epochs, "val_error": val_error}
        )

    def observed(self, number: int, hp: dict[str, Any], divergence: str) -> None:
        """The divergence rule fired on ``number`` but did not stop it (the arm records the rule only)."""
        self.trial(number, hp)["divergence_observed"] = divergence

    def stopped(self, number: int, hp: dict[str, Any], reason: str) -> None:
        """The divergence rule stopped ``number`` (its epoch so far is recorded by :meth:`epoch`)."""
        self.trial(number, hp)["stopped_diverging"] = reason

    def continued(self, number: int, paused: int) -> None:
        """Trial ``number`` continues the paused trial ``paused``: its epochs add to that configuration's."""
        self.continues[number] = self.continues.get(paused, paused)

    def finished(self, number: int, state: str, wall: float, rss: int, device: int | None, micro) -> None:
        """Trial ``number`` (or a part of a paused configuration) ended in ``state`` after ``wall`` seconds."""
        t = self.trials.get(self.continues.get(number, number))
        if t is not None:
            t["state"] = state
            t["wall_seconds"] = t.get("wall_seconds", 0.0) + wall  # every part of a paused trial
            t["rss_after"] = rss
            t["device_bytes_after"] = device
            t["micro_batch_size"] = micro


class CallLog:
    """Stands in for a :class:`Recorder` in arm P's worker processes: keeps each call with its time, for the
    parent to replay into one Recorder in the order the calls happened (``replay``)."""

    def __init__(self, n_train: int):
        self.n_train = n_train
        self.calls: list[tuple[float, str, tuple]] = []

    def __getattr__(self, name: str):
        if name not in ("epoch", "observed", "stopped", "continued", "finished"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((time.monotonic(), name, args))


def replay(calls: list[tuple[float, str, tuple]], recorder: Recorder) -> Recorder:
    """Feed the calls of several :class:`CallLog` s to ``recorder`` in time order (``time.monotonic`` is one
    clock for every process of the machine), as if one process had made them."""
    for at, name, args in sorted(calls, key=lambda c: c[0]):
        recorder.at = at
        getattr(recorder, name)(*args)
    recorder.at = None
    return recorder


def make_reporter(recorder: Recorder | CallLog, log):
    from hpsearch.search import Reporter

    def record(number, hp, r, val_error, epochs, train_loss, early=False):
        """One result of the loop; eval_seconds holds an early evaluation's time, if any."""
        recorder.epoch(
            number,
            hp,
            val_error,
            epochs,
            train_loss,
            r.train_seconds + r.eval_seconds,
            r.samples,
            r.real_tokens,
            r.padded_tokens,
            r.train_seconds,
            early,
        )

    class BenchReporter(Reporter):
        """hpsearch's own progress lines go to the log; each epoch is also recorded."""

        def epoch(self, number, hp, r, n_epochs):
            super().epoch(number, hp, r, n_epochs)
            record(number, hp, r, r.val_error, 1.0, r.train_loss)
            if r.divergence:
                recorder.observed(number, hp, r.divergence)

        def early(self, number, hp, r, share):
            super().early(number, hp, r, share)
            record(number, hp, r, r.val_error, share, r.train_loss, early=True)

        def diverged(self, number, hp, r):
            super().diverged(number, hp, r)
            nan = r.reason.startswith("loss became")  # NaN or infinite
            record(number, hp, r, None, r.samples / recorder.n_train, math.nan if nan else None)
            recorder.stopped(number, hp, r.reason)

        def continued(self, number, epoch, paused):
            super().continued(number, epoch, paused)
            recorder.continued(number, paused)

        def finished(self, trial):
            super().finished(trial)
            recorder.finished(
                trial.number,
                trial.state.name,
                (trial.datetime_complete - trial.datetime_start).total_seconds(),
                rss_bytes(),
                device_bytes(),
                trial.user_attrs.get("micro_batch_size"),
            )

    return BenchReporter(stream=log)


# --- the arms ---------------------------------------------------------------------------------------------


def arm_config(cfg, arm: str, seed: int, workdir: Path):
    """The study config for one hpsearch arm (A, B, C, E, F or G) and seed, with its own SQLite store.

    Every arm runs the config's ``study.n_trials`` trials, as arm D does: the config's ``study.timeout`` and
    ``study.epoch_budget`` are dropped (a budget stopped A, B and C after its epochs while D ran every trial,
    and the epoch ratios compared two equal budgets); only E has an epoch budget, A's epochs.
    """
    from hpsearch.config import StudySection

    study = dataclasses.replace(
        cfg.study,
        name=f"bench-{arm}-seed{seed}",
        seed=seed,
        storage=f"sqlite:///{workdir / f'{arm}-seed{seed}.db'}",
        timeout=None,
        epoch_budget=None,
    )
    train = dataclasses.replace(cfg.train, seed=seed, checkpoint_dir=str(workdir / "checkpoints"))
    if arm in ("A", "B"):
        # no pruner: an early evaluation (the config's train.early_eval) would only cost a validation, which
        # `hpsearch search` refuses
        study = dataclasses.replace(study, sampler="random" if arm == "A" else "tpe", pruner="none")
        train = dataclasses.replace(train, divergence_stop=False, early_eval=None)
    else:  # hpsearch's defaults, whatever the benchmarked config says
        defaults = StudySection()
        study = dataclasses.replace(
            study,
            sampler=defaults.sampler,
            pruner=defaults.pruner,
            reduction_factor=defaults.reduction_factor,
            pause_at_rungs={"G": True, "I": False}.get(arm, defaults.pause_at_rungs),
        )
        train = dataclasses.replace(train, divergence_stop=True)
        if arm == "E":  # the compute A spends on its trials, spent on as many trials as it buys
            study = dataclasses.replace(
                study,
                n_trials=cfg.study.n_trials * E_TRIAL_FACTOR,
                epoch_budget=float(cfg.study.n_trials * cfg.train.n_epochs),
            )
        if arm == "F":
            train = dataclasses.replace(train, early_eval=train.early_eval or F_EARLY_EVAL)
    return dataclasses.replace(cfg, study=study, train=train)


def run_hpsearch_arm(cfg, arm: str, seed: int, workdir: Path, n_train: int, log) -> Recorder:
    from hpsearch.search import run_search

    recorder = Recorder(n_train)
    result = run_search(arm_config(cfg, arm, seed, workdir), reporter=make_reporter(recorder, log))
    check_stopped(result.stopped_by, f"seed {seed} arm {arm}", f" after {len(recorder.trials)} trial(s)")
    recorder.wall = time.monotonic() - recorder.started
    return recorder


def check_stopped(stopped_by: str, arm: str, after: str = "") -> None:
    """run_search takes Ctrl-C (SIGINT, SIGTERM) as "stop this search": the benchmark went on to the next arm
    and wrote a result whose interrupted arm had only part of its trials. Stop the benchmark instead, and on
    trials failing in a row too (a partial arm compared as whole)."""
    if stopped_by == "signal":
        raise KeyboardInterrupt
    if stopped_by == "failures":
        raise ArmStopped(f"{arm}: trials failed in a row{after}; their reasons are in the trial log")


def run_worker(cfg, worker: int, n_train: int, log_path: Path) -> tuple[list, str]:
    """One of arm P's workers, in its own process: ``run_search`` as ``hpsearch search --worker-index WORKER``
    runs it (the sampler seed offset by the worker's number), its figures kept as calls to replay."""
    from hpsearch.search import run_search

    calls = CallLog(n_train)
    with open(log_path, "w", encoding="utf-8") as log:
        result = run_search(cfg, worker=worker, reporter=make_reporter(calls, log))
    return calls.calls, result.stopped_by


def run_parallel_arm(cfg, seed: int, workdir: Path, n_train: int, log, workers: int) -> Recorder:
    """Arm P: hpsearch's default run by ``workers`` processes on one SQLite study, as ``hpsearch search
    --workers N`` runs it (a trial paused by one worker may be continued by another), each with this process's
    torch threads; their figures are replayed into one Recorder in the order they happened."""
    import torch

    arm_cfg = arm_config(cfg, "P", seed, workdir)
    recorder = Recorder(n_train)
    parts = [workdir / f"P-seed{seed}-worker{k}.txt" for k in range(workers)]
    with spawned_pool(workers) as pool:
        futures = [
            pool.submit(in_process, torch.get_num_threads(), run_worker, arm_cfg, k, n_train, parts[k])
            for k in range(workers)
        ]
        done = [f.result() for f in futures]
    recorder.wall = time.monotonic() - recorder.started
    for k, part in enumerate(parts):
        log.writelines(f"[worker {k}] {line}" for line in part.read_text(encoding="utf-8").splitlines(True))
        part.unlink()
    for how in sorted({how for _, how in done}, key=lambda how: how != "signal"):  # Ctrl-C first
        check_stopped(how, f"seed {seed} arm P")
    return replay([c for calls, _ in done for c in calls], recorder)


HF_ARGS = {
    "learning_rate": "learning_rate",
    "batch_size": "per_device_train_batch_size",
    "weight_decay": "weight_decay",
    "warmup_ratio": "warmup_steps",
    "lr_scheduler": "lr_scheduler_type",
    "max_grad_norm": "max_grad_norm",
    "seed": "seed",
}  # dropout goes to model_init


def hf_datasets(data, encoded):
    def rows(enc, labels):
        out = []
        for i, y in enumerate(labels):
            row = {k: enc[k][i] for k in ("input_ids", "token_type_ids") if k in enc}
            row["labels"] = y
            out.append(row)
        return out

    return rows(encoded[0], data.train.labels), rows(encoded[1], data.validation.labels)


def hf_warmup(ratio) -> float:
    """hpsearch's ``warmup_ratio`` as the Trainer's ``warmup_steps``, which reads a value under 1 as a share of
    the steps and 1 or more as a count: a ratio of 1 (warm up the whole run) would be one step."""
    return min(float(ratio), 1 - 1e-9)


def hf_training_args(cfg, hp: dict[str, Any], out: Path, epochs: int, **extra):
    from transformers import TrainingArguments

    from hpsearch.train import resolve_device, resolve_precision

    device = resolve_device(cfg.train.device)
    dtype = resolve_precision(cfg.train.precision, device)
    import torch

    return TrainingArguments(
        output_dir=str(out),
        num_train_epochs=epochs,
        learning_rate=float(hp["learning_rate"]),
        per_device_train_batch_size=int(hp["batch_size"]),
        per_device_eval_batch_size=cfg.train.eval_batch_size,
        weight_decay=float(hp["weight_decay"]),
        warmup_steps=hf_warmup(hp["warmup_ratio"]),
        lr_scheduler_type=hp["lr_scheduler"],
        max_grad_norm=float(hp["max_grad_norm"]),
        seed=int(hp["seed"]),
        use_cpu=device.type == "cpu",
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        **extra,
    )


def hf_trainer(cfg, hp: dict[str, Any], data, factory, encoded, workdir: Path, model_init, callback):
    """A ``Trainer`` on the config's rows with hpsearch's hyperparameters ``hp``, evaluated and logged every epoch
    (metric ``eval_error``), its weights from ``model_init``; ``callback`` records what it needs. Arm D searches
    with it, ``bench.loops`` trains one configuration with it."""
    from transformers import DataCollatorWithPadding, Trainer
    from transformers.trainer_callback import PrinterCallback

    def compute_metrics(prediction):
        logits, labels = prediction.predictions, prediction.label_ids
        return {"error": float((logits.argmax(-1) != labels).mean())}

    train_ds, val_ds = hf_datasets(data, encoded)
    trainer = Trainer(
        model_init=model_init,
        args=hf_training_args(
            cfg, hp, workdir / "hf", cfg.train.n_epochs, eval_strategy="epoch", logging_strategy="epoch"
        ),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=DataCollatorWithPadding(factory.tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[callback],
    )
    # its log dicts would land on stdout; the callback records what is wanted
    trainer.remove_callback(PrinterCallback)
    return trainer


def run_trainer_arm(cfg, space, data, factory, encoded, seed: int, workdir: Path, log) -> Recorder:
    """Arm D: ``Trainer.hyperparameter_search(backend="optuna")`` as its documentation sets it up."""
    import optuna
    from transformers import TrainerCallback

    from hpsearch.objective import TUNABLE

    recorder = Recorder(len(data.train))
    fixed = {name: getattr(cfg.train, name) for name in TUNABLE}
    fixed.update(space.fixed)
    fixed["seed"] = seed
    params = {p.name: p for p in space.params}
    state = {"number": -1, "hp": dict(fixed), "t0": 0.0}

    def hp_space(trial):
        values = {}
        for name, param in params.items():
            value = param.suggest(trial)
            state["hp"][name] = value
            if name in HF_ARGS:
                values[HF_ARGS[name]] = hf_warmup(value) if name == "warmup_ratio" else value
        return values

    def model_init(trial=None):
        # Trainer calls this before hp_space: ask the trial for dropout and a searched seed here (Optuna
        # returns the same values later), so the weights start as the hpsearch arms' trial would.
        def value(name):
            return params[name].suggest(trial) if trial is not None and name in params else fixed[name]

        return factory.build(int(value("seed")), float(value("dropout")))

    class Record(TrainerCallback):
        def on_train_begin(self, args, st, control, **kw):
            state["number"] += 1
            state["t0"] = time.monotonic()
            state["loss"] = 0.0
            recorder.trial(state["number"], state["hp"])

        def on_log(self, args, st, control, logs=None, **kw):
            if logs and "loss" in logs:
                state["loss"] = float(logs["loss"])

        def on_evaluate(self, args, st, control, metrics=None, **kw):
            err = float(metrics["eval_error"])
            recorder.epoch(state["number"], state["hp"], err, 1.0, state["loss"], 0.0)
            log.write(
                f"[D] trial {state['number']} epoch {round(st.epoch)} val_error {err:.4f} "
                f"loss {state['loss']:.4f} [lr={state['hp']['learning_rate']:.2e} bs={state['hp']['batch_size']}]\n"
            )
            log.flush()

        def on_train_end(self, args, st, control, **kw):
            t = recorder.trials[state["number"]]
            t["wall_seconds"] = time.monotonic() - state["t0"]
            t["rss_after"] = rss_bytes()

    trainer = hf_trainer(cfg, fixed, data, factory, encoded, workdir, model_init, Record())
    trainer.hyperparameter_search(
        hp_space=hp_space,
        n_trials=cfg.study.n_trials,
        direction="minimize",
        backend="optuna",
        sampler=optuna.samplers.TPESampler(seed=seed),  # only the seed: its default otherwise
        storage=f"sqlite:///{workdir / f'D-seed{seed}.db'}",
        study_name=f"bench-D-seed{seed}",
    )
    recorder.wall = time.monotonic() - recorder.started
    # The states its study stored: its pruner also decides after the last evaluation, so a trial that ran every
    # epoch may be pruned, and hyperparameter_search never hands that one over. Trials run in number order.
    stored = optuna.load_study(
        study_name=f"bench-D-seed{seed}", storage=f"sqlite:///{workdir / f'D-seed{seed}.db'}"
    )
    for trial in stored.trials:
        if trial.number in recorder.trials:
            recorder.trials[trial.number]["state"] = trial.state.name
    return recorder


# --- throughput -------------------------------------------------------------------------------------------


def measure_throughput(
    cfg, data, factory, encoded, workdir: Path, batch_size: int, repeats: int
) -> dict[str, Any]:
    """Training samples/second for one epoch: hpsearch's loop vs the Trainer, same model, data and batch size."""
    import statistics as st

    import torch
    from transformers import DataCollatorWithPadding, Trainer
    from transformers.trainer_callback import PrinterCallback

    from hpsearch.objective import TUNABLE
    from hpsearch.train import FineTuning

    hp = {name: getattr(cfg.train, name) for name in TUNABLE}
    hp.update(batch_size=batch_size, learning_rate=1e-3, seed=0)
    settings = dataclasses.replace(cfg.train, n_epochs=1)
    train_ds, _ = hf_datasets(data, encoded)
    out: dict[str, list[float]] = {"hpsearch": [], "trainer": [], "trainer_group_by_length": []}
    padding = None
    for _ in range(repeats):
        run = FineTuning.on(
            factory.build(0, 0.1), data, encoded, hp, settings, factory.tokenizer.pad_token_id
        )
        started = time.perf_counter()
        for idx in run_plan(run):
            run._step(idx)
        if run.device.type == "cuda":
            torch.cuda.synchronize()  # the steps still queued on the GPU count, as Trainer.train() waits for them
        seconds = time.perf_counter() - started
        out["hpsearch"].append(len(data.train) / seconds)
        padding = padding_of(run)
        run.release()
        for key, extra in (
            ("trainer", {}),
            ("trainer_group_by_length", {"train_sampling_strategy": "group_by_length"}),
        ):
            args = hf_training_args(
                cfg, hp, workdir / "hf-throughput", 1, eval_strategy="no", logging_strategy="no", **extra
            )
            trainer = Trainer(
                model=factory.build(0, 0.1),
                args=args,
                train_dataset=train_ds,
                data_collator=DataCollatorWithPadding(factory.tokenizer),
            )
            trainer.remove_callback(PrinterCallback)
            started = time.perf_counter()
            trainer.train()
            out[key].append(len(data.train) / (time.perf_counter() - started))
            del trainer
    med = {k: round(st.median(v), 1) for k, v in out.items()}
    best = {k: round(max(v), 1) for k, v in out.items()}
    # On a shared machine the fastest of the interleaved repeats is the one least disturbed by other work.
    return {
        "batch_size": batch_size,
        "repeats": repeats,
        "n_train": len(data.train),
        "samples_per_second_best": best,
        "samples_per_second_median": med,
        "samples_per_second_all": {k: [round(x, 1) for x in v] for k, v in out.items()},
        "hpsearch_vs_trainer": round(best["hpsearch"] / best["trainer"], 3),
        "hpsearch_vs_trainer_group_by_length": round(best["hpsearch"] / best["trainer_group_by_length"], 3),
        "hpsearch_vs_trainer_median": round(med["hpsearch"] / med["trainer"], 3),
        "padding_efficiency": {"hpsearch": padding, "trainer_default_collator": padding["random_batches"]},
    }


def run_plan(run):
    from hpsearch.train import batches

    return batches(run.lengths, run.batch_size, 0, run.settings.group_by_length)


def padding_of(run) -> dict[str, float]:
    """Real/padded tokens of one epoch, with length grouping (as trained) and with random batches."""
    from hpsearch.train import batches

    out = {}
    for name, grouped in (("group_by_length", True), ("random_batches", False)):
        plan = batches(run.lengths, run.batch_size, 0, grouped)
        real = sum(run.lengths[i] for b in plan for i in b)
        padded = sum(max(run.lengths[i] for i in b) * len(b) for b in plan)
        out[name] = round(real / padded, 4)
    return out


# --- figures ----------------------------------------------------------------------------------------------


def went_on_to_learn(val_errors: list[float], majority: float) -> bool:
    """A trial learned when its best validation error is LEARNED_MARGIN under the majority-class error."""
    return bool(val_errors) and min(val_errors) < majority - LEARNED_MARGIN


def seed_target(recs: dict[str, Recorder]) -> float | None:
    """The issue's target for one seed: 0.5 points above the best error of its four arms (A-D); E, with many more
    trials, is not one. When none of the four ran (``--arms E,F``) or none of them evaluated a trial (``--arms C``
    with every trial stopped in its first epoch): the best of the arms that did; None when no arm did (a NaN here
    made the result file invalid JSON)."""

    def bests(arms):
        return [e["val_error"] for arm in arms for e in recs[arm].events if e["val_error"] is not None]

    found = bests([a for a in recs if a in ISSUE_ARMS]) or bests(list(recs))
    return min(found) + TARGET_MARGIN if found else None


def summarise_arm(rec: Recorder, target: float | None, majority: float) -> dict[str, Any]:
    """The figures of one arm and seed, from its timeline; ``majority`` is the error a trial must beat by
    LEARNED_MARGIN to have learned."""
    trials = list(rec.trials.values())
    total_epochs = sum(t["epochs"] for t in trials)
    best, reached, epochs_so_far = math.inf, None, 0.0
    for e in rec.events:
        epochs_so_far += e["epochs"]
        if e["val_error"] is not None:
            best = min(best, e["val_error"])
        if reached is None and target is not None and best <= target + 1e-12:
            reached = {"seconds": round(e["t"], 2), "epochs": round(epochs_so_far, 3)}

    def learned(t):
        return went_on_to_learn(t["val_errors"], majority)

    proxy = [t for t in trials if t["learning_rate"] >= DIVERGING_LR or t["nan_loss"]]
    outcome = [
        t
        for t in trials
        if t["nan_loss"] or t["stopped_diverging"] or (t["learning_rate"] >= DIVERGING_LR and not learned(t))
    ]
    observed = [t for t in trials if t["divergence_observed"] and not t["stopped_diverging"]]

    def divergence_figures(group):
        epochs = sum(t["epochs"] for t in group)
        early = [t for t in group if t["epochs"] <= 1.0 + 1e-9]
        return {
            "n": len(group),
            "stopped_within_first_epoch": len(early),
            "share_stopped_within_first_epoch": round(len(early) / len(group), 3) if group else None,
            "epochs": round(epochs, 3),
            "share_of_budget": round(epochs / total_epochs, 3) if total_epochs else 0,
        }

    walls = [t for t in trials if t.get("wall_seconds")]
    overhead = None
    if walls and any(t["busy_seconds"] for t in walls):
        wall = sum(t["wall_seconds"] for t in walls)
        busy = sum(t["busy_seconds"] for t in walls)
        shares = [max(0.0, 1 - t["busy_seconds"] / t["wall_seconds"]) for t in walls]
        overhead = {
            "share_total": round(1 - busy / wall, 4),
            "share_median_trial": round(statistics.median(shares), 4),
            "seconds_per_trial_median": round(
                statistics.median(t["wall_seconds"] - t["busy_seconds"] for t in walls), 3
            ),
        }
    rss = [t["rss_after"] for t in trials if t.get("rss_after")]
    real = sum(t["real_tokens"] for t in trials)
    padded = sum(t["padded_tokens"] for t in trials)
    train_s = sum(t["train_seconds"] for t in trials)
    return {
        "best_val_error": None if best == math.inf else round(best, 4),
        "n_trials": len(trials),
        "total_epochs": round(total_epochs, 3),
        "wall_seconds": round(rec.wall, 2),
        "target_val_error": None if target is None else round(target, 4),
        "reached_target": reached is not None,
        "seconds_to_target": reached["seconds"] if reached else None,
        "epochs_to_target": reached["epochs"] if reached else None,
        "diverging_by_learning_rate": divergence_figures(proxy),
        "diverging_by_outcome": divergence_figures(outcome),
        "rule_fired_but_not_stopped": {"n": len(observed), "went_on_to_learn": sum(map(learned, observed))},
        "trials_learned": sum(map(learned, trials)),
        "trial_states": {
            s: sum(t.get("state") == s for t in trials) for s in {t.get("state") for t in trials}
        },
        "per_trial_overhead": overhead,
        "padding_efficiency": round(real / padded, 4) if padded else None,
        "train_samples_per_second": round(sum(t["samples"] for t in trials) / train_s, 1)
        if train_s
        else None,
        "memory_rss_mb_first_last_trial": [round(rss[0] / 2**20, 1), round(rss[-1] / 2**20, 1)]
        if rss
        else None,
        # GPU memory still allocated after each trial: flat when FineTuning.release() frees everything.
        "device_memory_mb_after_trials": [
            round(t["device_bytes_after"] / 2**20, 1)
            for t in trials
            if t.get("device_bytes_after") is not None
        ]
        or None,
        "trials": trials,
    }


def spread(values: list[float | None]) -> dict[str, Any]:
    known = [v for v in values if v is not None]
    if not known:
        return {"median": None, "min": None, "max": None, "values": values}
    return {
        "median": round(statistics.median(known), 4),
        "min": round(min(known), 4),
        "max": round(max(known), 4),
        "values": values,
    }


FIGURES = ("best_val_error", "total_epochs", "wall_seconds", "seconds_to_target", "epochs_to_target")


def best_within_epochs(trials: list[dict[str, Any]], budget: float) -> float | None:
    """The best validation error an arm had measured when its trials, in the order they ran, had trained
    ``budget`` epochs in all: what that arm buys with the compute another arm used for its whole search."""
    best, spent = None, 0.0
    for t in trials:
        for k, err in enumerate(t["val_errors"], 1):  # the k-th epoch end of this trial
            if spent + k > budget + 1e-9:
                return best
            best = err if best is None else min(best, err)
        spent += t["epochs"]
    return best


def at_c_compute(by_arm: dict[str, dict[str, Any]]) -> None:
    """Record, for every arm of one seed, its best error within the epochs C trained (``best_at_c_epochs``)."""
    if "C" not in by_arm:
        return
    # the unrounded sum: total_epochs is rounded to 3 decimals, which can fall short of C's last epoch end
    budget = sum(t["epochs"] for t in by_arm["C"]["trials"])
    for summary in by_arm.values():
        best = best_within_epochs(summary["trials"], budget)
        summary["best_at_c_epochs"] = None if best is None else round(best, 4)


def aggregate(per_seed: dict[int, dict[str, dict[str, Any]]], arms: list[str]) -> dict[str, Any]:
    """Median and spread over seeds of every figure; first records each seed's same-compute figure
    (``best_at_c_epochs``) in ``per_seed``, so results written before it existed get it too."""
    out = {}
    for by_arm in per_seed.values():
        at_c_compute(by_arm)
    for arm in arms:
        runs = [per_seed[s][arm] for s in sorted(per_seed) if arm in per_seed[s]]
        fig = {name: spread([r[name] for r in runs]) for name in FIGURES}
        if "C" in arms:
            fig["best_at_c_epochs"] = spread([r.get("best_at_c_epochs") for r in runs])
        fig["n_trials"] = spread([r.get("n_trials", len(r["trials"])) for r in runs])
        fig["reached_target"] = f"{sum(r['reached_target'] for r in runs)}/{len(runs)}"
        for kind in ("diverging_by_learning_rate", "diverging_by_outcome"):
            n = sum(r[kind]["n"] for r in runs)
            early = sum(r[kind]["stopped_within_first_epoch"] for r in runs)
            fig[kind] = {
                "n": n,
                "stopped_within_first_epoch": early,
                "share_stopped_within_first_epoch": round(early / n, 3) if n else None,
                "share_of_budget": spread([r[kind]["share_of_budget"] for r in runs]),
            }
        fig["rule_fired_but_not_stopped"] = {
            "n": sum(r["rule_fired_but_not_stopped"]["n"] for r in runs),
            "went_on_to_learn": sum(r["rule_fired_but_not_stopped"]["went_on_to_learn"] for r in runs),
        }
        overheads = [r["per_trial_overhead"]["share_total"] for r in runs if r["per_trial_overhead"]]
        fig["per_trial_overhead_share"] = spread(overheads) if overheads else None
        fig["padding_efficiency"] = spread([r["padding_efficiency"] for r in runs])
        retrained = [r.get("retrained_best") for r in runs]
        fig["retrained_best_mean"] = spread([r["mean"] if r else None for r in retrained])
        out[arm] = fig
    return out


def same_compute(agg: dict[str, Any]) -> dict[str, Any] | None:
    """Arm E against arm A: what hpsearch's default finds with the epochs random search spends (medians)."""
    if "E" not in agg or "A" not in agg:
        return None

    def med(arm, name):
        return agg[arm][name]["median"]

    def gap(name):
        e, a = med("E", name), med("A", name)
        return None if e is None or a is None else round(e - a, 4)

    return {
        "E_trials_median": med("E", "n_trials"),
        "E_epochs_over_A": round(med("E", "total_epochs") / med("A", "total_epochs"), 3),
        "E_best_minus_A_best": gap("best_val_error"),
        "E_retrained_minus_A_retrained": gap("retrained_best_mean"),
    }


def check_targets(agg: dict[str, Any], throughput: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each target of the issue, with the measured value and met or missed (reported, never asserted)."""
    out = []

    def med(arm, name):
        return agg.get(arm, {}).get(name, {}).get("median") if arm in agg else None

    def add(name, value, met, note=""):
        out.append({"target": name, "value": value, "met": met, "note": note})

    def to_target(name: str, figure: str, total: str, total_words: str, ref: str, limit: float) -> None:
        """C's median ``figure`` (to target) over ``ref``'s, the medians over every seed: a seed where C never
        reached the target counts as never (no ratio when that is half the seeds or more), one where ``ref``
        never did as ``ref``'s ``total`` there (what it spent without getting there: in ``ref``'s favour)."""
        c_values, r_values = agg["C"][figure]["values"], agg[ref][figure]["values"]
        r_or_total = [t if v is None else v for v, t in zip(r_values, agg[ref][total]["values"], strict=True)]
        c = statistics.median([math.inf if v is None else v for v in c_values]) if c_values else math.inf
        base = statistics.median(r_or_total) if r_or_total else None
        ratio = None if math.isinf(c) or not base else round(c / base, 3)
        reached = [sum(v is not None for v in values) for values in (c_values, r_values)]
        note = ""
        if reached[0] < len(c_values) or reached[1] < len(r_values):
            note = (
                f"C reached the target on {reached[0]}/{len(c_values)} seeds, {ref} on {reached[1]}/"
                f"{len(r_values)}; C's misses count as never, {ref}'s as its {total_words}"
            )
        add(name, ratio, ratio is not None and ratio <= limit, note)

    if "C" in agg and "A" in agg:
        to_target(
            "C epochs to target <= 1/3 of A's", "epochs_to_target", "total_epochs", "total epochs", "A", 1 / 3
        )
    d_wall = med("D", "wall_seconds")
    if "C" in agg and "D" in agg:
        to_target(
            "C wall time to target <= 1/2 of D's",
            "seconds_to_target",
            "wall_seconds",
            "total wall time",
            "D",
            1 / 2,
        )
        add(
            "C wall time (whole search) <= 1/2 of D's",
            round(med("C", "wall_seconds") / d_wall, 3),
            med("C", "wall_seconds") / d_wall <= 0.5,
        )
    if "C" in agg and "A" in agg:
        ratio = round(med("C", "total_epochs") / med("A", "total_epochs"), 3)
        add(
            "C epochs (whole search) <= 1/3 of A's",
            ratio,
            ratio <= 1 / 3,
            "the GPU-hours of the whole search",
        )

    def paired(figure: str, arm: str) -> str | None:
        """Seed by seed (the arms of a seed share its sample of rows and its trial seeds): the median of C's
        ``figure`` minus ``arm``'s, and on how many seeds C's was the lower or equal."""
        if arm not in agg or figure not in agg[arm] or figure not in agg["C"]:
            return None
        pairs = zip(agg["C"][figure]["values"], agg[arm][figure]["values"], strict=True)
        gaps = [c - o for c, o in pairs if c is not None and o is not None]
        if not gaps:
            return None
        return (
            f"paired by seed, C - {arm}: median {statistics.median(gaps):+.4f}, C lower or equal on"
            f" {sum(g <= 0 for g in gaps)}/{len(gaps)}"
        )

    def no_worse(name: str, figure: str, note: str) -> None:
        """C's median ``figure`` minus the better of A's and D's, within the 0.5-point margin (n/a, not left
        out, when C's or theirs was not measured: no retraining, or no complete trial)."""
        if "A" not in agg and "D" not in agg:
            return
        c = med("C", figure)
        others = [v for v in (med(a, figure) for a in ("A", "D")) if v is not None]
        if others and c is not None:
            gap = round(c - min(others), 4)
            add(
                name,
                gap,
                gap <= TARGET_MARGIN,
                "; ".join(filter(None, [note, *(paired(figure, a) for a in "AD")])),
            )
        else:
            add(name, None, None, "not measured (--retrain-seeds 0, or no complete trial to retrain)")

    if "C" in agg:
        no_worse(
            "C best configuration, retrained, no worse than A's and D's (within 0.5 points)",
            "retrained_best_mean",
            "median over seeds of each arm's best trial retrained with fresh seeds (mean error)",
        )
        no_worse(
            "C best error no worse than A and D (within 0.5 points)",
            "best_val_error",
            "C median best minus the better of A's and D's median best",
        )
        for kind in ("diverging_by_outcome", "diverging_by_learning_rate"):
            d = agg["C"][kind]
            add(
                f">= 95% of diverging trials stopped within epoch 1 ({kind})",
                d["share_stopped_within_first_epoch"],
                None  # no diverging trial: nothing to stop (n/a, neither met nor missed)
                if d["share_stopped_within_first_epoch"] is None
                else d["share_stopped_within_first_epoch"] >= 0.95,
                f"{d['stopped_within_first_epoch']}/{d['n']} over all seeds",
            )
            share = d["share_of_budget"]["median"]
            add(
                f"< 10% of the budget on diverging trials ({kind})", share, share is not None and share < 0.10
            )
        oh = agg["C"]["per_trial_overhead_share"]
        if oh:
            add("per-trial overhead < 10% (CPU)", oh["median"], oh["median"] < 0.10)
        pe = agg["C"]["padding_efficiency"]["median"]
        add("padding efficiency >= 0.9", pe, pe is not None and pe >= 0.9)
    if throughput:
        r = throughput["hpsearch_vs_trainer"]
        add(
            "throughput >= HF Trainer's (same model, data, batch size)",
            r,
            r >= 1.0,
            f"best of {throughput['repeats']} interleaved epochs each; median ratio "
            f"{throughput['hpsearch_vs_trainer_median']}; vs Trainer with group_by_length: "
            f"{throughput['hpsearch_vs_trainer_group_by_length']}",
        )
    return out


# --- main -------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import optuna
    import torch
    import transformers

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "optuna": optuna.__version__,
        "device": "cpu",
        "load_average_at_start": list(os.getloadavg()),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__.split("\n\n")[0],
        epilog="Example: python -m bench.run --quick",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="study config to benchmark (YAML; default bench/configs/sst2.yaml; with --retrain-from, the one"
        " the result ran with)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 600 rows, 6 trials x 2 epochs")
    p.add_argument(
        "--seeds", default="0,1,2", help="comma-separated study seeds, each arm runs once per seed"
    )
    p.add_argument("--arms", default="A,B,C,D,E", help=f"comma-separated arms to run ({', '.join(ARMS)})")
    p.add_argument("--model", help="override model.name, e.g. all-minilm-l6-v2 (slow on a CPU)")
    p.add_argument("--n-trials", type=int, help="override study.n_trials (the budget of every arm)")
    p.add_argument("--n-epochs", type=int, help="override train.n_epochs")
    p.add_argument("--max-train-samples", type=int, help="override data.max_train_samples")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, as `hpsearch search --set` (repeatable), e.g. data.demo_size=300",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: steady timings on a shared machine; 0: torch's choice)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="seeds run side by side, one process each (default: one per CPU core on a CPU, 1 on a GPU)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=P_WORKERS,
        help=f"arm P's worker processes on its one study (default {P_WORKERS}; each takes --threads threads)",
    )
    p.add_argument(
        "--retrain-seeds",
        type=int,
        default=3,
        help="fresh seeds each arm's best configuration is retrained with (0: skip)",
    )
    p.add_argument(
        "--retrain-epochs",
        choices=("all", "best"),
        default="all",
        help="retrain for every epoch, or to the best trial's best epoch (as train-best --epochs; default all)",
    )
    p.add_argument(
        "--retrain-pick",
        choices=("best", "settled"),
        default="best",
        help="rank hpsearch arms' complete trials by their best epoch (what hpsearch hands over; default) or by"
        " the mean of their last third of epochs (an alternative, to measure)",
    )
    p.add_argument(
        "--retrain-from",
        type=Path,
        metavar="RESULT_JSON",
        help="only retrain the best configurations of an earlier result (same --config) and update it",
    )
    p.add_argument(
        "--merge",
        type=Path,
        metavar="OTHER_JSON",
        help="add the seeds of another result of the same config (e.g. --seeds 3,4) to --out's result; runs nothing",
    )
    p.add_argument(
        "--throughput-repeats", type=int, default=3, help="epochs timed per loop for throughput (0: skip)"
    )
    p.add_argument(
        "--out",
        type=Path,
        help="result JSON (default bench/results/<config>.json; with --quick, <config>-quick.json, not tracked)",
    )
    args = p.parse_args(argv)
    args.config_given = args.config is not None
    args.config = args.config or DEFAULT_CONFIG
    return args


def read_result(path: Path, flag: str) -> dict[str, Any]:
    """A result JSON named by ``flag``; a missing or unreadable file is one line (ConfigError)."""
    from hpsearch.errors import ConfigError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{flag} {path}: no such file; give a result JSON written by bench.run") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{flag} {path}: not a readable result JSON ({exc})") from None


def comparable(resolved: dict[str, Any]) -> dict[str, Any]:
    """The settings a run used (its stored ``resolved_config``) as this version reads them, less what differs
    between runs of one search: each run's temporary store, its first seed (the study seed) and
    ``train.save_best`` (read and ignored since 12-03). A setting added since, at the default that keeps the
    old behaviour, reads the same."""
    from hpsearch.config import config_from_dict

    d = config_from_dict(resolved).to_dict()
    d["study"] = {**d["study"], "storage": None, "seed": None}
    d["train"] = {**d["train"], "save_best": None}
    return d


def result_config(config: Path | None, result: dict[str, Any], flag: str):
    """The config an earlier result ran with, rebuilt from the copy it stored (``resolved_config``, overrides
    applied), so neither the file nor the flags of that run are needed; ``config`` (--config), when given,
    must resolve to the same."""
    from hpsearch.config import config_from_dict, load_config
    from hpsearch.errors import ConfigError

    stored = config_from_dict(result["resolved_config"], source=str(result["config"]))
    if config is not None:
        given = load_config(config, sets=result["overrides"])
        if comparable(given.to_dict()) != comparable(result["resolved_config"]):
            raise ConfigError(
                f"{flag}: the result ran with {result['config']}, not {config}; drop --config (the stored one"
                " is used) or give the same file"
            )
    return stored


def load_bench_config(args):
    from hpsearch.config import load_config

    sets = []
    if args.quick:
        sets += ["study.n_trials=6", "train.n_epochs=2", "data.max_train_samples=600"]
    if args.model:
        sets.append(f"model.name={args.model}")
    if args.n_trials:
        sets.append(f"study.n_trials={args.n_trials}")
    if args.n_epochs:
        sets.append(f"train.n_epochs={args.n_epochs}")
    if args.max_train_samples:
        sets.append(f"data.max_train_samples={args.max_train_samples}")
    sets += args.set
    return load_config(args.config, sets=sets), sets


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` -> [0, 1, 2]: integers a study seed takes, each once (a seed given twice ran its arms
    into the store of the first and crashed after them)."""
    from hpsearch.errors import ConfigError

    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected integers, e.g. --seeds 0,1,2") from None
    if any(not 0 <= s < 2**32 for s in seeds):
        raise ConfigError(f"--seeds {text!r}: a study seed must be in 0..4294967295")
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seeds {text!r}: a seed is given twice; each seed runs once")
    return seeds


def parse_arms(text: str) -> list[str]:
    """``--arms A,c`` -> ["A", "C"]: known arms, each once (an arm given twice found its study done and
    recorded no trial the second time)."""
    from hpsearch.errors import ConfigError

    arms = [a.strip().upper() for a in text.split(",")]
    bad = [repr(a) if not a else a for a in arms if a not in ARMS]
    if bad:
        raise ConfigError(f"--arms: unknown arm(s) {', '.join(bad)}; choose from {', '.join(ARMS)}")
    if len(set(arms)) < len(arms):
        raise ConfigError(f"--arms {text!r}: an arm is given twice; each arm runs once per seed")
    return arms


def check_flags(args: argparse.Namespace) -> None:
    """Counts the flags take: a 0 that was silently ignored (the config's value ran) or crashed is refused."""
    from hpsearch.errors import ConfigError

    for flag, value in (
        ("--n-trials", args.n_trials),
        ("--n-epochs", args.n_epochs),
        ("--max-train-samples", args.max_train_samples),
    ):
        if value is not None and value < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {value} (leave it out to keep the config's value)")
    if args.workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {args.workers}")
    if args.threads < 0:
        raise ConfigError(f"--threads: must be >= 0 (0: torch's choice), got {args.threads}")


class ArmStopped(RuntimeError):
    """An arm's search stopped before its budget (trials failing in a row): its figures would be a partial
    arm's, compared as if whole."""


def default_out(args: argparse.Namespace) -> Path:
    """``bench/results/<config>[-<model>][-quick].json``; a folder or hub id given to --model (``/models/bert``,
    ``org/name``) is one word of the name, not folders under bench/results."""
    model = re.sub(r"[^\w.-]+", "-", args.model).strip("-.") if args.model else ""
    suffix = ("-" + model if model else "") + ("-quick" if args.quick else "")
    return RESULTS / f"{args.config.stem}{suffix}.json"


def main(argv: list[str] | None = None) -> int:
    # No HF_HUB_OFFLINE here: a config naming a hub model or data set fetches it, as `hpsearch search` does.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    import torch

    from hpsearch.config import check_writable
    from hpsearch.errors import ConfigError
    from hpsearch.search import prepare

    out = args.out or default_out(args)
    try:
        check_flags(args)
        seeds = [0] if args.quick and args.seeds == "0,1,2" else parse_seeds(args.seeds)
        arms = parse_arms(args.arms)
        # written after the whole run: a folder or an unwritable path is refused now, not after hours
        check_writable(out, "--out")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out {out}: cannot make its folder ({exc.strerror})") from None
        if args.threads:
            torch.set_num_threads(args.threads)
        # one seed per core on a CPU; on a GPU, one at a time (they would share the one card)
        if not args.jobs:
            args.jobs = 1 if torch.cuda.is_available() else os.cpu_count() or 1
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # arm D's per-trial lines; the log has them
        cfg, sets = load_bench_config(args)
        if args.retrain_from:
            return retrain_from(args, args.retrain_from)
        if args.merge:
            return merge_into(out, args.merge)
        with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as tmp:
            workdir = Path(tmp)
            # Warm the per-process caches (data, tokenizer, tokenized ids) once, so no arm pays them alone.
            check_seeds_data(cfg, seeds)  # a seed whose sample lacks a class fails now, not after hours
            cfg = dataclasses.replace(
                cfg,
                study=dataclasses.replace(cfg.study, storage=f"sqlite:///{workdir}/w.db", seed=seeds[0]),
            )
            space, data, factory, encoded = prepare(cfg)
            result = run_all(args, cfg, sets, seeds, arms, space, data, factory, encoded, workdir, out)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ArmStopped as exc:
        print(f"error: {exc}; no result written", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C stops the benchmark, not only the arm that was running
        print("interrupted: no result written", file=sys.stderr)
        return 130
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print_summary(result, sys.stdout)
    print(f"\nfull results: {out} (trial log: {out.with_suffix('.progress.txt')})", file=sys.stderr)
    return 0


def check_seeds_data(cfg, seeds: list[int]) -> None:
    """Each study seed also draws the data sample (and a carved validation split): check every seed's rows
    before any arm runs, naming the seed where its sample is what fails. A mistake in the data or config (a
    column name, a file, a label the training file never uses) fails without sampling too, and is reported as
    `hpsearch search` reports it: no other seed would help."""
    from hpsearch.data import load_data
    from hpsearch.errors import ConfigError

    whole = dataclasses.replace(cfg.data, max_train_samples=None, max_validation_samples=None)
    for seed in seeds:
        try:
            load_data(cfg.data, seed=seed)
        except ConfigError as exc:
            if whole == cfg.data:
                raise
            load_data(whole, seed=seed)  # the same mistake without sampling: raised as it is
            raise ConfigError(f"--seeds {seed}: {exc} (this seed's sample; try other --seeds)") from None


def run_seed(
    cfg, seed: int, arms: list[str], workdir: Path, log_path: Path, retrain: Retrain, workers: int = P_WORKERS
) -> tuple[dict[str, Recorder], dict[str, Any]]:
    """Every arm of one study seed, in turn, then each arm's best configuration retrained; progress lines go
    to ``log_path``."""
    from hpsearch.search import prepare

    recs: dict[str, Recorder] = {}
    # The rows of this seed (study.seed also seeds the data subsample), for arm D; the hpsearch arms prepare
    # the same rows themselves, through run_search.
    space, data, factory, encoded = prepare(arm_config(cfg, "C", seed, workdir))
    with open(log_path, "w", encoding="utf-8") as log:
        for arm in arms:
            t = time.monotonic()
            if arm == "D":
                rec = run_trainer_arm(cfg, space, data, factory, encoded, seed, workdir, log)
            elif arm == "P":
                rec = run_parallel_arm(cfg, seed, workdir, len(data.train), log, workers)
            else:
                rec = run_hpsearch_arm(cfg, arm, seed, workdir, len(data.train), log)
            recs[arm] = rec
            best = min((e["val_error"] for e in rec.events if e["val_error"] is not None), default=None)
            print(
                f"seed {seed} arm {arm}: {time.monotonic() - t:.0f} s, best val_error {best}, "
                f"{sum(x['epochs'] for x in rec.trials.values()):.1f} epochs",
                file=sys.stderr,
                flush=True,
            )
    trials = {arm: list(rec.trials.values()) for arm, rec in recs.items()}
    facts = data_facts(data, length_note(cfg, space, data, encoded))
    return recs, retrain_best(cfg, seed, trials, workdir, retrain), facts


def data_facts(data, length: str | None = None) -> dict[str, Any]:
    """The rows a seed's arms trained and were scored on (each seed draws its own sample and, without a
    validation file, its own validation split, so these differ by seed); ``length``: the search's line on
    length-grouped batches, where it has one."""
    return {
        "n_train": len(data.train),
        "n_validation": len(data.validation),
        "majority_val_error": data.majority_error(),  # rounded in the result file
        "constant_val_error": data.constant_error(),
        "length_note": length,
    }


def length_note(cfg, space, data, encoded) -> str | None:
    """What `hpsearch search` says when text length tells the classes apart (its arms batch by length, arm D
    does not, so the C-against-D rows then compare batching as well as searching)."""
    from hpsearch.search import smallest_batch
    from hpsearch.train import length_grouping_note

    if not cfg.train.group_by_length:
        return None
    lengths = [len(x) for x in encoded[0]["input_ids"]]
    return length_grouping_note(lengths, data.train.labels, smallest_batch(cfg, space))


def in_process(threads: int, fn, *args):
    """Call ``fn(*args)`` in a spawned process with the parent's thread count and quiet logging."""
    import optuna
    import torch

    if threads:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return fn(*args)


def die_with_parent() -> None:
    """Let the kernel kill this process when its parent dies (Linux; elsewhere a no-op).

    Without it, killing ``bench.run`` leaves its seed processes training on the cores for tens of minutes, and
    whatever runs next is timed against them.
    """
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def per_seed_map(jobs: int, threads: int, fn, seeds: list[int], args_of) -> dict[int, Any]:
    """``{seed: fn(*args_of(seed))}``, with up to ``jobs`` seeds side by side, one spawned process each (a
    forked torch can hang); each process prepares its own data and tokenizer."""
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(seeds)))
    if jobs == 1:
        return {s: fn(*args_of(s)) for s in seeds}
    with spawned_pool(jobs) as pool:
        futures = {s: pool.submit(in_process, threads, fn, *args_of(s)) for s in seeds}
        return {s: f.result() for s, f in futures.items()}


def spawned_pool(n: int):
    """A pool of ``n`` spawned processes (a forked torch can hang) that die with this one."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        max_workers=n, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent
    )


RETRAIN_SEED = 1000  # retraining seeds start here, away from every study seed's train.seed


@dataclasses.dataclass(frozen=True)
class Retrain:
    """How each arm's handed-over configuration is retrained (the --retrain-* flags)."""

    seeds: int = 3  # fresh seeds per configuration; 0 skips retraining
    epochs: str = "all"  # "all": every epoch, "best": the trial's best epoch (train-best --epochs)
    # hpsearch arms' ranking of complete trials: by their "best" epoch (what the tools hand over), or
    # "settled", the mean of their last third of epochs (an alternative, measured in BENCHMARKS.md)
    pick: str = "best"

    @classmethod
    def of(cls, args: argparse.Namespace) -> Retrain:
        return cls(args.retrain_seeds, args.retrain_epochs, args.retrain_pick)


def settled_error(val_errors: list[float]) -> float:
    """The mean of a curve's last third of epochs (at least one): its error once training has settled."""
    return statistics.fmean(val_errors[-max(1, len(val_errors) // 3) :])


def handed_over(
    arm: str, trials: list[dict], n_epochs: int, epochs: str = "all", pick: str = "best"
) -> tuple[dict, float, int] | None:
    """The trial an arm's search hands its user, its error and the epochs to retrain it for.

    Only complete trials: ``study.best_trial``, ``hpsearch best`` and ``train-best`` skip pruned and stopped
    ones (a trial pruned after epoch 3 whose epoch-2 error was the lowest of the study is not what a user
    gets). hpsearch's arms rank by a trial's best epoch and retrain, as ``train-best --epochs``, for every
    epoch ("all") or to that best epoch ("best"); arm D's ``Trainer.hyperparameter_search`` ranks by the error
    after the last epoch (its objective is the final evaluation) and its best run trains every epoch. D's
    records carry the states its study stored since 12-07; in older results, its complete trials are taken to
    be the ones that ran every epoch (a trial pruned after its last evaluation counted). ``pick="settled"`` ranks
    hpsearch's arms by ``settled_error`` instead, which no tool does: an alternative, measured.
    """
    complete = [
        t
        for t in trials
        if t["val_errors"]
        and t.get("state", "COMPLETE" if len(t["val_errors"]) >= n_epochs else "PRUNED") == "COMPLETE"
    ]
    if not complete:
        return None
    if arm == "D":
        t = min(complete, key=lambda t: (t["val_errors"][-1], t["number"]))
        return t, t["val_errors"][-1], len(t["val_errors"])
    rank = min if pick == "best" else settled_error
    t = min(complete, key=lambda t: (rank(t["val_errors"]), t["number"]))
    error = min(t["val_errors"])
    return t, error, t["val_errors"].index(error) + 1 if epochs == "best" else n_epochs


def trial_params(t: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters a recorded trial trained with, but its seed; results from before 12-03 recorded
    only the learning rate and batch size."""
    return dict(t.get("params") or {"learning_rate": t["learning_rate"], "batch_size": t["batch_size"]})


def seed_trainer(cfg, seed: int, workdir: Path):
    """``train(params, run_seed, n_epochs) -> val_error`` after the last epoch (4 decimals), on this study
    seed's rows with hpsearch's loop as ``train-best`` runs it, and no divergence stop (measure it all); the
    data and tokenizer are prepared once."""
    from types import SimpleNamespace

    from hpsearch.best_model import _train_one, trial_hyperparameters
    from hpsearch.search import prepare
    from hpsearch.train import resolve_device

    seed_cfg = arm_config(cfg, "A", seed, workdir)  # this seed's rows, the search's train.seed; no stop
    _, data, factory, encoded = prepare(seed_cfg)
    device = resolve_device(cfg.train.device)

    def train(params: dict[str, Any], run_seed: int, n_epochs: int) -> float:
        hp = {**trial_hyperparameters(seed_cfg, SimpleNamespace(params=params)), "seed": run_seed}
        return round(_train_one(seed_cfg, data, factory, encoded, hp, n_epochs, device)[0].val_error, 4)

    return train


def retrain_best(
    cfg, seed: int, trials: dict[str, list[dict]], workdir: Path, retrain: Retrain
) -> dict[str, Any]:
    """Each arm's best trial (``handed_over``), retrained with ``retrain.seeds`` fresh seeds, as ``hpsearch
    train-best`` does.

    "Best validation error" picks the luckiest of many noisy evaluations, and an arm that evaluates more
    epochs (no pruning) gets more draws. What a user keeps from a search is its hyperparameters: here the
    best trial's hyperparameters (all of them: ``trial_params``) are trained again, with hpsearch's loop for every arm, for the
    epochs ``handed_over`` names, and scored on the same validation rows after the last (no pick among
    epochs).
    """
    if retrain.seeds < 1:
        return {}
    train = seed_trainer(cfg, seed, workdir)
    done: dict[tuple, list[float]] = {}  # arms that found the same configuration share its retraining
    out = {}
    for arm, arm_trials in trials.items():
        picked = handed_over(arm, arm_trials, cfg.train.n_epochs, retrain.epochs, retrain.pick)
        if picked is None:
            continue
        t, error, n_epochs = picked
        params = trial_params(t)
        key = (json.dumps(params, sort_keys=True), n_epochs)
        if key not in done:
            done[key] = [train(params, RETRAIN_SEED + k, n_epochs) for k in range(retrain.seeds)]
        out[arm] = {
            "trial": t["number"],
            "learning_rate": t["learning_rate"],
            "batch_size": t["batch_size"],
            "params": params,
            "epochs": n_epochs,
            "search_val_error": round(error, 4),
            "val_errors": done[key],
            "mean": round(statistics.fmean(done[key]), 4),
        }
    return out


def merge_into(path: Path, other_path: Path) -> int:
    """Add ``other_path``'s seeds (and progress lines) to the result at ``path``; figures recomputed."""
    from hpsearch.errors import ConfigError

    other = read_result(other_path, "--merge")
    result = read_result(path, "--out (the result to merge into)")

    def key(r):  # what must match
        # results from before 12-03 carry no recipe: they retrained to the best epoch
        recipe = r.get("retrain_epochs", "best"), r.get("retrain_pick", "best")
        return r["overrides"], r["arms"], comparable(r["resolved_config"]), recipe

    if key(result) != key(other) or set(result["seeds"]) & set(other["seeds"]):
        raise ConfigError(
            f"--merge: {other_path} must come from the same config, overrides, arms and --retrain-epochs/-pick as"
            f" {path}, with other seeds"
        )
    first = {"command": result["command"], "seeds": result["seeds"], "total_seconds": result["total_seconds"]}
    result["per_seed"].update(other["per_seed"])
    if "per_seed_data" in result or "per_seed_data" in other:  # results from before 12-04 have none
        result["per_seed_data"] = {**result.get("per_seed_data", {}), **other.get("per_seed_data", {})}
    result["seeds"] = sorted(result["seeds"] + other["seeds"])
    result["runs"] = [
        *result.get("runs", [first]),
        {"command": other["command"], "seeds": other["seeds"], "total_seconds": other["total_seconds"]},
    ]
    result["total_seconds"] = round(result["total_seconds"] + other["total_seconds"], 1)
    result["throughput"] = result["throughput"] or other["throughput"]
    summaries = {int(s): v for s, v in result["per_seed"].items()}
    result["aggregate"] = aggregate(summaries, list(result["arms"]))
    result["targets"] = check_targets(result["aggregate"], result["throughput"])
    result["same_compute"] = same_compute(result["aggregate"])
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    with open(path.with_suffix(".progress.txt"), "a", encoding="utf-8") as log:
        log.write(other_path.with_suffix(".progress.txt").read_text(encoding="utf-8"))
    print_summary(result, sys.stdout)
    return 0


def retrain_from(args, path: Path) -> int:
    """Add the retrained-best figures to an earlier result, with the config and overrides it was run with."""

    result = read_result(path, "--retrain-from")
    cfg = result_config(args.config if args.config_given else None, result, "--retrain-from")
    seeds, arms = result["seeds"], list(result["arms"])
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as tmp:
        retrained = per_seed_map(
            args.jobs,
            args.threads,
            retrain_best,
            seeds,
            lambda s: (
                cfg,
                s,
                {a: result["per_seed"][str(s)][a]["trials"] for a in arms},
                Path(tmp),
                Retrain.of(args),
            ),
        )
    for s, by_arm in retrained.items():
        for arm, figures in by_arm.items():
            result["per_seed"][str(s)][arm]["retrained_best"] = figures
    summaries = {int(s): v for s, v in result["per_seed"].items()}
    result["aggregate"] = aggregate(summaries, arms)
    result["targets"] = check_targets(result["aggregate"], result["throughput"])
    result["same_compute"] = same_compute(result["aggregate"])
    result["retrained_with"] = "python -m bench.run " + " ".join(sys.argv[1:])
    result["retrain_epochs"] = args.retrain_epochs
    result["retrain_pick"] = args.retrain_pick
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print_summary(result, sys.stdout)
    return 0


def run_all(
    args, cfg, sets, seeds, arms, space, data, factory, encoded, workdir: Path, out: Path
) -> dict[str, Any]:
    log_path = out.with_suffix(".progress.txt")  # every trial's progress lines, for reading after the run
    started = time.monotonic()
    runs = per_seed_map(
        args.jobs,
        args.threads,
        run_seed,
        seeds,
        lambda s: (
            cfg,
            s,
            arms,
            workdir,
            log_path.with_suffix(f".seed{s}.txt"),
            Retrain.of(args),
            args.workers,
        ),
    )
    per_seed = {s: recs for s, (recs, *_) in runs.items()}
    facts = {s: run[2] for s, run in runs.items()}
    with open(log_path, "w", encoding="utf-8") as log:
        for s in seeds:
            part = log_path.with_suffix(f".seed{s}.txt")
            log.write(part.read_text(encoding="utf-8"))
            part.unlink()
    throughput = None  # measured alone, after the arms, so nothing else of the benchmark runs beside it
    if args.throughput_repeats > 0:
        bs = 32 if 32 in _batch_sizes(space) else int(_batch_sizes(space)[0])
        throughput = measure_throughput(cfg, data, factory, encoded, workdir, bs, args.throughput_repeats)
    summaries: dict[int, dict[str, Any]] = {}
    for seed, recs in per_seed.items():
        target = seed_target(recs)  # 0.5 points above the best of the issue's four arms
        # "learned": better than any constant guess, not only than the training set's most common class
        bar = facts[seed]["constant_val_error"]
        summaries[seed] = {arm: summarise_arm(rec, target, bar) for arm, rec in recs.items()}
        for arm, retrained in runs[seed][1].items():
            summaries[seed][arm]["retrained_best"] = retrained
    agg = aggregate(summaries, arms)
    rounded = {
        s: {**f, **{k: round(f[k], 4) for k in ("majority_val_error", "constant_val_error")}}
        for s, f in facts.items()
    }
    return {
        "command": "python -m bench.run " + " ".join(sys.argv[1:] if args is not None else []),
        "config": str(args.config),
        "overrides": sets,
        "resolved_config": cfg.to_dict(),
        "machine": machine(),
        "total_seconds": round(time.monotonic() - started, 1),
        **rounded[seeds[0]],  # the first seed's; every seed's in per_seed_data
        "per_seed_data": {str(s): rounded[s] for s in seeds},
        "seeds": seeds,
        "arms": {a: ARMS[a] for a in arms},
        "aggregate": agg,
        "targets": check_targets(agg, throughput),
        "same_compute": same_compute(agg),
        "throughput": throughput,
        "retrain_epochs": args.retrain_epochs,
        "retrain_pick": args.retrain_pick,
        "per_seed": {str(s): v for s, v in summaries.items()},
    }


def _batch_sizes(space) -> list[int]:
    """The batch sizes the trials can train with: the choices, 32 or the nearest end of a range, or the fixed."""
    for p in space.params:
        if p.name == "batch_size" and p.choices:
            return [int(c) for c in p.choices]
        if p.name == "batch_size":
            return [int(min(max(32, p.low), p.high))]
    return [int(space.fixed.get("batch_size", 32))]


def nothing_learned(result: dict[str, Any]) -> list[str]:
    """``seed (error)`` for each seed where no arm's best error got under a constant guess's by LEARNED_MARGIN (by
    half of it where that is smaller: very imbalanced data), the lowest constant error where the result has it,
    else the majority-class error: every arm sat on a constant prediction, and "reached the target" and "no
    worse" held for all of them."""
    quiet = []
    for seed, by_arm in result.get("per_seed", {}).items():
        facts = result.get("per_seed_data", {}).get(seed, result)
        bar = facts.get("constant_val_error", facts.get("majority_val_error"))
        bests = [f["best_val_error"] for f in by_arm.values() if f.get("best_val_error") is not None]
        if bar is not None and not any(b < bar - min(LEARNED_MARGIN, bar / 2) for b in bests):
            quiet.append(f"{seed} ({bar:g})")
    return quiet


def print_summary(result: dict[str, Any], stream) -> None:
    w = stream.write
    agg = result["aggregate"]
    facts = list(result.get("per_seed_data", {}).values()) or [result]

    def span(key: str) -> str:
        low, high = min(f[key] for f in facts), max(f[key] for f in facts)
        return f"{low}" if low == high else f"{low}-{high}"

    w(
        f"{span('n_train')} train / {span('n_validation')} validation rows, majority-class error "
        f"{span('majority_val_error')}, seeds {result['seeds']}, {result['total_seconds']:.0f} s\n\n"
    )
    notes: dict[str, list[str]] = {}
    for seed, f in result.get("per_seed_data", {}).items():
        if f.get("length_note"):
            notes.setdefault(f["length_note"].split(": ", 1)[1].split(";")[0], []).append(seed)
    for note, seeds in notes.items():
        w(
            f"warning: seed(s) {', '.join(seeds)}: {note}; hpsearch's arms batch by length and arm D does not,"
            " so its rows compare batching too: rerun with --set train.group_by_length=false to compare searches"
            " alone\n\n"
        )
    if quiet := nothing_learned(result):
        w(
            f"warning: nothing learned on seed(s) {', '.join(quiet)}: no arm's best val error beat the error"
            " of a constant guess (in brackets), so the to-target and no-worse rows below compare noise (check"
            " the labels, the learning-rate range, the epochs)\n\n"
        )
    w(
        "| arm | best val error | epochs | wall s | s to target | epochs to target | reached | best retrained |"
        " best within C's epochs |\n"
    )
    w("|---|---|---|---|---|---|---|---|---|\n")

    def cell(f):
        if f is None or f["median"] is None:
            return "-"
        return f"{f['median']:g} ({f['min']:g}-{f['max']:g})"

    for arm, fig in agg.items():
        w(
            f"| {arm} | "
            + " | ".join(cell(fig[n]) for n in FIGURES)
            + f" | {fig['reached_target']} | {cell(fig['retrained_best_mean'])}"
            + f" | {cell(fig.get('best_at_c_epochs'))} |\n"
        )
    w(
        "\nMedian (min-max) over seeds; s and epochs to target over the seeds that reached it (reached: how"
        " many); the targets below count every seed.\n"
    )
    w("\n| target | value | met | note |\n|---|---|---|---|\n")
    for t in result["targets"]:
        verdict = "n/a" if t["met"] is None else "met" if t["met"] else "MISSED"
        w(f"| {t['target']} | {t['value']} | {verdict} | {t.get('note', '')} |\n")
    if result.get("same_compute"):
        sc = result["same_compute"]
        w(
            f"\nsame compute (E against A, medians): E ran {sc['E_trials_median']:g} trials in"
            f" {sc['E_epochs_over_A']:g}x A's epochs; best error E - A {sc['E_best_minus_A_best']},"
            f" retrained E - A {sc['E_retrained_minus_A_retrained']}\n"
        )
    if result["throughput"]:
        w(
            f"\nthroughput (samples/s, batch {result['throughput']['batch_size']}, best of "
            f"{result['throughput']['repeats']}): {result['throughput']['samples_per_second_best']}\n"
        )


if __name__ == "__main__":
    sys.exit(main())
