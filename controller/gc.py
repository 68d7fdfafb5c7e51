"""`automl-images gc JOB`: delete what an ended job no longer needs, and say how much it frees.

A finished trial needs its model, metrics, status and logs; `checkpoints/last.pt` (optimizer and
RNG state besides the weights: 134 MB for resnet18) only lets an unfinished trial resume. Trials
delete it themselves when they end (unless the job says `keep_checkpoints: true`); gc removes the
ones left behind: jobs that kept them, trials killed between their last status and the deletion,
and jobs run by versions that kept them all. The checkpoints a job asked for with
`checkpoint_frequency` (`checkpoints/epoch_NNNN.pt`) stay: the user wanted those.

Only an ended job: a running job's trials may resume from their checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from automl_images.core.layout import FILES, Root
from automl_images.core.records import JobStatus


class JobNotEnded(Exception):
    """The job is still running (or stopping): its checkpoints may still be resumed from."""


@dataclass
class Collected:
    keys: list[str] = field(default_factory=list)  # deleted (or, dry run, would be)
    freed_bytes: int = 0


def collect(root: Root, job_id: str, dry_run: bool = False) -> Collected:
    """Delete the resume checkpoints of every trial of the ended job `job_id` (list them only, with
    `dry_run`). Raises KeyError for an unknown job, JobNotEnded for one still running."""
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
    for trial in root.trial_ids(job_id):
        key = root.trial_key(job_id, trial, FILES.checkpoint)
        size = root.storage.size(key)
        if size is None:
            continue
        if not dry_run:
            root.storage.delete(key)
        collected.keys.append(key)
        collected.freed_bytes += size
    return collected
