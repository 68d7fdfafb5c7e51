"""Truncation selection: at each due evaluation, stop the trial if it is among the lowest
`truncation_percentage` percent of all trials that reached that evaluation."""
from __future__ import annotations

import math

from .policy import AzureMLPolicy, History


class TruncationSelection(AzureMLPolicy):
    def judge(self, trial: History, others: list[History]) -> bool:
        evaluation, score = trial[-1]
        scores = [score] + [v for v in (dict(h).get(evaluation) for h in others) if v is not None]
        cut = math.floor(len(scores) * self.settings.truncation_percentage / 100)
        if cut < 1:
            return False
        lowest = sorted(scores)[:cut]
        return score <= lowest[-1] and sorted(scores).index(score) < cut
