"""The spec a job was accepted with: saved once, at acceptance, as `jobs/<job_id>/spec.json`.

It is the job file validated, its data paths made absolute and every default resolved
(`JobSpec.to_json`, with its schema version). Every later pass, a restarted or upgraded
controller, and warm start in later jobs read it here and never validate job.yaml again, so a
job runs to its end as it was accepted, whatever changed in the registry since.

A spec.json that is torn or not JSON (a tool that does not write atomically, a damaged disk) is
saved again from job.yaml, the user's bytes kept since acceptance, with its data paths resolved
as acceptance resolved them (`upgrade`, by the holder of the job's lease); only when that cannot
be done (job.yaml gone, or not valid for this version) does the job fail, once, naming the file.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

from automl_images.core.layout import Root
from automl_images.core.problems import Problem
from automl_images.core.storage import InvalidJSON, resolve

from .spec import JobSpec, JobSpecError, parse_job_bytes


class DamagedSpecError(JobSpecError):
    """A saved spec that is not JSON: saved again from job.yaml by `upgrade`."""


def save(root: Root, job_id: str, spec: JobSpec) -> None:
    if spec.automode:  # before spec.json, which marks the job accepted: a crash between writes it again
        root.storage.write_json(root.automode_space(job_id), {
            "task": spec.task.value, "max_trials": spec.limits.max_trials,
            "search_space": spec.to_json()["search_space"]})
    root.storage.write_json(root.job_spec(job_id), spec.to_json())


def load(root: Root, job_id: str) -> JobSpec:
    """The spec, read only. FileNotFoundError when the job has none (rejected, or not accepted
    yet); JobSpecError when it is damaged or another version of automl-images saved it (its
    subclass NewerSpecError for a newer one). A spec saved before specs were versioned is
    read from the job's job.yaml (see `upgrade`)."""
    key = root.job_spec(job_id)
    try:
        data = json.loads(root.storage.read_bytes(key))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; nesting
        source = root.storage.url(key)
        raise DamagedSpecError(source, [Problem(source, "", f"not valid JSON ({exc})")]) from None
    if _is_unversioned(data):
        return _from_job_file(root, job_id, data)
    return JobSpec.from_json(data, root.storage.url(key))


def upgrade(root: Root, job_id: str, log: Callable[[str], None] = lambda message: None) -> JobSpec:
    """`load`, and a spec saved before specs were versioned (only the resolved data URLs) saved
    whole, once: called by the holder of the job's lease, so that the job runs on after an
    upgrade instead of failing. Its defaults are this version's (the old controller saved none).
    A damaged spec is saved again from job.yaml."""
    try:
        spec = load(root, job_id)
    except DamagedSpecError as exc:
        spec = _from_job_file(root, job_id, None, damaged=exc)
        save(root, job_id, spec)
        log(f"job {job_id}: {exc}; saved again from {root.storage.url(root.job_file(job_id))}")
        return spec
    if _is_unversioned(root.storage.read_json(root.job_spec(job_id))):
        save(root, job_id, spec)
    return spec


def _is_unversioned(data: Any) -> bool:
    return isinstance(data, dict) and "schema_version" not in data and "training_data" in data and "task" not in data


def _from_job_file(root: Root, job_id: str, data_urls: dict[str, Any] | None,
                   damaged: DamagedSpecError | None = None) -> JobSpec:
    """The spec of job.yaml, with `data_urls` (None: its data paths resolved as acceptance
    resolved them, against the inbox file the job came from)."""
    key = root.job_file(job_id)
    try:
        data = root.storage.read_bytes(key)
    except FileNotFoundError:
        if damaged is None:
            raise
        problem = Problem(damaged.source, "", f"{damaged.problems[0].message}, and {root.storage.url(key)} "
                                              "to save it again from is missing")
        raise JobSpecError(damaged.source, [problem]) from None
    spec = parse_job_bytes(data, root.storage.url(key))
    if data_urls is None:
        inbox_file = root.storage.url(root.inbox_key(_source(root, job_id)))
        data_urls = {"training_data": resolve(spec.training_data, inbox_file),
                     "validation_data": resolve(spec.validation_data, inbox_file) if spec.validation_data else None}
    return dataclasses.replace(spec, training_data=data_urls["training_data"],
                               validation_data=data_urls.get("validation_data"))


def _source(root: Root, job_id: str) -> str:
    """The name the job file had in the inbox (its state's `source`; the id's when unknown)."""
    try:
        state = root.storage.read_json(root.job_state(job_id))
    except InvalidJSON:
        state = None
    source = state.get("source") if isinstance(state, dict) else None
    return source if isinstance(source, str) else f"{job_id}.yaml"
