"""Sweep quality of the samplers: what each finds per trial, against Optuna's, on standard test
functions and on real learning curves of our trainer (bench/digits_table.json, bench/fridge_table.json).

    .venv/bin/python bench/sampler_quality.py                     # everything, 10 seeds (~20 min on 2 cores)
    .venv/bin/python bench/sampler_quality.py --part functions --functions hartmann6 --samplers gp optuna-gp
    .venv/bin/python bench/sampler_quality.py --part table --seeds 20

Functions (lower is better; the optimum in the header): Branin (2 dimensions), Hartmann-6 and a
conditional space of two subspaces with different parameters (as our job files allow: Hartmann-3
on three parameters of one model, Branin shifted by -3 on two others of another model; its
optimum is Hartmann-3's, -3.863). Each parameter is a real hyperparameter of a job file,
`uniform(0, 1)`, scaled onto the function's domain. Every sampler runs 30 trials per seed,
sequentially (one proposal, its result, the next) and 4 at a time (4 proposals asked at once,
then their 4 results). Printed: the median [first quartile, third quartile] over seeds of the
best value after 10, 20 and 30 trials.

Ours (random, bayesian gp / et) are asked through the sampler interface, exactly as the controller
asks them (the whole history every time). Optuna's TPE and GP samplers (optuna==5.0.0, the
`bench` extra) through Optuna's own ask / tell, with their defaults, wrapped in the same interface
(Optuna's GP sampler does not model conditional parameters: it draws them at random).

The tables: a job over each grid of real runs (bench/build_table.py: digits, model × learning
rate × optimizer; fridge, the same × batch size; the learning rate log-uniform, snapped to the
nearest learning rate of the grid, the others choices), 30 trials, 4 running at a time, each
trial's validation accuracy after each epoch read from the table, driven by the
controller's own `reconcile.decide` (bench/sweep_quality.py `sweep`), without and with each
early-termination policy. Printed: the median [quartiles] of the best accuracy after 10, 20 and
30 trials (higher is better) and of the epochs the 30 trials trained. Optuna's samplers run
without a policy and with ASHA (`--optuna-policies`).
"""
from __future__ import annotations

import argparse
import bisect
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from automl_images.controller.search import Observation, Proposal, make_sampler
from automl_images.controller.spec import parse_job

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_quality import sweep  # noqa: E402

TRIALS = 30
CHECKPOINTS = (10, 20, 30)
TABLES = {name: Path(__file__).resolve().parent / f"{name}_table.json" for name in ("digits", "fridge")}


# --- test functions, on [0, 1]^d -------------------------------------------------------------------

def branin(x: list[float]) -> float:
    x1, x2 = 15 * x[0] - 5, 15 * x[1]
    return ((x2 - 5.1 / (4 * math.pi ** 2) * x1 ** 2 + 5 / math.pi * x1 - 6) ** 2
            + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10)


_H6_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                  [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
_H6_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                         [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
_H3_A = np.array([[3, 10, 30], [0.1, 10, 35], [3, 10, 30], [0.1, 10, 35]])
_H3_P = 1e-4 * np.array([[3689, 1170, 2673], [4699, 4387, 7470], [1091, 8732, 5547], [381, 5743, 8828]])
_H_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def hartmann(a: np.ndarray, p: np.ndarray, x: list[float]) -> float:
    return float(-np.sum(_H_ALPHA * np.exp(-np.sum(a * (np.asarray(x) - p) ** 2, axis=1))))


# Real hyperparameters with a [0, 1] range stand for the functions' coordinates.
UNIT = ("momentum", "weight_decay", "beta1", "beta2", "step_lr_gamma", "warmup_cosine_lr_cycles")


def _subspace(model: str, names: tuple[str, ...]) -> str:
    return f"  - model_name: {model}\n" + "".join(f"    {n}: uniform(0, 1)\n" for n in names)


# name: (search space, objective of a proposal, optimum)
FUNCTIONS: dict[str, tuple[str, Callable[[Proposal], float], float]] = {
    "branin": (_subspace("resnet18", UNIT[:2]), lambda p: branin([p.params[n] for n in UNIT[:2]]), 0.397887),
    "hartmann6": (_subspace("resnet18", UNIT), lambda p: hartmann(_H6_A, _H6_P, [p.params[n] for n in UNIT]),
                  -3.32237),
    "conditional": (_subspace("resnet18", UNIT[:3]) + _subspace("mobilenetv2", UNIT[3:5]),
                    lambda p: (hartmann(_H3_A, _H3_P, [p.params[n] for n in UNIT[:3]]) if p.subspace == 0
                               else branin([p.params[n] for n in UNIT[3:5]]) - 3.0), -3.86278),
}


def job(space: str, sampling: str, seed: int, estimator: str = "gp", extra: str = "", epochs: int = 1):
    options = f"sampling_options:\n  estimator: {estimator}\n" if sampling == "bayesian" else ""
    return parse_job(f"task: image-classification\ntraining_data: t.jsonl\nsampling: {sampling}\n{options}"
                     f"seed: {seed}\nlimits:\n  max_trials: {TRIALS}\n  max_concurrent_trials: 4\n"
                     f"search_space:\n{space}arguments:\n  number_of_epochs: {epochs}\n{extra}")


# --- Optuna, through its own ask / tell, in our sampler interface ------------------------------------

class OptunaSampler:
    """Optuna's sampler behind our interface: `ask` tells the study the results it has not seen
    (by trial key: `t` and the index, as both benchmarks name trials), then asks it once per
    index; proposals in flight are the study's running trials. The value told is the accuracy
    (maximised), as our samplers get it."""

    def __init__(self, spec, sampler):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec = spec
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self.trials: dict[str, Any] = {}
        self.told: set[str] = set()

    def capacity(self) -> int | None:
        return None

    def ask(self, indices: list[int], history: list[Observation], pending=()) -> list[Proposal]:
        from optuna.trial import TrialState

        for o in history:
            if o.key not in self.told:
                self.told.add(o.key)
                if o.value is None:
                    self.study.tell(self.trials[o.key], state=TrialState.FAIL)
                else:
                    self.study.tell(self.trials[o.key], o.value)
        proposals = []
        for index in indices:
            trial = self.study.ask()
            self.trials[f"t{index:04d}"] = trial
            proposals.append(self._suggest(trial))
        return proposals

    def _suggest(self, trial) -> Proposal:
        spaces = self.spec.search_space
        subspace = trial.suggest_categorical("subspace", list(range(len(spaces)))) if len(spaces) > 1 else 0
        params = {}
        for name, value in sorted(spaces[subspace].items()):
            if not hasattr(value, "args"):
                continue
            key = f"{subspace}:{name}"  # names may repeat across subspaces with other ranges
            if value.name == "choice":
                params[name] = trial.suggest_categorical(key, list(value.args))
            elif value.name == "uniform":
                params[name] = trial.suggest_float(key, value.args[0], value.args[1])
            elif value.name == "loguniform":
                params[name] = trial.suggest_float(key, math.exp(value.args[0]), math.exp(value.args[1]), log=True)
            else:
                raise ValueError(f"{name}: {value.name} is not mapped to Optuna here")
        return Proposal(subspace, params)


def optuna_sampler(kind: str, seed: int):
    import optuna

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)


SAMPLERS = ("random", "gp", "et", "optuna-tpe", "optuna-gp")


def make(name: str, space: str, seed: int, extra: str = "", epochs: int = 1):
    """The sampler `name` for a job over `space`, and the job."""
    if name == "random":
        spec = job(space, "random", seed, extra=extra, epochs=epochs)
        return make_sampler(spec), spec
    if name in ("gp", "et", "rf"):
        spec = job(space, "bayesian", seed, name, extra=extra, epochs=epochs)
        return make_sampler(spec), spec
    spec = job(space, "random", seed, extra=extra, epochs=epochs)
    return OptunaSampler(spec, optuna_sampler(name.split("-")[1], seed)), spec


# --- runs and tables -------------------------------------------------------------------------------

def run_function(sampler, objective: Callable[[Proposal], float], batch: int) -> list[float]:
    """Each trial's value (in order), `batch` proposals asked at once."""
    history: list[Observation] = []
    values = []
    for start in range(0, TRIALS, batch):
        indices = list(range(start, min(start + batch, TRIALS)))
        for index, proposal in zip(indices, sampler.ask(indices, history, [])):
            value = objective(proposal)
            values.append(value)
            history.append(Observation(proposal.subspace, proposal.params, -value, f"t{index:04d}"))
    return values


def summary(values: list[float], digits: int = 3) -> str:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return f"{median:.{digits}f} [{q1:.{digits}f}, {q3:.{digits}f}]"


def functions_part(names: list[str], samplers: list[str], seeds: int) -> None:
    for fname in names:
        space, objective, optimum = FUNCTIONS[fname]
        for batch in (1, 4):
            mode = "sequential" if batch == 1 else "4 at a time"
            print(f"\n{fname} ({mode}; optimum {optimum:.3f}; lower is better; {seeds} seeds)")
            print(f"{'sampler':<14}" + "".join(f"{f'best@{n}':>26}" for n in CHECKPOINTS) + "   time")
            for name in samplers:
                started = time.perf_counter()
                runs = [run_function(make(name, space, seed)[0], objective, batch) for seed in range(seeds)]
                cells = [summary([min(r[:n]) for r in runs]) for n in CHECKPOINTS]
                print(f"{name:<14}" + "".join(f"{c:>26}" for c in cells)
                      + f"   {time.perf_counter() - started:.0f} s", flush=True)


# --- the real table ---------------------------------------------------------------------------------

POLICIES = {
    "none": "",
    "bandit": "early_termination:\n  policy: bandit\n  slack_factor: 0.1\n  evaluation_interval: 1\n"
              "  delay_evaluation: 1\n",
    "median_stopping": "early_termination:\n  policy: median_stopping\n  evaluation_interval: 1\n"
                       "  delay_evaluation: 1\n",
    "truncation": "early_termination:\n  policy: truncation_selection\n  truncation_percentage: 30\n"
                  "  evaluation_interval: 1\n  delay_evaluation: 1\n",
    "asha": "early_termination:\n  policy: asha\n  min_resource: 1\n  reduction_factor: 3\n",
}


class Table:
    """A grid's curves by configuration; a learning rate between the grid's values is snapped to the
    nearest in log scale."""

    def __init__(self, path: Path):
        data = json.loads(path.read_text())
        self.epochs = data["epochs"]
        self.runs = {self._key(r["params"]): r["accuracy"] for r in data["runs"]}
        self.learning_rates = sorted({r["params"]["learning_rate"] for r in data["runs"]})
        self.names = sorted(data["runs"][0]["params"])
        values = {n: sorted({r["params"][n] for r in data["runs"]}, key=str) for n in self.names}
        low, high = self.learning_rates[0], self.learning_rates[-1]
        # half a grid step beyond the ends, so that every grid value gets an equal share of the range
        step = math.log(self.learning_rates[1] / low) / 2
        self.space = "  - model_name: choice({})\n    learning_rate: loguniform({:.4f}, {:.4f})\n".format(
            ", ".join(values["model_name"]), math.log(low) - step, math.log(high) + step) + "".join(
            f"    {n}: choice({', '.join(map(str, values[n]))})\n"
            for n in self.names if n not in ("model_name", "learning_rate"))
        self.best = max(max(c, default=0.0) for c in self.runs.values())

    def _key(self, params: dict) -> str:
        return json.dumps({n: params[n] for n in sorted(params)}, sort_keys=True)

    def snap(self, lr: float) -> float:
        logs = [math.log(v) for v in self.learning_rates]
        i = bisect.bisect(logs, math.log(lr))
        near = [j for j in (i - 1, i) if 0 <= j < len(logs)]
        return self.learning_rates[min(near, key=lambda j: abs(logs[j] - math.log(lr)))]

    def curve(self, hyperparameters: dict, epoch: int) -> float | None:
        params = {n: hyperparameters[n] for n in self.names}
        params["learning_rate"] = self.snap(params["learning_rate"])
        accuracy = self.runs[self._key(params)]
        return accuracy[epoch - 1] if epoch <= len(accuracy) else None


def table_part(name: str, samplers: list[str], policies: list[str], seeds: int, optuna_policies: list[str]) -> None:
    table = Table(TABLES[name])
    print(f"\n{name} table: {len(table.runs)} real runs of {table.epochs} epochs; best accuracy in the table "
          f"{table.best:.4f}; {TRIALS} trials, 4 at a time; higher is better; {seeds} seeds")
    print(f"{'sampler':<12}{'policy':<17}" + "".join(f"{f'best@{n}':>26}" for n in CHECKPOINTS)
          + f"{'epochs@30':>22}   time")
    for sampler_name in samplers:
        for policy in policies if not sampler_name.startswith("optuna") else optuna_policies:
            started = time.perf_counter()
            bests, spent = [], []
            for seed in range(seeds):
                sampler, spec = make(sampler_name, table.space, seed, POLICIES[policy], table.epochs)
                trial_bests, epochs = sweep(spec, table.curve, sampler)
                bests.append(trial_bests)
                spent.append(epochs)
            cells = [summary([max(b[:n]) for b in bests], 4) for n in CHECKPOINTS]
            print(f"{sampler_name:<12}{policy:<17}" + "".join(f"{c:>26}" for c in cells)
                  + f"{summary(spent, 0):>22}   {time.perf_counter() - started:.0f} s", flush=True)
    print(f"\n(epochs without early termination: {TRIALS} x {table.epochs} = {TRIALS * table.epochs}, "
          "less what failed runs did not train)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("functions", "table", "all"), default="all")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--functions", nargs="+", default=list(FUNCTIONS), choices=list(FUNCTIONS))
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS + ("rf",))
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--optuna-policies", nargs="+", default=["none", "asha"], choices=list(POLICIES))
    args = parser.parse_args()
    if importlib.util.find_spec("optuna") is None:
        print("(optuna is not installed: pip install -e '.[bench]'; its samplers are left out)")
        args.samplers = [s for s in args.samplers if not s.startswith("optuna")]
    if args.part in ("functions", "all"):
        functions_part(args.functions, args.samplers, args.seeds)
    if args.part in ("table", "all"):
        for name in args.tables:
            table_part(name, args.samplers, args.policies, args.seeds, args.optuna_policies)


if __name__ == "__main__":
    main()
