"""Early termination policies: pure functions of the metric histories, with hand-computed cases.

Histories are lists of (evaluation number, score); `stopping.oriented` turns a minimised metric
into higher-is-better once, and the policies only ever see oriented scores."""
from __future__ import annotations

import pytest

from automl_images.controller import stopping
from automl_images.controller.spec import EarlyTermination


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


def stops(policy, trial, others, direction="maximize") -> bool:
    return stopping.should_stop(policy, stopping.oriented(trial, direction),
                                [stopping.oriented(h, direction) for h in others])


# ------------------------------------------------------------------------------------------------
# Orientation and timing


def test_oriented_negates_only_minimised_metrics():
    history = [(1, 0.5), (2, 0.25)]
    assert stopping.oriented(history, "maximize") == history
    assert stopping.oriented(history, "minimize") == [(1, -0.5), (2, -0.25)]


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
    assert not stopping.should_stop(bandit(slack_factor=0.1), [], [at(1, 0.9)])


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
    assert stops(policy, at(2, 0.56), others, "minimize")
    assert not stops(policy, at(2, 0.54), others, "minimize")


def test_bandit_slack_amount_minimize():
    # best loss 0.5, slack 0.1: above 0.6 stops
    policy = bandit(slack_amount=0.1)
    others = [at(3, 0.9, 0.7, 0.5)]
    assert stops(policy, at(3, 0.65), others, "minimize")
    assert not stops(policy, at(3, 0.58), others, "minimize")


def test_bandit_best_trial_is_never_stopped():
    policy = bandit(slack_amount=0.0001)
    assert not stops(policy, at(2, 0.9), [at(2, 0.8), at(2, 0.2)])
    assert not stops(policy, at(2, 0.1), [at(2, 0.3)], "minimize")
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
    assert stops(median(), trial, others, "minimize")
    assert not stops(median(), [(1, 0.5), (2, 0.29)], others, "minimize")


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
    assert stops(truncation(20), at(1, 0.9), others, "minimize")  # the highest loss is the worst
    assert not stops(truncation(20), at(1, 0.05), others, "minimize")
