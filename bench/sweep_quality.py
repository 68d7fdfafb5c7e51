"""Sweep quality: the best metric found after 10 and 20 trials, and the training spent, for random
sampling, Bayesian sampling, and Bayesian sampling with ASHA early termination.

    .venv/bin/python bench/sweep_quality.py                 # 5 seeds (about a minute on 2 cores)
    .venv/bin/python bench/sweep_quality.py --seeds 10 --estimator et

The objective is a deterministic synthetic one (no training runs): each configuration has a final
accuracy and a learning speed, and reports accuracy(epoch) = quality * (1 - exp(-epoch / speed)),
so learning curves cross (a low learning rate is slow but can end higher) and early termination
has something to get wrong. The sweep itself is the product's: `reconcile.decide` decides what to
create, launch and stop, the job's sampler proposes with the running trials pending, 2 trials run
at a time, each epoch takes one tick. Reported per configuration: the median over seeds of the
best accuracy among the first 10 and 20 trials, and of the trial-epochs the 20 trials trained.
bench/sampler_quality.py runs the same `sweep` on real learning curves.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import statistics
import time
from typing import Callable

from automl_images.controller.launch.base import RunState
from automl_images.controller.reconcile import CreateTrials, Launch, Publish, RequestStop, SetJobStatus, decide
from automl_images.controller.search import Observation, Sampler, make_sampler
from automl_images.controller.spec import parse_job
from automl_images.core.records import JobView, TrialView

EPOCHS = 9
# A configuration's metric after an epoch (the trial's hyperparameters, the epoch from 1); None when
# the run fails at that epoch.
Curve = Callable[[dict, int], "float | None"]
SPACE = """\
  - model_name: choice(resnet18, mobilenetv2)
    optimizer: choice(sgd, adam, adamw)
    learning_rate: loguniform(-9.2, -2.3)
    momentum: uniform(0.5, 0.99)
    weight_decay: loguniform(-11.5, -4.6)
"""


def quality(params) -> float:
    """The accuracy a configuration ends at: 0.95 at resnet18, sgd, lr 0.03, momentum 0.9, weight
    decay 1e-4, falling off quadratically in log(lr), momentum and log(weight decay)."""
    base = 0.95 if params["model_name"] == "resnet18" else 0.93
    best_lr = 0.03 if params["optimizer"] == "sgd" else 0.001
    value = base - 0.12 * math.log(params["learning_rate"] / best_lr) ** 2
    if params["optimizer"] == "sgd":
        value -= 2.0 * (params["momentum"] - 0.9) ** 2
    else:
        value -= 0.02  # adam and adamw peak a little lower here
    value -= 0.03 * (math.log10(params["weight_decay"]) + 4) ** 2
    noise = int(hashlib.sha256(repr(sorted(params.items())).encode()).hexdigest()[:8], 16) / 2 ** 32
    return max(0.05, value + 0.01 * (noise - 0.5))  # +-0.005 of noise per configuration


def accuracy(params, epoch: int) -> float:
    best_lr = 0.03 if params["optimizer"] == "sgd" else 0.001
    speed = min(6.0, max(0.8, 1.5 * math.sqrt(best_lr / params["learning_rate"])))  # slow when lr is small
    return quality(params) * (1 - math.exp(-epoch / speed))


def job(sampling: str, asha: bool, seed: int, estimator: str):
    text = (f"task: image-classification\ntraining_data: t.jsonl\nsampling: {sampling}\nseed: {seed}\n"
            f"limits:\n  max_trials: 20\n  max_concurrent_trials: 2\nsearch_space:\n{SPACE}"
            f"arguments:\n  number_of_epochs: {EPOCHS}\n")
    if sampling == "bayesian":
        text += f"sampling_options:\n  estimator: {estimator}\n  n_initial_points: 5\n"
    if asha:
        text += "early_termination:\n  policy: asha\n  min_resource: 1\n  reduction_factor: 3\n"
    return parse_job(text)


def sweep(spec, curve: Curve, sampler: Sampler | None = None) -> tuple[list[float], int]:
    """Run the job to the end, each trial's metric after each epoch given by `curve` (None: the
    run diverged there and fails, as the trainer's would); returns each trial's best accuracy (in
    creation order; failed trials count as 0) and the trial-epochs trained. `sampler`: the job's
    own unless given (any object with the sampler interface, e.g. an Optuna adapter)."""
    sampler = sampler or make_sampler(spec)
    epochs = spec.arguments["number_of_epochs"]
    view = JobView("bench", {"status": "running", "accepted_at": 0.0, "published_trials": 0}, [])
    params: dict[str, dict] = {}
    for tick in range(10_000):
        for action in decide(spec, view, float(tick), sampler.capacity()):
            if isinstance(action, CreateTrials):
                history = [Observation(t.sweep["subspace"], t.params, t.primary("accuracy"), t.trial_id)
                           for t in view.trials if t.is_terminal]
                pending = [Observation(t.sweep["subspace"], t.params, None, t.trial_id)
                           for t in view.trials if not t.is_terminal]
                for index, proposal in zip(action.indices, sampler.ask(action.indices, history, pending)):
                    trial = TrialView(f"t{index:04d}", proposal.to_json())
                    params[trial.trial_id] = spec.trial_hyperparameters(proposal.subspace, proposal.params)
                    view.trials.append(trial)
            elif isinstance(action, Launch):
                trial = next(t for t in view.trials if t.trial_id == action.trial_id)
                trial.launch = {"attempt": 1, "handle": {}, "launcher": "local", "launched_at": float(tick)}
                trial.run_state = RunState.RUNNING
                trial.status = {"status": "running", "history": [], "epochs_total": epochs}
            elif isinstance(action, RequestStop):
                trial = next(t for t in view.trials if t.trial_id == action.trial_id)
                trial.stop = {"reason": action.reason}
            elif isinstance(action, Publish):
                view.state["published_trials"] = sum(t.is_terminal for t in view.trials)
            elif isinstance(action, SetJobStatus):
                view.state["status"] = action.status.value
        if view.status.is_terminal():
            break
        for trial in view.trials:  # one epoch of every running trial (a stopped one ends first)
            if trial.is_terminal or not trial.launch:
                continue
            history = trial.status["history"]
            if trial.stop or len(history) == epochs:
                best = max(h["accuracy"] for h in history)
                trial.status.update(status="stopped" if trial.stop else "completed", metrics={"accuracy": best})
                trial.run_state = RunState.CANCELLED if trial.stop else RunState.SUCCEEDED
                continue
            epoch = len(history) + 1
            value = curve(params[trial.trial_id], epoch)
            if value is None:
                trial.status.update(status="failed", error={"kind": "user", "message": "training diverged"})
                trial.run_state = RunState.FAILED
                continue
            history.append({"epoch": epoch, "accuracy": value})
    bests = [max([h["accuracy"] for h in t.status["history"]], default=0.0) for t in view.trials]
    return bests, sum(len(t.status["history"]) for t in view.trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--estimator", default="gp", choices=("gp", "rf", "et"))
    args = parser.parse_args()
    configs = [("random", "random", False), (f"bayesian ({args.estimator})", "bayesian", False),
               (f"bayesian ({args.estimator}) + asha", "bayesian", True), ("random + asha", "random", True)]
    optimum = accuracy({"model_name": "resnet18", "optimizer": "sgd", "learning_rate": 0.03, "momentum": 0.9,
                        "weight_decay": 1e-4}, EPOCHS)
    print(f"synthetic objective: best reachable accuracy about {optimum:.4f} after {EPOCHS} epochs; "
          f"{args.seeds} seeds, 20 trials, 2 at a time\n")
    print(f"{'configuration':<24}{'best@10':>10}{'best@20':>10}{'epochs@20':>11}   per seed best@20")
    for name, sampling, asha in configs:
        started = time.perf_counter()
        at10, at20, spent = [], [], []
        for seed in range(args.seeds):
            bests, epochs = sweep(job(sampling, asha, seed, args.estimator), accuracy)
            at10.append(max(bests[:10]))
            at20.append(max(bests[:20]))
            spent.append(epochs)
        per_seed = " ".join(f"{v:.3f}" for v in at20)
        print(f"{name:<24}{statistics.median(at10):>10.4f}{statistics.median(at20):>10.4f}"
              f"{statistics.median(spent):>11.0f}   {per_seed}   ({time.perf_counter() - started:.0f} s)",
              flush=True)
    print(f"\n(trial-epochs without early termination: 20 x {EPOCHS} = {20 * EPOCHS})")


if __name__ == "__main__":
    main()
