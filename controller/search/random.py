"""Random sampling: the subspace uniformly, then each distribution independently.

Trial `i` draws from a generator seeded with (job seed, i), so the proposal for a trial depends
on nothing a crash could lose."""
from __future__ import annotations

import numpy as np

from ..distributions import Distribution
from ..spec import JobSpec
from .base import Observation, Proposal, sample_value


class RandomSampler:
    def __init__(self, spec: JobSpec):
        self.spec = spec

    def propose(self, index: int) -> Proposal:
        rng = np.random.default_rng([self.spec.seed, index])
        subspace = int(rng.integers(len(self.spec.search_space)))
        space = self.spec.search_space[subspace]
        params = {name: sample_value(self.spec, name, value, rng)
                  for name, value in sorted(space.items()) if isinstance(value, Distribution)}
        return Proposal(subspace, params)

    def ask(self, indices: list[int], history: list[Observation],
            pending: list[Observation] = ()) -> list[Proposal]:
        return [self.propose(i) for i in indices]

    def capacity(self) -> int | None:
        return None
