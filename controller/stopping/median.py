"""Median stopping: stop a trial whose best score so far is below the median of the other
trials' running averages at the same evaluation (needs at least two other trials there)."""
from __future__ import annotations

import statistics

from .policy import AzureMLPolicy, History


class MedianStopping(AzureMLPolicy):
    def judge(self, trial: History, others: list[History]) -> bool:
        evaluation = trial[-1][0]
        best_so_far = max(v for _, v in trial)
        averages = []
        for history in others:
            upto = [v for e, v in history if e <= evaluation]
            if len(history) and history[-1][0] >= evaluation and upto:
                averages.append(sum(upto) / len(upto))
        if len(averages) < 2:
            return False
        return best_so_far < statistics.median(averages)
