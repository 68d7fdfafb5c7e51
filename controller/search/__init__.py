"""Samplers by name (the job file's `sampling`)."""
from __future__ import annotations

from ..spec import JobSpec
from .base import Observation, Proposal, Sampler
from .bayesian import BayesianSampler
from .grid import GridSampler
from .random import RandomSampler

SAMPLERS: dict[str, type[Sampler]] = {
    "random": RandomSampler,
    "grid": GridSampler,
    "bayesian": BayesianSampler,
}


def make_sampler(spec: JobSpec) -> Sampler:
    return SAMPLERS[spec.sampling](spec)


__all__ = ["Observation", "Proposal", "SAMPLERS", "Sampler", "make_sampler"]
