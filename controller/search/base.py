"""The sampler interface. A sampler keeps no private history: each call gets every finished
trial from the bucket, so a restarted controller proposes exactly what the dead one would have."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from automl_images.core import hyperparameters as hps

from ..distributions import Distribution
from ..spec import JobSpec


@dataclass(frozen=True)
class Proposal:
    subspace: int
    params: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"subspace": self.subspace, "params": self.params}


@dataclass(frozen=True)
class Observation:
    """A trial as samplers see it: finished (the value is None when it produced no metric) or,
    in `pending`, still running. `key` names it (a trial id, or `job/trial` for a warm-start
    seed) and orders the history, so that the same trials in any order give the same proposals."""
    subspace: int
    params: dict[str, Any]
    value: float | None
    key: str = ""


class Sampler(Protocol):
    def ask(self, indices: list[int], history: list[Observation],
            pending: list[Observation] = ()) -> list[Proposal]:
        """Proposals for the trials numbered `indices`, one per index (the same index always gets
        the same proposal from the same history and pending trials)."""

    def capacity(self) -> int | None:
        """How many distinct proposals exist (grid), or None when unbounded."""


def sample_params(spec: JobSpec, subspace: int, rng: np.random.Generator) -> dict[str, Any]:
    """One draw of each distribution of `subspace`, in the order of their names."""
    space = spec.search_space[subspace]
    return {name: sample_value(spec, name, value, rng)
            for name, value in sorted(space.items()) if isinstance(value, Distribution)}


def sample_value(spec: JobSpec, name: str, dist: Distribution, rng: np.random.Generator) -> Any:
    """One draw of `dist`; unbounded draws (normal families) outside the parameter's range are
    drawn again, so every proposal passes validation."""
    definition = hps.HYPERPARAMETERS[name]
    # Validation guarantees that at least 1% of draws are in range: 10,000 tries fail with a
    # probability below 1e-43.
    for _ in range(10_000):
        value = dist.sample(rng)
        if definition.check(value)[1] is None:
            return value
    raise ValueError(f"{name}: {dist} produced no value in {definition.range_text()} in 10,000 draws")
