"""What an early-termination policy is, the scores it reads, and AzureML's rule for when it applies."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from automl_images.core.hyperparameters import oriented

from ..spec import EarlyTermination

# (step, score): the step counts the policy's unit; the score is oriented so that higher is better.
History = list[tuple[int, float]]


class Policy(Protocol):
    # "evaluation" or "epoch": what the steps of the histories given to `decide` count.
    unit: str

    def decide(self, trial: History, others: list[History], epochs_total: int | None) -> bool:
        """True: stop `trial`. `others`: the job's other trials that have scores; `epochs_total`:
        the trial's number_of_epochs (None when it has not said yet)."""


def scores(metric: str, history: list[tuple[int, float]]) -> History:
    """A history of `metric`'s values as the scores policies compare (minimised metrics negated
    by `core.hyperparameters.oriented`, the one place that knows which are)."""
    return [(step, oriented(metric, value)) for step, value in history]


def due(settings: EarlyTermination, evaluation: int) -> bool:
    """Whether a policy is applied at this evaluation: as AzureML does, at every multiple of
    `evaluation_interval` that is greater than or equal to `delay_evaluation`."""
    return evaluation >= settings.delay_evaluation and evaluation % settings.evaluation_interval == 0


@dataclass(frozen=True)
class AzureMLPolicy:
    """AzureML's policies (bandit, median stopping, truncation selection): their steps count
    evaluations, and they judge a trial only when `due` at its latest evaluation."""
    settings: EarlyTermination
    unit: ClassVar[str] = "evaluation"

    def decide(self, trial: History, others: list[History], epochs_total: int | None) -> bool:
        return bool(trial) and due(self.settings, trial[-1][0]) and self.judge(trial, others)

    def judge(self, trial: History, others: list[History]) -> bool:
        """True: stop `trial`, judged at its latest evaluation."""
        raise NotImplementedError
