"""The bucket layout: every key the controller reads or writes, in one place.

    <root>/inbox/*.yaml                          the drop zone: job files waiting to be accepted
    <root>/uploads/<job_id>/...                  data that `submit` uploaded for a job
    <root>/jobs/<job_id>/job.yaml                the job file as the user wrote it, byte for byte
    <root>/jobs/<job_id>/spec.json               the validated spec, data paths made absolute
    <root>/jobs/<job_id>/state.json              the job's status (see state.py)
    <root>/jobs/<job_id>/error.json              why the job was rejected or failed
    <root>/jobs/<job_id>/cancel.json             a cancel request (`automl-images cancel`)
    <root>/jobs/<job_id>/leaderboard.json|.csv   trials ranked by the primary metric
    <root>/jobs/<job_id>/best/                   a copy of the best trial's model/ and trial.json
    <root>/jobs/<job_id>/trials/<trial_id>/      one trial: files named in trainer.report.TrialFiles

A root is any fsspec URL or a local folder.
"""
from __future__ import annotations

import re
from typing import Any

from automl_images.trainer.report import FILES
from automl_images.trainer.storage import Storage, join

INBOX = "inbox"
JOBS = "jobs"
UPLOADS = "uploads"

JOB_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def job_id_from_name(name: str) -> str:
    """A job id from a file name: lower case letters, digits and dashes (usable as a SkyPilot job
    name and in any bucket)."""
    stem = name.rsplit("/", 1)[-1]
    stem = re.sub(r"\.ya?ml$", "", stem, flags=re.I).lower()
    stem = re.sub(r"[^a-z0-9]+", "-", stem).strip("-")
    return (stem or "job")[:48]


def trial_id(index: int) -> str:
    return f"t{index:04d}"


def trial_index(trial: str) -> int:
    return int(trial[1:])


class Root:
    """Key names below a root, and the storage to reach them."""

    def __init__(self, storage: Storage | str):
        self.storage = storage if isinstance(storage, Storage) else Storage(storage)

    @property
    def url(self) -> str:
        return self.storage.root

    # -- inbox ----------------------------------------------------------------------------------
    def inbox_files(self) -> list[str]:
        return [n for n in self.storage.list(INBOX) if n.lower().endswith((".yaml", ".yml"))]

    def inbox_key(self, name: str) -> str:
        return join(INBOX, name)

    def upload_prefix(self, job: str) -> str:
        return join(UPLOADS, job)

    # -- jobs -----------------------------------------------------------------------------------
    def job_ids(self) -> list[str]:
        return self.storage.list(JOBS)

    def job_key(self, job: str, name: str = "") -> str:
        return join(JOBS, job, name) if name else join(JOBS, job)

    def job_file(self, job: str) -> str:
        return self.job_key(job, "job.yaml")

    def job_spec(self, job: str) -> str:
        return self.job_key(job, "spec.json")

    def job_state(self, job: str) -> str:
        return self.job_key(job, "state.json")

    def job_error(self, job: str) -> str:
        return self.job_key(job, "error.json")

    def cancel_request(self, job: str) -> str:
        return self.job_key(job, "cancel.json")

    def leaderboard(self, job: str, extension: str = "json") -> str:
        return self.job_key(job, f"leaderboard.{extension}")

    def best(self, job: str, name: str = "") -> str:
        return self.job_key(job, join("best", name) if name else "best")

    # -- trials ---------------------------------------------------------------------------------
    def trial_ids(self, job: str) -> list[str]:
        return [n for n in self.storage.list(self.job_key(job, "trials")) if re.fullmatch(r"t\d{4,}", n)]

    def trial_prefix(self, job: str, trial: str) -> str:
        return self.job_key(job, join("trials", trial))

    def trial_key(self, job: str, trial: str, name: str) -> str:
        return join(self.trial_prefix(job, trial), name)

    def trial_url(self, job: str, trial: str, name: str = "") -> str:
        return self.storage.url(self.trial_key(job, trial, name) if name else self.trial_prefix(job, trial))

    def read_trial(self, job: str, trial: str, name: str, default: Any = None) -> Any:
        return self.storage.read_json(self.trial_key(job, trial, name), default=default)

    def spec_url(self, job: str, trial: str) -> str:
        return self.trial_url(job, trial, FILES.spec)
