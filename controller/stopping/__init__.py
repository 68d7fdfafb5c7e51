"""Early termination policies, named as AzureML names them, and ASHA.

Each policy is an object built from the job's `early_termination` settings, with one method,
`decide(trial, others, epochs_total) -> bool` (True: stop the trial), a pure function of the saved
metric histories, and a `unit`: whether the steps of those histories count evaluations (AzureML's
policies: their evaluation_interval and delay_evaluation count evaluations) or epochs (ASHA: its
rungs are epochs). Scores are oriented so that higher is better (`scores`).

    policy = make_policy(spec.early_termination)
    policy.decide(scores(metric, trial_history), [scores(metric, h) for h in others], epochs_total)
"""
from __future__ import annotations

from ..spec import EarlyTermination
from .asha import Asha
from .bandit import Bandit
from .median import MedianStopping
from .policy import History, Policy, due, scores
from .truncation import TruncationSelection

POLICIES: dict[str, type[Policy]] = {
    "bandit": Bandit,
    "median_stopping": MedianStopping,
    "truncation_selection": TruncationSelection,
    "asha": Asha,
}


def make_policy(settings: EarlyTermination) -> Policy:
    return POLICIES[settings.policy](settings)


__all__ = ["History", "POLICIES", "Policy", "due", "make_policy", "scores"]
