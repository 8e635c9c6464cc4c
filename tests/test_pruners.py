"""hpsearch.pruners.SuccessiveHalvingPruner, driven through real studies (in memory and in a SQLite file)."""

import math
from pathlib import Path

import optuna
import pytest

from hpsearch.pruners import EARLY_RUNG_KEY, EARLY_STEP, TRAIN_LOSS_ATTR, SuccessiveHalvingPruner


def run_trial(study: optuna.Study, curve: list[tuple[float, float | None]]) -> int:
    """Report (val_error, train_loss) per epoch as hpsearch's objective does; the number of epochs trained."""
    trial = study.ask()
    for epoch, (error, loss) in enumerate(curve, start=1):
        trial.report(error, epoch)
        if loss is not None:
            trial.set_user_attr(TRAIN_LOSS_ATTR, loss)
        if epoch < len(curve) and trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return epoch
    study.tell(trial, min(error for error, _ in curve))
    return len(curve)


PLATEAU = 0.4908  # every trial still predicts the majority class after epoch 1


def test_a_tie_at_the_cutoff_is_broken_by_the_training_loss():
    study = optuna.create_study(pruner=SuccessiveHalvingPruner(reduction_factor=3))
    assert (
        run_trial(study, [(PLATEAU, 0.682), (0.30, 0.5), (0.28, 0.4)]) == 3
    )  # the first trial always goes on
    # same validation error, higher training loss: Optuna's pruner would let both through
    assert run_trial(study, [(PLATEAU, 0.690), (0.45, 0.6), (0.40, 0.5)]) == 1
    assert run_trial(study, [(PLATEAU, 0.695), (0.45, 0.6), (0.40, 0.5)]) == 1
    # a lower training loss than the trial in front wins the tie
    assert run_trial(study, [(PLATEAU, 0.681), (0.31, 0.5), (0.29, 0.4)]) == 3


def test_a_lower_error_wins_whatever_the_training_loss():
    study = optuna.create_study(pruner=SuccessiveHalvingPruner(reduction_factor=3))
    run_trial(study, [(0.45, 0.69), (0.3, 0.5), (0.3, 0.5)])
    assert run_trial(study, [(0.46, 0.10), (0.3, 0.5), (0.3, 0.5)]) == 1
    assert run_trial(study, [(0.40, 0.99), (0.3, 0.5), (0.3, 0.5)]) == 3


def test_without_ties_it_prunes_like_optunas_successive_halving():
    curves = [
        [(e, 0.6) for e in c]
        for c in (
            [0.5, 0.4, 0.3],
            [0.45, 0.4, 0.4],
            [0.48, 0.3, 0.2],
            [0.44, 0.42, 0.41],
            [0.47, 0.46, 0.3],
            [0.43, 0.3, 0.2],
            [0.49, 0.2, 0.1],
        )
    ]
    ours = optuna.create_study(pruner=SuccessiveHalvingPruner(reduction_factor=2))
    theirs = optuna.create_study(
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    )
    assert [run_trial(ours, c) for c in curves] == [run_trial(theirs, c) for c in curves]


def test_trials_without_a_training_loss_rank_after_those_with_one_and_rungs_persist(tmp_path):
    """A study begun by Optuna's pruner (no training losses recorded) goes on with hpsearch's, in a SQLite file."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    old = optuna.create_study(
        study_name="s", storage=storage, pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    )
    run_trial(old, [(PLATEAU, None), (0.3, None), (0.3, None)])
    study = optuna.load_study(
        study_name="s", storage=storage, pruner=SuccessiveHalvingPruner(reduction_factor=3)
    )
    assert run_trial(study, [(PLATEAU, 0.69), (0.3, 0.5), (0.3, 0.5)]) == 3  # ties the old trial, has a loss
    assert run_trial(study, [(PLATEAU, None), (0.3, 0.5), (0.3, 0.5)]) == 1  # no loss: last among the tied
    last = study.get_trials()[-2]
    assert last.system_attrs["completed_rung_0"] == PLATEAU
    assert last.system_attrs["completed_rung_0_train_loss"] == 0.69


def test_a_nan_error_at_a_rung_is_pruned():
    study = optuna.create_study(pruner=SuccessiveHalvingPruner())
    run_trial(study, [(0.4, 0.6), (0.3, 0.5)])
    assert run_trial(study, [(math.nan, 0.6), (0.3, 0.5)]) == 1


@pytest.mark.parametrize("kwargs", [{"reduction_factor": 1}, {"reduction_factor": 2.5}, {"min_resource": 0}])
def test_bad_arguments_are_refused_when_built(kwargs):
    with pytest.raises(ValueError, match="must be an integer"):
        SuccessiveHalvingPruner(**kwargs)


def test_the_early_evaluation_is_a_rung_of_its_own():
    study = optuna.create_study(pruner=SuccessiveHalvingPruner(reduction_factor=3))
    curve = [(0.40, 0.6), (0.30, 0.5), (0.20, 0.4)]
    trial = study.ask()
    trial.report(0.45, EARLY_STEP)
    trial.set_user_attr(TRAIN_LOSS_ATTR, 0.69)
    assert not trial.should_prune()  # the first trial at a rung goes on
    second = study.ask()
    second.report(0.47, EARLY_STEP)
    second.set_user_attr(TRAIN_LOSS_ATTR, 0.60)
    assert second.should_prune()  # behind the first at step 0
    third = study.ask()
    third.report(0.45, EARLY_STEP)
    third.set_user_attr(TRAIN_LOSS_ATTR, 0.68)
    assert not third.should_prune()  # tied with the first, a lower training loss
    for t, e in ((trial, 0.45), (second, 0.47), (third, 0.45)):
        assert study._storage.get_trial(t._trial_id).system_attrs[EARLY_RUNG_KEY] == e
    # the epoch rungs are apart: the third trial is the first to reach epoch 1, so it goes on
    third.report(curve[0][0], 1)
    third.set_user_attr(TRAIN_LOSS_ATTR, curve[0][1])
    assert not third.should_prune()
    assert "completed_rung_0" in study._storage.get_trial(third._trial_id).system_attrs
    assert "completed_rung_0" not in study._storage.get_trial(trial._trial_id).system_attrs


def test_nan_at_the_early_evaluation_is_pruned():
    study = optuna.create_study(pruner=SuccessiveHalvingPruner())
    trial = study.ask()
    trial.report(math.nan, EARLY_STEP)
    assert trial.should_prune()


def pause_trial(
    study: optuna.Study, curve: list[tuple[float, float]], checkpoint: Path | None = None
) -> optuna.trial.FrozenTrial:
    """Run ``curve`` as the objective does with a pausing pruner: a trial stopped at a rung is paused there.
    ``checkpoint``: a file written as its checkpoint."""
    from hpsearch.pruners import PAUSED_ATTR

    trial = study.ask()
    if checkpoint is not None:
        checkpoint.write_bytes(b"weights")
        trial.set_user_attr("checkpoint_path", str(checkpoint))
    for epoch, (error, loss) in enumerate(curve, start=1):
        trial.report(error, epoch)
        trial.set_user_attr(TRAIN_LOSS_ATTR, loss)
        if epoch < len(curve) and trial.should_prune():
            trial.set_user_attr(PAUSED_ATTR, epoch)
            return study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return study.tell(trial, min(error for error, _ in curve))


def test_a_pausing_pruner_lets_no_trial_past_a_rung_unopposed():
    """Optuna's rule sends the first trial at a rung on whatever it scored; a pausing pruner makes every trial
    wait at a rung until reduction_factor trials are there, then only the best 1/reduction_factor go on."""
    curve = [(PLATEAU, 0.69), (0.45, 0.6), (0.40, 0.5)]
    deciding = optuna.create_study(pruner=SuccessiveHalvingPruner(reduction_factor=3))
    assert run_trial(deciding, curve) == 3
    pausing = optuna.create_study(pruner=SuccessiveHalvingPruner(reduction_factor=3, pause=True))
    first = pause_trial(pausing, curve)
    assert first.state == optuna.trial.TrialState.PRUNED and first.user_attrs["paused_at_epoch"] == 1
    assert pausing.pruner.promotions(pausing.get_trials()) == []  # alone at its rung: nothing to rank it by
    # a better second trial waits too; the third, better than both, goes on at once (the best of 3)
    assert (
        pause_trial(pausing, [(0.40, 0.6), (0.35, 0.5), (0.3, 0.4)]).state == optuna.trial.TrialState.PRUNED
    )
    assert (
        pause_trial(pausing, [(0.30, 0.5), (0.25, 0.4), (0.2, 0.3)]).state == optuna.trial.TrialState.COMPLETE
    )
    # six trials at rung 0: the best two go on, so the paused 0.40 is promoted, the plateau one is not
    for _ in range(3):
        pause_trial(pausing, [(0.48, 0.69), (0.45, 0.6), (0.40, 0.5)])
    assert [t.number for t in pausing.pruner.promotions(pausing.get_trials())] == [1]


def test_a_rung_where_nothing_beat_a_constant_guess_sends_trials_on_instead_of_pausing():
    """Demo seed 3: every trial still answered one class after epoch 1, so the training losses ranked noise and
    pausing continued a learning rate too small to learn. Where no error at a rung beats a constant answer, a
    trial goes on past it, until reduction_factor trials have, to find out which configurations learn."""
    from hpsearch.pruners import DATA_ATTR, constant_floor

    def pausing(constant: float = PLATEAU) -> optuna.Study:
        study = optuna.create_study(pruner=SuccessiveHalvingPruner(reduction_factor=3, pause=True))
        study.set_user_attr(DATA_ATTR, {"n_validation": 872, "constant_val_error": constant})
        return study

    def paused_at(study: optuna.Study, first: float, loss: float = 0.69, slow: bool = False) -> int | None:
        later = [(PLATEAU, 0.69), (PLATEAU, 0.68)] if slow else [(0.45, 0.6), (0.40, 0.5)]
        trial = pause_trial(study, [(first, loss), *later, (0.35, 0.4)])
        return trial.user_attrs.get("paused_at_epoch")

    study = pausing()
    minority = PLATEAU + 0.02  # every answer the training set's majority class, the validation set's minority
    # none learns by epoch 3: each goes on past rung 0 (epoch 1), and waits at rung 1 (epoch 3), where it is
    # still no better than a constant answer
    assert [paused_at(study, e, slow=True) for e in (PLATEAU, minority, PLATEAU)] == [3, 3, 3]
    # three trials went on past rung 0: a fourth at the plateau waits there, ranked as ever
    assert paused_at(study, PLATEAU, loss=0.70) == 1

    # once a trial has learned, at any epoch, the question the guard asks (does any configuration learn?) has
    # its answer: the next trial at the plateau waits at rung 0, ranked as ever (SST-2: 7% fewer epochs, and a
    # learning rate of 3e-3 no longer sent on to epoch 3)
    study = pausing()
    assert paused_at(study, PLATEAU) == 3  # the first goes on, learns in epoch 2, and waits alone at rung 1
    assert paused_at(study, PLATEAU) == 1

    # only the first rung: at a later one a trial no better than a constant answer waits whatever its rank,
    # after 3x the epochs; ranked among others that have not learned either, it would go on by noise
    study = pausing()
    losses = (0.69, 0.68, 0.67)  # the third is the best of 3 at rung 1 (epoch 3)
    flat = [pause_trial(study, [(PLATEAU, loss)] * 3 + [(0.35, 0.4)]) for loss in losses]
    assert [t.user_attrs.get("paused_at_epoch") for t in flat] == [3, 3, 3]
    floor = constant_floor(study)
    assert floor == pytest.approx(PLATEAU - 0.5 / 872)
    assert study.pruner.promotions(study.get_trials(), floor=floor) == []
    # at the end of the search the best of the rung goes on all the same, so a trial is trained to the end
    assert [t.number for t in study.pruner.promotions(study.get_trials(), last=True, floor=floor)] == [2]

    # one trial better than the constant guess at a rung makes it rank: the next at the plateau waits there
    study = pausing()
    assert paused_at(study, 0.45) == 1
    assert paused_at(study, PLATEAU) == 1
    # the stored error is rounded (0.4908 for 428/872): the exact plateau is no better; one example better is
    study = pausing(0.4908)
    assert paused_at(study, 428 / 872) == 3
    assert paused_at(study, 427 / 872) == 1
    # without the data's sizes (a study made by an older version) every trial waits, as before
    study = optuna.create_study(pruner=SuccessiveHalvingPruner(reduction_factor=3, pause=True))
    assert paused_at(study, PLATEAU) == 1
    # the deciding rule is unchanged: a second trial at the plateau, behind the first on loss, is pruned
    study = optuna.create_study(pruner=SuccessiveHalvingPruner(reduction_factor=3))
    study.set_user_attr(DATA_ATTR, {"n_validation": 872, "constant_val_error": PLATEAU})
    assert run_trial(study, [(PLATEAU, 0.69), (0.45, 0.6), (0.40, 0.5)]) == 3
    assert run_trial(study, [(PLATEAU, 0.70), (0.45, 0.6), (0.40, 0.5)]) == 1


def test_a_continued_trial_is_ranked_once_and_the_last_trials_let_the_best_go_on():
    from hpsearch.pruners import replaced
    from hpsearch.search import continue_paused

    study = optuna.create_study(pruner=SuccessiveHalvingPruner(reduction_factor=3, pause=True))
    paused = [pause_trial(study, [(e, 0.6), (0.3, 0.5), (0.2, 0.4)]) for e in (0.40, 0.45, 0.50)]
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in paused)  # none was the best of 3 on arrival
    [best] = study.pruner.promotions(study.get_trials())
    assert best.number == 0
    number = continue_paused(study, best)
    child = study.get_trials()[number]
    assert child.state == optuna.trial.TrialState.WAITING and child.params == best.params
    assert child.intermediate_values == {1: 0.40} and child.system_attrs["completed_rung_0"] == 0.40
    assert replaced(study.get_trials()) == {0}
    # the continuation carries trial 0's record: rung 0 still has 3 trials, and trial 0 is not promoted again
    assert study.pruner.promotions(study.get_trials()) == []
    # with no new trial to come, a rung of 1 lets its best trial go on: the search ends with a finished trial
    trial = study.ask()  # the continuation
    assert trial.number == number
    for epoch, error in ((2, 0.35), (3, 0.30)):
        trial.report(error, epoch)
    assert trial.should_prune()  # alone at rung 1 (epoch 3)
    trial.set_user_attr("paused_at_epoch", 3)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert study.pruner.promotions(study.get_trials()) == []
    assert [t.number for t in study.pruner.promotions(study.get_trials(), last=True)] == [number]


def test_paused_trials_that_can_never_go_on_lose_their_checkpoints_first(tmp_path):
    """A paused trial that would not be in the best 1/3 of its rung even if every trial still to come did
    worse is hopeless: its checkpoint goes after its trial, not when the budget is met."""
    from hpsearch.search import cleanup_checkpoints

    study = optuna.create_study(pruner=SuccessiveHalvingPruner(reduction_factor=3, pause=True))
    files = [tmp_path / f"trial-{n}.pt" for n in range(3)]
    for error, path in zip((0.40, 0.45, 0.50), files, strict=True):
        pause_trial(study, [(error, 0.6), (0.3, 0.5), (0.2, 0.4)], checkpoint=path)
    trials = study.get_trials()
    assert all(t.user_attrs.get("paused_at_epoch") == 1 for t in trials)
    hopeless = study.pruner.hopeless
    assert hopeless(trials, budget_left=0) == {1, 2}  # 3 trials at the rung for good: only the best goes on
    assert hopeless(trials, budget_left=3) == {2}  # 6: the best 2 may; 0.50 has two better already
    assert hopeless(trials, budget_left=6) == set()
    study.ask()  # a running trial may still reach the rung, as a new one may
    assert hopeless(study.get_trials(), budget_left=2) == {2}
    cleanup_checkpoints(study)  # no budget given: every paused trial may yet go on
    assert all(f.is_file() for f in files)
    cleanup_checkpoints(study, n_trials=6)  # 4 trials so far (3 paused, 1 running): 2 more to come
    assert [f.is_file() for f in files] == [True, True, False]


def test_the_early_rung_counts_each_trial_once():
    """Only the best 1/reduction_factor of the trials at step 0 train on: the trial asking is one record there,
    not two (its own record is already in the store when the rung reads the trials)."""
    study = optuna.create_study(pruner=SuccessiveHalvingPruner(reduction_factor=3))
    pruned = []
    for error in (0.30, 0.40, 0.45, 0.50, 0.35):
        trial = study.ask()
        trial.report(error, EARLY_STEP)
        trial.set_user_attr(TRAIN_LOSS_ATTR, 0.6)
        pruned.append(trial.should_prune())
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    # the fifth is second of five: 5 // 3 = 1 goes on, so it is pruned (second of six would go on)
    assert pruned == [False, True, True, True, True]


def test_a_trial_that_missed_a_rungs_check_is_checked_at_every_rung_it_passed():
    """A trial can report past a rung before it asks the pruner (its worker died between the two, and its
    retry goes on from the checkpoint): one ``should_prune`` then checks each rung it has reached."""
    study = optuna.create_study(pruner=SuccessiveHalvingPruner(reduction_factor=2))  # rungs: epochs 1, 2, 4
    assert run_trial(study, [(0.30, 0.5), (0.10, 0.4), (0.05, 0.3)]) == 3
    trial = study.ask()
    trial.report(0.35, 1)
    trial.report(0.20, 2)  # no should_prune after epoch 1
    trial.set_user_attr(TRAIN_LOSS_ATTR, 0.4)
    assert trial.should_prune()  # ahead of the first trial at rung 0, behind it at rung 1
    attrs = study._storage.get_trial(trial._trial_id).system_attrs
    assert attrs["completed_rung_0"] == attrs["completed_rung_1"] == 0.20


def test_a_trial_paused_lower_down_still_counts_as_one_that_may_reach_the_rung(tmp_path):
    """Trial 1 waits at rung 1 (epoch 2) behind trial 0. Trials 2 and 3, paused at rung 0, are now among the
    best there and will be continued; if both do worse than trial 1 at epoch 2, trial 1 goes on. So it is not
    hopeless, and its checkpoint must survive the cleanup."""
    from optuna.distributions import FloatDistribution

    from hpsearch.pruners import PAUSED_ATTR
    from hpsearch.search import cleanup_checkpoints

    state = optuna.trial.TrialState
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 's.db'}",
        pruner=SuccessiveHalvingPruner(reduction_factor=2, pause=True),  # rungs: epochs 1, 2, 4
    )
    files = [tmp_path / f"trial-{n}.pt" for n in range(4)]
    for n, (kind, errors) in enumerate(
        [
            (state.COMPLETE, (0.30, 0.20)),
            (state.PRUNED, (0.32, 0.30)),
            (state.PRUNED, (0.25,)),
            (state.PRUNED, (0.28,)),
        ]
    ):
        files[n].write_bytes(b"weights")
        user_attrs = {"checkpoint_path": str(files[n])}
        if kind == state.PRUNED:
            user_attrs[PAUSED_ATTR] = len(errors)
        study.add_trial(
            optuna.trial.create_trial(
                state=kind,
                value=0.20 if kind == state.COMPLETE else None,
                params={"learning_rate": 1e-3},
                distributions={"learning_rate": FloatDistribution(1e-5, 1e-1, log=True)},
                intermediate_values=dict(enumerate(errors, start=1)),
                user_attrs=user_attrs,
                system_attrs={
                    **{f"completed_rung_{k}": e for k, e in enumerate(errors)},
                    **{f"completed_rung_{k}_train_loss": 0.5 for k in range(len(errors))},
                },
            )
        )
    trials = study.get_trials()
    assert [t.number for t in study.pruner.promotions(trials)] == [2, 3]
    assert study.pruner.hopeless(trials, budget_left=0) == set()
    cleanup_checkpoints(study, n_trials=4)  # the budget is used up: only the paused trials may still go on
    assert all(f.is_file() for f in files)


def test_a_paused_trial_whose_checkpoint_is_gone_stays_pruned(tmp_path):
    """A rerun with a larger budget after the search cleaned up: a paused trial that now ranks among the best
    cannot go on from its checkpoint, so no continuation is queued (it would train from scratch as if resumed)."""
    import io

    from hpsearch.search import Reporter, promote_paused

    study = optuna.create_study(pruner=SuccessiveHalvingPruner(reduction_factor=3, pause=True))
    files = [tmp_path / f"trial-{n}.pt" for n in range(3)]
    for error, path in zip((0.40, 0.45, 0.50), files, strict=True):
        pause_trial(study, [(error, 0.6), (0.3, 0.5)], checkpoint=path)
    assert [t.number for t in study.pruner.promotions(study.get_trials())] == [0]
    files[0].unlink()
    assert promote_paused(study, Reporter(io.StringIO())) == 0
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.PRUNED] * 3


def test_the_first_rung_guard_counts_trials_other_workers_sent_on_a_moment_ago():
    """Several workers: the first trials reach epoch 1 together, all at the plateau. Counting only the trials
    that had reported a later epoch, none had, and every one went on (SST-2 with 2 workers: 5 or 6 where 3
    should). A trial still running after its record at the rung has gone on too."""
    from hpsearch.pruners import DATA_ATTR

    study = optuna.create_study(pruner=SuccessiveHalvingPruner(reduction_factor=3, pause=True))
    study.set_user_attr(DATA_ATTR, {"n_validation": 872, "constant_val_error": PLATEAU})
    running = [study.ask() for _ in range(5)]  # five workers, each with a trial in epoch 1
    went_on = []
    for k, trial in enumerate(running):
        trial.report(PLATEAU, 1)
        trial.set_user_attr(TRAIN_LOSS_ATTR, 0.69 + k / 1000)  # each later one behind on loss
        went_on.append(not trial.should_prune())
    assert went_on == [True, True, True, False, False]
    # a trial no longer running that never reported past the rung (paused there, or stopped in epoch 2 before
    # its report) is not one that went on: with only trial 2 still running, the guard sends a sixth trial on
    for k in (0, 1, 3, 4):
        study.tell(running[k], state=optuna.trial.TrialState.PRUNED)
    late = study.ask()
    late.report(PLATEAU, 1)
    late.set_user_attr(TRAIN_LOSS_ATTR, 0.70)  # behind every other on loss: ranked, it would wait
    assert not late.should_prune()
