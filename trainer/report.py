"""The trial folder: what a trial writes for the controller and reads from it.

A trial folder (`<root>/jobs/<job_id>/trials/<trial_id>/`) holds:

- `spec.json`         the trial spec (written once by the controller, see `config.py`)
- `status.json`       the trainer's status: running / completed / failed / stopped, the history of
                      the primary metric, the best metrics, errors, skipped images
- `metrics/NNNNNN.json` every evaluation's full metrics, one object per evaluation (epoch)
- `stop.json`         a stop request from the controller, honoured at the next evaluation
- `checkpoints/last.pt` everything resume needs (see `checkpoint.py`)
- `model/`            the final model: `model.pt` (weights) and `model.json` (labels, preprocessing)
- `logs/`             the trainer's log

This module is the trainer's public contract: the controller imports `TrialStatus` and
`TrialFiles` from here and never writes a key the trainer owns while the trainer is alive.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any

from .storage import Storage, join


class TrialStatus(str, enum.Enum):
    PENDING = "pending"       # created by the controller, not started (or between attempts)
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"       # stopped on request (early termination, cancel, timeout)

    def is_terminal(self) -> bool:
        return self in (TrialStatus.COMPLETED, TrialStatus.FAILED, TrialStatus.STOPPED)


class ErrorKind(str, enum.Enum):
    """Why a trial failed: decides whether the controller retries it or blames the job."""
    USER = "user"                  # bad data, bad settings: retrying cannot help
    INFRASTRUCTURE = "infrastructure"  # lost machine, preemption: retried
    INTERNAL = "internal"          # a bug in the trainer: reported, not retried


@dataclass(frozen=True)
class TrialFiles:
    """Key names inside one trial folder, relative to the folder."""
    spec: str = "spec.json"
    status: str = "status.json"
    metrics_dir: str = "metrics"
    stop: str = "stop.json"
    checkpoint: str = "checkpoints/last.pt"
    model_dir: str = "model"
    model_weights: str = "model/model.pt"
    model_info: str = "model/model.json"
    logs_dir: str = "logs"
    launch: str = "launch.json"     # written by the controller: launcher handle and attempts

    def metrics(self, evaluation: int) -> str:
        return f"{self.metrics_dir}/{evaluation:06d}.json"


FILES = TrialFiles()


class Reporter:
    """Writes a running trial's status and metrics to its folder; reads stop requests."""

    def __init__(self, storage: Storage, trial_prefix: str):
        self.storage = storage
        self.prefix = trial_prefix
        self.started_at = time.time()
        self.status: dict[str, Any] = storage.read_json(self.key(FILES.status), default=None) or {}

    def key(self, name: str) -> str:
        return join(self.prefix, name) if self.prefix else name

    def update(self, status: TrialStatus, **fields: Any) -> dict[str, Any]:
        self.status.update(fields)
        self.status["status"] = status.value
        self.status["updated_at"] = time.time()
        self.status.setdefault("started_at", self.started_at)
        self.storage.write_json(self.key(FILES.status), self.status)
        return self.status

    def write_metrics(self, evaluation: int, metrics: dict[str, Any]) -> None:
        self.storage.write_json(self.key(FILES.metrics(evaluation)), metrics)

    def stop_requested(self) -> dict[str, Any] | None:
        return self.storage.read_json(self.key(FILES.stop), default=None)
