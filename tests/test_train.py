"""The training loop: divergence stop, out-of-memory handling, precision, checkpoints, length-grouped batches.

A GPU running out of memory cannot happen on a CPU, so those tests inject ``torch.OutOfMemoryError`` into
``FineTuning._forward_backward``; everything else is a real tiny model on real (demo) data.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import math
import random
import weakref

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

from hpsearch.cli import cli
from hpsearch.config import DataSection, ModelSection, TrainSection, load_config
from hpsearch.data import load_data, tokenize
from hpsearch.errors import ConfigError
from hpsearch.models import ModelFactory
from hpsearch.search import Reporter, run_search
from hpsearch.train import (
    CHANCE_MAX_STEPS,
    DIVERGENCE_MIN_STEPS,
    DivergenceRule,
    FineTuning,
    batches,
    resolve_precision,
)

HP = {
    "learning_rate": 1e-3,
    "batch_size": 16,
    "weight_decay": 0.0,
    "warmup_ratio": 0.0,
    "dropout": 0.1,
    "seed": 0,
    "lr_scheduler": "linear",
    "max_grad_norm": 1.0,
}


@pytest.fixture(scope="module")
def demo():
    """300 demo sentences (270 train / 30 validation), a tiny tokenizer and their token ids."""
    data = load_data(DataSection(name="demo", demo_size=300))
    factory = ModelFactory(ModelSection(name="tiny", max_length=32), data.label_names, data.train.texts)
    encoded = tokenize(data, factory.tokenizer, 32, ("test_train", id(data)))
    return data, factory, encoded


def fine_tuning(demo, n_epochs=1, dropout=0.1, model_seed=0, **changes) -> FineTuning:
    data, factory, encoded = demo
    hp = {**HP, **{k: v for k, v in changes.items() if k in HP}}
    settings = TrainSection(
        n_epochs=n_epochs, device="cpu", **{k: v for k, v in changes.items() if k not in HP}
    )
    return FineTuning.on(
        factory.build(model_seed, dropout), data, encoded, hp, settings, factory.tokenizer.pad_token_id
    )


def fake_loss(monkeypatch, value_at):
    """Replace the training loss by ``value_at(call)`` (None: the real loss); backward still runs."""
    original = FineTuning._forward_backward
    calls = []

    def forward_backward(self, batch, scale):
        loss = original(self, batch, scale)
        calls.append(1)
        value = value_at(len(calls))
        return loss if value is None else torch.tensor(value)

    monkeypatch.setattr(FineTuning, "_forward_backward", forward_backward)


def oom_above(monkeypatch, limit: int, error: Exception | None = None):
    """Micro-batches larger than ``limit`` examples run out of memory, as they would on a small GPU (``error``:
    the exception raised, by default torch's out-of-memory error)."""
    original = FineTuning._forward_backward
    seen = []

    def forward_backward(self, batch, scale):
        seen.append(batch["input_ids"].shape[0])
        if batch["input_ids"].shape[0] > limit:
            raise error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return original(self, batch, scale)

    monkeypatch.setattr(FineTuning, "_forward_backward", forward_backward)
    return seen


# --- divergence -------------------------------------------------------------------------------------------


def test_nan_loss_stops_the_trial_within_its_first_epoch(demo, monkeypatch):
    fake_loss(monkeypatch, lambda call: math.nan if call >= 4 else None)
    run = fine_tuning(demo, n_epochs=3)
    results = list(run.epochs())
    assert len(results) == 1
    assert results[0].diverged and results[0].epoch == 1
    assert "loss became nan" in results[0].reason
    assert results[0].samples == 4 * HP["batch_size"] < len(demo[0].train)


def test_loss_worse_than_a_uniform_guess_stops_after_a_quarter_of_epoch_one(demo, monkeypatch):
    fake_loss(monkeypatch, lambda call: 1.0)  # > 1.15 * ln 2: bouncing, never exploding past 2x its start
    run = fine_tuning(demo, n_epochs=3, batch_size=8)
    (result,) = list(run.epochs())
    assert result.diverged and "worse than a uniform guess" in result.reason
    steps = result.samples // 8
    assert 8 <= steps < run.steps_per_epoch


def first_firing(rule: DivergenceRule, loss: float, n_steps: int) -> tuple[int, str] | None:
    for step in range(1, n_steps + 1):
        reason = rule.check(loss, step)
        if reason:
            return step, reason
    return None


@pytest.mark.parametrize(
    "steps_per_epoch, batch_size, fires_at",
    [
        (12, 64, DIVERGENCE_MIN_STEPS),  # a short epoch: the EMA still needs its settling steps
        (200, 32, 50),  # a quarter of epoch 1
        (40_000, 32, CHANCE_MAX_STEPS),  # a long epoch: capped, not 10,000 steps of a hopeless trial
        (40, 8, 32),  # small batches: judged on at least 256 examples, not on 10 noisy batches
    ],
)
def test_worse_than_chance_waits_a_quarter_of_epoch_one_within_its_bounds(
    steps_per_epoch, batch_size, fires_at
):
    found = first_firing(DivergenceRule(math.log(2), steps_per_epoch, batch_size), 1.0, steps_per_epoch)
    assert found is not None
    assert found[0] == fires_at
    assert "worse than a uniform guess" in found[1]


def test_a_few_bad_batches_do_not_stop_a_learner():
    # The shape of all-MiniLM-L6-v2 at lr 3e-4, batch 8, on 600 SST-2 rows: near ln 2, a burst of bad batches that
    # lifts the EMA over the bar for ~13 steps, then learning (it ended at 0.22 error).
    losses = [0.68] * 24 + [1.8, 2.8, 2.2, 1.6, 1.0] + [0.6] * 46
    before = {"chance_median": False, "chance_min_samples": 0, "chance_max_steps": math.inf}
    for settings, stops in (({}, False), (before, True)):  # the rule before 2026-12 stopped it
        rule = DivergenceRule(math.log(2), steps_per_epoch=75, batch_size=8, **settings)
        fired = [step for step, loss in enumerate(losses, start=1) if rule.check(loss, step)]
        assert bool(fired) is stops, (settings, fired)


def test_worse_than_chance_counts_classes():
    # ln 4 = 1.39: a loss of 1.0 is no worse than a uniform guess over four classes
    assert first_firing(DivergenceRule(math.log(4), 40_000, batch_size=32), 1.0, 2 * CHANCE_MAX_STEPS) is None
    assert (
        first_firing(DivergenceRule(math.log(4), 40_000, batch_size=32), 1.7, 2 * CHANCE_MAX_STEPS)[0]
        == CHANCE_MAX_STEPS
    )


def test_loss_at_chance_level_is_not_stopped(demo, monkeypatch):
    # A from-scratch model sits near ln 2 for most of epoch 1 before it learns: that must not count as divergence.
    fake_loss(monkeypatch, lambda call: 0.70)
    results = list(fine_tuning(demo, n_epochs=2, batch_size=8).epochs())
    assert [r.epoch for r in results] == [1, 2]
    assert not any(r.diverged or r.divergence for r in results)


def test_exploding_loss_stops_the_trial(demo, monkeypatch):
    fake_loss(monkeypatch, lambda call: 0.3 if call <= 10 else 0.3 * 1.3 ** (call - 10))
    (result,) = list(fine_tuning(demo, n_epochs=2, batch_size=8).epochs())
    assert result.diverged and "climbed" in result.reason


def test_a_healthy_trial_trips_no_divergence_rule(demo):
    results = list(fine_tuning(demo, n_epochs=2, batch_size=16, learning_rate=1e-3).epochs())
    assert [r.epoch for r in results] == [1, 2]
    assert not any(r.diverged or r.divergence for r in results)


def test_divergence_stop_off_records_the_rule_and_trains_on(demo, monkeypatch):
    fake_loss(monkeypatch, lambda call: math.nan if call in (3, 20) else None)
    results = list(fine_tuning(demo, n_epochs=2, divergence_stop=False).epochs())
    assert [r.epoch for r in results] == [1, 2]
    assert not any(r.diverged for r in results)
    # the first rule that fired, not the last: 17 steps an epoch, so step 20 is in epoch 2
    assert all(r.divergence == "loss became nan at epoch 1, step 3" for r in results)


def test_diverged_trials_are_pruned_with_the_reason_and_the_study_goes_on(make_config, workdir, monkeypatch):
    fake_loss(monkeypatch, lambda call: math.nan)
    cfg = load_config(make_config(study={"n_trials": 2, "name": "nan"}))
    result = run_search(cfg, reporter=Reporter(io.StringIO()))
    study = optuna.load_study(study_name="nan", storage=cfg.study.storage)
    assert result.stopped_by == "budget"
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert all(t.user_attrs["prune_reason"].startswith("diverged: loss became nan") for t in study.trials)
    assert all(t.user_attrs["epochs_run"] == 0 for t in study.trials)
    # the batch it trained before the stop counts towards study.epoch_budget
    assert all(0 < t.user_attrs["partial_epoch"] < 1 for t in study.trials)


# --- out of memory ----------------------------------------------------------------------------------------


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_batch_size(demo, monkeypatch):
    seen = oom_above(monkeypatch, 5)
    run = fine_tuning(demo, batch_size=16)
    (result,) = list(run.epochs())
    n = len(demo[0].train)
    assert not result.diverged and result.samples == n
    assert result.micro_batch_size == 4  # 16 -> 8 -> 4
    assert run.batch_size == 16
    # optimizer steps: one per batch of 16, as without OOM
    assert run.scheduler.last_epoch == math.ceil(n / 16)
    assert max(s for s in seen[3:]) <= 4  # after the first batch found the size, nothing larger was tried


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: you tried to allocate 8",
    ],
)
def test_allocation_failures_reported_as_runtime_errors_halve_the_micro_batch_too(demo, monkeypatch, message):
    """cuBLAS, cuDNN and the CPU allocator report running out of memory as a plain RuntimeError."""
    oom_above(monkeypatch, 5, RuntimeError(message))
    run = fine_tuning(demo, batch_size=16)
    run._step(list(range(16)))
    assert run.micro_batch_size == 4 and run.scheduler.last_epoch == 1


def test_other_runtime_errors_are_not_taken_for_out_of_memory(demo, monkeypatch):
    oom_above(monkeypatch, 5, RuntimeError("CUDA error: device-side assert triggered"))
    run = fine_tuning(demo, batch_size=16)
    with pytest.raises(RuntimeError, match="device-side assert"):
        run._step(list(range(16)))
    assert run.micro_batch_size == 16


def test_micro_batches_give_the_gradients_of_the_full_batch(demo, monkeypatch):
    idx = list(range(16))
    full = fine_tuning(demo, dropout=0.0, batch_size=16)
    full._step(idx)
    oom_above(monkeypatch, 5)
    split = fine_tuning(demo, dropout=0.0, batch_size=16)
    split._step(idx)
    assert split.micro_batch_size == 4
    for (name, a), b in zip(full.model.named_parameters(), split.model.parameters(), strict=True):
        if a.grad is None:
            assert b.grad is None, name
            continue
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name


def test_out_of_memory_in_evaluation_halves_the_evaluation_batch(demo, monkeypatch):
    run = fine_tuning(demo, eval_batch_size=32)
    expected = run.evaluate()
    original = run.model.forward

    def forward(**batch):
        if batch["input_ids"].shape[0] > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(**batch)

    run.model.forward = forward
    assert run.evaluate() == pytest.approx(expected, abs=1e-6)
    assert run.eval_micro_batch_size == 8


def search_where_the_first_trial_fails(make_config, workdir) -> optuna.Study:
    """A 2-trial search through the CLI: the first trial fails (no retry is queued for it) and the next two complete."""
    config = make_config(study={"n_trials": 2, "name": "oom"}, train={"n_epochs": 1})
    result = CliRunner().invoke(cli, ["search", str(config)])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="oom", storage=f"sqlite:///{workdir}/studies/oom.db")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    return study


def test_out_of_memory_at_micro_batch_one_fails_the_trial_and_the_study_goes_on(
    make_config, workdir, monkeypatch
):
    """The first trial cannot fit even one example: it is marked failed with the reason; the others run."""
    original_init, original_fb = FineTuning.__init__, FineTuning._forward_backward
    made = []

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        made.append(self)
        self.doomed = len(made) == 1

    def forward_backward(self, batch, scale):
        if self.doomed:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original_fb(self, batch, scale)

    monkeypatch.setattr(FineTuning, "__init__", init)
    monkeypatch.setattr(FineTuning, "_forward_backward", forward_backward)
    study = search_where_the_first_trial_fails(make_config, workdir)
    assert "out of memory even with micro-batch 1" in study.trials[0].user_attrs["fail_reason"]
    assert all(t.user_attrs["micro_batch_size"] in (16, 32) for t in study.trials[1:])


def test_out_of_memory_in_the_optimizer_step_fails_the_trial_with_the_reason(
    make_config, workdir, monkeypatch
):
    """Optimizer state that does not fit: no micro-batch helps, so the trial fails at once and the next runs."""
    original_init = FineTuning.__init__
    made = []

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        made.append(self)
        if len(made) == 1:

            def doomed_step(*a, **kw):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 84.00 MiB (injected)")

            self.optimizer.step = doomed_step

    monkeypatch.setattr(FineTuning, "__init__", init)
    study = search_where_the_first_trial_fails(make_config, workdir)
    reason = study.trials[0].user_attrs["fail_reason"]
    assert reason.startswith("out of memory in the optimizer step") and "micro-batches cannot help" in reason
    assert made[0].micro_batch_size == made[0].batch_size  # it did not halve the micro-batch in vain


def test_release_drops_the_model(demo):
    run = fine_tuning(demo)
    next(run.epochs())
    model = weakref.ref(run.model)
    optimizer = weakref.ref(run.optimizer)
    run.release()
    gc.collect()
    assert model() is None and optimizer() is None
    run.release()  # twice is harmless


# --- precision --------------------------------------------------------------------------------------------


def test_bf16_trains_under_cpu_autocast(demo):
    run = fine_tuning(demo, precision="bf16")
    assert run.dtype == torch.bfloat16
    seen = []
    original = run.model.forward

    def forward(**batch):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return original(**batch)

    run.model.forward = forward
    (result,) = list(run.epochs())
    assert seen and all(s == (True, torch.bfloat16) for s in seen)
    assert math.isfinite(result.train_loss) and math.isfinite(result.val_loss)
    assert next(run.model.parameters()).dtype == torch.float32  # master weights stay fp32


@pytest.mark.parametrize(
    ("precision", "expected"), [("fp32", None), ("auto", None), ("bf16", torch.bfloat16)]
)
def test_precision_on_cpu(precision, expected):
    assert resolve_precision(precision, torch.device("cpu")) == expected


@pytest.mark.parametrize(
    ("capability", "expected"), [((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16), ((7, 0), torch.float16)]
)
def test_auto_precision_is_bf16_only_where_the_gpu_has_it(monkeypatch, capability, expected):
    # torch.cuda.is_bf16_supported() says yes on a V100 or T4 too (7.x): bf16 tensors can be made there, but bf16
    # is emulated without tensor cores. Those cards get fp16 and its loss scaler.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    assert resolve_precision("auto", torch.device("cuda")) == expected
    if expected == torch.float16:
        with pytest.raises(ConfigError, match="bf16 is not supported by Tesla V100"):
            resolve_precision("bf16", torch.device("cuda"))


def fp16_scaler(run: FineTuning) -> torch.amp.GradScaler:
    """An enabled loss scaler, as on an fp16 GPU (the CPU's one does the same bookkeeping)."""
    run.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    return run.scaler


def test_a_step_the_fp16_scaler_skips_does_not_advance_the_schedule(demo, monkeypatch):
    """Overflowing fp16 gradients (the first steps at scale 2^16): the scaler skips the optimizer step and halves
    its scale; the learning-rate schedule must not move either, or its warmup is spent on steps never taken."""
    original = FineTuning._forward_backward
    overflow = [True]

    def forward_backward(self, batch, scale):
        loss = original(self, batch, scale)
        if overflow[0]:
            next(self.model.parameters()).grad.view(-1)[0] = math.inf
        return loss

    monkeypatch.setattr(FineTuning, "_forward_backward", forward_backward)
    run = fine_tuning(demo, n_epochs=2, warmup_ratio=0.5)
    scaler = fp16_scaler(run)
    before = [p.detach().clone() for p in run.model.parameters()]
    lr = run.optimizer.param_groups[0]["lr"]
    loss = run._step(list(range(16)))
    assert math.isfinite(float(loss))  # the forward pass was fine: not a divergence
    assert scaler.get_scale() == 2.0**15
    assert all(torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))
    assert run.scheduler.last_epoch == 0 and run.optimizer.param_groups[0]["lr"] == lr
    overflow[0] = False
    run._step(list(range(16)))
    assert scaler.get_scale() == 2.0**15 and run.scheduler.last_epoch == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))


def test_a_checkpoint_without_a_scaler_resumes_on_an_fp16_gpu(demo):
    """Written where no scaler runs (bf16, fp32: its state is empty), resumed by a worker on an fp16-only GPU."""
    first = fine_tuning(demo, n_epochs=2)
    next(first.epochs())
    state = first.state_dict()
    assert state["scaler"] == {}
    resumed = fine_tuning(demo, n_epochs=2)
    fp16_scaler(resumed)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1 and resumed.scaler.get_scale() == 2.0**16
    (again,) = list(resumed.epochs())
    assert again.epoch == 2 and math.isfinite(again.train_loss)


def test_fp16_on_cpu_is_refused_before_anything_is_written(make_config, workdir):
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_precision("fp16", torch.device("cpu"))
    config = make_config(train={"precision": "fp16", "device": "cpu"})
    result = CliRunner().invoke(cli, ["search", str(config)])
    assert result.exit_code == 2
    assert "fp16 needs a GPU" in result.output and "Traceback" not in result.output
    assert not (workdir / "studies").exists()


# --- checkpoints ------------------------------------------------------------------------------------------


def test_resuming_after_epoch_one_gives_the_uninterrupted_epoch_two(demo):
    through = fine_tuning(demo, n_epochs=2)
    expected = list(through.epochs())[1]

    first = fine_tuning(demo, n_epochs=2)
    gen = first.epochs()
    next(gen)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # as the objective writes it to disk
    first.release()
    random.random()
    torch.rand(3)  # the resuming process has its own RNG history
    resumed = fine_tuning(demo, n_epochs=2, model_seed=123)
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    # the divergence stop goes on with the same window of recent losses, not an empty one
    assert resumed.rule.recent == first.rule.recent and len(resumed.rule.recent) == resumed.rule.chance_wait()
    assert resumed.rule.loss_ema == first.rule.loss_ema and resumed.rule.loss_start == first.rule.loss_start
    (again,) = list(resumed.epochs())
    assert again.epoch == 2
    assert again.train_loss == pytest.approx(expected.train_loss, rel=1e-5)
    assert again.val_loss == pytest.approx(expected.val_loss, rel=1e-5)
    assert again.val_error == expected.val_error
    for a, b in zip(through.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_checkpoint_that_holds_every_gpus_rng_state_resumes_where_one_gpu_is_visible(demo, monkeypatch):
    """Written by a process that saw 8 GPUs (older checkpoints kept every GPU's RNG state), resumed by a worker
    that sees one (``--gpus``: CUDA_VISIBLE_DEVICES): only the training GPU's state is restored."""
    first = fine_tuning(demo, n_epochs=2)
    next(first.epochs())
    state = first.state_dict()
    assert state["rng"]["cuda"] is None  # trained on the CPU: no GPU state to keep
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    state["rng"]["cuda"] = states
    restored = {}

    def set_rng_state(new_state, device="cuda"):
        index = device if isinstance(device, int) else torch.device(device).index or 0
        if index >= 1:  # as torch: one generator per visible GPU
            raise IndexError("tuple index out of range")
        restored[index] = new_state

    resumed = fine_tuning(demo, n_epochs=2)
    resumed.device = torch.device("cuda")  # as on a GPU; load_state_dict only reads it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(
        torch.cuda, "set_rng_state_all", lambda new: [set_rng_state(s, i) for i, s in enumerate(new)]
    )
    resumed.load_state_dict(state)
    assert list(restored) == [0] and torch.equal(restored[0], states[0])


# --- the early evaluation (train.early_eval) ---------------------------------------------------------------


def test_an_early_evaluation_part_way_through_epoch_one_leaves_training_unchanged(demo):
    plain = list(fine_tuning(demo, n_epochs=2).epochs())
    run = fine_tuning(demo, n_epochs=2)
    early, *ends = list(run.epochs(early_eval=0.25))
    assert early.early and early.epoch == 1 and not early.diverged
    assert early.samples == round(0.25 * run.steps_per_epoch) * 16  # 270 rows, batch 16: 17 steps, 4 of them
    assert 0 <= early.val_error <= 1 and math.isfinite(early.val_loss) and early.eval_seconds > 0
    assert [(r.epoch, r.early) for r in ends] == [(1, False), (2, False)]
    for with_early, without in zip(ends, plain, strict=True):
        assert with_early.samples == without.samples  # epoch 1's figures cover the whole epoch
        assert with_early.val_error == without.val_error
        assert with_early.train_loss == pytest.approx(without.train_loss, rel=1e-6)
    assert ends[0].eval_seconds > early.eval_seconds  # epoch 1's evaluation time includes the early one


@pytest.mark.parametrize("share, step", [(None, 0), (0.25, 4), (0.01, 1), (0.99, 0)])
def test_the_early_evaluation_is_inside_epoch_one_or_nowhere(demo, share, step):
    run = fine_tuning(demo)  # 17 steps per epoch: the last one is epoch 1's own evaluation
    assert run.early_eval_step(share) == step


def test_a_resumed_trial_has_no_early_evaluation(demo):
    first = fine_tuning(demo, n_epochs=2)
    next(first.epochs())
    state = first.state_dict()
    resumed = fine_tuning(demo, n_epochs=2)
    resumed.load_state_dict(state)
    assert [(r.epoch, r.early) for r in resumed.epochs(early_eval=0.25)] == [(2, False)]


# --- batches ----------------------------------------------------------------------------------------------


def _padding(lengths, plan):
    return sum(lengths[i] for b in plan for i in b) / sum(max(lengths[i] for i in b) * len(b) for b in plan)


@pytest.mark.parametrize("grouped", [True, False])
def test_batches_cover_every_index_once(grouped):
    lengths = [random.Random(i).randint(3, 60) for i in range(1001)]
    plan = batches(lengths, 32, seed=7, group_by_length=grouped)
    flat = [i for b in plan for i in b]
    assert sorted(flat) == list(range(1001))
    assert sum(len(b) < 32 for b in plan) == 1  # only the tail is short: 1001 = 31 x 32 + 9


def test_length_grouped_batches_pad_less_than_random_ones(demo):
    rng = random.Random(0)
    lengths = [min(64, int(rng.lognormvariate(2.5, 0.6)) + 2) for _ in range(3000)]  # sentence-like skew
    grouped = _padding(lengths, batches(lengths, 32, seed=1, group_by_length=True))
    shuffled = _padding(lengths, batches(lengths, 32, seed=1, group_by_length=False))
    assert grouped > 0.9 > shuffled
    assert batches(lengths, 32, 1, True) != batches(lengths, 32, 2, True)  # the order still changes per epoch


def test_epoch_result_reports_padding_efficiency(demo):
    (result,) = list(fine_tuning(demo).epochs())
    assert 0 < result.padding_efficiency <= 1
    assert result.padding_efficiency == result.real_tokens / result.padded_tokens


def test_settings_default_to_stopping_divergence():
    assert dataclasses.asdict(TrainSection())["divergence_stop"] is True


@pytest.mark.parametrize(
    ("scheduler", "warmup_ratio", "factor"),
    [
        ("linear", 0.0, 0.75),
        ("cosine", 0.0, 0.5 * (1 + math.cos(math.pi / 4))),
        ("constant", 0.0, 1.0),
        ("linear", 0.5, 18 / 34),  # still warming up: step 18 of 34
    ],
)
def test_the_learning_rate_follows_its_schedule_over_every_epoch(demo, scheduler, warmup_ratio, factor):
    run = fine_tuning(demo, n_epochs=4, lr_scheduler=scheduler, warmup_ratio=warmup_ratio)
    next(run.epochs())  # epoch 1 of 4: 17 of 68 steps
    assert [g["lr"] for g in run.optimizer.param_groups] == pytest.approx([HP["learning_rate"] * factor] * 2)


def test_weight_decay_spares_biases_and_layer_norms(demo):
    run = fine_tuning(demo, weight_decay=0.01)
    decayed, spared = run.optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and spared["weight_decay"] == 0.0
    assert decayed["params"] and all(p.ndim >= 2 for p in decayed["params"])
    assert spared["params"] and all(p.ndim == 1 for p in spared["params"])
    assert len(decayed["params"]) + len(spared["params"]) == len(list(run.model.parameters()))


def test_a_resumed_run_keeps_the_micro_batch_that_fit_and_the_first_divergence(demo, monkeypatch):
    """A trial resumed on the GPU that ran out of memory starts with the micro-batch that fit, and still
    reports the divergence rule that fired before the checkpoint (train.divergence_stop: false)."""
    fake_loss(monkeypatch, lambda call: math.nan if call == 3 else None)
    seen = oom_above(monkeypatch, 5)
    first = fine_tuning(demo, n_epochs=2, divergence_stop=False)
    next(first.epochs())
    assert first.micro_batch_size == 4 and first.divergence.startswith("loss became nan")
    resumed = fine_tuning(demo, n_epochs=2, divergence_stop=False)
    resumed.load_state_dict(first.state_dict())
    seen.clear()
    (again,) = list(resumed.epochs())
    assert max(seen) <= 4  # no batch of 16 or 8 tried again: it ran out of memory before
    assert again.micro_batch_size == 4 and again.divergence == first.divergence


def test_length_grouped_batches_come_in_random_order_not_longest_first():
    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(3000)]
    plan = batches(lengths, 32, seed=1, group_by_length=True)
    longest = [max(lengths[i] for i in b) for b in plan]
    # sorted by length inside each run of 50 batches, then the batches are shuffled
    assert longest[:50] != sorted(longest[:50], reverse=True)
