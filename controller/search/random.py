"""Random sampling: the subspace uniformly, then each distribution independently.

Trial `i` draws from the sampler generator of (job seed, i) (core.seeds), so the proposal for a
trial depends on nothing a crash could lose."""
from __future__ import annotations

from automl_images.core.seeds import sampler_rng

from ..spec import JobSpec
from .base import Observation, Proposal, sample_params


def random_proposal(spec: JobSpec, subspace: int, index: int) -> Proposal:
    """Trial `index`'s random draw within `subspace` (what Bayesian sampling proposes while a
    subspace has fewer than n_initial_points results)."""
    return Proposal(subspace, sample_params(spec, subspace, sampler_rng(spec.seed, index)))


class RandomSampler:
    def __init__(self, spec: JobSpec):
        self.spec = spec

    def propose(self, index: int) -> Proposal:
        rng = sampler_rng(self.spec.seed, index)
        subspace = int(rng.integers(len(self.spec.search_space)))
        return Proposal(subspace, sample_params(self.spec, subspace, rng))

    def ask(self, indices: list[int], history: list[Observation],
            pending: list[Observation] = ()) -> list[Proposal]:
        return [self.propose(i) for i in indices]

    def capacity(self) -> int | None:
        return None
