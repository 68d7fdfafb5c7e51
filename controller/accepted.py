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

from .spec import JobSpec, parse_job_bytes


def save(root: Root, job_id: str, spec: JobSpec) -> None:
    root.storage.write_json(root.job_spec(job_id), spec.to_json())


def load(root: Root, job_id: str) -> JobSpec:
    """FileNotFoundError when the job has none (rejected, or not accepted yet); JobSpecError when
    another version of automl-images saved it."""
    key = root.job_spec(job_id)
    data = json.loads(root.storage.read_bytes(key))
    if isinstance(data, dict) and "schema_version" not in data and "training_data" in data and "task" not in data:
        return _upgrade(root, job_id, data)
    return JobSpec.from_json(data, root.storage.url(key))


def _upgrade(root: Root, job_id: str, data_urls: dict[str, Any]) -> JobSpec:
    """A job accepted before specs were saved whole: its spec.json holds only the resolved data
    URLs. Its job.yaml is validated this once, the defaults resolved with this version's registry
    (the old controller saved none), and the whole spec saved, so that the job runs on instead of
    failing on an upgrade."""
    key = root.job_file(job_id)
    spec = parse_job_bytes(root.storage.read_bytes(key), root.storage.url(key))
    spec = dataclasses.replace(spec, training_data=data_urls["training_data"],
                               validation_data=data_urls.get("validation_data"))
    save(root, job_id, spec)
    return spec
