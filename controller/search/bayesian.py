"""Bayesian sampling with scikit-optimize: a surrogate model of the primary metric proposes where to
look next, refit from the saved history on every ask.

    sampling: bayesian
    sampling_options:
      estimator: gp            # gp (Gaussian process, the default) | rf | et (random forest, extra trees)
      n_initial_points: 5      # per subspace: random trials before the surrogate proposes

Like every sampler here it keeps no private state: each `ask` fits a fresh surrogate on the
finished trials (and takes the running ones into account, see below), with a random state drawn
from (job seed, trial index) (core.seeds), so a restarted controller proposes exactly what the
dead one would have.

- Each hyperparameter's prior comes from its distribution (search/axes.py): log-uniform ones are
  searched on a log scale. A subspace's first n_initial_points trials (finished or running) draw
  from the distributions themselves (`random_proposal`).
- skopt minimises: the objective is the negated score of `core.hyperparameters.oriented`, which
  alone knows which metrics are better lower (`_objective`). A trial that failed counts as the
  worst value seen (the model learns to avoid what breaks); one that was stopped early counts
  with its best metric so far.
- The surrogate, the search for the point of highest expected improvement and the handling of
  running trials are in search/acquisition.py: skopt's GP (Matern 5/2, a length scale per input,
  noise) fitted under priors on its length scales and noise, or skopt's forests; expected
  improvement searched at random points, around the best trials, then refined (and polished by
  L-BFGS for a GP).
- Parallel proposals: running trials, and the proposals made earlier in the same batch, are
  added to the model at its own predicted mean with the kernel kept (the kriging believer), and
  the improvement is measured against the best value real or believed, so that proposals made at
  once spread out instead of piling onto the same point.
- Conditional spaces (several subspaces, which AzureML refuses for Bayesian sampling): one
  model per subspace, fitted only on that subspace's trials, and a choice of the subspace by
  UCB over the subspaces' best values (`choose_subspace`), after each subspace was tried once.

Quality. bench/sampler_quality.py, median [quartiles] of the best after 30 trials (lower is
better), beside Optuna 5's GP sampler run in the same script. Hartmann-6 one at a time: -2.71 with
skopt's own acquisition, -3.08 with the search above and Optuna's priors, -3.14 [-3.26, -2.86] now
(Optuna GP -3.09 [-3.15, -2.68]); 50 seeds -3.12 [-3.26, -2.86] (Optuna GP -3.08 [-3.15, -2.81]).
Four at a time: -2.40, then -3.02, now -3.00 [-3.06, -2.94] (Optuna GP -2.84 [-2.97, -2.73]); 50
seeds -2.90 [-3.09, -2.73] (-2.81 [-3.04, -2.58]), where the believer measured against the real
best only gave -2.77 [-3.07, -2.16]. Branin 0.401 and 0.405 (Optuna GP 0.410, 0.416). On the real
tables (bench/*_table.json) with median stopping it reaches random search's best in fewer epochs:
digits .969 in 126 epochs (random: 180 without a policy), fridge .615 in 234 (random: 360).

Speed. The controller calls `ask` whenever a trial slot frees up, so a proposal must stay well
under a second: the kernel fit is bounded (acquisition.GP_FIT_ITERATIONS steps, restarts only up
to GP_RESTART_POINTS observations, one BLAS thread); above GP_MAX_POINTS observations the GP is
fitted on the best half of them and a seeded random share of the rest (a local model around the
best region). bench/sampler_latency.py measures it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from automl_images.core import hyperparameters as hps
from automl_images.core.seeds import SamplerStream, sampler_rng, sampler_seed

from ..distributions import Distribution
from ..spec import JobSpec
from . import acquisition
from .axes import Axis, axis, is_finite_number
from .base import Observation, Proposal, sample_value
from .random import random_proposal

GP_MAX_POINTS = 80         # observations a GP is fitted on (its kernel fit grows with the square
                           # to the cube of this: 0.1 s at 80 points, 1 s at 200, 4 s at 500)
UCB_EXPLORATION = 0.5      # weight of the exploration bonus when choosing a subspace


def choose_subspace(counts: list[int], bests: list[float | None]) -> int:
    """Which subspace the next trial samples. `counts[s]`: trials of subspace s so far (finished,
    running, or proposed earlier in this batch); `bests[s]`: its best value, oriented so that
    higher is better (None when none of them produced one).

    Every subspace is tried once, in order; then UCB: the best value scaled to [0, 1] across the
    subspaces (a subspace without a value counts as the mean of the others), plus
    UCB_EXPLORATION * sqrt(ln(total) / count). Ties go to the lower index."""
    for s, count in enumerate(counts):
        if count == 0:
            return s
    known = [b for b in bests if b is not None]
    if not known:
        return min(range(len(counts)), key=lambda s: (counts[s], s))
    low, high = min(known), max(known)
    scaled = [None if b is None else ((b - low) / (high - low) if high > low else 0.5) for b in bests]
    neutral = sum(v for v in scaled if v is not None) / len(known)
    total = sum(counts)
    scores = [(neutral if v is None else v) + UCB_EXPLORATION * math.sqrt(math.log(total) / counts[s])
              for s, v in enumerate(scaled)]
    return max(range(len(counts)), key=lambda s: (scores[s], -s))


class BayesianSampler:
    def __init__(self, spec: JobSpec):
        self.spec = spec
        self.options = spec.sampling_options
        self._axes = [[axis(name, value) for name, value in sorted(space.items()) if isinstance(value, Distribution)]
                      for space in spec.search_space]

    def capacity(self) -> int | None:
        return None

    def _objective(self, value: float) -> float:
        """What skopt minimises: the metric's score, negated."""
        return -hps.oriented(self.spec.primary_metric, value)

    def ask(self, indices: list[int], history: list[Observation],
            pending: list[Observation] = ()) -> list[Proposal]:
        finished = sorted(history, key=lambda o: o.key)
        running = sorted(pending, key=lambda o: o.key)
        proposals = []
        for index in indices:
            subspace = self._subspace(finished, running)
            proposal = self._propose(subspace, index, finished, running)
            proposals.append(proposal)
            running = running + [Observation(proposal.subspace, proposal.params, None, f"~{index:08d}")]
        return proposals

    def _subspace(self, finished: list[Observation], running: list[Observation]) -> int:
        spaces = len(self.spec.search_space)
        if spaces == 1:
            return 0
        counts = [0] * spaces
        bests: list[float | None] = [None] * spaces
        for o in finished + running:
            counts[o.subspace] += 1
        for o in finished:
            if is_finite_number(o.value):
                score = hps.oriented(self.spec.primary_metric, o.value)
                bests[o.subspace] = score if bests[o.subspace] is None else max(bests[o.subspace], score)
        return choose_subspace(counts, bests)

    def _propose(self, subspace: int, index: int, finished: list[Observation],
                 running: list[Observation]) -> Proposal:
        axes = self._axes[subspace]
        free = [a for a in axes if a.dimension is not None]
        fixed = {a.name: a.fixed for a in axes if a.dimension is None}
        if not free:
            return Proposal(subspace, fixed)
        told, failed = [], []
        for o in finished:
            if o.subspace != subspace:
                continue
            point = self._point(free, o.params)
            if point is None:
                continue
            (told if is_finite_number(o.value) else failed).append((point, o.value))
        pending = [p for p in (self._point(free, o.params) for o in running if o.subspace == subspace) if p is not None]
        # The subspace's first n_initial_points trials (finished or running) are random draws; after
        # them the model proposes, once it has a result to learn from.
        if not told or len(told) + len(failed) + len(pending) < self.options.n_initial_points:
            return random_proposal(self.spec, subspace, index)
        ys = [self._objective(float(v)) for _, v in told]
        # the best real results first: where the acquisition search looks closely
        incumbents = [told[i][0] for i in sorted(range(len(ys)), key=lambda i: (ys[i], i))]
        worst = max(ys)
        points = [p for p, _ in told] + [p for p, _ in failed]
        ys = ys + [worst] * len(failed)
        points, ys = self._fit_set(points, ys, index)
        seed = sampler_seed(self.spec.seed, index)
        space = acquisition.space_of([a.dimension for a in free])
        model = acquisition.fit(self.options.estimator, space, points, ys, seed)
        # y_best: the best trial's (it is in the fit set), or a pending trial's believed value
        model, y_best = acquisition.believe(model, space, points, ys, pending)
        x = acquisition.maximise_ei(space, model, y_best, incumbents, np.random.default_rng(seed))
        params = {a.name: a.decode(v) for a, v in zip(free, x)}
        return Proposal(subspace, self._checked(subspace, index, {**params, **fixed}))

    def _point(self, free: list[Axis], params: dict[str, Any]) -> list[Any] | None:
        point = []
        for a in free:
            if a.name not in params:
                return None
            x = a.encode(params[a.name])
            if x is None:
                return None
            point.append(x)
        return point

    def _fit_set(self, points: list, ys: list[float], index: int) -> tuple[list, list[float]]:
        """Every observation, or for a GP past GP_MAX_POINTS the best half and a seeded random
        share of the rest: the GP's fit grows with the cube of its points."""
        if self.options.estimator != "gp" or len(points) <= GP_MAX_POINTS:
            return points, ys
        order = sorted(range(len(ys)), key=lambda i: (ys[i], i))
        best = order[:GP_MAX_POINTS // 2]
        rest = sorted(order[GP_MAX_POINTS // 2:])
        rng = sampler_rng(self.spec.seed, index, SamplerStream.SUBSAMPLE)
        chosen = best + [rest[i] for i in sorted(rng.choice(len(rest), GP_MAX_POINTS - len(best), replace=False))]
        return [points[i] for i in chosen], [ys[i] for i in chosen]

    def _checked(self, subspace: int, index: int, params: dict[str, Any]) -> dict[str, Any]:
        """The proposal with every value inside its hyperparameter's range. The axes are built so
        that this always holds; a value that does not is drawn from its distribution instead."""
        space = self.spec.search_space[subspace]
        rng = None
        out = {}
        for name in sorted(params):
            value = params[name]
            if hps.HYPERPARAMETERS[name].check(value)[1] is not None:
                rng = rng or sampler_rng(self.spec.seed, index, SamplerStream.REDRAW)
                value = sample_value(self.spec, name, space[name], rng)
            out[name] = value
        return out

