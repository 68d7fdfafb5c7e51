"""The bucket layout: every key of a root, a job and a trial, in one place.

    <root>/inbox/*.yaml                          the drop zone: job files waiting to be accepted
    <root>/uploads/<job_id>/...                  data that `submit` uploaded for a job
    <root>/jobs/<job_id>/job.yaml                the job file as the user wrote it, byte for byte
    <root>/jobs/<job_id>/spec.json               the validated job spec, defaults resolved, data
                                                 paths made absolute (saved once, at acceptance)
    <root>/jobs/<job_id>/state.json              the job's status (records.JobStatus)
    <root>/jobs/<job_id>/automode.json           AutoMode's curated search space, when the job
                                                 gave none (controller/automode.py), at acceptance
    <root>/jobs/<job_id>/error.json              why the job was rejected or failed
    <root>/jobs/<job_id>/data_check.json         check-data's report on the job's data, at acceptance
    <root>/jobs/<job_id>/split.json              without validation data: the validation split every
                                                 trial uses (core/split.py), written once
    <root>/jobs/<job_id>/cancel.json             a cancel request (`automl-images cancel`)
    <root>/jobs/<job_id>/lease-<n>.json          the chain of leases of the controller acting on it
    <root>/jobs/<job_id>/warm_start.json         the warm-start seeds, gathered once
    <root>/jobs/<job_id>/trials.json             every finished trial in one object (a cache)
    <root>/jobs/<job_id>/leaderboard.json|.csv   trials ranked by the primary metric
    <root>/jobs/<job_id>/best/                   a copy of the best trial's model/ and trial.json
    <root>/jobs/<job_id>/report.html             the HTML report (controller/report.py)
    <root>/jobs/<job_id>/prepared/<key>/         with `prepared_images: bucket`: the job's images
                                                 decoded once, for trials on other machines
                                                 (trainer/prepared.py)
    <root>/jobs/<job_id>/trials/<trial_id>/      one trial: the files of `TrialFiles`

A root is any fsspec URL or a local folder.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .storage import Storage, join

INBOX = "inbox"
JOBS = "jobs"
UPLOADS = "uploads"
PREPARED_INDEX = "index.json"   # of each prepared set (trainer/prepared.py): written last, it says the set is whole

# A job id names a folder in every bucket and a SkyPilot job: never a path (no "/", no ".."),
# and short enough for either.
JOB_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
JOB_ID_RULE = "1 to 63 lower-case letters, digits and dashes, starting with a letter or digit"
TRIAL_ID = re.compile(r"^t\d{4,}$")
LEASE_NAME = re.compile(r"^lease-(\d{8,})\.json$")


@dataclass(frozen=True)
class TrialFiles:
    """Key names inside one trial folder, relative to the folder.

    - `spec.json`         the trial spec (written once by the controller, see `trial_spec.py`)
    - `launch.json`       the controller's launch record: launcher handle, attempts, cost
    - `status.json`       the trainer's status: running / completed / failed / stopped, the history
                          of the primary metric, the best metrics, errors, skipped images
    - `metrics/NNNNNN.json` every evaluation's full metrics, one object per evaluation (epoch)
    - `stop.json`         a stop request from the controller, honoured at the next evaluation
    - `checkpoints/last.pt` everything resume needs (trainer/checkpoint.py), and
      `checkpoints/epoch_NNNN.pt` the extra ones kept every `checkpoint_frequency` epochs
    - `model/`            the final model: `model.pt` (weights) and `model.json` (labels, preprocessing)
    - `logs/`             the trainer's log and, once an attempt ended, the launcher's
    - `best_predictions.json` the best epoch's predictions on the first validation images, beside
                          their ground truth (trainer/best_predictions.py; the report draws them)
    """
    spec: str = "spec.json"
    status: str = "status.json"
    metrics_dir: str = "metrics"
    stop: str = "stop.json"
    checkpoint: str = "checkpoints/last.pt"
    model_dir: str = "model"
    model_weights: str = "model/model.pt"
    model_info: str = "model/model.json"
    logs_dir: str = "logs"
    trainer_log: str = "logs/trainer.log"
    launch: str = "launch.json"
    best_predictions: str = "best_predictions.json"

    def metrics(self, evaluation: int) -> str:
        return f"{self.metrics_dir}/{evaluation:06d}.json"

    def epoch_checkpoint(self, epoch: int) -> str:
        return f"checkpoints/epoch_{epoch:04d}.pt"

    def launcher_log(self, attempt: int) -> str:
        return f"{self.logs_dir}/launcher-attempt-{attempt}.log"


FILES = TrialFiles()


def job_id_from_name(name: str) -> str:
    """A job id from a file name: lower case letters, digits and dashes (usable as a SkyPilot job
    name and in any bucket)."""
    stem = re.sub(r"\.ya?ml$", "", name.rsplit("/", 1)[-1], flags=re.I)
    if JOB_ID.fullmatch(stem):  # an id already, as `submit` names its inbox files: the job runs under it
        return stem
    stem = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")
    return (stem or "job")[:48]


def job_id_problem(job_id: str) -> str | None:
    """Why `job_id` cannot be a job id; None when it can."""
    if JOB_ID.fullmatch(job_id):
        return None
    return f"job id {job_id!r} is not allowed: a job id is {JOB_ID_RULE}"


def trial_id(index: int) -> str:
    return f"t{index:04d}"


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

    def submission(self, job: str) -> str:
        """What `submit` resolved for the job file it dropped into the inbox (where its data is):
        the inbox file stays the user's bytes. Created before anything is uploaded: it reserves the id."""
        return join(UPLOADS, job, "submission.json")

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

    def automode_space(self, job: str) -> str:
        return self.job_key(job, "automode.json")

    def data_check(self, job: str) -> str:
        return self.job_key(job, "data_check.json")

    def job_split(self, job: str) -> str:
        return self.job_key(job, "split.json")

    def cancel_request(self, job: str) -> str:
        return self.job_key(job, "cancel.json")

    def lease(self, job: str, number: int) -> str:
        return self.job_key(job, f"lease-{number:08d}.json")

    def lease_numbers(self, job: str) -> list[int]:
        """The numbers of the job's lease objects, ascending (one listing of the job's folder)."""
        return sorted(int(m.group(1)) for m in map(LEASE_NAME.match, self.storage.list(self.job_key(job))) if m)

    def warm_start(self, job: str) -> str:
        return self.job_key(job, "warm_start.json")

    def trials_summary(self, job: str) -> str:
        return self.job_key(job, "trials.json")

    def leaderboard(self, job: str, extension: str = "json") -> str:
        return self.job_key(job, f"leaderboard.{extension}")

    def best(self, job: str, name: str = "") -> str:
        return self.job_key(job, join("best", name) if name else "best")

    def report(self, job: str) -> str:
        return self.job_key(job, "report.html")

    def prepared_images(self, job: str) -> str:
        """The prefix of the job's prepared sets: `<key>/images/...` and `<key>/PREPARED_INDEX`."""
        return self.job_key(job, "prepared")

    def best_trial(self, job: str) -> str:
        """The best trial's leaderboard row, with the URL of its model (the rest of best/)."""
        return self.best(job, "trial.json")

    # -- trials ---------------------------------------------------------------------------------
    def trial_ids(self, job: str) -> list[str]:
        return [n for n in self.storage.list(self.job_key(job, "trials")) if TRIAL_ID.fullmatch(n)]

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
