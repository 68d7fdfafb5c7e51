"""`automl-images gc JOB`: delete what an ended job no longer needs, and say how much it frees.

A finished trial needs its model, metrics, status and logs; `checkpoints/last.pt` (optimizer and
RNG state besides the weights: 134 MB for resnet18) only lets an unfinished trial resume. Trials
delete it themselves when they end (unless the job says `keep_checkpoints: true`); gc removes the
ones left behind: jobs that kept them, trials killed between their last status and the deletion,
and jobs run by versions that kept them all. The checkpoints a job asked for with
`checkpoint_frequency` (`checkpoints/epoch_NNNN.pt`) stay: the user wanted those. The job's copy of
its prepared images (`prepared_images: bucket`, `jobs/<id>/prepared/`) goes too: only its trials
read it, and its index first, so that a copy half deleted never reads as whole.

Only an ended job: a running job's trials may resume from their checkpoints.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from automl_images.core.layout import FILES, PREPARED_INDEX, Root
from automl_images.core.records import JobStatus
from automl_images.core.storage import join


class JobNotEnded(Exception):
    """The job is still running (or stopping): its checkpoints may still be resumed from."""


@dataclass
class Collected:
    keys: list[str] = field(default_factory=list)  # deleted (or, dry run, would be)
    freed_bytes: int = 0
    checkpoints: int = 0
    prepared_files: int = 0


def collect(root: Root, job_id: str, dry_run: bool = False) -> Collected:
    """Delete the resume checkpoints of every trial of the ended job `job_id`, and the job's copy of
    its prepared images (list them only, with `dry_run`). Raises KeyError for an unknown job, JobNotEnded for one still running."""
    if job_id not in root.job_ids():
        raise KeyError(job_id)
    state = root.storage.read_json(root.job_state(job_id)) or {}
    try:
        status = JobStatus(state.get("status"))
    except ValueError:
        status = None
    if status is None or not status.is_terminal():
        raise JobNotEnded(f"job {job_id!r} is {status.value if status else 'not accepted yet'}: its trials may "
                          "still resume from their checkpoints; cancel it first, or wait for it to end")
    collected = Collected()

    def remove(key: str) -> bool:
        size = root.storage.size(key)
        if size is None:
            return False
        if not dry_run:
            root.storage.delete(key)
        collected.keys.append(key)
        collected.freed_bytes += size
        return True

    collected.checkpoints = sum(remove(root.trial_key(job_id, trial, FILES.checkpoint))
                                for trial in root.trial_ids(job_id))
    prefix = root.prepared_images(job_id)
    # every set's index first (a stable sort keeps the rest in order)
    prepared = sorted(root.storage.walk(prefix), key=lambda rel: posixpath.basename(rel) != PREPARED_INDEX)
    collected.prepared_files = sum(remove(join(prefix, rel)) for rel in prepared)
    return collected
