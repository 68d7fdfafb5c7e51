"""The trial spec, the contract between the controller and the trainer: written whole by the
controller, checked by the trainer for its schema version and completeness, trusted otherwise."""
from __future__ import annotations

import json
import re

import pytest

from automl_images.core.hyperparameters import Task, resolve
from automl_images.core.trial_spec import SCHEMA_VERSION, SpecError, TrialSpec


def spec(**fields) -> TrialSpec:
    hyperparameters = resolve(Task.CLASSIFICATION, {"model_name": "resnet18"})
    return TrialSpec(job_id="j", trial_id="t0000", task=Task.CLASSIFICATION, primary_metric="accuracy",
                     training_data="s3://b/train.jsonl", validation_data=None, hyperparameters=hyperparameters,
                     output="s3://b/jobs/j/trials/t0000", **fields)


def test_a_spec_reads_back_as_written():
    written = spec(seed=7, datastores={"images": "s3://b/images"}, sweep={"subspace": 0, "params": {}})
    assert TrialSpec.from_json(written.to_json()) == written
    assert json.loads(written.to_json())["schema_version"] == SCHEMA_VERSION


def test_another_schema_version_is_refused():
    data = json.loads(spec().to_json())
    with pytest.raises(SpecError, match=f"schema_version {SCHEMA_VERSION + 1} is not supported"):
        TrialSpec.from_dict({**data, "schema_version": SCHEMA_VERSION + 1})


def test_hyperparameters_the_spec_lacks_take_the_trainers_defaults_and_are_listed():
    """A hyperparameter added to the registry after the job was accepted (a newer trainer image):
    the trial runs with the new default rather than failing."""
    written = spec()
    data = json.loads(written.to_json())
    del data["hyperparameters"]["weighted_loss"], data["hyperparameters"]["momentum"]
    read = TrialSpec.from_dict(data)
    assert read.hyperparameters == written.hyperparameters
    assert read.registry_defaults == ("momentum", "weighted_loss")
    assert written.registry_defaults == () and TrialSpec.from_json(written.to_json()).registry_defaults == ()


def test_values_are_trusted_as_the_controller_resolved_them():
    """The registry may have changed since the job was accepted (an upgraded trainer image): the
    trainer runs the values it is given rather than refusing the trial."""
    data = json.loads(spec().to_json())
    data["hyperparameters"]["learning_rate"] = 7.0
    assert TrialSpec.from_dict(data).hyperparameters["learning_rate"] == 7.0


@pytest.mark.parametrize("change, message", [
    ({"surprise": 1}, "unknown field(s) in trial spec: surprise"),
    ({"task": "image-painting"}, "unknown task 'image-painting'"),
    ({"hyperparameters": [1]}, "'hyperparameters' must be an object"),
    ({"output": ""}, "'output' is required"),
    ({"compile": "yes"}, "'compile': must be true or false"),
])
def test_malformed_fields_are_named(change, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        TrialSpec.from_dict({**json.loads(spec().to_json()), **change})
