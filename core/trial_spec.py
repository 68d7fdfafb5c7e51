"""The trial spec: everything one trial needs, with every default resolved.

The controller builds it once, from the job spec saved at acceptance, and writes it as `spec.json`
in the trial folder; `automl-images trial run SPEC_URL` reads it. The trainer checks its schema
version and the shape of its fields, and trusts the rest: the hyperparameters were validated and
resolved against the registry (`hyperparameters.py`) when the job was accepted, so a trainer built
from a newer registry runs the trial as the job was accepted (a hyperparameter the spec lacks, one
added since, takes the trainer's default and is listed in `registry_defaults`). It is plain JSON so that a
person can read it and rerun a trial by hand.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .hyperparameters import Task, for_task
from .storage import json_bytes

SCHEMA_VERSION = 1


class SpecError(ValueError):
    """A trial spec that the trainer cannot run; the message names the field."""


@dataclass(frozen=True)
class TrialSpec:
    job_id: str
    trial_id: str
    task: Task
    primary_metric: str
    training_data: str                 # absolute URL or path of the training JSONL
    validation_data: str | None        # None: split `split_ratio` of the training data
    hyperparameters: dict[str, Any]    # every hyperparameter of the task and model, resolved
    output: str                        # the trial folder (URL or path)
    seed: int = 0
    max_bad_image_ratio: float = 0.05  # above this share of unreadable images the trial fails
    weights_cache: str | None = None   # folder or bucket prefix with pretrained weight files
    # Azure datastore names → root URLs, for image_url values `AmlDatastore://<name>/<path>`.
    datastores: dict[str, str] = field(default_factory=dict)
    compile: bool = False              # torch.compile the model (a trainer option, not an Azure one)
    # Detection labels: boxes and polygons a little out of bounds clipped and reported, not refused.
    lenient_labels: bool = False
    # Finished (completed, or stopped by the controller): keep checkpoints/last.pt, which only a
    # resume needs; by default the trainer deletes it once its final status is written.
    keep_checkpoints: bool = False
    # The job's prepared_images (trainer/prepared.py): decode each image once on each machine
    # (prepare_images), and keep a copy of what was decoded below `prepared_copy` (a bucket
    # prefix; None: on the machine's disk only).
    prepare_images: bool = True
    prepared_copy: str | None = None
    # Web image URLs may point into private networks (the job's allow_private_image_urls, core/addresses.py).
    allow_private_image_urls: bool = False
    # Without validation data: the job's split file (core/split.py), written once when the job was
    # accepted; None (a spec written by hand) splits with `seed`.
    split: str | None = None
    # What the sampler chose for this trial (subspace index and sampled values): for people and the
    # leaderboard; the trainer runs `hyperparameters`, which already include them.
    sweep: dict[str, Any] = field(default_factory=dict)
    # Hyperparameters the spec did not have, filled from the trainer's registry when it was read.
    registry_defaults: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["task"] = self.task.value
        return json_bytes(data).decode("utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialSpec":
        if not isinstance(data, dict):
            raise SpecError("trial spec must be a JSON object")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise SpecError(f"schema_version {version} is not supported (this trainer reads {SCHEMA_VERSION})")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown field(s) in trial spec: {', '.join(unknown)}")
        for required in ("job_id", "trial_id", "task", "primary_metric", "training_data", "hyperparameters", "output"):
            if data.get(required) in (None, ""):
                raise SpecError(f"trial spec field {required!r} is required")
        try:
            task = Task(data["task"])
        except ValueError:
            raise SpecError(f"trial spec field 'task': unknown task {data['task']!r}") from None
        hyperparameters = data["hyperparameters"]
        if not isinstance(hyperparameters, dict):
            raise SpecError("trial spec field 'hyperparameters' must be an object")
        # A hyperparameter added to the registry after the job was accepted (a newer trainer image)
        # takes this trainer's default, so that an upgrade never fails the trials of a running job;
        # the names are kept, and logged by the trial.
        model_name = hyperparameters.get("model_name")
        added = {hp.name: hp.default_for(task, model_name) for hp in for_task(task, model_name)
                 if hp.name not in hyperparameters}
        datastores = data.get("datastores") or {}
        if not isinstance(datastores, dict) or not all(
                isinstance(k, str) and k and isinstance(v, str) and v for k, v in datastores.items()):
            raise SpecError(f"trial spec field 'datastores': must map datastore names to root URLs, got {datastores!r}")
        for flag in ("compile", "lenient_labels", "allow_private_image_urls", "keep_checkpoints", "prepare_images"):
            if not isinstance(data.get(flag, False), bool):
                raise SpecError(f"trial spec field {flag!r}: must be true or false, got {data[flag]!r}")
        copy = data.get("prepared_copy")
        if copy is not None and not (isinstance(copy, str) and copy):
            raise SpecError(f"trial spec field 'prepared_copy': must be a URL or null, got {copy!r}")
        fields = {k: v for k, v in data.items() if k in known}
        fields["datastores"] = dict(datastores)
        fields["task"] = task
        fields["hyperparameters"] = {**hyperparameters, **added}
        fields["registry_defaults"] = tuple(sorted(set(data.get("registry_defaults") or ()) | set(added)))
        return cls(**fields)

    @classmethod
    def from_json(cls, text: str | bytes) -> "TrialSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"trial spec is not valid JSON: {exc}") from None
        return cls.from_dict(data)
