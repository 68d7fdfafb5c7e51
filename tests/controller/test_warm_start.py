"""Warm start: the finished trials of earlier jobs seed a Bayesian job where the spaces fit."""
from __future__ import annotations

import dataclasses
import textwrap

from simulated import FakeClock, SimLauncher, run_until_done, sim_job, submit

from automl_images.controller import accepted, warmstart
from automl_images.controller.loop import Controller
from automl_images.controller.search import Observation, make_sampler
from automl_images.controller.spec import parse_job
from automl_images.core.layout import FILES, Root


def spec_of(space: str, extra: str = ""):
    return parse_job(textwrap.dedent("""\
        task: image-classification
        training_data: train.jsonl
        sampling: bayesian
        arguments:
          number_of_epochs: 4
        search_space:
        """) + textwrap.indent(textwrap.dedent(space).strip("\n"), "  ") + "\n" + extra)


def test_fits_only_what_the_subspace_could_have_run():
    spec = spec_of("""
        - model_name: resnet18
          learning_rate: uniform(0.001, 0.05)
          optimizer: choice(sgd, adam)
        - model_name: mobilenetv2
          learning_rate: loguniform(-7, -2)
        """)
    resolved = spec.trial_hyperparameters(0, {"learning_rate": 0.01, "optimizer": "adam"})
    assert warmstart.fits(spec, 0, resolved) == {"learning_rate": 0.01, "optimizer": "adam"}
    assert warmstart.fits(spec, 1, resolved) is None                                  # another model
    assert warmstart.fits(spec, 0, {**resolved, "learning_rate": 0.2}) is None        # outside the range
    assert warmstart.fits(spec, 0, {**resolved, "optimizer": "adamw"}) is None        # not a choice
    assert warmstart.fits(spec, 0, {**resolved, "number_of_epochs": 30}) is None      # other fixed settings
    assert warmstart.fits(spec, 0, {**resolved, "momentum": 0.5}) is None             # a default changed


def _earlier_job(root: Root, clock: FakeClock, name: str, space: str, trials: int = 5, epochs: int = 4) -> None:
    controller = Controller(root, clock=clock, launchers={"local": SimLauncher(clock=clock, epoch_s=5)})
    submit(root, name, sim_job(max_trials=trials, concurrent=2, epochs=epochs, space=space))
    run_until_done(controller, clock, step_s=5)


LR_MOMENTUM = "  - learning_rate: loguniform(-7, -2)\n    momentum: uniform(0.5, 0.99)\n"


def test_seeds_from_earlier_jobs_are_saved_and_used(local_root):
    root, clock = Root(local_root), FakeClock()
    _earlier_job(root, clock, "first", LR_MOMENTUM, trials=5)
    # a job over another range: its trials with a learning rate above 0.05 do not fit the new job
    _earlier_job(root, clock, "wide", "  - learning_rate: uniform(0.001, 0.5)\n    momentum: uniform(0.5, 0.99)\n",
                 trials=4)
    _earlier_job(root, clock, "longer", LR_MOMENTUM, trials=2, epochs=8)  # other epochs: never fits
    controller = Controller(root, clock=clock, launchers={"local": SimLauncher(clock=clock, epoch_s=5)})
    extra = "sampling_options: {n_initial_points: 3, estimator: et}\nwarm_start: [first, wide, longer]\n"
    submit(root, "second", sim_job(max_trials=3, concurrent=1, epochs=4, sampling="bayesian", space=LR_MOMENTUM,
                                   extra=extra))
    run_until_done(controller, clock, step_s=5)
    saved = root.storage.read_json(root.job_key("second", "warm_start.json"))
    by_job = {}
    for seed in saved["seeds"]:
        by_job.setdefault(seed["job_id"], []).append(seed)
        status = root.read_trial(seed["job_id"], seed["trial_id"], FILES.status)
        assert seed["value"] == status["metrics"]["accuracy"]
        assert seed["params"] == root.read_trial(seed["job_id"], seed["trial_id"], FILES.spec)["sweep"]["params"]
    assert len(by_job["first"]) == 5 and "longer" not in by_job
    wide = [root.read_trial("wide", t, FILES.spec)["sweep"]["params"]["learning_rate"] for t in root.trial_ids("wide")]
    assert len(by_job.get("wide", [])) == sum(lr <= 0.1353352832366127 for lr in wide)  # exp(-2)
    assert saved["notes"][-1] == "longer: 0 trial(s) used, 2 outside this job's space"
    # with 5+ seeds and n_initial_points 3, the very first trial is the model's, not a random draw
    sampler = make_sampler(accepted.load(root, "second"))
    first_params = root.read_trial("second", "t0000", FILES.spec)["sweep"]["params"]
    assert first_params != sampler.ask([0], [])[0].params  # without the seeds: trial 0's random draw
    seeds = warmstart.observations(saved)
    assert sampler.ask([0], seeds)[0].params == first_params  # exactly what the seeds make it propose


def test_a_job_that_names_a_missing_job_is_rejected(local_root):
    root = Root(local_root)
    controller = Controller(root)
    submit(root, "orphan", sim_job(sampling="bayesian", extra="warm_start: [never-ran]\n"))
    controller.reconcile_once()
    assert root.storage.read_json(root.job_state("orphan"))["status"] == "rejected"
    error = root.storage.read_json(root.job_error("orphan"))
    assert any(p["path"] == "warm_start[0]" and "no job 'never-ran'" in p["message"] for p in error["problems"])


def test_another_task_or_metric_seeds_nothing(local_root):
    root, clock = Root(local_root), FakeClock()
    _earlier_job(root, clock, "by-accuracy", LR_MOMENTUM, trials=2)
    spec = parse_job(sim_job(sampling="bayesian", metric="log_loss", extra="warm_start: [by-accuracy]\n"))
    collected = warmstart.collect(root, spec)
    assert collected["seeds"] == []
    assert "image-classification / accuracy, not image-classification / log_loss" in collected["notes"][0]
    assert warmstart.observations(collected) == [] and isinstance(warmstart.observations(None), list)
    assert Observation(0, {}, 1.0, "a/b") == Observation(0, {}, 1.0, "a/b")


def test_torn_seeds_are_gathered_again_the_same(local_root):
    root, clock = Root(local_root), FakeClock()
    _earlier_job(root, clock, "first", LR_MOMENTUM, trials=3)
    spec = dataclasses.replace(accepted.load(root, "first"), warm_start=("first",))  # its own space: all fit
    log: list[str] = []
    first = warmstart.seeds(root, "second", spec, log.append)
    key = root.warm_start("second")
    whole = root.storage.read_bytes(key)
    root.storage.write_bytes(key, whole[:len(whole) // 2])  # cut by a tool that does not write atomically
    assert warmstart.seeds(root, "second", spec, log.append) == first and len(first) == 3
    assert root.storage.read_bytes(key) == whole
    assert "gathering the warm-start seeds again" in log[-1]
