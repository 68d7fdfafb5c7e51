"""Where a surrogate model says to look next, with scikit-optimize's parts: its normalised space,
its surrogates (`cook_estimator`) and its expected improvement (`gaussian_ei`); the search for the
best point and the handling of pending trials are ours, because skopt's `Optimizer` does both
poorly for us (measured by bench/sampler_quality.py; see the figures in bayesian.py):

- Its acquisition search evaluates expected improvement at random points only (or polishes five
  of them with L-BFGS, which cannot move categorical coordinates). In six dimensions 1,000 random
  points leave the neighbourhood of the best trials almost unsampled, and that is where the
  improvement is. For a GP `maximise_ei` also draws points around the best observations at two
  scales, refines around the best candidates (a small evolutionary search that works the same on
  real, integer and categorical coordinates) and polishes the best few by L-BFGS; a forest keeps
  to the random points (see `maximise_ei`).
- Its parallel proposals tell a constant lie (`cl_min` / our mean) for every pending point and
  refit the kernel on the lies, so made-up values shape the length scales. `believe` instead
  keeps the kernel fitted on real results and adds each pending point at the model's own mean
  there (the "kriging believer"): the mean does not move, the uncertainty at and near the pending
  point collapses, and the improvement is measured against the best value believed, so the next
  proposal of the batch goes elsewhere.
- Its GP kernel is fitted by likelihood alone; ours under priors (`log_prior_penalty`).

Inputs are normalised per dimension (skopt's `normalize_dimensions`): log-uniform priors on a log
scale, integers and reals onto [0, 1], categories one-hot; the local draws move in those units.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

N_RANDOM = 1000            # random draws from the priors: the global part of the search
TOP_POINTS = 5             # best observations that local draws centre on
LOCAL_DRAWS = 100          # draws around each of them at each of LOCAL_SCALES
LOCAL_SCALES = (0.1, 0.02)  # standard deviations of the local draws, in normalised units
REFINE_POINTS = 10         # best candidates refined ...
REFINE_DRAWS = 40          # ... by this many draws around each, at REFINE_SCALE
REFINE_SCALE = 0.02
POLISH_POINTS = 5          # best candidates a GP's gradient then polishes ...
POLISH_ITERATIONS = 30     # ... with this many L-BFGS steps each
XI = 0.01                  # expected improvement's margin (skopt's default), in the objective's units
GP_FIT_ITERATIONS = 60     # L-BFGS steps of each GP kernel fit (sklearn: up to 15,000)
GP_RESTARTS = 2            # further kernel fits from random length scales (sklearn's default: 0) ...
GP_RESTART_POINTS = 40     # ... up to this many observations (each fit costs 0.2 s at 80 points)
FOREST_TREES = 32          # trees of the rf / et surrogates (skopt: 100; sklearn's cost is per tree)
SCALE_PRIOR = 0.3          # weight of the length scales' prior (see log_prior_penalty)
NOISE_PRIOR_RATE = 300.0   # rate of the noise's Gamma prior (see log_prior_penalty)
BLAS_THREADS = 1           # the fits are small matrices: more threads only contend (4x slower on 2 cores)


def space_of(dimensions: list) -> Any:
    """skopt's space of `dimensions`, normalised as its GP expects (see the module docstring)."""
    from skopt.utils import normalize_dimensions

    return normalize_dimensions(dimensions)


def _fit_kernel(obj_func, initial_theta, bounds):
    """One GP kernel fit: the most probable kernel under `log_prior_penalty` (sklearn maximises the
    likelihood alone), by L-BFGS of at most GP_FIT_ITERATIONS steps (sklearn runs to convergence:
    seconds at 100 points); sklearn calls it once plus GP_RESTARTS times and keeps the best."""
    from scipy.optimize import fmin_l_bfgs_b

    def objective(theta):
        value, gradient = obj_func(theta)
        penalty, penalty_gradient = log_prior_penalty(theta)
        return value + penalty, gradient + penalty_gradient

    theta, value, _ = fmin_l_bfgs_b(objective, initial_theta, bounds=bounds, maxiter=GP_FIT_ITERATIONS)
    return theta, value


def log_prior_penalty(theta: np.ndarray) -> tuple[float, np.ndarray]:
    """The negative log prior of skopt's GP kernel (amplitude * Matern + noise; `theta` holds their
    logs in that order: amplitude, a length scale per normalised input, noise) and its gradient.
    Optuna's priors (optuna/_gp/prior.py), made firmer: SCALE_PRIOR * (l**2 + 1 / l**2) per length
    scale l (Optuna: 0.1), which keeps length scales near 1 unless the data insist (a likelihood
    alone lets a dimension seen at 20 points drift to length 100, i.e. ignored); Gamma(2, 1) on the
    amplitude; Gamma(1.1, NOISE_PRIOR_RATE) on the noise (Optuna: 30), small unless the data are
    noisy. With Optuna's own priors the fitted noise (~0.03) and long length scales smoothed a
    narrow basin away: 10 of 50 seeds of Hartmann-6 stalled above -1.7 after 30 trials, proposing
    far corners of the space; with these, 5 of the 8 worst of them reached -3 (bench/sampler_quality.py)."""
    amplitude, scales, noise = np.exp(theta[0]), np.exp(theta[1:-1]), np.exp(theta[-1])
    penalty = SCALE_PRIOR * np.sum(scales ** 2 + scales ** -2) + (amplitude - theta[0]) \
        + (NOISE_PRIOR_RATE * noise - 0.1 * theta[-1])
    gradient = np.concatenate([[amplitude - 1], 2 * SCALE_PRIOR * (scales ** 2 - scales ** -2),
                               [NOISE_PRIOR_RATE * noise - 0.1]])
    return float(penalty), gradient


def fit(estimator: str, space: Any, points: list[list], ys: list[float], seed: int) -> Any:
    """A surrogate (gp, rf or et) fitted on `points` (in the space's own values) and `ys` (minimised)."""
    from skopt.utils import cook_estimator

    if estimator == "gp":
        model = cook_estimator("GP", space=space.dimensions, random_state=seed)
        restarts = GP_RESTARTS if len(points) <= GP_RESTART_POINTS else 0
        model.set_params(n_restarts_optimizer=restarts, optimizer=_fit_kernel)
    else:
        model = cook_estimator(estimator.upper(), random_state=seed, n_estimators=FOREST_TREES)
    with _quiet():
        model.fit(space.transform(points), ys)
    return model


def believe(model: Any, space: Any, points: list[list], ys: list[float], pending: list[list]) -> tuple[Any, float]:
    """`model` with each pending point added at its predicted mean (the kriging believer), and the
    best value it then holds, real or believed: the improvement the next proposal is measured
    against. (Measured against the real best only, a pending point believed better than it keeps
    its expected improvement at zero uncertainty, and the next proposal of the batch lands beside
    it.) A GP keeps the kernel it fitted on the real results; a forest is refitted (it has no
    kernel)."""
    if not pending:
        return model, min(ys)
    from sklearn.base import clone

    with _quiet():
        fantasies = [float(y) for y in model.predict(space.transform(pending))]
        if hasattr(model, "kernel_"):
            # kernel_ is (amplitude * Matern) + White(0): skopt moves the fitted noise to noise_
            believer = clone(model).set_params(kernel=model.kernel_.k1, noise=model.noise_ or None, optimizer=None)
        else:
            believer = clone(model)
        believer.fit(space.transform(points + pending), list(ys) + fantasies)
    return believer, min(min(ys), *fantasies)


def maximise_ei(space: Any, model: Any, y_best: float, incumbents: list[list], rng: np.random.Generator) -> list:
    """The point of the space with the highest expected improvement over `y_best` that the search
    finds: N_RANDOM draws from the priors; for a GP also draws around the `incumbents` (the best
    points seen, best first), then draws around the best REFINE_POINTS of those, then L-BFGS."""
    candidates = space.rvs(n_samples=N_RANDOM, random_state=int(rng.integers(2 ** 31)))
    if not hasattr(model, "kernel_"):
        # A forest's expected improvement is flat over each leaf: draws around the best trials all
        # score as the best trial's own cell, and the search proposes near-copies of it
        # (bench/sampler_quality.py: et on Hartmann-6 fell from -2.80 to -2.04 with them).
        return candidates[int(np.argmax(_ei(space, model, candidates, y_best)))]
    for scale in LOCAL_SCALES:
        candidates += local_draws(space, incumbents[:TOP_POINTS], scale, LOCAL_DRAWS, rng)
    values = _ei(space, model, candidates, y_best)
    best = [candidates[i] for i in np.argsort(-values, kind="stable")[:REFINE_POINTS]]
    refined = local_draws(space, best, REFINE_SCALE, REFINE_DRAWS, rng)
    candidates += refined
    values = np.concatenate([values, _ei(space, model, refined, y_best)])
    if POLISH_POINTS:  # a GP has gradients: polish the best few with L-BFGS
        order = np.argsort(-values, kind="stable")[:POLISH_POINTS]
        polished = polish(space, model, y_best, [candidates[i] for i in order])
        candidates += polished
        values = np.concatenate([values, _ei(space, model, polished, y_best)])
    return candidates[int(np.argmax(values))]


def polish(space: Any, model: Any, y_best: float, starts: list[list]) -> list[list]:
    """Each start moved uphill on the GP's expected improvement by L-BFGS (skopt's gradients), in
    normalised units; categorical coordinates stay as they are."""
    from scipy.optimize import fmin_l_bfgs_b
    from skopt.acquisition import gaussian_acquisition_1D
    from skopt.space import Categorical

    bounds = np.array(space.transformed_bounds, dtype=float)
    pinned = np.zeros(len(bounds), dtype=bool)
    column = 0
    for dim in space.dimensions:
        pinned[column:column + dim.transformed_size] = isinstance(dim, Categorical)
        column += dim.transformed_size
    if pinned.all():  # categories only: nothing to move (and skopt's Hamming kernel has no gradient)
        return []
    out = []
    with _quiet():
        for x0 in space.transform(starts):
            box = np.where(pinned[:, None], np.stack([x0, x0], axis=1), bounds)
            x, _, _ = fmin_l_bfgs_b(gaussian_acquisition_1D, x0, args=(model, y_best, "EI", {"xi": XI}),
                                    bounds=box, maxiter=POLISH_ITERATIONS)
            out.append(space.inverse_transform(np.clip(x, box[:, 0], box[:, 1]).reshape(1, -1))[0])
    return out


def local_draws(space: Any, centres: list[list], scale: float, n: int, rng: np.random.Generator) -> list[list]:
    """`n` points around each centre: every numeric coordinate moved by a normal draw of standard
    deviation `scale` in normalised units (clipped to the range); each categorical one changed to
    a random category with probability 1 / dimensions."""
    from skopt.space import Categorical

    out: list[list] = []
    for centre in centres:
        columns = []
        for d, dim in enumerate(space.dimensions):
            if isinstance(dim, Categorical):
                keep = rng.random(n) >= 1 / len(space.dimensions)
                others = rng.integers(len(dim.categories), size=n)
                columns.append([centre[d] if k else dim.categories[o] for k, o in zip(keep, others)])
            else:
                at = float(dim.transform([centre[d]])[0])
                moved = np.clip(at + rng.normal(0.0, scale, n), 0.0, 1.0)
                columns.append(list(dim.inverse_transform(moved)))
        out.extend([list(p) for p in zip(*columns)])
    return out


def _ei(space: Any, model: Any, points: list[list], y_best: float) -> np.ndarray:
    from skopt.acquisition import gaussian_ei

    if not points:
        return np.empty(0)
    with _quiet():
        return gaussian_ei(space.transform(points), model, y_opt=y_best, xi=XI)


@contextmanager
def _quiet() -> Iterator[None]:
    """Fits and predictions on BLAS_THREADS threads, without the warnings sklearn prints on every
    fit (convergence notes)."""
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(limits=BLAS_THREADS):
        warnings.simplefilter("ignore")
        yield
