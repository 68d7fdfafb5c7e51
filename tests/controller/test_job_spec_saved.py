"""The job spec saved at acceptance (jobs/<id>/spec.json): every default resolved, read back exactly,
and the only spec a controller works from afterwards, so that a registry changed since (an upgraded
controller) changes nothing in a running job."""
from __future__ import annotations

import json
import textwrap

import pytest
from simulated import FakeClock, SimLauncher, run_until_done, sim_job, submit

from automl_images.controller import accepted
from automl_images.controller.distributions import NAMES, Distribution
from automl_images.controller.loop import Controller
from automl_images.controller.spec import SCHEMA_VERSION, JobSpec, parse_job
from automl_images.core import hyperparameters as hps
from automl_images.core.hyperparameters import Task
from automl_images.core.layout import FILES, Root

EVERY_KIND = textwrap.dedent("""\
    name: every kind
    task: image-classification
    training_data: s3://bucket/train.jsonl
    validation_data: s3://bucket/val.jsonl
    primary_metric: log_loss
    sampling: random
    seed: 7
    limits: {max_trials: 12, max_concurrent_trials: 3, timeout_hours: 2.5, max_cost_usd: 40}
    early_termination: {policy: bandit, slack_factor: 0.2, evaluation_interval: 2, delay_evaluation: 3}
    compute:
      launcher: skypilot
      accelerators: [A10G:1, L4:2]
      clouds: [aws, gcp]
      regions: [aws/us-east-1]
      image: ghcr.io/you/automl-images-trainer:0.1.0
      job_recovery: {strategy: FAILOVER, max_restarts_on_errors: 1}
      secrets: [HF_TOKEN]
    weights_cache: s3://bucket/weights/
    datastores: {images: s3://bucket/images}
    arguments: {pretrained: 0, early_stopping: 0}
    search_space:
      - model_name: choice(resnet18, mobilenetv2)
        learning_rate: uniform(0.001, 0.05)
        momentum: quniform(0.5, 0.95, 0.05)
        weight_decay: loguniform(-11, -6)
        weighted_loss: randint(3)
        optimizer: choice(sgd, adamw)
      - model_name: resnet50
        learning_rate: qloguniform(-7, -3, 0.0005)
        step_lr_gamma: normal(0.5, 0.1)
        warmup_cosine_lr_cycles: qnormal(0.45, 0.1, 0.05)
        beta1: lognormal(-0.1, 0.01)
        training_batch_size: qlognormal(3.5, 0.3, 1)
        crop_size: 224
    """)


def test_a_spec_reads_back_as_it_was_written():
    spec = parse_job(EVERY_KIND)
    kinds = {v.name for space in spec.search_space for v in space.values() if isinstance(v, Distribution)}
    assert kinds == set(NAMES)  # every kind of distribution, in two subspaces
    saved = json.loads(json.dumps(spec.to_json()))  # through the bucket: plain JSON
    assert saved["schema_version"] == SCHEMA_VERSION
    assert saved["search_space"][1]["learning_rate"] == "qloguniform(-7, -3, 0.0005)"  # distributions as text
    assert JobSpec.from_json(saved) == spec
    assert spec.early_termination.policy == "bandit" and spec.compute.accelerators == ("A10G:1", "L4:2")
    # every model the space can sample, with the registry's defaults of the task for it
    assert sorted(spec.defaults) == ["mobilenetv2", "resnet18", "resnet50"]
    assert spec.defaults["resnet50"] == hps.resolve(Task.CLASSIFICATION, {"model_name": "resnet50"})


def test_another_schema_version_is_refused_with_what_to_do():
    saved = {**parse_job(EVERY_KIND).to_json(), "schema_version": SCHEMA_VERSION + 1}
    expected = f"reads saved job specs of version {SCHEMA_VERSION}, not {SCHEMA_VERSION + 1}"
    with pytest.raises(ValueError, match=expected):
        JobSpec.from_json(saved, "jobs/j/spec.json")


def test_acceptance_saves_the_spec_with_its_data_resolved(local_root):
    root = Root(local_root)
    submit(root, "saved", sim_job())
    Controller(root).accept("saved.yaml")
    spec = accepted.load(root, "saved")
    assert spec.training_data == root.storage.url("data/train.jsonl")  # absolute
    assert spec == JobSpec.from_json(root.storage.read_json(root.job_spec("saved")))
    assert spec.defaults["resnet50"]["optimizer"] == "sgd"


@pytest.fixture
def set_default():
    """Change a registry default, as an upgraded controller would have it. The registry's entries
    are frozen: the change is made in place, and undone after the test."""
    changed = []

    def change(name: str, value) -> None:
        definition = hps.HYPERPARAMETERS[name]
        changed.append((definition, definition.default))
        object.__setattr__(definition, "default", value)

    yield change
    for definition, value in reversed(changed):
        object.__setattr__(definition, "default", value)


def test_a_restarted_controller_keeps_the_defaults_the_job_was_accepted_with(local_root, set_default):
    root, clock = Root(local_root), FakeClock()
    sim = SimLauncher(clock=clock, epoch_s=1.0)
    # the job leaves number_of_epochs to the registry (15 for classification); one trial at a time
    text = sim_job(max_trials=3, concurrent=1).replace("  number_of_epochs: 4\n", "")
    submit(root, "upgraded", text)
    Controller(root, clock=clock, launchers={"local": sim}).run(once=True)  # accepts, creates t0000
    assert root.trial_ids("upgraded") == ["t0000"]

    set_default("number_of_epochs", 3)  # the upgrade
    root.storage.write_text(root.job_file("upgraded"), "not: [a valid job")  # never read again
    restarted = Controller(root, clock=clock, launchers={"local": sim})
    submit(root, "after", text)  # a job accepted after the upgrade gets the new default
    run_until_done(restarted, clock, step_s=5)

    for job, epochs in (("upgraded", 15), ("after", 3)):
        assert root.storage.read_json(root.job_state(job))["status"] == "completed"
        assert root.trial_ids(job) == ["t0000", "t0001", "t0002"]
        for trial in root.trial_ids(job):
            assert root.read_trial(job, trial, FILES.spec)["hyperparameters"]["number_of_epochs"] == epochs
            assert root.read_trial(job, trial, FILES.status)["epochs"] == epochs


def test_a_damaged_or_older_spec_fails_its_job_once(local_root):
    for job, damage in (("older", lambda saved: {**saved, "schema_version": 0}),
                        ("damaged", lambda saved: {**saved, "search_space": 7})):
        root, clock = Root(local_root), FakeClock()
        submit(root, job, sim_job())
        Controller(root).accept(f"{job}.yaml")
        root.storage.write_json(root.job_spec(job), damage(root.storage.read_json(root.job_spec(job))))
        log: list[str] = []
        controller = Controller(root, log=log.append, clock=clock, launchers={"local": SimLauncher(clock=clock)})
        for _ in range(3):
            controller.reconcile_once()
        state = root.storage.read_json(root.job_state(job))
        assert state["status"] == "failed"
        error = root.storage.read_json(root.job_error(job))
        assert error["error"] == "job failed"
        assert ("not 0: the job was accepted by another version" if job == "older"
                else "not a saved job spec of version 1: TypeError") in error["message"]
        failures = [line for line in log if line.startswith(f"job {job}: failed")]
        assert failures == [f"job {job}: failed ({state['reason']})"]  # once
        assert not any("Traceback" in line for line in log) and root.trial_ids(job) == []


def test_a_spec_saved_by_a_newer_version_is_left_to_a_newer_controller(local_root):
    """Two versions may share a root during an upgrade: the older controller neither runs nor fails
    a job that a newer one accepted, and hands back its lease."""
    root, clock = Root(local_root), FakeClock()
    submit(root, "future", sim_job())
    Controller(root).accept("future.yaml")
    saved = root.storage.read_json(root.job_spec("future"))
    root.storage.write_json(root.job_spec("future"), {**saved, "schema_version": SCHEMA_VERSION + 1})
    log: list[str] = []
    older = Controller(root, log=log.append, clock=clock, launchers={"local": SimLauncher(clock=clock)})
    for _ in range(3):
        assert older.reconcile_once() == 1  # still running, as far as this controller can tell
    assert root.storage.read_json(root.job_state("future"))["status"] == "running"
    assert not root.storage.exists(root.job_error("future")) and root.trial_ids("future") == []
    left = [line for line in log if line.startswith("job future: left to a newer controller")]
    assert len(left) == 1 and f"not {SCHEMA_VERSION + 1}" in left[0]
    assert not older.leases.holds("future")


def test_a_job_accepted_before_specs_were_saved_whole_runs_on(local_root):
    """An older controller saved only the resolved data URLs in spec.json: an upgraded one validates
    that job's job.yaml once, saves the whole spec, and finishes the job."""
    root, clock = Root(local_root), FakeClock()
    submit(root, "legacy", sim_job(max_trials=2))
    Controller(root).accept("legacy.yaml")
    saved = root.storage.read_json(root.job_spec("legacy"))
    root.storage.write_json(root.job_spec("legacy"), {"training_data": saved["training_data"],
                                                      "validation_data": saved["validation_data"]})
    run_until_done(Controller(root, clock=clock, launchers={"local": SimLauncher(clock=clock)}), clock)
    assert root.storage.read_json(root.job_state("legacy"))["status"] == "completed"
    assert root.trial_ids("legacy") == ["t0000", "t0001"]
    upgraded = root.storage.read_json(root.job_spec("legacy"))
    assert upgraded["schema_version"] == SCHEMA_VERSION and upgraded["training_data"] == saved["training_data"]
    assert accepted.load(root, "legacy") == JobSpec.from_json(upgraded)
