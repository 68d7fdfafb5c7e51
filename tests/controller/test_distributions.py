"""Distributions as AzureML writes them: parsing, sampling semantics, support."""
from __future__ import annotations

import math

import numpy as np
import pytest

from automl_images.controller import distributions
from automl_images.controller.distributions import Distribution, DistributionError, make, parse

N = 2000  # draws per sampling test: enough to see the edges, fast


def draws(text: str, n: int = N, seed: int = 0) -> list:
    dist = parse(text)
    rng = np.random.default_rng(seed)
    return [dist.sample(rng) for _ in range(n)]


# ------------------------------------------------------------------------------------------------
# Parsing


def test_choice_of_bare_words():
    assert parse("choice(resnet18, resnet50)") == Distribution("choice", ("resnet18", "resnet50"))
    assert parse("choice(resnet18,mobilenet_v2)") == Distribution("choice", ("resnet18", "mobilenet_v2"))
    assert parse("choice(my-model.v2, x)") == Distribution("choice", ("my-model.v2", "x"))


def test_choice_of_quoted_strings():
    assert parse("choice('sgd', \"adamw\")") == Distribution("choice", ("sgd", "adamw"))


def test_choice_of_numbers_keeps_their_types():
    dist = parse("choice(1, 2.5, 1e-3)")
    assert dist.args == (1, 2.5, 0.001)
    assert [type(a) for a in dist.args] == [int, float, float]


def test_choice_mixing_bare_words_and_numbers():
    assert parse("choice(resnet18, 3)").args == ("resnet18", 3)


def test_single_value_choice():
    assert parse("choice(7)") == Distribution("choice", (7,))


def test_spaces_around_the_call():
    assert parse("  uniform ( 0.1 , 0.2 )  ") == Distribution("uniform", (0.1, 0.2))


@pytest.mark.parametrize("text", ["0.01", "resnet50", "warmup_cosine", "uniform(1, 2"])
def test_plain_values_are_not_calls(text):
    assert parse(text) is None


@pytest.mark.parametrize("text, expected", [
    ("randint(10)", ("randint", (10,))),
    ("uniform(0.001, 0.01)", ("uniform", (0.001, 0.01))),
    ("quniform(10, 30, 5)", ("quniform", (10, 30, 5))),
    ("loguniform(-7, -2)", ("loguniform", (-7, -2))),
    ("qloguniform(0, 4, 1)", ("qloguniform", (0, 4, 1))),
    ("normal(0.5, 0.1)", ("normal", (0.5, 0.1))),
    ("qnormal(16, 4, 2)", ("qnormal", (16, 4, 2))),
    ("lognormal(-4, 1)", ("lognormal", (-4, 1))),
    ("qlognormal(3, 0.5, 1)", ("qlognormal", (3, 0.5, 1))),
])
def test_every_distribution_parses(text, expected):
    dist = parse(text)
    assert (dist.name, dist.args) == expected
    assert parse(str(dist)) == dist  # str() writes it back the way it is read


def test_str_quotes_text_values():
    assert str(parse("choice(sgd, 0.5)")) == "choice('sgd', 0.5)"
    assert parse("choice(sgd, 0.5)").to_json() == {"distribution": "choice", "args": ["sgd", 0.5]}


def test_unknown_distribution_suggests_the_close_match():
    with pytest.raises(DistributionError) as info:
        parse("unifrom(0.1, 0.2)")
    message = str(info.value)
    assert "unknown distribution 'unifrom'" in message and "did you mean uniform?" in message
    assert "allowed: " + ", ".join(distributions.NAMES) in message


def test_unknown_distribution_without_close_match():
    with pytest.raises(DistributionError) as info:
        parse("gaussian(0, 1)")
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize("text, fragment", [
    ("uniform(0.1)", "uniform takes 2 argument(s), got 1"),
    ("randint(1, 2)", "randint takes 1 argument(s), got 2"),
    ("quniform(0, 1)", "quniform takes 3 argument(s), got 2"),
    ("normal()", "normal takes 2 argument(s), got 0"),
    ("choice()", "choice() needs at least one value"),
    ("choice(1, 1)", "values repeat"),
    ("choice(a b)", "cannot read choice value 'a b'"),
    ("uniform(1, x)", "cannot read the arguments of uniform(1, x)"),
    ("uniform('a', 1)", "uniform takes numbers, got 'a'"),
    ("uniform(true, 1)", "cannot read the arguments"),
    ("randint(0)", "randint(upper) needs an integer upper >= 1, got 0"),
    ("randint(2.5)", "needs an integer upper"),
    ("uniform(2, 1)", "low must be below high, got 2 >= 1"),
    ("loguniform(-2, -2)", "low must be below high"),
    ("normal(0, 0)", "sigma must be positive, got 0"),
    ("lognormal(0, -1)", "sigma must be positive"),
    ("quniform(0, 1, 0)", "q must be positive, got 0"),
    ("qnormal(0, 1, -1)", "q must be positive"),
])
def test_malformed_calls(text, fragment):
    with pytest.raises(DistributionError) as info:
        parse(text)
    assert fragment in str(info.value)


def test_make_rejects_booleans_as_numbers():
    with pytest.raises(DistributionError, match="takes numbers"):
        make("uniform", (True, 2))


# ------------------------------------------------------------------------------------------------
# Kinds


def test_discrete_kinds():
    assert parse("choice(1, 2)").is_discrete and parse("randint(3)").is_discrete
    for text in ("uniform(0, 1)", "quniform(0, 10, 1)", "loguniform(0, 1)", "normal(0, 1)"):
        assert not parse(text).is_discrete
    assert parse("randint(4)").values == [0, 1, 2, 3]
    assert parse("randint(3.0)").values == [0, 1, 2]
    assert parse("choice(b, a)").values == ["b", "a"]
    with pytest.raises(DistributionError, match="continuous"):
        parse("uniform(0, 1)").values


def test_log_kinds():
    assert [parse(t).is_log for t in ("loguniform(0, 1)", "qloguniform(0, 1, 1)", "lognormal(0, 1)",
                                      "qlognormal(0, 1, 1)", "uniform(0, 1)", "normal(0, 1)")] == \
        [True, True, True, True, False, False]


@pytest.mark.parametrize("text, integers", [
    ("choice(1, 2)", True), ("choice(1, 2.0)", False), ("choice(true, false)", False),
    ("choice(a, b)", False), ("randint(5)", True), ("quniform(0, 10, 1)", True),
    ("quniform(0, 10, 1.0)", True), ("quniform(0, 10, 0.5)", False), ("qnormal(10, 2, 2)", True),
    ("uniform(0, 10)", False), ("normal(5, 1)", False), ("lognormal(1, 1)", False),
])
def test_produces_integers(text, integers):
    assert parse(text).produces_integers() is integers


# ------------------------------------------------------------------------------------------------
# Sampling with AzureML's semantics


def test_choice_draws_every_value_and_only_those():
    values = draws("choice(sgd, adam, adamw)")
    assert set(values) == {"sgd", "adam", "adamw"}


def test_randint_is_zero_to_upper_exclusive():
    values = draws("randint(5)")
    assert set(values) == {0, 1, 2, 3, 4}
    assert all(type(v) is int for v in values)


def test_uniform_within_bounds():
    values = draws("uniform(0.001, 0.01)")
    assert all(0.001 <= v <= 0.01 for v in values)
    assert all(type(v) is float for v in values)
    assert np.mean(values) == pytest.approx(0.0055, rel=0.05)


def test_loguniform_bounds_are_natural_logs():
    values = draws("loguniform(-7, -2)")
    assert all(math.exp(-7) <= v <= math.exp(-2) for v in values)
    assert all(type(v) is float for v in values)
    # exp(uniform(-7, -2)): the logs are uniform, centred at -4.5 (a plain uniform over
    # [e^-7, e^-2] would centre its logs near -3)
    logs = np.log(values)
    assert np.mean(logs) == pytest.approx(-4.5, abs=0.1)
    assert np.mean(logs < -4.5) == pytest.approx(0.5, abs=0.05)


def test_quniform_is_a_multiple_of_q():
    values = draws("quniform(10, 30, 5)")
    assert set(values) == {10, 15, 20, 25, 30}
    assert all(type(v) is int for v in values)


def test_quniform_with_fractional_q():
    values = draws("quniform(0, 1, 0.25)")
    assert all(type(v) is float for v in values)
    assert set(values) == {0.0, 0.25, 0.5, 0.75, 1.0}


def test_quniform_rounds_rather_than_floors():
    # round(uniform(0, 10) / 10) * 10: 0 below 5, 10 above
    values = draws("quniform(0, 10, 10)")
    assert set(values) == {0, 10}
    assert np.mean([v == 10 for v in values]) == pytest.approx(0.5, abs=0.05)


def test_qloguniform_is_a_rounded_exp():
    values = draws("qloguniform(0, 3, 1)")  # round(exp(uniform(0, 3)))
    assert all(type(v) is int for v in values)
    assert min(values) == 1 and max(values) == 20  # exp(3) = 20.09
    values = draws("qloguniform(0, 3, 0.5)")
    assert all(float(v / 0.5).is_integer() for v in values)


def test_normal_is_unbounded_and_centred():
    values = draws("normal(10, 2)")
    assert np.mean(values) == pytest.approx(10, abs=0.2)
    assert np.std(values) == pytest.approx(2, rel=0.1)
    assert all(type(v) is float for v in values)


def test_qnormal_is_a_multiple_of_q():
    values = draws("qnormal(16, 4, 2)")
    assert all(type(v) is int and v % 2 == 0 for v in values)
    values = draws("qnormal(0, 1, 0.5)")
    assert all(type(v) is float and float(v / 0.5).is_integer() for v in values)


def test_lognormal_is_exp_of_normal():
    values = draws("lognormal(-4, 0.5)")
    assert all(v > 0 for v in values)
    assert np.mean(np.log(values)) == pytest.approx(-4, abs=0.05)


def test_qlognormal_integers():
    values = draws("qlognormal(3, 0.5, 1)")
    assert all(type(v) is int and v >= 0 for v in values)
    assert np.median(values) == pytest.approx(math.exp(3), abs=1)


def test_sampling_is_reproducible_per_generator():
    assert draws("uniform(0, 1)", 20, seed=3) == draws("uniform(0, 1)", 20, seed=3)
    assert draws("uniform(0, 1)", 20, seed=3) != draws("uniform(0, 1)", 20, seed=4)


# ------------------------------------------------------------------------------------------------
# Support: the smallest and largest value a distribution can produce


@pytest.mark.parametrize("text, support", [
    ("choice(3, 1, 2.5)", (1, 3)),
    ("randint(4)", (0, 3)),
    ("uniform(0.1, 0.5)", (0.1, 0.5)),
    ("quniform(10, 30, 5)", (10, 30)),
    ("quniform(1, 10, 4)", (0, 8)),  # round(0.25) * 4 = 0, round(2.5) * 4 = 8 (half to even)
    ("loguniform(0, 1)", (1.0, math.e)),
    ("qloguniform(0, 3, 1)", (1, 20)),
])
def test_support(text, support):
    assert parse(text).support() == pytest.approx(support)


@pytest.mark.parametrize("text", ["choice(a, 1)", "choice(true, 2)", "normal(0, 1)", "qnormal(0, 1, 1)",
                                  "lognormal(0, 1)", "qlognormal(0, 1, 1)"])
def test_unbounded_or_non_numeric_support(text):
    assert parse(text).support() is None


@pytest.mark.parametrize("text", ["randint(7)", "uniform(-1, 2)", "quniform(1, 10, 4)", "loguniform(-3, 1)",
                                  "qloguniform(-1, 2, 0.5)", "choice(2, 8, 5)"])
def test_draws_stay_within_support(text):
    low, high = parse(text).support()
    values = draws(text)
    assert all(low - 1e-12 <= v <= high + 1e-12 for v in values)
    assert min(values) == pytest.approx(low, abs=0.05 * (high - low))
    assert max(values) == pytest.approx(high, abs=0.05 * (high - low))
