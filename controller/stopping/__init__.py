"""Early termination policies, named as AzureML names them.

Each policy is a pure function of the saved metric history: `decide(trial, others) -> bool`
(True: stop the trial). Histories are lists of (evaluation number, score) with scores already
oriented so that higher is better; the one place that negates minimised metrics is `oriented`.
"""
from __future__ import annotations

from typing import Callable

from ..spec import EarlyTermination
from .bandit import bandit
from .median import median_stopping
from .truncation import truncation_selection

History = list[tuple[int, float]]

_POLICIES: dict[str, Callable[[EarlyTermination, History, list[History]], bool]] = {
    "bandit": bandit,
    "median_stopping": median_stopping,
    "truncation_selection": truncation_selection,
}


def oriented(history: History, direction: str) -> History:
    return history if direction == "maximize" else [(e, -v) for e, v in history]


def due(policy: EarlyTermination, evaluation: int) -> bool:
    """Whether the policy is applied at this evaluation: as AzureML does, at every multiple of
    `evaluation_interval` that is greater than or equal to `delay_evaluation`."""
    return evaluation >= policy.delay_evaluation and evaluation % policy.evaluation_interval == 0


def should_stop(policy: EarlyTermination, trial: History, others: list[History]) -> bool:
    if not trial or not due(policy, trial[-1][0]):
        return False
    return _POLICIES[policy.policy](policy, trial, others)
