"""Early termination policies, named as AzureML names them, and ASHA.

Each policy is a pure function of the saved metric history: `decide(trial, others) -> bool`
(True: stop the trial). Histories are lists of (step, score) with scores already oriented so that
higher is better; the one place that negates minimised metrics is `oriented`. The step is the
evaluation number for AzureML's policies (their evaluation_interval and delay_evaluation count
evaluations) and the epoch for asha (its rungs are epochs): `unit` says which.
"""
from __future__ import annotations

from typing import Callable

from ..spec import EarlyTermination
from .asha import asha
from .bandit import bandit
from .median import median_stopping
from .truncation import truncation_selection

History = list[tuple[int, float]]

_POLICIES: dict[str, Callable[..., bool]] = {
    "bandit": bandit,
    "median_stopping": median_stopping,
    "truncation_selection": truncation_selection,
    "asha": asha,
}
# Policies whose steps are epochs rather than evaluations; they also get the trial's number of
# epochs (`total`).
_BY_EPOCH = {"asha"}


def unit(policy: EarlyTermination) -> str:
    """"epoch" or "evaluation": what the steps of the histories given to this policy count."""
    return "epoch" if policy.policy in _BY_EPOCH else "evaluation"


def oriented(history: History, direction: str) -> History:
    return history if direction == "maximize" else [(e, -v) for e, v in history]


def due(policy: EarlyTermination, evaluation: int) -> bool:
    """Whether the policy is applied at this evaluation: as AzureML does, at every multiple of
    `evaluation_interval` that is greater than or equal to `delay_evaluation`."""
    return evaluation >= policy.delay_evaluation and evaluation % policy.evaluation_interval == 0


def should_stop(policy: EarlyTermination, trial: History, others: list[History], total: int | None = None) -> bool:
    """`total`: the trial's number_of_epochs (used by the policies that count epochs)."""
    if not trial or not due(policy, trial[-1][0]):
        return False
    if policy.policy in _BY_EPOCH:
        return _POLICIES[policy.policy](policy, trial, others, total)
    return _POLICIES[policy.policy](policy, trial, others)
