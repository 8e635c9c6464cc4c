"""Search space: what a trial is asked for, fixed values, grids."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from hpsearch.config import DEFAULT_SEARCH_SPACE, Config, StudySection, TrainSection
from hpsearch.errors import ConfigError
from hpsearch.space import parse_space, suggest
from hpsearch.study import make_sampler

SPACE = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "batch_size": {"type": "categorical", "choices": [8, 16, 32, 64]},
    "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
    "seed": {"type": "int", "low": 0, "high": 100, "step": 10},
    "max_grad_norm": {"type": "int", "low": 1, "high": 64, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "lr_scheduler": {"type": "categorical", "choices": ["linear", "cosine"]},
    "weight_decay": 0.01,
}


@pytest.mark.parametrize("sampler_name", ["tpe", "random", "cmaes", "gp", "qmc"])
def test_suggest_stays_inside_every_range_and_choice(sampler_name):
    # The samplers as hpsearch builds them; cmaes, gp and qmc need their extra packages (cmaes, scipy).
    space = parse_space(SPACE)
    cfg = Config(study=StudySection(sampler=sampler_name, n_startup_trials=3), search_space=SPACE)
    study = optuna.create_study(sampler=make_sampler(cfg, space))
    for _ in range(8):
        trial = study.ask()
        hp = suggest(trial, space)
        assert 1e-5 <= hp["learning_rate"] <= 1e-1
        assert hp["batch_size"] in (8, 16, 32, 64) and type(hp["batch_size"]) is int
        assert any(abs(hp["warmup_ratio"] - v) < 1e-9 for v in (0.0, 0.1, 0.2, 0.3))
        assert hp["seed"] in range(0, 101, 10)
        assert 1 <= hp["max_grad_norm"] <= 64 and type(hp["max_grad_norm"]) is int
        assert 0.0 <= hp["dropout"] <= 0.3
        assert hp["lr_scheduler"] in ("linear", "cosine")
        assert hp["weight_decay"] == 0.01
        study.tell(trial, hp["learning_rate"])
    # The params recorded on the trials are the searched ones only; fixed values are not searched.
    assert set(study.trials[0].params) == set(SPACE) - {"weight_decay"}


def test_fixed_values_pass_through_without_asking_the_trial():
    space = parse_space({"learning_rate": 3e-4, "batch_size": 16, "lr_scheduler": "cosine"})
    assert space.params == ()
    trial = optuna.create_study().ask()
    assert suggest(trial, space) == {"learning_rate": 3e-4, "batch_size": 16, "lr_scheduler": "cosine"}
    assert trial.params == {}


def test_fixed_values_are_coerced_and_checked():
    assert parse_space({"learning_rate": "1e-4", "batch_size": 16.0}).fixed == {
        "learning_rate": 1e-4,
        "batch_size": 16,
    }
    with pytest.raises(ConfigError, match="search_space.warmup_ratio: must be in \\[0, 1\\], got 2.0"):
        parse_space({"warmup_ratio": 2})


def test_grid_values():
    space = parse_space(
        {
            "batch_size": {"type": "categorical", "choices": [16, 32]},
            "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
            "seed": {"type": "int", "low": 1, "high": 7, "step": 3},
            "max_grad_norm": {"type": "int", "low": 1, "high": 3},
        }
    )
    assert space.grid() == {
        "batch_size": [16, 32],
        "warmup_ratio": [0.0, 0.1, 0.2, 0.3],  # not 0.30000000000000004
        "seed": [1, 4, 7],
        "max_grad_norm": [1, 2, 3],
    }
    assert space.grid_size() == 2 * 4 * 3 * 3


def test_grid_sampler_visits_each_grid_point_once():
    space = parse_space(
        {
            "batch_size": {"type": "categorical", "choices": [16, 32]},
            "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space.grid(), seed=0))
    seen = []

    def objective(trial):
        hp = suggest(trial, space)
        seen.append((hp["batch_size"], hp["warmup_ratio"]))
        return 0.0

    study.optimize(objective, n_trials=20)  # the grid sampler stops the study when the grid is exhausted
    assert sorted(seen) == sorted((b, w) for b in (16, 32) for w in (0.0, 0.1, 0.2))


GRID = {
    "learning_rate": {"type": "categorical", "choices": [1e-3, 1e-2]},
    "batch_size": {"type": "categorical", "choices": [16, 32]},
}


@pytest.mark.parametrize("seed", [0, None])
def test_grid_workers_and_reruns_visit_each_point_once(seed):
    """A trial records its point as an index into the sampler's shuffled grid: every worker and every rerun
    must shuffle alike, or one point is run twice and another never (with "all 4 grid points tried"); with
    ``study.seed: null`` too."""
    space = parse_space(GRID)
    cfg = Config(study=StudySection(sampler="grid", seed=seed), search_space=GRID)
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="g", storage=storage)
    seen = []
    for worker, n_existing in [(0, 0), (1, 0), (0, 2), (2, 3)]:  # two workers, then a rerun with a third
        study = optuna.load_study(
            study_name="g", storage=storage, sampler=make_sampler(cfg, space, worker, n_existing)
        )
        trial = study.ask()
        seen.append(tuple(suggest(trial, space).values()))
        study.tell(trial, 0.5)
    assert sorted(seen) == sorted((lr, bs) for lr in (1e-3, 1e-2) for bs in (16, 32))
    assert study.sampler.is_exhausted(study)


def test_a_grid_point_running_elsewhere_is_taken():
    """With every point running or finished, Optuna's grid sampler hands out a running point again (it is not
    exhausted); ``unstarted`` tells the search loop to wait instead."""
    space = parse_space(GRID)
    cfg = Config(study=StudySection(sampler="grid"), search_space=GRID)
    study = optuna.create_study(sampler=make_sampler(cfg, space))
    trials = [study.ask() for _ in range(3)]
    for trial in trials:
        suggest(trial, space)
    assert study.sampler.unstarted(study) == 1
    last = study.ask()
    suggest(last, space)
    study.tell(trials[0], 0.5)
    assert study.sampler.unstarted(study) == 0 and not study.sampler.is_exhausted(study)
    for trial in [*trials[1:], last]:
        study.tell(trial, 0.5)
    assert study.sampler.is_exhausted(study)


def test_a_grid_point_given_back_is_not_visited():
    """A worker that asks past the budget gives its trial back untouched (failed): a later run with more
    trials must still run that point, and the grid is not complete without it."""
    from hpsearch.study import OVER_BUDGET_ATTR

    space = parse_space(GRID)
    cfg = Config(study=StudySection(sampler="grid"), search_space=GRID)
    study = optuna.create_study(sampler=make_sampler(cfg, space))
    given_back = study.ask()
    point = tuple(suggest(given_back, space).values())
    given_back.set_user_attr(OVER_BUDGET_ATTR, "another worker took the last trial of the budget")
    study.tell(given_back, state=optuna.trial.TrialState.FAIL)
    ran = []
    for _ in range(4):
        assert not study.sampler.is_exhausted(study) and study.sampler.unstarted(study) > 0
        trial = study.ask()
        ran.append(tuple(suggest(trial, space).values()))
        study.tell(trial, 0.5)
    assert point in ran and len(set(ran)) == 4
    assert study.sampler.is_exhausted(study)


def test_qmc_workers_and_reruns_share_one_sequence():
    """The scrambled Sobol sequence is the seed's; the study counts the points taken from it. Another seed per
    worker or rerun would start another sequence from its first point, losing its even spread."""
    cfg = Config(study=StudySection(sampler="qmc", seed=7), search_space=SPACE)
    space = parse_space(SPACE)
    assert {make_sampler(cfg, space, w, n)._seed for w, n in [(0, 0), (1, 0), (0, 5), (3, 9)]} == {7}
    # seed: null: one sequence per study all the same, not one per process
    unseeded = Config(study=StudySection(sampler="qmc", seed=None, name="s"), search_space=SPACE)
    other = Config(study=StudySection(sampler="qmc", seed=None, name="t"), search_space=SPACE)
    seeds = {make_sampler(unseeded, space, w, n)._seed for w, n in [(0, 0), (1, 0), (0, 5)]}
    assert len(seeds) == 1 and None not in seeds and seeds != {make_sampler(other, space)._seed}


def test_search_notes_say_what_cmaes_and_gp_leave_to_chance():
    from hpsearch.study import search_notes

    space = parse_space(DEFAULT_SEARCH_SPACE)
    cmaes = Config(study=StudySection(sampler="cmaes"), search_space=DEFAULT_SEARCH_SPACE)
    [categorical, complete] = search_notes(cmaes, space)
    assert categorical.startswith("sampler cmaes: batch_size (categorical) is drawn at random in every trial")
    assert "(learning_rate)" in categorical
    assert "until 5 have completed" in complete and "successive-halving pruner" in complete
    gp = Config(study=StudySection(sampler="gp", pruner="none"), search_space=DEFAULT_SEARCH_SPACE)
    assert search_notes(gp, space) == []
    tpe = Config(study=StudySection(sampler="tpe"), search_space=DEFAULT_SEARCH_SPACE)
    assert search_notes(tpe, space) == []
    one_epoch = dataclasses.replace(tpe, train=TrainSection(n_epochs=1))
    [note] = search_notes(one_epoch, space)
    assert note.startswith("pruner successive-halving: with train.n_epochs 1") and "train.early_eval" in note
    assert (
        search_notes(dataclasses.replace(one_epoch, train=TrainSection(n_epochs=1, early_eval=0.25)), space)
        == []
    )


def test_grid_of_a_continuous_range_is_a_config_error_naming_the_file():
    space = parse_space(DEFAULT_SEARCH_SPACE, source="studies/x.yaml")
    with pytest.raises(
        ConfigError,
        match=r"^studies/x\.yaml: search_space\.learning_rate: the grid sampler needs"
        r" finite values, got a continuous log range \[1e-05, 0\.1\]",
    ):
        space.grid()


def test_to_dict_round_trips():
    space = parse_space(SPACE)
    assert parse_space(space.to_dict()) == space
    assert space.to_dict()["learning_rate"] == {"type": "float", "low": 1e-5, "high": 0.1, "log": True}
    assert space.names == [name for name in SPACE if name != "weight_decay"]
