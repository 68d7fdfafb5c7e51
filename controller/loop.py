"""The controller loop: accept job files from the inbox, then reconcile every job, again and again.

    automl-images controller --root ./bucket            # until interrupted
    automl-images controller --root s3://b/automl --once  # one pass (cron, a cloud function)

Nothing lives only in this process. Each pass accepts the inbox's files (`inbox.py`), then hands
every running job whose lease it holds to that job's controller (`job.py`), which rebuilds the job
from the bucket, asks `reconcile.decide` what to do, and applies the actions, each written before
it is acted on and safe to repeat, so the process may be killed at any moment and started again.
A job's controller keeps only what cannot change any more (the saved spec, finished trials).

Several controllers may watch one root: a job is acted on only by the holder of its lease
(`lease.py`); the others only read it, and take the lease over when its holder stops renewing it.
A bucket that fails for longer than the storage layer's retries (`core.storage.with_retries`),
and any other outage (`core.storage.outage`: a full or read-only disk, no permission, the bucket
gone) fails the pass, not the job: it is logged in one line, and the next pass starts again from
the bucket. `run` with `until_done` (a batch) gives up once an outage has lasted OUTAGE_LIMIT_S,
raising `Outage`; a controller that runs forever keeps trying.
"""
from __future__ import annotations

import time
import traceback
from typing import Callable

from automl_images.core.layout import Root
from automl_images.core.records import JobStatus
from automl_images.core.storage import RootMissing, describe, outage

from . import inbox
from .job import Context, JobController, Log
from .job_state import JobStates
from .launch import get_launcher
from .launch.base import Launcher, LauncherError
from .launch.extras import MissingInstall
from .lease import LEASE_TTL_S, Leases
from .spec import JobSpecError, NewerSpecError

# A job on which the controller fails this many passes in a row, other than for an outage, is
# failed with the error instead of being retried forever.
MAX_JOB_ERRORS = 5
# How long a batch controller (`--until-done`) waits for an outage to end before giving up.
OUTAGE_LIMIT_S = 600.0


class Outage(Exception):
    """The bucket or disk failed every pass for OUTAGE_LIMIT_S: a batch controller gives up."""


class Controller:
    def __init__(self, root: Root | str, log: Log | None = None, clock: Callable[[], float] = time.time,
                 launchers: dict[str, Launcher] | None = None, owner: str | None = None,
                 lease_ttl_s: float = LEASE_TTL_S):
        self.root = root if isinstance(root, Root) else Root(root)
        self.log = log or (lambda message: None)
        self.clock = clock
        self._launchers: dict[str, Launcher] = dict(launchers or {})
        self.leases = Leases(self.root, owner=owner, ttl_s=lease_ttl_s, clock=clock,
                             margin_s=min(20.0, lease_ttl_s / 6))
        self.states = JobStates(self.root, clock, self.log)
        self._context = Context(self.root, clock, self.log, self.launcher, self.leases, self.states)
        self._jobs: dict[str, JobController] = {}  # the running jobs whose lease this controller holds
        self._watched: dict[str, str] = {}     # jobs leased by another controller: the holder last logged
        self._newer: set[str] = set()          # jobs whose spec a newer controller saved: never acted on
        self._errors: dict[str, int] = {}      # consecutive failed passes, per job
        # The jobs this controller saw unfinished (or accepted), with the status it last read:
        # what `controller --until-done` reports and sets its exit code by.
        self.ran: dict[str, JobStatus | None] = {}
        self.failed_passes = 0                 # passes in which something failed (logged)
        self.outage: str | None = None         # what was down in the last pass (None: nothing)
        self._outage_since: float | None = None  # when the passes began to meet outages
        self._outages: list[str] = []          # what was down, this pass
        self._root_seen = False                # the root has had jobs: its disappearance is an outage

    # -- the loop ------------------------------------------------------------------------------
    def run(self, once: bool = False, interval_s: float = 2.0, until_done: bool = False,
            outage_limit_s: float = OUTAGE_LIMIT_S) -> None:
        """Reconcile forever (or once; or until no job is left running, raising Outage once
        the passes have met outages for `outage_limit_s`). On the way out the leases are handed
        back, so that another controller takes over at once."""
        try:
            while True:
                active = self.reconcile_once()
                if once or (until_done and not active):
                    return
                if until_done and self.outage and self.clock() - (self._outage_since or 0) >= outage_limit_s:
                    raise Outage(f"giving up after {self.clock() - (self._outage_since or 0):.0f}s of outage: "
                                 f"{self.outage}")
                time.sleep(interval_s)
        finally:
            try:
                self.leases.release_all()
            except Exception:  # noqa: BLE001 - the leases expire anyway; the error said what is down
                pass
            for launcher in self._launchers.values():
                try:
                    launcher.close()  # a SkyPilot API server it started; the trials go on
                except Exception as exc:  # noqa: BLE001 - said, not raised: the controller is exiting anyway
                    self.log(f"{launcher.name} launcher: {exc}")

    def reconcile_once(self) -> int:
        """One pass over the root. Returns how many jobs are still running (a job whose pass
        failed counts as running: the next pass tries again)."""
        failures = 0
        self._outages = []
        try:
            names = self.root.inbox_files()
        except Exception as exc:  # noqa: BLE001 - logged; the next pass lists again
            failures += self._failed("inbox", exc)
            if self._outages:  # the root failed its first listing, after the retries: the rest would too
                self.failed_passes += 1
                self._note_outage()
                return 1
            names = []
        for name in names:
            try:
                self.accept(name)
            except Exception as exc:  # noqa: BLE001
                failures += self._failed(f"inbox file {name}", exc)
        try:
            job_ids = self.root.job_ids()
            self._check_root(job_ids)
        except Exception as exc:  # noqa: BLE001
            self._failed("job list", exc)
            self.failed_passes += 1
            self._note_outage()
            return 1
        active = 0
        for job_id in job_ids:
            try:
                status = self.reconcile_job(job_id)
            except Exception as exc:  # noqa: BLE001 - one job's trouble must not stop the others
                failures += self._failed(f"job {job_id}", exc, job_id)
                active += 1
                continue
            self._errors.pop(job_id, None)
            if status is not None and (job_id in self.ran or not status.is_terminal()):
                self.ran[job_id] = status
            active += status is not None and not status.is_terminal()
        self.failed_passes += failures > 0
        self._note_outage()
        return active

    def _check_root(self, job_ids: list[str]) -> None:
        """An empty job list from a bucket that is gone, or from a root folder that had jobs,
        is an outage, not an idle root (a listing of a missing bucket or folder is empty)."""
        if job_ids:
            self._root_seen = True
            return
        storage = self.root.storage
        if (storage.has_bucket or self._root_seen) and not storage.root_exists():
            raise RootMissing(storage.root, storage.has_bucket)

    def _note_outage(self) -> None:
        self.outage = "; ".join(dict.fromkeys(self._outages)) or None
        if self.outage is None:
            self._outage_since = None
        elif self._outage_since is None:
            self._outage_since = self.clock()

    def accept(self, name: str) -> str | None:
        """Take one job file from the inbox (`inbox.accept`)."""
        job_id = inbox.accept(self.root, name, self.states, self.log, self.clock())
        if job_id is not None:
            self.ran.setdefault(job_id, None)
        return job_id

    def failed_jobs(self) -> dict[str, JobStatus]:
        """The jobs it ran that ended failed or rejected."""
        return {job_id: status for job_id, status in self.ran.items()
                if status in (JobStatus.FAILED, JobStatus.REJECTED)}

    def _failed(self, what: str, exc: Exception, job_id: str | None = None) -> int:
        """Log a failed step of the pass: an outage or a launcher's refusal in one line, anything
        else with its traceback. A job that keeps failing other than for an outage (of the bucket,
        or of the launcher's service) is failed with the error (at most MAX_JOB_ERRORS passes in a row)."""
        if isinstance(exc, LauncherError):
            # Before the bucket's outages: SkyPilot's connection errors chain to the same types.
            if exc.transient:
                self.log(f"{what}: {exc}; trying again on the next pass")
                return 1
            self.log(f"{what}: {exc}")
        else:
            down = outage(exc)
            if down is not None:
                self._outages.append(down)
                self.log(f"{what}: {describe(exc)}; trying again on the next pass")
                return 1
            detail = "" if isinstance(exc, MissingInstall) else "\n" + traceback.format_exc()
            self.log(f"{what}: {type(exc).__name__}: {exc}{detail}")
        if job_id is not None:
            self._errors[job_id] = self._errors.get(job_id, 0) + 1
            if self._errors[job_id] >= MAX_JOB_ERRORS and self.leases.holds(job_id):
                self._give_up(job_id, f"the controller failed {MAX_JOB_ERRORS} passes in a row on this job: "
                                      f"{type(exc).__name__}: {exc}")
        return 1

    def _give_up(self, job_id: str, reason: str) -> None:
        try:
            self.states.fail(job_id, reason)
        except Exception as exc:  # noqa: BLE001 - the next pass tries again
            self.log(f"job {job_id}: could not record its failure: {exc}")

    def launcher(self, name: str) -> Launcher:
        if name not in self._launchers:
            self._launchers[name] = get_launcher(name)
        return self._launchers[name]

    # -- jobs ----------------------------------------------------------------------------------
    def job(self, job_id: str) -> JobController:
        """The job's controller, loaded from the bucket on first use (JobSpecError when its spec
        was saved by another version)."""
        if job_id not in self._jobs:
            self._jobs[job_id] = JobController.load(self._context, job_id)
        return self._jobs[job_id]

    def reconcile_job(self, job_id: str) -> JobStatus | None:
        state = self.states.load(job_id)
        if state is None:
            return None  # acceptance still under way: the inbox file is still there
        status = JobStatus(state["status"])
        if status.is_terminal():
            self._jobs.pop(job_id, None)
            self.leases.release(job_id)  # one lease object left, marked released
            return status
        if job_id in self._newer:
            return status  # a newer controller's job: left to it
        if not self.leases.acquire(job_id):
            self._note_watching(job_id)
            return status  # another controller acts on it; this one only reads
        self._watched.pop(job_id, None)
        try:
            job = self.job(job_id)
        except NewerSpecError as exc:
            # Accepted by a newer controller, which may share this root: hand the lease back and
            # never take it again, rather than fail a job that the newer one can run.
            self._newer.add(job_id)
            self.leases.release(job_id)
            self.log(f"job {job_id}: left to a newer controller ({exc})")
            return status
        except JobSpecError as exc:  # damaged, or saved by an older version: no controller can run it
            self._give_up(job_id, str(exc))
            return JobStatus.FAILED
        return job.reconcile(state)

    def _note_watching(self, job_id: str) -> None:
        holder = self.leases.holder(job_id) or {}
        owner = holder.get("owner", "?")
        if self._watched.get(job_id) != owner:
            self._watched[job_id] = owner
            self.log(f"job {job_id}: run by controller {owner}; this one only watches it")
        self._jobs.pop(job_id, None)  # whatever it cached may be stale when it takes over
