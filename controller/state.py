"""Job and trial records as the controller sees them, rebuilt from the bucket on every pass."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from automl_images.trainer.report import ErrorKind, TrialStatus

from .launch.base import RunState


class JobStatus(str, enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"      # no new trials; waiting for running ones to stop (cancel, timeout, failure)
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"      # the job file was invalid; error.json says why

    def is_terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.REJECTED)


@dataclass
class TrialView:
    """One trial: what the controller created (spec), launched (launch) and what the trainer
    reported (status), plus the launcher's answer for this pass."""
    trial_id: str
    sweep: dict[str, Any]                       # {"subspace": i, "params": {...}}
    launch: dict[str, Any] | None = None        # launch.json: attempt, handle, launched_at
    status: dict[str, Any] | None = None        # status.json (trainer's, or the controller's verdict)
    stop: dict[str, Any] | None = None          # stop.json: a stop request
    run_state: RunState | None = None

    @property
    def trial_status(self) -> TrialStatus:
        return TrialStatus((self.status or {}).get("status", TrialStatus.PENDING.value))

    @property
    def is_terminal(self) -> bool:
        return self.trial_status.is_terminal()

    @property
    def attempt(self) -> int:
        return int((self.launch or {}).get("attempt", 0))

    @property
    def launched(self) -> bool:
        return bool(self.launch and self.launch.get("handle") is not None)

    @property
    def params(self) -> dict[str, Any]:
        return self.sweep.get("params", {})

    @property
    def error(self) -> dict[str, Any] | None:
        return (self.status or {}).get("error")

    @property
    def error_kind(self) -> ErrorKind | None:
        error = self.error
        return ErrorKind(error["kind"]) if error and error.get("kind") in ErrorKind._value2member_map_ else None

    def primary(self, metric: str) -> float | None:
        metrics = (self.status or {}).get("metrics") or ((self.status or {}).get("best") or {}).get("metrics") or {}
        value = metrics.get(metric)
        return float(value) if isinstance(value, (int, float)) else None

    def history(self, metric: str) -> list[tuple[int, float]]:
        """(evaluation number, primary metric) for each evaluation so far."""
        out = []
        for i, item in enumerate((self.status or {}).get("history") or [], start=1):
            if isinstance(item.get(metric), (int, float)):
                out.append((i, float(item[metric])))
        return out


@dataclass
class JobView:
    job_id: str
    state: dict[str, Any]
    trials: list[TrialView] = field(default_factory=list)
    cancel_requested: bool = False

    @property
    def status(self) -> JobStatus:
        return JobStatus(self.state["status"])
