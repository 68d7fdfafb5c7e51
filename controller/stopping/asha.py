"""ASHA, asynchronous successive halving (Li et al., 2018), as a pure function of the histories.
Its steps are epochs; AzureML's evaluation_interval and delay_evaluation do not apply (the rungs
say when a trial is judged).

Rungs sit at min_resource * reduction_factor**k epochs (k = 0, 1, ...), below max_resource (the
trial's number_of_epochs unless the job sets it: a rung at the last epoch would stop nothing). A
trial that has reached a rung continues only if its metric at that rung is in the top
1/reduction_factor of every trial that reached the rung (rounded up, so the first trial to arrive
continues); otherwise it stops.

Asynchronous: a trial is judged against the trials that have reached the rung so far, without
waiting for the others. It is judged at its highest rung on every pass until it reaches the next
one: the controller may see a trial a few epochs after it passed a rung, and trials that arrive at
the rung in the meantime count too, so a trial that was ahead of the early arrivals can still be
stopped by later, better ones before it gets to the next rung.

A trial's value at a rung is its metric at the first evaluation at or after that epoch (the same
epoch when it is evaluated every epoch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..spec import EarlyTermination
from .policy import History


def rungs(min_resource: int, reduction_factor: int, max_resource: int | None) -> list[int]:
    """The rung epochs below max_resource; with no max_resource, the first 32 (ample for any job)."""
    out, rung = [], min_resource
    while (max_resource is None and len(out) < 32) or (max_resource is not None and rung < max_resource):
        out.append(rung)
        rung *= reduction_factor
    return out


def value_at(history: History, epoch: int) -> float | None:
    """The score of the first evaluation at or after `epoch`; None when the trial has not got there."""
    return next((score for e, score in history if e >= epoch), None)


@dataclass(frozen=True)
class Asha:
    settings: EarlyTermination
    unit: ClassVar[str] = "epoch"

    def decide(self, trial: History, others: list[History], epochs_total: int | None) -> bool:
        """`epochs_total`: the trial's number_of_epochs, the default max_resource."""
        if not trial:
            return False
        settings = self.settings
        high = settings.max_resource if settings.max_resource is not None else epochs_total
        reached = [r for r in rungs(settings.min_resource, settings.reduction_factor, high) if r <= trial[-1][0]]
        if not reached:
            return False
        rung = reached[-1]
        score = value_at(trial, rung)
        if score is None:
            return False
        scores = [s for s in (value_at(h, rung) for h in others) if s is not None]
        keep = math.ceil((len(scores) + 1) / settings.reduction_factor)
        better = sum(s > score for s in scores)  # ties favour the trial being judged
        return better >= keep
