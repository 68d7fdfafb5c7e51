"""Samplers: random (reproducible per trial index) and grid (every point once, indexed directly)."""
from __future__ import annotations

import itertools
import math
import textwrap
import time

import pytest

from automl_images.controller.distributions import Distribution
from automl_images.controller.search import Proposal, make_sampler
from automl_images.controller.search.grid import GridSampler
from automl_images.controller.search.random import RandomSampler
from automl_images.controller.spec import JobSpecError, parse_job
from automl_images.core import hyperparameters as hps


def spec_of(search_space: str, sampling: str = "random", seed: int = 0, max_trials: int = 10):
    text = textwrap.dedent(f"""\
        task: image-classification
        training_data: train.jsonl
        sampling: {sampling}
        seed: {seed}
        limits:
          max_trials: {max_trials}
        search_space:
        """) + textwrap.indent(textwrap.dedent(search_space).strip("\n"), "  ") + "\n"
    return parse_job(text)


RANDOM_SPACE = """
- model_name: choice(resnet18, mobilenetv2)
  learning_rate: loguniform(-7, -2)
  optimizer: choice(sgd, adam, adamw)
  number_of_epochs: quniform(5, 20, 1)
  warmup_cosine_lr_warmup_epochs: randint(64)
- model_name: resnet50
  learning_rate: uniform(0.001, 0.02)
  momentum: normal(0.9, 0.2)
"""


def test_make_sampler_by_name():
    assert isinstance(make_sampler(spec_of(RANDOM_SPACE)), RandomSampler)
    assert isinstance(make_sampler(spec_of("- optimizer: choice(sgd, adam)", "grid")), GridSampler)


# ------------------------------------------------------------------------------------------------
# Random


def test_random_is_reproducible_per_trial_index():
    spec = spec_of(RANDOM_SPACE, seed=7)
    first = RandomSampler(spec).ask(list(range(20)), [])
    again = RandomSampler(spec_of(RANDOM_SPACE, seed=7)).ask(list(range(20)), [])
    assert first == again
    # The proposal of an index does not depend on which other indices are asked, nor in what order.
    assert RandomSampler(spec).ask([13, 2], []) == [first[13], first[2]]
    assert RandomSampler(spec).propose(5) == first[5]


def test_random_draws_keep_their_numbers():
    # Jobs seeded before a change must keep their trials' numbers (core.seeds): these are pinned.
    sampler = RandomSampler(spec_of(RANDOM_SPACE, seed=7))
    assert sampler.propose(0) == Proposal(1, {"learning_rate": pytest.approx(0.018047062218421936, rel=1e-12),
                                              "momentum": pytest.approx(0.8451724289275565, rel=1e-12)})
    assert sampler.propose(2) == Proposal(0, {"learning_rate": pytest.approx(0.008444546925744352, rel=1e-12),
                                              "model_name": "resnet18", "number_of_epochs": 19, "optimizer": "adam",
                                              "warmup_cosine_lr_warmup_epochs": 43})


def test_random_indices_and_seeds_differ():
    spec = spec_of(RANDOM_SPACE, seed=7)
    proposals = RandomSampler(spec).ask(list(range(20)), [])
    learning_rates = [p.params["learning_rate"] for p in proposals]
    assert len(set(learning_rates)) == 20
    other_seed = RandomSampler(spec_of(RANDOM_SPACE, seed=8)).ask(list(range(20)), [])
    assert [p.params["learning_rate"] for p in other_seed] != learning_rates


def test_random_ignores_history():
    spec = spec_of(RANDOM_SPACE)
    from automl_images.controller.search import Observation

    history = [Observation(0, {"learning_rate": 0.01}, 0.9)]
    assert RandomSampler(spec).ask([0, 1], history) == RandomSampler(spec).ask([0, 1], [])
    assert RandomSampler(spec).capacity() is None


def test_random_values_respect_their_distributions():
    spec = spec_of(RANDOM_SPACE)
    proposals = RandomSampler(spec).ask(list(range(400)), [])
    assert {p.subspace for p in proposals} == {0, 1}  # the subspace is drawn too
    first = [p.params for p in proposals if p.subspace == 0]
    second = [p.params for p in proposals if p.subspace == 1]
    assert 120 < len(first) < 280
    for params in first:
        assert set(params) == {"model_name", "learning_rate", "optimizer", "number_of_epochs",
                               "warmup_cosine_lr_warmup_epochs"}
        assert params["model_name"] in ("resnet18", "mobilenetv2")
        assert math.exp(-7) <= params["learning_rate"] <= math.exp(-2)
        assert params["optimizer"] in ("sgd", "adam", "adamw")
        assert type(params["number_of_epochs"]) is int and 5 <= params["number_of_epochs"] <= 20
        assert type(params["warmup_cosine_lr_warmup_epochs"]) is int
        assert 0 <= params["warmup_cosine_lr_warmup_epochs"] < 64
    assert {p["model_name"] for p in first} == {"resnet18", "mobilenetv2"}
    assert {p["optimizer"] for p in first} == {"sgd", "adam", "adamw"}
    for params in second:
        # constants (model_name resnet50) are not proposed: the trial spec adds them
        assert set(params) == {"learning_rate", "momentum"}
        assert 0.001 <= params["learning_rate"] <= 0.02


def test_random_normal_draws_outside_the_range_are_drawn_again():
    # normal(0.9, 0.2) puts about 31% of its mass above momentum's upper bound of 1
    spec = spec_of(RANDOM_SPACE)
    momenta = [p.params["momentum"] for p in RandomSampler(spec).ask(list(range(400)), []) if p.subspace == 1]
    assert momenta and all(0 <= m <= 1 for m in momenta)
    assert max(momenta) > 0.98  # redrawn, not clipped to a bound or dropped: the upper tail is still dense
    assert 1.0 not in momenta


def test_random_qnormal_redraws_non_positive_integers():
    spec = spec_of("- number_of_epochs: qnormal(2, 3, 1)")  # about 25% of draws are <= 0
    values = [p.params["number_of_epochs"] for p in RandomSampler(spec).ask(list(range(300)), [])]
    assert all(type(v) is int and v >= 1 for v in values)


def test_every_random_proposal_makes_a_valid_trial():
    spec = spec_of(RANDOM_SPACE)
    for proposal in RandomSampler(spec).ask(list(range(50)), []):
        values = spec.trial_hyperparameters(proposal.subspace, proposal.params)
        for name, value in values.items():
            if value is not None:
                assert hps.HYPERPARAMETERS[name].check(value)[1] is None, (name, value)


@pytest.mark.parametrize("text", ["normal(0.5, 1000000)", "normal(0.5, 40)"])  # 0.00% and 0.997% in (0, 1]
def test_validation_refuses_a_distribution_the_sampler_could_not_draw_from(text):
    with pytest.raises(JobSpecError) as refused:
        spec_of(f"- learning_rate: {text}")
    [problem] = refused.value.problems
    assert problem.field == "search_space[0].learning_rate"
    assert f"of {text}'s draws fall in (0, 1], the range of learning_rate" in problem.message


def test_an_accepted_spec_never_makes_the_sampler_fail():
    spec = spec_of("- learning_rate: normal(0.5, 39)")  # 1.02% of the draws in (0, 1]: accepted, just
    rates = [p.params["learning_rate"] for p in RandomSampler(spec).ask(list(range(50)), [])]
    assert len(set(rates)) == 50 and all(0 < rate <= 1 for rate in rates)


def test_proposal_json():
    assert Proposal(1, {"a": 2}).to_json() == {"subspace": 1, "params": {"a": 2}}


# ------------------------------------------------------------------------------------------------
# Grid

GRID_SPACE = """
- model_name: choice(resnet18, mobilenetv2)
  learning_rate: choice(0.001, 0.01, 0.1)
  optimizer: choice(sgd, adamw)
- model_name: resnet50
  number_of_epochs: choice(5, 10)
  weighted_loss: randint(3)
  momentum: 0.8
- model_name: resnet34
"""


def expected_grid(spec) -> list[Proposal]:
    """Subspace by subspace, the product of the sorted names' values, last name fastest."""
    out = []
    for i, space in enumerate(spec.search_space):
        names = sorted(n for n, v in space.items() if isinstance(v, Distribution))
        for combo in itertools.product(*(space[n].values for n in names)):
            out.append(Proposal(i, dict(zip(names, combo))))
    return out


def test_grid_enumerates_every_combination_once():
    spec = spec_of(GRID_SPACE, "grid")
    sampler = GridSampler(spec)
    assert sampler.capacity() == 2 * 3 * 2 + 2 * 3 + 1
    points = sampler.ask(list(range(sampler.capacity())), [])
    assert points == expected_grid(spec)
    keys = [(p.subspace, tuple(sorted(p.params.items()))) for p in points]
    assert len(set(keys)) == len(keys)


def test_grid_points_by_index():
    sampler = GridSampler(spec_of(GRID_SPACE, "grid"))
    assert sampler.point(0) == Proposal(0, {"learning_rate": 0.001, "model_name": "resnet18", "optimizer": "sgd"})
    assert sampler.point(1) == Proposal(0, {"learning_rate": 0.001, "model_name": "resnet18", "optimizer": "adamw"})
    assert sampler.point(11) == Proposal(0, {"learning_rate": 0.1, "model_name": "mobilenetv2", "optimizer": "adamw"})
    # the second subspace starts after the first's 12 points; its constant (momentum) is not a grid axis
    assert sampler.point(12) == Proposal(1, {"number_of_epochs": 5, "weighted_loss": 0})
    assert sampler.point(17) == Proposal(1, {"number_of_epochs": 10, "weighted_loss": 2})
    # a subspace without distributions is one point
    assert sampler.point(18) == Proposal(2, {})


def test_grid_ask_stops_at_capacity():
    sampler = GridSampler(spec_of(GRID_SPACE, "grid"))
    assert sampler.ask([17, 18, 19, 40], []) == [sampler.point(17), sampler.point(18)]
    for index in (-1, sampler.capacity()):
        with pytest.raises(IndexError):
            sampler.point(index)


def test_grid_is_the_same_for_every_sampler():
    spec = spec_of(GRID_SPACE, "grid")
    assert GridSampler(spec).ask([3, 14], []) == [GridSampler(spec).point(3), GridSampler(spec).point(14)]


def test_grid_of_a_million_points_answers_instantly():
    space = """
    - number_of_epochs: choice(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
      training_batch_size: choice(8, 16, 24, 32, 40, 48, 56, 64, 72, 80)
      validation_batch_size: choice(8, 16, 24, 32, 40, 48, 56, 64, 72, 80)
      resize_size: choice(32, 64, 96, 128, 160, 192, 224, 256, 288, 320)
      crop_size: choice(32, 64, 96, 128, 160, 192, 224, 256, 288, 320)
      step_lr_step_size: choice(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    - warmup_cosine_lr_warmup_epochs: randint(1000)
      layers_to_freeze: randint(1000)
      weighted_loss: randint(3)
    """
    started = time.perf_counter()
    sampler = GridSampler(spec_of(space, "grid"))
    assert sampler.capacity() == 10 ** 6 + 3 * 10 ** 6
    last_of_first = sampler.point(10 ** 6 - 1)
    assert last_of_first == Proposal(0, {"crop_size": 320, "number_of_epochs": 10, "resize_size": 320,
                                         "step_lr_step_size": 10, "training_batch_size": 80,
                                         "validation_batch_size": 80})
    # digits, last name fastest: crop_size, number_of_epochs, resize_size, step_lr_step_size, ...
    assert sampler.point(123456) == Proposal(0, {"crop_size": 64, "number_of_epochs": 3, "resize_size": 128,
                                                 "step_lr_step_size": 5, "training_batch_size": 48,
                                                 "validation_batch_size": 56})
    assert sampler.point(sampler.capacity() - 1) == Proposal(
        1, {"layers_to_freeze": 999, "warmup_cosine_lr_warmup_epochs": 999, "weighted_loss": 2})
    assert sampler.ask([10 ** 6], []) == [Proposal(1, {"layers_to_freeze": 0, "warmup_cosine_lr_warmup_epochs": 0,
                                                       "weighted_loss": 0})]
    assert time.perf_counter() - started < 1.0
