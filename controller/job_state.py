"""A job's status in the bucket: the one writer of `state.json`, and of `error.json`, which says why
a job was rejected or failed.

    inbox file ─► running ─► stopping ─► completed | failed | cancelled
              ├─► rejected    running ─► completed | failed
              └─► cancelled (before any controller accepted it)

Each transition is saved before the controller acts on it, as SkyPilot's managed-jobs controller
does (`set_starting`, then start): `stopping` before the trials are asked to stop, `running` after
the job's spec.json and before its first trial, a failed job's error.json before its state. A
controller killed right after saving a transition does the rest on its next pass; one killed
before saving it decides the same transition again.
"""
from __future__ import annotations

from typing import Any, Callable

from automl_images.core.layout import Root
from automl_images.core.records import JobStatus
from automl_images.core.storage import json_bytes

from .spec import JobSpecError


class JobStates:
    def __init__(self, root: Root, clock: Callable[[], float], log: Callable[[str], None]):
        self.root = root
        self.clock = clock
        self.log = log

    def read(self, job_id: str) -> dict[str, Any] | None:
        """The job's state; None while its acceptance is under way (the inbox file is still there)."""
        return self.root.storage.read_json(self.root.job_state(job_id))

    # -- the first state: a conditional create, so that a repeated acceptance keeps the first ----
    def accept(self, job_id: str, name: str, source: str) -> None:
        self._create(job_id, {"job_id": job_id, "name": name, "status": JobStatus.RUNNING.value,
                              "accepted_at": self.clock(), "source": source})

    def reject(self, job_id: str, error: JobSpecError) -> None:
        self.root.storage.write_json(self.root.job_error(job_id), error.to_json())
        now = self.clock()
        self._create(job_id, {"job_id": job_id, "status": JobStatus.REJECTED.value, "reason": str(error),
                              "accepted_at": now, "finished_at": now})

    def cancel_queued(self, job_id: str, source: str) -> bool:
        """Cancelled in the inbox, before any controller accepted it (`automl-images cancel`);
        False when a controller accepted it first."""
        return self._create(job_id, {"job_id": job_id, "status": JobStatus.CANCELLED.value, "source": source,
                                     "reason": "cancelled before a controller accepted it",
                                     "finished_at": self.clock()})

    def _create(self, job_id: str, state: dict[str, Any]) -> bool:
        return self.root.storage.create_exclusive(self.root.job_state(job_id), json_bytes(state))

    # -- later transitions: `state` is the job's state as this pass read it, updated in place ----
    def transition(self, job_id: str, state: dict[str, Any], status: JobStatus, reason: str = "",
                   cost_usd: float | None = None) -> None:
        """To `status`; a terminal one with when it ended and (when given) what the job cost."""
        now = self.clock()
        state.update(status=status.value, reason=reason, updated_at=now)
        if status.is_terminal():
            state["finished_at"] = now
            if cost_usd is not None:
                state["cost_usd"] = round(cost_usd, 6)
            if status is JobStatus.FAILED:
                self.root.storage.write_json(self.root.job_error(job_id), {"error": "job failed", "message": reason})
        self.root.storage.write_json(self.root.job_state(job_id), state)
        self.log(f"job {job_id}: {status.value}" + (f" ({reason})" if reason else ""))

    def fail(self, job_id: str, reason: str) -> None:
        """Fail the job whatever its state: no controller of this version can run it (its passes
        keep failing, or its spec was saved by another version)."""
        self.transition(job_id, self.read(job_id) or {}, JobStatus.FAILED, reason)

    def published(self, job_id: str, state: dict[str, Any], trials: int, cost_usd: float) -> None:
        """How many finished trials the leaderboard shows now, and the job's cost so far."""
        state.update(published_trials=trials, cost_usd=round(cost_usd, 6))
        self.root.storage.write_json(self.root.job_state(job_id), state)
