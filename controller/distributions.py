"""Search-space distributions as AzureML writes them, with AzureML's semantics.

    choice(a, b, ...)            one of the values
    randint(upper)               an integer in [0, upper)
    uniform(low, high)           uniform in [low, high]
    quniform(low, high, q)       round(uniform(low, high) / q) * q
    loguniform(low, high)        exp(uniform(low, high)): low and high are natural-log bounds
    qloguniform(low, high, q)    round(exp(uniform(low, high)) / q) * q
    normal(mu, sigma)            normal; values outside the parameter's range are drawn again
    qnormal(mu, sigma, q)        round(normal(mu, sigma) / q) * q
    lognormal(mu, sigma)         exp(normal(mu, sigma))
    qlognormal(mu, sigma, q)     round(exp(normal(mu, sigma)) / q) * q

Parsed from text (`uniform(0.001, 0.01)`) with `ast.literal_eval` of the arguments: never `eval`.
"""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

NAMES = ("choice", "randint", "uniform", "quniform", "loguniform", "qloguniform",
         "normal", "qnormal", "lognormal", "qlognormal")
_ARITY = {"randint": 1, "uniform": 2, "quniform": 3, "loguniform": 2, "qloguniform": 3,
          "normal": 2, "qnormal": 3, "lognormal": 2, "qlognormal": 3}
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)


class DistributionError(ValueError):
    pass


@dataclass(frozen=True)
class Distribution:
    name: str
    args: tuple[Any, ...]

    # -- kinds -------------------------------------------------------------------------------
    @property
    def is_discrete(self) -> bool:
        """Finite set of values: the only kind grid sampling can enumerate."""
        return self.name in ("choice", "randint")

    @property
    def is_log(self) -> bool:
        return self.name in ("loguniform", "qloguniform", "lognormal", "qlognormal")

    @property
    def q(self) -> float | None:
        return self.args[2] if self.name.startswith("q") else None

    @property
    def values(self) -> list[Any]:
        """All values of a discrete distribution."""
        if self.name == "choice":
            return list(self.args)
        if self.name == "randint":
            return list(range(int(self.args[0])))
        raise DistributionError(f"{self} is continuous and has no finite list of values")

    def support(self) -> tuple[float, float] | None:
        """Smallest and largest value this distribution can produce; None when unbounded."""
        if self.name == "choice":
            numbers = [v for v in self.args if isinstance(v, (int, float)) and not isinstance(v, bool)]
            return (min(numbers), max(numbers)) if len(numbers) == len(self.args) else None
        if self.name == "randint":
            return (0, int(self.args[0]) - 1)
        if self.name in ("uniform", "quniform"):
            low, high = self.args[0], self.args[1]
            if self.q:
                return (quantize(low, self.q), quantize(high, self.q))
            return (low, high)
        if self.name in ("loguniform", "qloguniform"):
            low, high = math.exp(self.args[0]), math.exp(self.args[1])
            return (quantize(low, self.q), quantize(high, self.q)) if self.q else (low, high)
        return None  # normal families: unbounded (lognormal: (0, inf))

    def probability_within(self, low: float | None, high: float | None) -> float:
        """The share of draws that fall in [low, high] (before q-rounding): how often a truncated
        draw of an unbounded distribution succeeds."""
        if self.name not in ("normal", "qnormal", "lognormal", "qlognormal"):
            return 1.0
        mu, sigma = self.args[0], self.args[1]
        if self.is_log:  # exp(normal) > 0: compare on the log scale; a bound at or below 0 excludes nothing
            low = math.log(low) if low is not None and low > 0 else None
            if high is not None:
                high = math.log(high) if high > 0 else -math.inf
        cdf = lambda x: 0.5 * (1 + math.erf((x - mu) / (sigma * math.sqrt(2))))
        return (1.0 if high is None else cdf(high)) - (0.0 if low is None else cdf(low))

    def produces_integers(self) -> bool:
        if self.name == "choice":
            return all(isinstance(v, int) and not isinstance(v, bool) for v in self.args)
        if self.name == "randint":
            return True
        q = self.q
        return q is not None and float(q).is_integer()

    # -- sampling ----------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> Any:
        name, args = self.name, self.args
        if name == "choice":
            return args[int(rng.integers(len(args)))]
        if name == "randint":
            return int(rng.integers(int(args[0])))
        if name in ("uniform", "quniform"):
            value = rng.uniform(args[0], args[1])
        elif name in ("loguniform", "qloguniform"):
            value = math.exp(rng.uniform(args[0], args[1]))
        elif name in ("normal", "qnormal"):
            value = rng.normal(args[0], args[1])
        else:  # lognormal, qlognormal
            value = math.exp(rng.normal(args[0], args[1]))
        if self.q:
            value = quantize(value, self.q)
            return int(value) if self.produces_integers() else value
        return float(value)

    def __str__(self) -> str:
        return f"{self.name}({', '.join(repr(a) if isinstance(a, str) else str(a) for a in self.args)})"

    def to_json(self) -> dict[str, Any]:
        return {"distribution": self.name, "args": list(self.args)}


def quantize(value: float, q: float) -> float:
    """`value` rounded to a multiple of `q`, as AzureML's q-distributions round."""
    return round(value / q) * q


def parse(text: str) -> Distribution | None:
    """A `Distribution` when `text` is a call of a known distribution, None when it is no call
    at all (a plain value). Raises DistributionError for malformed or unknown calls."""
    match = _CALL.match(text)
    if not match:
        return None
    name, inner = match.group(1), match.group(2)
    if name not in NAMES:
        close = _close(name, NAMES)
        hint = f" (did you mean {close}?)" if close else ""
        raise DistributionError(f"unknown distribution {name!r}{hint}; allowed: {', '.join(NAMES)}")
    args = _parse_args(name, inner)
    return make(name, args)


def _parse_args(name: str, inner: str) -> tuple[Any, ...]:
    if not inner.strip():
        return ()
    try:
        value = ast.literal_eval(f"({inner},)")
    except (ValueError, SyntaxError):
        if name == "choice":  # bare words, as people write model names: choice(resnet18, resnet50)
            return tuple(_bare(token.strip()) for token in inner.split(","))
        raise DistributionError(f"cannot read the arguments of {name}({inner})") from None
    return tuple(value)


def _bare(token: str) -> Any:
    try:
        return ast.literal_eval(token)
    except (ValueError, SyntaxError):
        if not re.fullmatch(r"[\w.\-]+", token):
            raise DistributionError(f"cannot read choice value {token!r}") from None
        return token


def make(name: str, args: tuple[Any, ...]) -> Distribution:
    if name not in NAMES:
        close = _close(str(name), NAMES)
        hint = f" (did you mean {close}?)" if close else ""
        raise DistributionError(f"unknown distribution {name!r}{hint}; allowed: {', '.join(NAMES)}")
    if name == "choice":
        if not args:
            raise DistributionError("choice() needs at least one value")
        if len(set(map(repr, args))) != len(args):
            raise DistributionError(f"choice{args}: values repeat")
        return Distribution(name, tuple(args))
    if len(args) != _ARITY[name]:
        raise DistributionError(f"{name} takes {_ARITY[name]} argument(s), got {len(args)}: {name}{tuple(args)}")
    for a in args:
        if isinstance(a, bool) or not isinstance(a, (int, float)):
            raise DistributionError(f"{name} takes numbers, got {a!r}")
    if name == "randint":
        if not float(args[0]).is_integer() or args[0] < 1:
            raise DistributionError(f"randint(upper) needs an integer upper >= 1, got {args[0]}")
    elif name in ("uniform", "quniform", "loguniform", "qloguniform") and args[0] >= args[1]:
        raise DistributionError(f"{name}: low must be below high, got {args[0]} >= {args[1]}")
    elif name in ("normal", "qnormal", "lognormal", "qlognormal") and args[1] <= 0:
        raise DistributionError(f"{name}: sigma must be positive, got {args[1]}")
    if name.startswith("q") and args[2] <= 0:
        raise DistributionError(f"{name}: q must be positive, got {args[2]}")
    return Distribution(name, tuple(args))


def _close(word: str, options) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, list(options), n=1)
    return found[0] if found else None
