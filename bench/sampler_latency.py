"""How long a sampler takes to propose one trial from a history of 10, 100 and 500 finished trials.

    .venv/bin/python bench/sampler_latency.py            # every sampler, 3 repeats (median shown)
    .venv/bin/python bench/sampler_latency.py --repeats 5

Our samplers keep no state: each proposal builds its model from the saved history, so "ask + tell"
here is one `ask` with the whole history, as the controller calls it. Optuna's TPE (when optuna is
installed) is measured the same way, rebuilt from the history each time: a new in-memory study,
`add_trials` of the finished trials, `ask` and `tell`. Same space for all: a model choice, a
log-uniform learning rate, an optimizer choice, an integer epoch count and a uniform momentum.
Goals: Bayesian within 2x of TPE at 100 trials, under 1 s at 500.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from automl_images.controller.search import Observation, make_sampler  # noqa: E402
from automl_images.controller.spec import parse_job  # noqa: E402

SIZES = (10, 100, 500)
SPACE = """\
  - model_name: choice(resnet18, mobilenetv2)
    learning_rate: loguniform(-7, -2)
    optimizer: choice(sgd, adam, adamw)
    number_of_epochs: quniform(5, 20, 1)
    momentum: uniform(0.5, 0.99)
"""


def job(sampling: str, estimator: str | None = None):
    options = f"sampling_options: {{estimator: {estimator}}}\n" if estimator else ""
    return parse_job(f"task: image-classification\ntraining_data: t.jsonl\nsampling: {sampling}\n{options}"
                     f"limits:\n  max_trials: 1000\nsearch_space:\n{SPACE}")


def objective(params) -> float:
    return (0.9 - 0.05 * math.log(params["learning_rate"] / 0.02) ** 2 - 0.05 * (params["optimizer"] == "sgd")
            - 0.002 * (params["number_of_epochs"] - 12) ** 2 - 0.2 * (params["momentum"] - 0.8) ** 2)


def history(n: int, seed: int = 0) -> list[Observation]:
    """n finished trials at random points of the space (what any sampler could have proposed)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        params = {"model_name": ["resnet18", "mobilenetv2"][rng.integers(2)],
                  "learning_rate": float(math.exp(rng.uniform(-7, -2))),
                  "optimizer": ["sgd", "adam", "adamw"][rng.integers(3)],
                  "number_of_epochs": int(rng.integers(5, 21)), "momentum": float(rng.uniform(0.5, 0.99))}
        out.append(Observation(0, params, objective(params), f"t{i:04d}"))
    return out


def time_ours(spec, n: int, repeats: int) -> float:
    observed = history(n)
    times = []
    for r in range(repeats):
        sampler = make_sampler(spec)
        started = time.perf_counter()
        sampler.ask([n + r], observed)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_tpe(n: int, repeats: int) -> float | None:
    try:
        import optuna
    except ImportError:
        return None
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {"model_name": CategoricalDistribution(["resnet18", "mobilenetv2"]),
                     "learning_rate": FloatDistribution(math.exp(-7), math.exp(-2), log=True),
                     "optimizer": CategoricalDistribution(["sgd", "adam", "adamw"]),
                     "number_of_epochs": IntDistribution(5, 20), "momentum": FloatDistribution(0.5, 0.99)}
    trials = [optuna.trial.create_trial(params=o.params, distributions=distributions, value=o.value)
              for o in history(n)]
    times = []
    for r in range(repeats):
        started = time.perf_counter()
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=r))
        study.add_trials(trials)
        trial = study.ask(distributions)
        study.tell(trial, objective(trial.params))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [("random", job("random")), ("grid", None), ("bayesian gp", job("bayesian", "gp")),
            ("bayesian rf", job("bayesian", "rf")), ("bayesian et", job("bayesian", "et"))]
    print(f"{'sampler':<14}" + "".join(f"{f'{n} trials':>14}" for n in SIZES))
    results = {}
    for name, spec in rows:
        if name == "grid":
            spec = parse_job("task: image-classification\ntraining_data: t.jsonl\nsampling: grid\nlimits:\n"
                             "  max_trials: 1000\nsearch_space:\n  - model_name: choice(resnet18, mobilenetv2)\n"
                             "    learning_rate: choice(0.001, 0.003, 0.01, 0.03, 0.1)\n"
                             "    optimizer: choice(sgd, adam, adamw)\n    number_of_epochs: choice(5, 10, 15, 20)\n"
                             "    momentum: choice(0.5, 0.7, 0.9, 0.95, 0.99)\n")
        results[name] = [time_ours(spec, n, args.repeats) for n in SIZES]
        print(f"{name:<14}" + "".join(f"{t * 1000:>12.1f}ms" for t in results[name]), flush=True)
    tpe = [time_tpe(n, args.repeats) for n in SIZES]
    if tpe[0] is None:
        print("optuna TPE      (optuna is not installed: pip install optuna)")
    else:
        print(f"{'optuna tpe':<14}" + "".join(f"{t * 1000:>12.1f}ms" for t in tpe))
        gp = results["bayesian gp"]
        print(f"\nbayesian gp / tpe at 100: {gp[1] / tpe[1]:.1f}x (goal: 2x); gp at 500: {gp[2]:.2f} s (goal: < 1 s)")
        et = results["bayesian et"]
        print(f"bayesian et / tpe at 100: {et[1] / tpe[1]:.1f}x; et at 500: {et[2]:.2f} s")
    observed = history(100)
    running = [Observation(0, o.params, None, f"r{i}") for i, o in enumerate(history(2, seed=1))]
    for estimator in ("gp", "et"):
        started = time.perf_counter()
        make_sampler(job("bayesian", estimator)).ask([100, 101, 102, 103], observed, running)
        print(f"bayesian {estimator}: 4 proposals at once (kriging believer, 2 running) at 100 trials: "
              f"{(time.perf_counter() - started) * 1000:.0f}ms")


if __name__ == "__main__":
    main()
