"""Early termination policies: objects whose `decide` is a pure function of the metric histories,
with hand-computed cases.

Histories are lists of (evaluation number, score); `stopping.scores` turns a minimised metric
into higher-is-better once, and the policies only ever see oriented scores."""
from __future__ import annotations

import pytest

from automl_images.controller import stopping
from automl_images.controller.spec import POLICIES, EarlyTermination
from automl_images.controller.stopping.asha import Asha, rungs, value_at
from automl_images.controller.stopping.bandit import Bandit
from automl_images.controller.stopping.median import MedianStopping
from automl_images.controller.stopping.truncation import TruncationSelection


def bandit(slack_factor=None, slack_amount=None, interval=1, delay=0) -> EarlyTermination:
    return EarlyTermination("bandit", evaluation_interval=interval, delay_evaluation=delay,
                            slack_factor=slack_factor, slack_amount=slack_amount)


def median(interval=1, delay=0) -> EarlyTermination:
    return EarlyTermination("median_stopping", evaluation_interval=interval, delay_evaluation=delay)


def truncation(percentage, interval=1, delay=0) -> EarlyTermination:
    return EarlyTermination("truncation_selection", evaluation_interval=interval, delay_evaluation=delay,
                            truncation_percentage=percentage)


def at(evaluation: int, *scores: float) -> list[tuple[int, float]]:
    """A history that reaches `evaluation`, its last score the last of `scores`."""
    start = evaluation - len(scores) + 1
    return [(start + i, s) for i, s in enumerate(scores)]


def stops(settings, trial, others, metric="accuracy", epochs_total=None) -> bool:
    """The decision of the job's policy on `trial`, the histories holding `metric`'s values."""
    return stopping.make_policy(settings).decide(stopping.scores(metric, trial),
                                                 [stopping.scores(metric, h) for h in others], epochs_total)


# ------------------------------------------------------------------------------------------------
# Orientation and timing


def test_scores_negate_only_minimised_metrics():
    history = [(1, 0.5), (2, 0.25)]
    assert stopping.scores("accuracy", history) == history
    assert stopping.scores("log_loss", history) == [(1, -0.5), (2, -0.25)]


def test_policies_by_name_with_their_units():
    assert set(stopping.POLICIES) == set(POLICIES)  # every policy a job file may name is implemented
    assert stopping.make_policy(bandit(slack_factor=0.1)) == Bandit(bandit(slack_factor=0.1))
    assert stopping.make_policy(median()) == MedianStopping(median())
    assert stopping.make_policy(truncation(10)) == TruncationSelection(truncation(10))
    assert all(stopping.make_policy(s).unit == "evaluation" for s in (bandit(slack_factor=0.1), median(),
                                                                       truncation(10)))


@pytest.mark.parametrize("interval, delay, due_at", [
    (1, 0, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
    (2, 0, [2, 4, 6, 8, 10, 12]),
    (3, 0, [3, 6, 9, 12]),
    (4, 2, [4, 8, 12]),
    (2, 5, [6, 8, 10, 12]),
    (3, 4, [6, 9, 12]),
])
def test_due_every_interval_from_the_delay_on(interval, delay, due_at):
    policy = bandit(slack_factor=0.1, interval=interval, delay=delay)
    assert [e for e in range(1, 13) if stopping.due(policy, e)] == due_at


def test_due_at_the_delay_itself_as_azure_does():
    assert stopping.due(bandit(slack_factor=0.2, interval=100, delay=200), 200)
    assert stopping.due(bandit(slack_factor=0.2, interval=2, delay=6), 6)
    assert stopping.due(bandit(slack_factor=0.2, interval=1, delay=5), 5)


def test_not_due_means_no_stop_however_bad():
    policy = bandit(slack_amount=0.01, interval=2, delay=0)
    others = [at(3, 0.9, 0.9, 0.9)]
    assert not stops(policy, at(3, 0.1, 0.1, 0.1), others)  # evaluation 3 is not a multiple of 2
    assert stops(policy, at(4, 0.1, 0.1, 0.1, 0.1), [at(4, 0.9, 0.9, 0.9, 0.9)])
    delayed = bandit(slack_amount=0.01, interval=1, delay=4)
    assert not stops(delayed, at(3, 0.1, 0.1, 0.1), [at(3, 0.9, 0.9, 0.9)])
    assert stops(delayed, at(5, 0.1, 0.1, 0.1, 0.1, 0.1), [at(5, 0.9, 0.9, 0.9, 0.9, 0.9)])


def test_empty_history_never_stops():
    assert not stops(bandit(slack_factor=0.1), [], [at(1, 0.9)])
    assert not stops(asha(), [], [epochs(0.9)], epochs_total=9)


# ------------------------------------------------------------------------------------------------
# Bandit


def test_bandit_slack_factor_maximize():
    # best at evaluation 4 is 0.8; 0.8 / 1.1 = 0.7273
    policy = bandit(slack_factor=0.1)
    others = [at(4, 0.5, 0.6, 0.7, 0.8), at(4, 0.4, 0.5, 0.6, 0.6)]
    assert stops(policy, at(4, 0.72), others)
    assert not stops(policy, at(4, 0.73), others)


def test_bandit_slack_amount_maximize():
    # best 0.8, slack 0.1: below 0.7 stops
    policy = bandit(slack_amount=0.1)
    others = [at(2, 0.7, 0.8)]
    assert stops(policy, at(2, 0.69), others)
    assert not stops(policy, at(2, 0.71), others)


def test_bandit_slack_factor_minimize():
    # best loss 0.5; AzureML stops a loss above 0.5 * 1.1 = 0.55
    policy = bandit(slack_factor=0.1)
    others = [at(2, 0.9, 0.5), at(2, 1.0, 0.9)]
    assert stops(policy, at(2, 0.56), others, "log_loss")
    assert not stops(policy, at(2, 0.54), others, "log_loss")


def test_bandit_slack_amount_minimize():
    # best loss 0.5, slack 0.1: above 0.6 stops
    policy = bandit(slack_amount=0.1)
    others = [at(3, 0.9, 0.7, 0.5)]
    assert stops(policy, at(3, 0.65), others, "log_loss")
    assert not stops(policy, at(3, 0.58), others, "log_loss")


def test_bandit_best_trial_is_never_stopped():
    policy = bandit(slack_amount=0.0001)
    assert not stops(policy, at(2, 0.9), [at(2, 0.8), at(2, 0.2)])
    assert not stops(policy, at(2, 0.1), [at(2, 0.3)], "log_loss")
    assert not stops(policy, at(2, 0.1), [])  # alone: nothing to compare with


def test_bandit_compares_at_the_same_evaluation_only():
    policy = bandit(slack_factor=0.1)
    # the other trial was at 0.95 at evaluation 3, but has not reached evaluation 5
    assert not stops(policy, at(5, 0.6, 0.6), [at(3, 0.9, 0.95)])
    # at evaluation 5 the other was at 0.62; later values do not count
    assert not stops(policy, at(5, 0.6), [[(5, 0.62), (6, 0.99)]])
    assert stops(policy, at(5, 0.6), [[(5, 0.67), (6, 0.5)]])  # 0.67 / 1.1 = 0.609


# ------------------------------------------------------------------------------------------------
# Median stopping


def test_median_stopping_maximize():
    # the trial's best so far is 0.6; the others' running averages up to evaluation 3 are
    # (0.7 + 0.8 + 0.9) / 3 = 0.8 and (0.6 + 0.7 + 0.65) / 3 = 0.65; median 0.725
    trial = [(1, 0.5), (2, 0.6), (3, 0.55)]
    others = [[(1, 0.7), (2, 0.8), (3, 0.9), (4, 0.1)], [(1, 0.6), (2, 0.7), (3, 0.65)]]
    assert stops(median(), trial, others)
    assert not stops(median(), [(1, 0.5), (2, 0.73), (3, 0.55)], others)


def test_median_stopping_counts_only_trials_that_reached_the_evaluation():
    trial = [(1, 0.1), (2, 0.1), (3, 0.1)]
    reached = [[(1, 0.9), (2, 0.9), (3, 0.9)]]
    short = [[(1, 0.9), (2, 0.9)], [(1, 0.8)]]
    assert not stops(median(), trial, reached + short)  # one other at evaluation 3: too few
    assert stops(median(), trial, reached * 2 + short)


def test_median_stopping_minimize():
    # losses: the trial's best is 0.4; others' averages 0.3 and (0.4 + 0.2) / 2 = 0.3: median 0.3
    trial = [(1, 0.5), (2, 0.4)]
    others = [[(1, 0.3), (2, 0.3)], [(1, 0.4), (2, 0.2)]]
    assert stops(median(), trial, others, "log_loss")
    assert not stops(median(), [(1, 0.5), (2, 0.29)], others, "log_loss")


# ------------------------------------------------------------------------------------------------
# Truncation selection


def test_truncation_selection_lowest_percentage():
    others = [at(2, 0.2), at(2, 0.3), at(2, 0.4), at(2, 0.5)]
    # five trials at evaluation 2; 20% of 5 is 1: only the lowest stops
    assert stops(truncation(20), at(2, 0.1), others)
    assert not stops(truncation(20), at(2, 0.25), others)
    # 40% of 5 is 2: the two lowest stop
    assert stops(truncation(40), at(2, 0.25), others)
    assert not stops(truncation(40), at(2, 0.35), others)


def test_truncation_selection_needs_enough_trials():
    # 20% of 4 trials rounds down to none
    assert not stops(truncation(20), at(2, 0.0), [at(2, 0.5), at(2, 0.6), at(2, 0.7)])


def test_truncation_selection_counts_trials_at_the_same_evaluation():
    # the other trials at evaluation 1 only do not count: 1 trial at evaluation 2, nothing to cut
    assert not stops(truncation(50), at(2, 0.1, 0.1), [at(1, 0.9), at(1, 0.8), at(1, 0.7)])
    assert stops(truncation(50), at(2, 0.1, 0.1), [at(2, 0.9, 0.9)])


def test_truncation_selection_minimize():
    others = [at(1, 0.1), at(1, 0.2), at(1, 0.3), at(1, 0.4)]
    assert stops(truncation(20), at(1, 0.9), others, "log_loss")  # the highest loss is the worst
    assert not stops(truncation(20), at(1, 0.05), others, "log_loss")


# ------------------------------------------------------------------------------------------------
# ASHA: rungs at min_resource * reduction_factor**k epochs; continue only in the top 1/rf at a rung


def asha(min_resource=1, reduction_factor=3, max_resource=None) -> EarlyTermination:
    return EarlyTermination("asha", min_resource=min_resource, reduction_factor=reduction_factor,
                            max_resource=max_resource)


def epochs(*scores: float) -> list[tuple[int, float]]:
    """A history of one evaluation per epoch, from epoch 1."""
    return [(i + 1, s) for i, s in enumerate(scores)]


def test_asha_counts_epochs():
    assert stopping.make_policy(asha()).unit == "epoch"
    assert stopping.make_policy(bandit(slack_factor=0.1)).unit == "evaluation"
    assert stopping.make_policy(asha()) == Asha(asha())


@pytest.mark.parametrize("low, factor, high, expected", [
    (1, 3, 27, [1, 3, 9]),        # 27 itself is the end of training, not a rung
    (1, 3, 28, [1, 3, 9, 27]),
    (2, 2, 20, [2, 4, 8, 16]),
    (5, 4, 15, [5]),
    (1, 2, 2, [1]),
])
def test_asha_rungs(low, factor, high, expected):
    assert rungs(low, factor, high) == expected


def test_asha_rungs_without_an_end():
    assert rungs(1, 3, None)[:4] == [1, 3, 9, 27] and len(rungs(1, 3, None)) == 32


def test_asha_first_arrival_continues():
    assert not stops(asha(), epochs(0.1), [], epochs_total=9)


def test_asha_top_third_at_the_first_rung():
    # rung 1 (epochs 1, 3 with 9 epochs): four trials reached epoch 1 with 0.5, 0.6, 0.7 and the
    # trial's own score; ceil(4 / 3) = 2 continue
    others = [epochs(0.5), epochs(0.6), epochs(0.7)]
    assert stops(asha(), epochs(0.55), others, epochs_total=9)   # 2 better: stops
    assert not stops(asha(), epochs(0.65), others, epochs_total=9)  # 1 better: continues
    # ties favour the trial: two others at 0.7, the trial at 0.7 too: ceil(3/3) = 1, nobody better
    assert not stops(asha(), epochs(0.7), [epochs(0.7), epochs(0.7)], epochs_total=9)
    # two trials, factor 2: ceil(2/2) = 1 continues, the lower one stops
    assert stops(asha(reduction_factor=2), epochs(0.4), [epochs(0.5)], epochs_total=9)
    assert not stops(asha(reduction_factor=2), epochs(0.6), [epochs(0.5)], epochs_total=9)


def test_asha_compares_at_the_rung_not_later():
    # rung 3: the trial had 0.6 at epoch 3; the others had 0.7 and 0.5 at epoch 3 (later values
    # do not count): 1 better of 3, ceil(3 / 3) = 1 continue: stops
    trial = epochs(0.2, 0.4, 0.6)
    others = [epochs(0.3, 0.5, 0.7, 0.1), epochs(0.3, 0.4, 0.5, 0.99), epochs(0.9)]  # the last stopped at 1
    assert stops(asha(), trial, others, epochs_total=9)
    assert not stops(asha(), epochs(0.2, 0.4, 0.8), others, epochs_total=9)


def test_asha_judges_between_rungs_at_the_last_rung_reached():
    # at epoch 5 (rungs 1, 3, 9) the trial is judged at rung 3 by its epoch-3 score, so a controller
    # that looked in only at epoch 5 decides as at epoch 3
    others = [epochs(0.3, 0.5, 0.7), epochs(0.3, 0.5, 0.8)]
    assert stops(asha(), epochs(0.1, 0.2, 0.6, 0.9, 0.95), others, epochs_total=9)
    assert not stops(asha(), epochs(0.1, 0.2, 0.9, 0.2, 0.2), others, epochs_total=9)


def test_asha_no_rung_at_or_past_the_end():
    # with 3 epochs in all the rungs are 1 only (3 is the end): at epoch 3 the trial is judged at
    # rung 1, where it was best
    others = [epochs(0.1, 0.9, 0.95), epochs(0.2, 0.8, 0.9)]
    assert not stops(asha(), epochs(0.3, 0.1, 0.1), others, epochs_total=3)
    # max_resource in the job wins over the trial's epochs: rungs 1, 3 (9 is the end)
    assert stops(asha(max_resource=9), epochs(0.3, 0.1, 0.1), others, epochs_total=3)


def test_asha_min_resource_delays_the_first_rung():
    others = [epochs(0.9, 0.9), epochs(0.8, 0.8)]
    assert not stops(asha(min_resource=2), epochs(0.1), others, epochs_total=10)
    assert stops(asha(min_resource=2), epochs(0.1, 0.1), others, epochs_total=10)


def test_asha_minimize():
    # losses at rung 1: 0.2, 0.3 and the trial's: the lowest continues (ceil(3/3) = 1)
    others = [[(1, 0.2)], [(1, 0.3)]]
    assert stops(asha(), [(1, 0.25)], others, "log_loss") is True
    assert stops(asha(), [(1, 0.1)], others, "log_loss") is False


def test_asha_with_evaluations_every_other_epoch():
    # the value at rung 1 is the first evaluation at or after epoch 1: epoch 2's
    trial = [(2, 0.4)]
    assert value_at(trial, 1) == 0.4 and value_at(trial, 3) is None
    assert stops(asha(), trial, [[(1, 0.5), (2, 0.6)], [(2, 0.7)]], epochs_total=9)
