"""The spec a job was accepted with: saved once, at acceptance, as `jobs/<job_id>/spec.json`.

It is the job file validated, its data paths made absolute and every default resolved
(`JobSpec.to_json`, with its schema version). Every later pass, a restarted or upgraded
controller, and warm start in later jobs read it here and never validate job.yaml again, so a
job runs to its end as it was accepted, whatever changed in the registry since.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from automl_images.core.layout import Root
from automl_images.core.problems import Problem

from .spec import JobSpec, JobSpecError, parse_job_bytes


def save(root: Root, job_id: str, spec: JobSpec) -> None:
    root.storage.write_json(root.job_spec(job_id), spec.to_json())


def load(root: Root, job_id: str) -> JobSpec:
    """The spec, read only. FileNotFoundError when the job has none (rejected, or not accepted
    yet); JobSpecError when it is damaged or another version of automl-images saved it (its
    subclass NewerSpecError for a newer one). A spec saved before specs were versioned is
    read from the job's job.yaml (see `upgrade`)."""
    key = root.job_spec(job_id)
    try:
        data = json.loads(root.storage.read_bytes(key))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        source = root.storage.url(key)
        raise JobSpecError(source, [Problem(source, "", f"not JSON: {exc}")]) from None
    if _is_unversioned(data):
        return _from_job_file(root, job_id, data)
    return JobSpec.from_json(data, root.storage.url(key))


def upgrade(root: Root, job_id: str) -> JobSpec:
    """`load`, and a spec saved before specs were versioned (only the resolved data URLs) saved
    whole, once: called by the holder of the job's lease, so that the job runs on after an
    upgrade instead of failing. Its defaults are this version's (the old controller saved none)."""
    spec = load(root, job_id)
    if _is_unversioned(root.storage.read_json(root.job_spec(job_id))):
        save(root, job_id, spec)
    return spec


def _is_unversioned(data: Any) -> bool:
    return isinstance(data, dict) and "schema_version" not in data and "training_data" in data and "task" not in data


def _from_job_file(root: Root, job_id: str, data_urls: dict[str, Any]) -> JobSpec:
    key = root.job_file(job_id)
    spec = parse_job_bytes(root.storage.read_bytes(key), root.storage.url(key))
    return dataclasses.replace(spec, training_data=data_urls["training_data"],
                               validation_data=data_urls.get("validation_data"))
