"""A hyperparameter's distribution as the Bayesian optimizer searches it, and back.

Each axis comes from its distribution: `choice` is categorical (over the values' positions, so any
mix of types works), `randint` and the q-distributions are integers (`quniform`, `qnormal`: the
step count k of the value k*q), `uniform` and `loguniform` are real ranges (log-uniform for the
latter, with AzureML's natural-log bounds), `qloguniform` and `qlognormal` are log-uniform ranges
rounded to their q. The normal families are unbounded: the optimizer searches mu ± 3 sigma (exp of
that for lognormal), cut to the hyperparameter's range, uniformly.

`encode` also says whether a value is one the distribution can produce, which warm start uses to
tell whether an earlier trial fits a job's space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from automl_images.core import hyperparameters as hps

from ..distributions import Distribution, quantize


@dataclass(frozen=True)
class Axis:
    """One sampled hyperparameter as the optimizer sees it. `kind`: choice (the optimizer works on
    the values' positions), int, steps (an integer k for the value k*q), real, log-steps (a
    log-uniform real rounded to q). `dimension` is None when only `fixed` is possible."""
    name: str
    kind: str
    dimension: Any
    values: tuple = ()
    q: float | None = None
    integers: bool = False
    low: float | None = None
    high: float | None = None
    fixed: Any = None

    def decode(self, x: Any) -> Any:
        if self.kind == "choice":
            return self.values[int(x)]
        if self.kind == "int":
            return int(x)
        if self.kind == "steps":
            return _step_value(int(x), self.q, self.integers)
        if self.kind == "log-steps":
            return _step_value(int(round(float(x) / self.q)), self.q, self.integers)
        return float(x)

    def encode(self, value: Any) -> Any | None:
        """The optimizer's coordinate of `value`; None when this axis cannot produce it."""
        if self.dimension is None:
            return None
        if self.kind == "choice":
            return next((i for i, v in enumerate(self.values) if _same(v, value)), None)
        if not is_finite_number(value):
            return None
        value = float(value)
        if self.kind == "int":
            ok = value.is_integer() and self.low <= value <= self.high
            return int(value) if ok else None
        if self.kind in ("steps", "log-steps"):
            k = round(value / self.q)
            if abs(k * self.q - value) > 1e-9 * max(1.0, abs(value)):
                return None
            if self.kind == "steps":
                return k if self.low <= k <= self.high else None
            lowest, highest = quantize(self.low, self.q), quantize(self.high, self.q)
            if not lowest - 1e-12 <= value <= highest + 1e-12:
                return None
            return min(max(value, self.low), self.high)
        tolerance = 1e-9 * max(1.0, abs(self.high))
        if not self.low - tolerance <= value <= self.high + tolerance:
            return None
        return min(max(value, self.low), self.high)


def is_finite_number(value: Any) -> bool:
    """A real number (not a flag, not NaN nor infinite): a value an axis can place, or a metric a
    model can learn from."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _same(a: Any, b: Any) -> bool:
    if is_finite_number(a) and is_finite_number(b):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


def _step_value(k: int, q: float, integers: bool) -> Any:
    value = k * q
    return int(round(value)) if integers else float(round(value, 12))


def axis(name: str, dist: Distribution) -> Axis:
    """The optimizer's view of `dist` (see the module docstring)."""
    from skopt.space import Categorical, Integer, Real

    definition = hps.HYPERPARAMETERS[name]
    kind, args = dist.name, dist.args
    if kind == "choice":
        values = tuple(args)
        if len(values) == 1:
            return Axis(name, "choice", None, values, fixed=values[0])
        return Axis(name, "choice", Categorical(list(range(len(values)))), values)
    if kind == "randint":
        high = int(args[0]) - 1
        if high == 0:
            return Axis(name, "int", None, fixed=0)
        return Axis(name, "int", Integer(0, high), low=0, high=high)
    q = dist.q
    integers = dist.produces_integers()
    if kind in ("uniform", "quniform", "normal", "qnormal"):
        low, high = (args[0], args[1]) if kind in ("uniform", "quniform") else \
            _within(definition, args[0] - 3 * args[1], args[0] + 3 * args[1])
        if q is None:
            return Axis(name, "real", Real(low, high), low=low, high=high)
        if kind == "quniform":
            k_low, k_high = round(low / q), round(high / q)
        else:  # qnormal: whole steps inside the range, ends that the hyperparameter refuses moved in
            k_low, k_high = math.ceil(low / q - 1e-9), math.floor(high / q + 1e-9)
            while k_low < k_high and definition.check(_step_value(k_low, q, integers))[1]:
                k_low += 1
            while k_high > k_low and definition.check(_step_value(k_high, q, integers))[1]:
                k_high -= 1
        if k_low >= k_high:
            return Axis(name, "steps", None, fixed=_step_value(k_low, q, integers))
        return Axis(name, "steps", Integer(k_low, k_high), q=q, integers=integers, low=k_low, high=k_high)
    # loguniform, qloguniform, lognormal, qlognormal: log-uniform over a positive range
    if kind in ("loguniform", "qloguniform"):
        low, high = math.exp(args[0]), math.exp(args[1])
    else:
        low, high = _within(definition, math.exp(args[0] - 3 * args[1]), math.exp(args[0] + 3 * args[1]))
    dimension = Real(low, high, prior="log-uniform")
    if q is None:
        return Axis(name, "real", dimension, low=low, high=high)
    return Axis(name, "log-steps", dimension, q=q, integers=integers, low=low, high=high)


def _within(definition: hps.Hyperparameter, low: float, high: float) -> tuple[float, float]:
    """[low, high] cut to the hyperparameter's range, an exclusive bound stepped over."""
    if definition.low is not None and low <= definition.low:
        low = math.nextafter(definition.low, math.inf) if definition.low_exclusive else definition.low
    if definition.high is not None:
        high = min(high, definition.high)
    if low >= high:  # validation keeps 1% of the mass in range, so this needs a very odd job
        raise ValueError(f"{definition.name}: nothing of [{low:g}, {high:g}] lies in {definition.range_text()}")
    return low, high
