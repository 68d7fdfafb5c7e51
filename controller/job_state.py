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

A state.json that is torn or invalid (cut short by a tool that does not write atomically, a
damaged disk, a hand edit) is rebuilt from the job's folder (`rebuild`): error.json says the job
failed (or, without a spec, was rejected); a job with no spec and no error.json was cancelled in
the inbox; any other job is running, and its next pass decides again what its trials say (it
finishes a finished job once more, stops a cancelled one). The controller writes the rebuilt
state once (`load`); `status` only reads it.
"""
from __future__ import annotations

from typing import Any, Callable

from automl_images.core.layout import Root
from automl_images.core.records import JobStatus
from automl_images.core.storage import InvalidJSON, json_bytes

from .spec import JobSpecError


class JobStates:
    def __init__(self, root: Root, clock: Callable[[], float], log: Callable[[str], None]):
        self.root = root
        self.clock = clock
        self.log = log

    def read(self, job_id: str) -> dict[str, Any] | None:
        """The job's state; None while its acceptance is under way (the inbox file is still there).
        A torn or invalid one is rebuilt from the job's folder, and not written."""
        return read_state(self.root, job_id, self.clock())[0]

    def load(self, job_id: str) -> dict[str, Any] | None:
        """`read`, and a rebuilt state written back, once: any controller may, since the state is
        rebuilt from the folder alone, the same by every reader."""
        state, rebuilt = read_state(self.root, job_id, self.clock())
        if rebuilt:
            if JobStatus(state["status"]) is JobStatus.FAILED:
                self._write_error(job_id, state["reason"])
            self.root.storage.write_json(self.root.job_state(job_id), state)
            self.log(f"job {job_id}: {state['rebuilt']}: {state['status']}")
        return state

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
                self._write_error(job_id, reason)
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

    def _write_error(self, job_id: str, reason: str) -> None:
        self.root.storage.write_json(self.root.job_error(job_id), {"error": "job failed", "message": reason})


def read_state(root: Root, job_id: str, now: float) -> tuple[dict[str, Any] | None, bool]:
    """The job's state.json (None when absent), and whether it was rebuilt from the job's folder
    because the file is torn or invalid (the state's `rebuilt` then says why)."""
    key = root.job_state(job_id)
    try:
        state = root.storage.read_json(key)
    except InvalidJSON as exc:
        return rebuild(root, job_id, str(exc), now), True
    if state is None:
        return None, False
    if not _is_state(state):
        return rebuild(root, job_id, f"{root.storage.url(key)}: not a job state (a 'status', and 'accepted_at' "
                                     "while it runs)", now), True
    return state, False


def _is_state(state: Any) -> bool:
    if not isinstance(state, dict) or state.get("status") not in JobStatus._value2member_map_:
        return False
    accepted_at = state.get("accepted_at")
    return JobStatus(state["status"]).is_terminal() or (isinstance(accepted_at, (int, float))
                                                        and not isinstance(accepted_at, bool))


def rebuild(root: Root, job_id: str, why: str, now: float) -> dict[str, Any]:
    """The state a job's folder implies (see the module's docstring)."""
    storage = root.storage
    state: dict[str, Any] = {"job_id": job_id, "rebuilt": f"{why}; rebuilt from the job's folder", "updated_at": now}
    accepted_at = storage.modified(root.job_file(job_id))
    if accepted_at is not None:  # the job file is copied from the inbox at acceptance, never rewritten
        state["accepted_at"] = accepted_at
    has_spec = storage.exists(root.job_spec(job_id))
    if storage.exists(root.job_error(job_id)):
        try:
            error = storage.read_json(root.job_error(job_id))
        except InvalidJSON as exc:
            error = {"message": str(exc)}
        message = error.get("message") if isinstance(error, dict) else None
        status = JobStatus.FAILED if has_spec else JobStatus.REJECTED
        state.update(status=status.value, reason=str(message or "see error.json"), finished_at=now)
    elif not has_spec:
        state.update(status=JobStatus.CANCELLED.value, reason="cancelled before a controller accepted it",
                     finished_at=now)
    else:
        state.update(status=JobStatus.RUNNING.value, accepted_at=state.get("accepted_at", now))
    return state
