"""Bandit: stop a trial whose score at this evaluation is not within the slack of the best score
any trial had at the same evaluation (slack_factor: ratio; slack_amount: absolute)."""
from __future__ import annotations

from .policy import AzureMLPolicy, History

# Float noise must not stop a trial that sits exactly on the slack boundary (0.8 - 0.2 != 0.6).
_TOLERANCE = 1e-9


class Bandit(AzureMLPolicy):
    def judge(self, trial: History, others: list[History]) -> bool:
        evaluation, score = trial[-1]
        at_same = [dict(h).get(evaluation) for h in others]
        best = max([score] + [v for v in at_same if v is not None])
        if self.settings.slack_amount is not None:
            return score < best - self.settings.slack_amount - _TOLERANCE
        # Scores are oriented higher-is-better; for a negated (minimised) metric the ratio works on
        # the magnitudes: best / (1 + slack) for positive scores, best * (1 + slack) for negative ones.
        slack = self.settings.slack_factor
        threshold = best / (1 + slack) if best >= 0 else best * (1 + slack)
        return score < threshold - _TOLERANCE
