"""Bayesian sampling: priors from the distributions, reproducible proposals from the saved history,
the metric's direction, parallel proposals (the kriging believer), failed trials, conditional
spaces, and the acquisition's parts: log-scaled inputs, the kernel's prior, the search."""
from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
from skopt.space import Categorical, Integer, Real

from automl_images.controller import spec as spec_module
from automl_images.controller.distributions import parse
from automl_images.controller.search import SAMPLERS, Observation, acquisition, axes, bayesian, make_sampler
from automl_images.controller.search.bayesian import BayesianSampler, choose_subspace
from automl_images.controller.search.random import RandomSampler, random_proposal
from automl_images.controller.spec import parse_job
from automl_images.core import hyperparameters as hps


def spec_of(space: str, seed: int = 0, metric: str = "accuracy", options: str = "{n_initial_points: 3, estimator: et}"):
    text = textwrap.dedent(f"""\
        task: image-classification
        training_data: train.jsonl
        primary_metric: {metric}
        sampling: bayesian
        sampling_options: {options}
        seed: {seed}
        limits:
          max_trials: 100
        search_space:
        """) + textwrap.indent(textwrap.dedent(space).strip("\n"), "  ") + "\n"
    return parse_job(text)


ONE_D = "- learning_rate: loguniform(-7, -2)"


def observe(sampler, objective, trials: int, start: int = 0, history=None) -> list[Observation]:
    """Run `trials` sequential trials of `objective(params)`; returns the history."""
    history = list(history or [])
    for i in range(start, start + trials):
        [proposal] = sampler.ask([i], history)
        history.append(Observation(proposal.subspace, proposal.params, objective(proposal.params), f"t{i:04d}"))
    return history


def test_bayesian_is_available_and_registered():
    assert "bayesian" in spec_module.SAMPLERS and set(SAMPLERS) == set(spec_module.SAMPLERS)
    assert isinstance(make_sampler(spec_of(ONE_D)), BayesianSampler)
    assert make_sampler(spec_of(ONE_D)).capacity() is None


# ------------------------------------------------------------------------------------------------
# Priors


@pytest.mark.parametrize("name, text, dimension, kind", [
    ("learning_rate", "loguniform(-7, -2)", Real(math.exp(-7), math.exp(-2), prior="log-uniform"), "real"),
    ("learning_rate", "uniform(0.001, 0.02)", Real(0.001, 0.02), "real"),
    ("number_of_epochs", "quniform(5, 20, 1)", Integer(5, 20), "steps"),
    ("number_of_epochs", "quniform(10, 30, 5)", Integer(2, 6), "steps"),          # k in 2..6: 10, 15, ..., 30
    ("momentum", "quniform(0.1, 0.5, 0.1)", Integer(1, 5), "steps"),
    ("warmup_cosine_lr_warmup_epochs", "randint(64)", Integer(0, 63), "int"),
    ("optimizer", "choice('sgd', 'adam', 'adamw')", Categorical([0, 1, 2]), "choice"),
    # normal families: mu +- 3 sigma, cut to the hyperparameter's range
    ("momentum", "normal(0.9, 0.2)", Real(0.3, 1.0), "real"),
    ("momentum", "normal(0.5, 0.1)", Real(0.2, 0.8), "real"),
    ("learning_rate", "lognormal(-4, 1)", Real(math.exp(-7), math.exp(-1), prior="log-uniform"), "real"),
    ("learning_rate", "qloguniform(-7, -2, 0.001)", Real(math.exp(-7), math.exp(-2), prior="log-uniform"), "log-steps"),
])
def test_priors_follow_the_distributions(name, text, dimension, kind):
    axis = axes.axis(name, parse(text))
    assert axis.kind == kind
    assert type(axis.dimension) is type(dimension)
    if isinstance(dimension, Categorical):
        assert list(axis.dimension.categories) == list(dimension.categories)
    else:
        assert axis.dimension.low == pytest.approx(dimension.low)
        assert axis.dimension.high == pytest.approx(dimension.high)
        assert axis.dimension.prior == dimension.prior


def test_steps_decode_to_the_distributions_values():
    epochs = axes.axis("number_of_epochs", parse("quniform(10, 30, 5)"))
    assert [epochs.decode(k) for k in range(2, 7)] == [10, 15, 20, 25, 30]
    assert all(type(epochs.decode(k)) is int for k in range(2, 7))
    momentum = axes.axis("momentum", parse("quniform(0.1, 0.5, 0.1)"))
    assert momentum.decode(3) == 0.3 and type(momentum.decode(3)) is float
    assert axes.axis("learning_rate", parse("qloguniform(-7, -2, 0.001)")).decode(0.0123) == 0.012
    # encode is decode's inverse, and refuses what the distribution cannot produce
    assert epochs.encode(15) == 3 and epochs.encode(16) is None and epochs.encode(35) is None
    optimizer = axes.axis("optimizer", parse("choice('sgd', 'adam')"))
    assert optimizer.encode("adam") == 1 and optimizer.encode("adamw") is None and optimizer.decode(1) == "adam"


def test_qnormal_of_an_integer_keeps_to_its_range():
    # number_of_epochs is a positive integer: qnormal(2, 3, 1) spans -7..11, cut to 1..11
    axis = axes.axis("number_of_epochs", parse("qnormal(2, 3, 1)"))
    assert (axis.dimension.low, axis.dimension.high) == (1, 11)


def test_single_values_are_fixed_not_searched():
    assert axes.axis("optimizer", parse("choice('sgd')")).dimension is None
    assert axes.axis("weighted_loss", parse("randint(1)")).fixed == 0
    spec = spec_of("- optimizer: choice('sgd')\n  learning_rate: 0.01")
    history = [Observation(0, {"optimizer": "sgd"}, 0.5, f"t{i}") for i in range(5)]
    assert make_sampler(spec).ask([5], history)[0].params == {"optimizer": "sgd"}


EVERY_KIND = """
- model_name: choice(resnet18, mobilenetv2)
  learning_rate: loguniform(-7, -2)
  optimizer: choice(sgd, adam, adamw)
  number_of_epochs: quniform(5, 20, 1)
  warmup_cosine_lr_warmup_epochs: randint(8)
  momentum: normal(0.9, 0.2)
  weight_decay: qloguniform(-9, -3, 0.0001)
  step_lr_gamma: quniform(0.1, 0.9, 0.1)
- model_name: resnet50
  learning_rate: lognormal(-4, 1)
  training_batch_size: qnormal(32, 16, 8)
  beta1: uniform(0.8, 0.99)
  layers_to_freeze: qlognormal(1, 0.5, 1)
"""


@pytest.mark.parametrize("estimator", ["gp", "rf", "et"])
def test_every_proposal_is_a_valid_trial(estimator):
    spec = spec_of(EVERY_KIND, options=f"{{n_initial_points: 2, estimator: {estimator}}}")
    sampler = make_sampler(spec)

    def objective(params):
        return 1.0 - abs(math.log(params["learning_rate"]) + 4) / 10

    history = observe(sampler, objective, 14)
    assert {o.subspace for o in history} == {0, 1}
    for o in history:
        values = spec.trial_hyperparameters(o.subspace, o.params)
        for name, value in values.items():
            if value is not None:
                assert hps.HYPERPARAMETERS[name].check(value)[1] is None, (name, value)
        for name, value in o.params.items():  # ints stay ints
            if hps.HYPERPARAMETERS[name].kind is hps.Kind.INT:
                assert type(value) is int, (name, value)


# ------------------------------------------------------------------------------------------------
# Reproducible, stateless


def test_initial_points_are_random_draws_seeded_by_the_trial_index():
    spec = spec_of(ONE_D, seed=5)
    first = make_sampler(spec).ask([0, 1, 2], [])
    again = make_sampler(spec_of(ONE_D, seed=5)).ask([0, 1, 2], [])
    assert first == again
    assert len({p.params["learning_rate"] for p in first}) == 3
    assert make_sampler(spec_of(ONE_D, seed=6)).ask([0], []) != first[:1]
    # the draws are the distribution's own, as the random sampler makes them
    random = RandomSampler(spec_of(ONE_D, seed=5))
    assert [p.params for p in first] == [random.propose(i).params for i in range(3)]


def objective_lr(params) -> float:
    """Accuracy, best at learning_rate = 0.02."""
    return 0.9 - 0.05 * math.log(params["learning_rate"] / 0.02) ** 2


@pytest.mark.parametrize("estimator", ["gp", "et"])
def test_same_history_same_proposals_in_any_order(estimator):
    spec = spec_of(ONE_D, seed=1, options=f"{{n_initial_points: 3, estimator: {estimator}}}")
    history = observe(make_sampler(spec), objective_lr, 8)
    running = [Observation(0, history[-1].params, None, "t0008")]
    asked = make_sampler(spec).ask([9, 10], history, running)
    assert make_sampler(spec).ask([9, 10], list(reversed(history)), running) == asked
    # one proposal per index; a later index does not change an earlier one's proposal
    assert len(asked) == 2 and make_sampler(spec).ask([9], history, running) == asked[:1]
    assert asked[0] != asked[1]


@pytest.mark.parametrize("estimator", ["gp", "rf", "et"])
def test_it_homes_in_on_the_optimum(estimator):
    spec = spec_of(ONE_D, seed=2, options=f"{{n_initial_points: 4, estimator: {estimator}}}")
    history = observe(make_sampler(spec), objective_lr, 16)
    best = max(history, key=lambda o: o.value)
    assert abs(math.log(best.params["learning_rate"] / 0.02)) < 0.35  # within a factor 1.4 of the optimum
    late = [o.params["learning_rate"] for o in history[10:]]
    assert sum(abs(math.log(lr / 0.02)) < 1.0 for lr in late) >= 4  # the model keeps to the good region


def test_the_direction_is_the_metrics():
    """The same numbers as accuracy (higher is better) or log_loss (lower is better) send the
    proposals to opposite ends."""
    def run(metric):
        spec = spec_of("- learning_rate: uniform(0.001, 0.1)", seed=4, metric=metric)
        history = observe(make_sampler(spec), lambda p: p["learning_rate"] * 10, 12)  # grows with lr
        return [o.params["learning_rate"] for o in history[6:]]

    up, down = run("accuracy"), run("log_loss")  # the same first 6 trials; then they part
    assert sum(up) / len(up) > 0.08 and sum(down) / len(down) < 0.04


def test_failed_trials_count_as_the_worst_value():
    spec = spec_of("- learning_rate: uniform(0.001, 0.1)", seed=3)
    sampler = make_sampler(spec)
    # everything above 0.05 fails (no metric); below, accuracy grows with the learning rate
    history = observe(sampler, lambda p: None if p["learning_rate"] > 0.05 else 0.5 + p["learning_rate"], 14)
    late = [o.params["learning_rate"] for o in history[6:]]
    assert sum(lr > 0.05 for lr in late) <= 2, late


# ------------------------------------------------------------------------------------------------
# Parallel proposals


def test_a_batch_spreads_out_and_avoids_running_trials():
    spec = spec_of("- learning_rate: uniform(0.001, 0.1)\n  momentum: uniform(0.5, 0.99)", seed=7,
                   options="{n_initial_points: 4, estimator: gp}")
    history = observe(make_sampler(spec), lambda p: -((p["learning_rate"] - 0.05) ** 2) * 100
                      - (p["momentum"] - 0.8) ** 2, 8)
    running = [Observation(0, {"learning_rate": 0.05, "momentum": 0.8}, None, "t0008")]
    batch = make_sampler(spec).ask([9, 10, 11, 12], history, running)
    points = [(p.params["learning_rate"], p.params["momentum"]) for p in batch] + [(0.05, 0.8)]
    distances = [math.dist(a, b) for i, a in enumerate(points) for b in points[i + 1:]]
    assert len(batch) == 4 and min(distances) > 1e-3  # no two proposals (nor a running trial) coincide


def test_a_batch_is_spread_by_believing_its_pending_points():
    """4 proposals at once land apart (in normalised units), each where one proposal would go
    given the earlier ones as running trials, and the same again from the same history."""
    spec = spec_of("- momentum: uniform(0, 1)\n  beta1: uniform(0, 1)", seed=3,
                   options="{n_initial_points: 5, estimator: gp}")
    history = observe(make_sampler(spec), lambda p: -(p["momentum"] - 0.3) ** 2 - (p["beta1"] - 0.6) ** 2, 8)
    batch = make_sampler(spec).ask([8, 9, 10, 11], history)
    assert make_sampler(spec).ask([8, 9, 10, 11], list(reversed(history))) == batch
    points = [(p.params["momentum"], p.params["beta1"]) for p in batch]
    assert min(math.dist(a, b) for i, a in enumerate(points) for b in points[i + 1:]) > 0.02, points
    running = [Observation(0, batch[0].params, None, "t0008")]
    assert make_sampler(spec).ask([9], history, running) == batch[1:2]


def test_believing_keeps_the_kernel_and_the_mean_and_removes_the_uncertainty():
    space = acquisition.space_of([Real(0.0, 1.0)])
    points = [[x] for x in (0.1, 0.3, 0.5, 0.9)]
    ys = [math.sin(6 * x[0]) for x in points]
    model = acquisition.fit("gp", space, points, ys, seed=0)
    believer, best = acquisition.believe(model, space, points, ys, [[0.7]])
    assert believer.kernel_.get_params()["k1"] == model.kernel_.get_params()["k1"]
    before_mean, before_std = model.predict(space.transform([[0.7]]), return_std=True)
    mean, std = believer.predict(space.transform([[0.7]]), return_std=True)
    assert mean[0] == pytest.approx(before_mean[0], abs=1e-3 * abs(before_mean[0]) + 1e-6)
    assert before_std[0] > 0.05 and std[0] < 0.25 * before_std[0]  # what remains is the fitted noise
    assert best == min(min(ys), before_mean[0])   # the believed value counts when it is the best
    assert acquisition.believe(model, space, points, ys, []) == (model, min(ys))


def test_log_uniform_inputs_are_searched_on_a_log_scale():
    space = acquisition.space_of([Real(1e-4, 1e-1, prior="log-uniform")])
    assert space.transform([[math.sqrt(1e-4 * 1e-1)]])[0][0] == pytest.approx(0.5)
    # the local search moves by factors: as far up as down from 1e-3, not by the same amount
    draws = np.array(acquisition.local_draws(space, [[1e-3]], 0.05, 2000, np.random.default_rng(0)))[:, 0]
    assert np.median(np.log10(draws / 1e-3)) == pytest.approx(0.0, abs=0.02)
    assert np.percentile(np.log10(draws / 1e-3), 84) == pytest.approx(0.05 * 3, rel=0.15)  # 0.05 of 3 decades


def test_local_draws_keep_categories_and_integers_in_range():
    space = acquisition.space_of([Categorical(["a", "b", "c"]), Integer(1, 5), Real(0.0, 1.0)])
    draws = acquisition.local_draws(space, [["b", 5, 1.0]], 0.2, 300, np.random.default_rng(1))
    assert all(d[0] in "abc" and 1 <= d[1] <= 5 and 0.0 <= d[2] <= 1.0 for d in draws)
    kept = sum(d[0] == "b" for d in draws) / len(draws)  # changed with probability 1/3 (to any of 3)
    assert 0.7 < kept < 0.85 and all(float(d[1]).is_integer() for d in draws)


def test_the_kernel_prior_and_its_gradient():
    theta = np.log([0.7, 0.05, 1.0, 30.0, 1e-3])  # amplitude, three length scales, noise
    penalty, gradient = acquisition.log_prior_penalty(theta)
    numeric = [(acquisition.log_prior_penalty(theta + step)[0] - acquisition.log_prior_penalty(theta - step)[0]) / 2e-6
               for step in np.eye(len(theta)) * 1e-6]
    assert gradient == pytest.approx(numeric, rel=1e-4)
    # a length scale of 1 costs least; 0.05 and 30 cost a lot (0.1 * (l**2 + l**-2))
    assert gradient[2] == pytest.approx(0.0) and gradient[1] < -10 and gradient[3] > 10


@pytest.mark.parametrize("space", ["- optimizer: choice(sgd, adam, adamw)\n  model_name: choice(resnet18, mobilenetv2)",
                                   "- optimizer: choice(sgd, adam)", "- number_of_epochs: quniform(5, 20, 1)"])
def test_categories_and_integers_alone(space):
    """A GP over categories only (skopt's Hamming kernel, which has no gradient to polish with) or
    integers only still proposes, one at a time and in batches."""
    spec = spec_of(space, options="{n_initial_points: 2, estimator: gp}")
    history = observe(make_sampler(spec), lambda p: 0.5 + 0.1 * (p.get("optimizer") == "adam"), 5)
    assert len(make_sampler(spec).ask([5, 6, 7], history)) == 3


def test_initial_points_count_running_trials():
    """n_initial_points counts trials, running ones too: with 4 results and 5 initial points, the
    first of a batch of 4 is still a random draw and the other 3 come from the model."""
    spec = spec_of(ONE_D, seed=13, options="{n_initial_points: 5, estimator: gp}")
    history = observe(make_sampler(spec), objective_lr, 4)
    batch = make_sampler(spec).ask([4, 5, 6, 7], history)
    assert batch[0] == random_proposal(spec, 0, 4)
    assert all(p != random_proposal(spec, 0, i) for i, p in zip((5, 6, 7), batch[1:]))
    # nothing finished yet: only random draws, however many run
    assert make_sampler(spec).ask([6], [], [Observation(0, o.params, None, o.key) for o in history]) == \
        [random_proposal(spec, 0, 6)]


def test_parallel_initial_points_are_the_random_ones():
    spec = spec_of(ONE_D, seed=9)  # n_initial_points 3: the first batch is random draws
    assert make_sampler(spec).ask([0, 1, 2, 3], []) == make_sampler(spec).ask([0, 1, 2, 3], [], [])
    assert [p.params for p in make_sampler(spec).ask([0, 1], [])] == \
        [RandomSampler(spec).propose(i).params for i in (0, 1)]


# ------------------------------------------------------------------------------------------------
# Conditional spaces


@pytest.mark.parametrize("counts, bests, expected", [
    ([0, 0, 0], [None, None, None], 0),           # nothing tried: the first
    ([2, 0, 1], [0.5, None, 0.7], 1),             # every subspace once before any choice
    ([1, 1], [None, None], 0),                    # tried but no values yet: the least tried, then the lowest
    ([2, 1], [None, None], 1),
    # UCB: scaled bests 1.0 and 0.0; bonus 0.5 * sqrt(ln 12 / n): 0.5 * sqrt(2.485 / 10) = 0.249 for
    # subspace 0 (1.249) and 0.5 * sqrt(2.485 / 2) = 0.557 for subspace 1
    ([10, 2], [0.9, 0.6], 0),
    # after 40 of 42 trials in subspace 0: 1.0 + 0.5 * sqrt(ln 42 / 40) = 1.153 against 0.5 * sqrt(ln 42 / 2) = 0.684
    ([40, 2], [0.9, 0.6], 0),
    # close bests: scaled 1.0 and 0.0 all the same, but subspace 1 seen once only among 30: 0.5 * sqrt(3.40) = 0.922
    # against 1.0 + 0.5 * sqrt(3.40 / 29) = 1.171
    ([29, 1], [0.91, 0.90], 0),
    # three subspaces: scaled 1.0, 0.5, 0.0 with counts 9, 3, 3 (ln 15 = 2.708): 1.274, 0.975, 0.475
    ([9, 3, 3], [0.9, 0.8, 0.7], 0),
    # a subspace without a value counts as the mean of the others' scaled bests (0.5):
    # 1.0 + 0.5 * sqrt(2.708 / 12) = 1.238 against 0.5 + 0.5 * sqrt(2.708 / 3) = 0.975 ... and with
    # counts 12, 1, 2: 0.5 + 0.5 * sqrt(2.708 / 1) = 1.323 wins
    ([12, 1, 2], [0.9, None, 0.7], 1),
    ([5, 5], [0.8, 0.8], 0),                      # a tie goes to the lower index
])
def test_choose_subspace_by_hand(counts, bests, expected):
    assert bayesian.UCB_EXPLORATION == 0.5
    assert choose_subspace(counts, bests) == expected


CONDITIONAL = """
- model_name: resnet18
  learning_rate: loguniform(-7, -2)
- model_name: mobilenetv2
  learning_rate: loguniform(-7, -2)
- model_name: resnet34
  learning_rate: loguniform(-7, -2)
"""


def test_conditional_space_tries_every_subspace_then_prefers_the_best():
    spec = spec_of(CONDITIONAL, seed=11)
    bonus = {0: 0.0, 1: 0.3, 2: 0.05}  # mobilenetv2's subspace is much better

    def objective(subspace, params):
        return 0.5 + bonus[subspace] - 0.02 * math.log(params["learning_rate"] / 0.02) ** 2

    sampler = make_sampler(spec)
    history = []
    for i in range(24):
        [p] = sampler.ask([i], history)
        history.append(Observation(p.subspace, p.params, objective(p.subspace, p.params), f"t{i:04d}"))
    subspaces = [o.subspace for o in history]
    assert subspaces[:3] == [0, 1, 2]  # each tried once first
    assert subspaces.count(1) >= 12, subspaces
    assert max(history, key=lambda o: o.value).subspace == 1


def test_each_subspace_has_its_own_optimizer():
    spec = spec_of(CONDITIONAL, seed=12)
    # subspace 0's trials say nothing about subspace 1: its first trials are still random draws
    history = [Observation(0, {"learning_rate": 0.01 * (i + 1)}, 0.5, f"t{i:04d}") for i in range(6)]
    [p] = make_sampler(spec).ask([6], history, [Observation(2, {"learning_rate": 0.01}, None, "t0099")])
    assert p.subspace == 1
    assert p.params == random_proposal(spec, 1, 6).params  # the seeded random draw for trial 6
