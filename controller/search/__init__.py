"""Samplers by name (the job file's `sampling`)."""
from __future__ import annotations

from ..spec import JobSpec
from .base import Observation, Proposal, Sampler


def make_sampler(spec: JobSpec) -> Sampler:
    if spec.sampling == "random":
        from .random import RandomSampler

        return RandomSampler(spec)
    if spec.sampling == "grid":
        from .grid import GridSampler

        return GridSampler(spec)
    if spec.sampling == "bayesian":
        from .bayesian import BayesianSampler

        return BayesianSampler(spec)
    raise ValueError(f"sampling {spec.sampling!r} is not available in this version")


__all__ = ["Observation", "Proposal", "Sampler", "make_sampler"]
