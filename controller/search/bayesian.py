"""Bayesian sampling with scikit-optimize: a surrogate model of the primary metric proposes where to
look next, refit from the saved history on every ask.

    sampling: bayesian
    sampling_options:
      estimator: gp            # gp (Gaussian process, the default) | rf | et (random forest, extra trees)
      n_initial_points: 5      # per subspace: random trials before the surrogate proposes

Like every sampler here it keeps no private state: each `ask` builds a fresh `skopt.Optimizer`
from the finished trials (and the running ones, see below), with a random state drawn from (job
seed, trial index) (core.seeds), so a restarted controller proposes exactly what the dead one
would have.

- Each hyperparameter's prior comes from its distribution (search/axes.py); the initial random
  trials draw from the distributions themselves (`random_proposal`).
- skopt minimises: the objective is the negated score of `core.hyperparameters.oriented`, which
  alone knows which metrics are better lower (`_objective`). A trial that failed counts as the
  worst value seen (the optimizer learns to avoid what breaks); one that was stopped early counts
  with its best metric so far.
- Parallel proposals use a constant liar: running trials, and the proposals made earlier in the
  same batch, are told to the optimizer with the mean of the values seen, so that proposals made
  at once spread out instead of piling onto the same point.
- Conditional spaces (several subspaces, which AzureML refuses for Bayesian sampling): one
  optimizer per subspace, fitted only on that subspace's trials, and a choice of the subspace by
  UCB over the subspaces' best values (`choose_subspace`), after each subspace was tried once.

Speed. The controller calls `ask` whenever a trial slot frees up, so a fit must stay well under a
second. The GP is skopt's (Matern 5/2 with automatic relevance, plus noise) with its kernel fit
from one start and at most GP_FIT_ITERATIONS L-BFGS steps on one BLAS thread, fitted once per
proposal with a single `tell` of every point, and the acquisition function (expected improvement)
evaluated at N_CANDIDATES random points rather than polished with L-BFGS; above GP_MAX_POINTS
observations it is fitted on the best half of them and a seeded random share of the rest (a local
model around the best region). The forests have FOREST_TREES trees. bench/sampler_latency.py
measures it.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

from automl_images.core import hyperparameters as hps
from automl_images.core.seeds import SamplerStream, sampler_rng, sampler_seed

from ..distributions import Distribution
from ..spec import JobSpec
from .axes import Axis, axis, is_finite_number
from .base import Observation, Proposal, sample_value
from .random import random_proposal

N_CANDIDATES = 1000        # random points where the acquisition is evaluated (skopt: 10,000)
GP_FIT_ITERATIONS = 20     # L-BFGS steps of the GP's kernel fit (sklearn: up to 15,000, 3 starts)
GP_MAX_POINTS = 80         # observations a GP is fitted on (its kernel fit grows with the square
                           # to the cube of this: 0.1 s at 80 points, 1 s at 200, 4 s at 500)
FOREST_TREES = 32          # trees of the rf / et surrogates (skopt: 100; sklearn's cost is per tree)
BLAS_THREADS = 1           # the fits are small matrices: more threads only contend (4x slower on 2 cores)
UCB_EXPLORATION = 0.5      # weight of the exploration bonus when choosing a subspace


def _fit_kernel(obj_func, initial_theta, bounds):
    """The GP's kernel fit: one L-BFGS run of at most GP_FIT_ITERATIONS steps (sklearn's default
    runs to convergence from 3 starts: seconds at 100 points, a minute at 500)."""
    from scipy.optimize import fmin_l_bfgs_b

    theta, value, _ = fmin_l_bfgs_b(obj_func, initial_theta, bounds=bounds, maxiter=GP_FIT_ITERATIONS)
    return theta, value


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
        if len(told) < self.options.n_initial_points:
            return random_proposal(self.spec, subspace, index)
        ys = [self._objective(float(v)) for _, v in told]
        worst, lie = max(ys), sum(ys) / len(ys)
        points = [p for p, _ in told] + [p for p, _ in failed]
        ys = ys + [worst] * len(failed)
        lies = [p for p in (self._point(free, o.params) for o in running if o.subspace == subspace) if p is not None]
        points, ys = self._fit_set(points, ys, index)
        optimizer = self._optimizer(free, index)
        optimizer.tell(points + lies, ys + [lie] * len(lies))  # one fit, on everything at once
        params = {a.name: a.decode(x) for a, x in zip(free, optimizer.ask())}
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

    def _optimizer(self, free: list[Axis], index: int) -> "_Quiet":
        from skopt import Optimizer
        from skopt.utils import cook_estimator

        dimensions = [a.dimension for a in free]
        seed = sampler_seed(self.spec.seed, index)
        if self.options.estimator == "gp":
            estimator = cook_estimator("GP", space=dimensions, random_state=seed)
            estimator.set_params(n_restarts_optimizer=0, optimizer=_fit_kernel)
        else:
            estimator = cook_estimator(self.options.estimator.upper(), random_state=seed, n_estimators=FOREST_TREES)
        optimizer = Optimizer(dimensions, base_estimator=estimator, n_initial_points=0, acq_func="EI",
                              acq_optimizer="sampling", acq_optimizer_kwargs={"n_points": N_CANDIDATES},
                              random_state=seed)
        return _Quiet(optimizer)

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


class _Quiet:
    """An skopt Optimizer whose tell / ask run without the warnings that sklearn and skopt print
    on every fit (convergence notes, a point proposed twice), and whose fit (in `tell`) runs on
    BLAS_THREADS threads."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def tell(self, points, ys) -> None:
        from threadpoolctl import threadpool_limits

        with warnings.catch_warnings(), threadpool_limits(limits=BLAS_THREADS):
            warnings.simplefilter("ignore")
            self.optimizer.tell(points, ys)

    def ask(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.optimizer.ask()
