"""The records that the controller and the trainer exchange through the bucket: the statuses of a
job, a trial and a launcher's run (enums with `is_terminal()`), and the views of a trial and a job
that the controller rebuilds from the bucket on every pass (`trials.py` reads them)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


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


class RunState(str, enum.Enum):
    """What a launcher says of one run (one attempt of a trial)."""
    PENDING = "pending"        # accepted, not running yet (queued, provisioning)
    RUNNING = "running"
    RECOVERING = "recovering"  # lost its machine and is being relaunched by the launcher: not a failure
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    GONE = "gone"              # no longer runs and its outcome is unknown to the launcher

    def is_terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.GONE)


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
    cost_usd: float = 0.0                       # spent so far (final once the trial is finished)
    # The files of the trial folder that were torn or invalid when read (file name -> why), and
    # stand rebuilt in the fields above (trials.read_trial says how): for this pass only.
    damaged: dict[str, str] = field(default_factory=dict)

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

    def history(self, metric: str, by: str = "evaluation") -> list[tuple[int, float]]:
        """(evaluation number, or epoch when `by` is "epoch", primary metric) for each evaluation so far."""
        out = []
        for i, item in enumerate((self.status or {}).get("history") or [], start=1):
            if isinstance(item.get(metric), (int, float)):
                step = int(item.get("epoch", i)) if by == "epoch" else i
                out.append((step, float(item[metric])))
        return out


def recorded_cost(launch: dict[str, Any] | None, now: float) -> float:
    """A trial's cost from its launch.json alone: the final `cost_usd` once the controller wrote it,
    else the earlier attempts' `spent_usd` plus the running attempt's `hourly_price_usd` times its
    time so far (0 where the launcher gave no price)."""
    launch = launch or {}
    if isinstance(launch.get("cost_usd"), (int, float)):
        return float(launch["cost_usd"])
    spent = float(launch.get("spent_usd") or 0.0)
    hourly, started = launch.get("hourly_price_usd"), launch.get("launched_at")
    if isinstance(hourly, (int, float)) and isinstance(started, (int, float)) and launch.get("handle"):
        spent += hourly * max(0.0, now - started) / 3600.0
    return spent


@dataclass
class JobView:
    job_id: str
    state: dict[str, Any]
    trials: list[TrialView] = field(default_factory=list)
    cancel_requested: bool = False

    @property
    def status(self) -> JobStatus:
        return JobStatus(self.state["status"])

    @property
    def cost_usd(self) -> float:
        return sum(t.cost_usd for t in self.trials)
