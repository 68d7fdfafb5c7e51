"""The controller loop: accept job files from the inbox, then reconcile every job, again and again.

    automl-images controller --root ./bucket            # until interrupted
    automl-images controller --root s3://b/automl --once  # one pass (cron, a cloud function)

Nothing lives only in this process. Each pass rebuilds every job from the bucket, asks
`reconcile.decide` what to do, and applies the actions, each written before it is acted on and safe
to repeat, so the process may be killed at any moment and started again. In-memory caches hold
only what cannot change any more (parsed job files, trial sweeps, finished trials).

Several controllers may watch one root: a job is acted on only by the holder of its lease
(`lease.py`); the others only read it, and take the lease over when its holder stops renewing it.
A bucket that fails for longer than the storage layer's retries (`trainer.storage.with_retries`)
fails the pass of that job only: it is logged, and the next pass starts again from the bucket.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from automl_images.core import trials
from automl_images.core.layout import FILES, Root, job_id_from_name, trial_id
from automl_images.core.records import JobStatus, JobView, TrialView, recorded_cost
from automl_images.core.storage import Storage, is_transient, resolve
from automl_images.core.trial_spec import TrialSpec

from . import leaderboard, reconcile, warmstart
from .launch import LaunchRequest, get_launcher
from .launch.base import Launcher
from .lease import LEASE_TTL_S, Leases
from .reconcile import CreateTrials, FinishTrial, Launch, Publish, RequestStop, SetJobStatus
from .search import Observation, make_sampler
from .spec import JobSpec, JobSpecError, Problem, parse_job

Log = Callable[[str], None]

# A job on which the controller fails this many passes in a row, other than for the bucket being
# unreachable, is failed with the error instead of being retried forever.
MAX_JOB_ERRORS = 5


@dataclass
class _JobCache:
    spec: JobSpec
    data: dict[str, Any]                      # spec.json: resolved data URLs
    finished: dict[str, TrialView] = field(default_factory=dict)
    sweeps: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)  # last progress printed, per trial
    summarized: int = -1                      # finished trials in trials.json as last read or written
    seeds: list[Observation] = field(default_factory=list)  # warm start (warm_start.json)
    headline: str = ""                        # the job's last progress line, without its clock


class Controller:
    def __init__(self, root: Root | str, log: Log | None = None, clock: Callable[[], float] = time.time,
                 launchers: dict[str, Launcher] | None = None, owner: str | None = None,
                 lease_ttl_s: float = LEASE_TTL_S):
        self.root = root if isinstance(root, Root) else Root(root)
        self.log = log or (lambda message: None)
        self.clock = clock
        self._launchers: dict[str, Launcher] = dict(launchers or {})
        self._jobs: dict[str, _JobCache] = {}
        self.leases = Leases(self.root, owner=owner, ttl_s=lease_ttl_s, clock=clock,
                             margin_s=min(20.0, lease_ttl_s / 6))
        self._watched: dict[str, str] = {}     # jobs leased by another controller: the holder last logged
        self._errors: dict[str, int] = {}      # consecutive failed passes, per job
        self.failed_passes = 0                 # passes in which something failed (logged)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, once: bool = False, interval_s: float = 2.0, until_done: bool = False) -> None:
        """Reconcile forever (or once; or until no job is left running). On the way out the
        leases are handed back, so that another controller takes over at once."""
        try:
            while True:
                active = self.reconcile_once()
                if once or (until_done and not active):
                    return
                time.sleep(interval_s)
        finally:
            self.leases.release_all()

    def reconcile_once(self) -> int:
        """One pass over the root. Returns how many jobs are still running (a job whose pass
        failed counts as running: the next pass tries again)."""
        failures = 0
        try:
            names = self.root.inbox_files()
        except Exception as exc:  # noqa: BLE001 - logged; the next pass lists again
            failures += self._failed("inbox", exc)
            names = []
        for name in names:
            try:
                self.accept(name)
            except Exception as exc:  # noqa: BLE001
                failures += self._failed(f"inbox file {name}", exc)
        try:
            job_ids = self.root.job_ids()
        except Exception as exc:  # noqa: BLE001
            self._failed("job list", exc)
            self.failed_passes += 1
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
            active += status is not None and not status.is_terminal()
        self.failed_passes += failures > 0
        return active

    def _failed(self, what: str, exc: Exception, job_id: str | None = None) -> int:
        """Log a failed step of the pass. A job that keeps failing other than for the bucket is
        failed with the error (at most MAX_JOB_ERRORS passes in a row)."""
        if is_transient(exc):
            self.log(f"{what}: the bucket is not answering ({type(exc).__name__}: {exc}); "
                     "trying again on the next pass")
            return 1
        self.log(f"{what}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        if job_id is not None:
            self._errors[job_id] = self._errors.get(job_id, 0) + 1
            if self._errors[job_id] >= MAX_JOB_ERRORS and self.leases.holds(job_id):
                self._give_up(job_id, f"the controller failed {MAX_JOB_ERRORS} passes in a row on this job: "
                                      f"{type(exc).__name__}: {exc}")
        return 1

    def _give_up(self, job_id: str, reason: str) -> None:
        try:
            state = self.root.storage.read_json(self.root.job_state(job_id)) or {}
            state.update(status=JobStatus.FAILED.value, reason=reason, finished_at=self.clock())
            self.root.storage.write_json(self.root.job_error(job_id), {"error": "job failed", "message": reason})
            self.root.storage.write_json(self.root.job_state(job_id), state)
            self.log(f"job {job_id}: failed ({reason})")
        except Exception as exc:  # noqa: BLE001 - the next pass tries again
            self.log(f"job {job_id}: could not record its failure: {exc}")

    def launcher(self, name: str) -> Launcher:
        if name not in self._launchers:
            self._launchers[name] = get_launcher(name)
        return self._launchers[name]

    # -- inbox ---------------------------------------------------------------------------------
    def accept(self, name: str) -> str | None:
        """Take one job file from the inbox: moved (byte for byte) to jobs/<id>/job.yaml, with
        state.json (and error.json when invalid). Repeating after a crash finishes the move."""
        storage = self.root.storage
        key = self.root.inbox_key(name)
        try:
            data = storage.read_bytes(key)
        except FileNotFoundError:
            return None
        job_id = self._job_id_for(name, data)
        storage.create_exclusive(self.root.job_file(job_id), data)
        if storage.read_json(self.root.job_state(job_id)) is None:
            source = self.root.storage.url(key)
            try:
                spec = parse_job(_decode(data, source), source)
                resolved = self._resolve_data(spec, source)
                self._check_warm_start(spec, source)
            except JobSpecError as exc:
                storage.write_json(self.root.job_error(job_id), exc.to_json())
                state = {"job_id": job_id, "status": JobStatus.REJECTED.value, "reason": str(exc),
                         "accepted_at": self.clock(), "finished_at": self.clock()}
                storage.create_exclusive(self.root.job_state(job_id), _json(state))
                self.log(f"job {job_id}: rejected\n{exc}")
            else:
                storage.write_json(self.root.job_spec(job_id), resolved)
                state = {"job_id": job_id, "name": spec.name or job_id, "status": JobStatus.RUNNING.value,
                         "accepted_at": self.clock(), "source": name}
                storage.create_exclusive(self.root.job_state(job_id), _json(state))
                self.log(f"job {job_id}: accepted ({spec.task.value}, {spec.sampling} sampling, "
                         f"{spec.limits.max_trials} trials, {spec.limits.max_concurrent_trials} at a time)")
        storage.delete(key)
        return job_id

    def _job_id_for(self, name: str, data: bytes) -> str:
        """The file's name as id; when another job already has that name, the name plus a hash of
        the content, so the same file always maps to the same job."""
        base = job_id_from_name(name)
        for candidate in (base, f"{base}-{hashlib.sha256(data).hexdigest()[:8]}"):
            try:
                existing = self.root.storage.read_bytes(self.root.job_file(candidate))
            except FileNotFoundError:
                return candidate
            if existing == data:
                return candidate
        return f"{base}-{hashlib.sha256(data + str(self.clock()).encode()).hexdigest()[:8]}"

    def _resolve_data(self, spec: JobSpec, source: str) -> dict[str, Any]:
        """Data paths made absolute (relative ones are relative to the job file) and checked."""
        resolved = {"training_data": resolve(spec.training_data, source),
                    "validation_data": resolve(spec.validation_data, source) if spec.validation_data else None}
        problems = []
        for field_name, url in resolved.items():
            if url is None:
                continue
            folder, _, file_name = url.rpartition("/")
            if not Storage(folder or "/").exists(file_name):
                problems.append(Problem(field_name, f"{url} does not exist"))
        if problems:
            raise JobSpecError(source, problems)
        return resolved

    def _check_warm_start(self, spec: JobSpec, source: str) -> None:
        problems = [Problem(f"warm_start[{i}]", f"no job {job!r} in {self.root.url}")
                    for i, job in enumerate(spec.warm_start)
                    if self.root.storage.read_json(self.root.job_state(job)) is None]
        if problems:
            raise JobSpecError(source, problems)

    # -- one job -------------------------------------------------------------------------------
    def _cache(self, job_id: str) -> _JobCache:
        """What never changes about a job: its spec, its data, its finished trials (from
        trials.json, then as they finish) and its warm-start seeds."""
        if job_id not in self._jobs:
            text = self.root.storage.read_text(self.root.job_file(job_id))
            spec = parse_job(text, self.root.storage.url(self.root.job_file(job_id)))
            data = self.root.storage.read_json(self.root.job_spec(job_id))
            cache = _JobCache(spec, data)
            cache.finished = trials.read_summary(self.root, job_id)
            cache.summarized = len(cache.finished)
            for trial, view in cache.finished.items():
                cache.sweeps[trial] = view.sweep
            if spec.warm_start:
                cache.seeds = self._seeds(job_id, spec)
            self._jobs[job_id] = cache
        return self._jobs[job_id]

    def _seeds(self, job_id: str, spec: JobSpec) -> list[Observation]:
        """The warm-start seeds, gathered once from the earlier jobs and saved (warmstart.py)."""
        key = self.root.warm_start(job_id)
        saved = self.root.storage.read_json(key)
        if saved is None:
            collected = warmstart.collect(self.root, spec)
            self.root.storage.create_exclusive(key, _json(collected))
            saved = self.root.storage.read_json(key)
            self.log(f"job {job_id}: warm start from {len(saved['seeds'])} earlier trial(s): "
                     + "; ".join(saved["notes"]))
        return warmstart.observations(saved)

    def reconcile_job(self, job_id: str) -> JobStatus | None:
        storage = self.root.storage
        state = storage.read_json(self.root.job_state(job_id))
        if state is None:
            return None  # acceptance still under way: the inbox file is still there
        status = JobStatus(state["status"])
        if status.is_terminal():
            self._jobs.pop(job_id, None)
            self.leases.forget(job_id)
            return status
        if not self.leases.acquire(job_id):
            self._note_watching(job_id)
            return status  # another controller acts on it; this one only reads
        self._watched.pop(job_id, None)
        cache = self._cache(job_id)
        job = JobView(job_id, state, self._trials(job_id, cache),
                      cancel_requested=storage.exists(self.root.cancel_request(job_id)))
        self._report_progress(job_id, cache, job)
        sampler = make_sampler(cache.spec)
        actions = reconcile.decide(cache.spec, job, self.clock(), sampler.capacity())
        for action in actions:
            if not self._may_act(job_id):
                break
            self._apply(job_id, cache, job, action, sampler)
        if self.leases.holds(job_id):
            self._save_summary(job_id, cache)
        self._report_job(job_id, cache, job)
        return job.status

    def _save_summary(self, job_id: str, cache: _JobCache) -> None:
        """trials.json, when trials finished since it was last read or written (their own files
        are final by then)."""
        if len(cache.finished) != cache.summarized:
            trials.write_summary(self.root, job_id, cache.finished)
            cache.summarized = len(cache.finished)

    def _may_act(self, job_id: str) -> bool:
        """Renew the lease when due, and say whether this controller still holds it."""
        if self.leases.acquire(job_id) and self.leases.holds(job_id):
            return True
        self.log(f"job {job_id}: lease lost to another controller; this one only watches it now")
        return False

    def _note_watching(self, job_id: str) -> None:
        holder = self.leases.holder(job_id) or {}
        owner = holder.get("owner", "?")
        if self._watched.get(job_id) != owner:
            self._watched[job_id] = owner
            self.log(f"job {job_id}: run by controller {owner}; this one only watches it")
        self._jobs.pop(job_id, None)  # whatever it cached may be stale when it takes over

    def _trials(self, job_id: str, cache: _JobCache) -> list[TrialView]:
        views = []
        for trial in self.root.trial_ids(job_id):
            if trial in cache.finished:
                views.append(cache.finished[trial])
                continue
            view = self._read_trial(job_id, cache, trial)
            if view is None:
                continue
            if view.is_terminal:
                self._settle(job_id, view)
                cache.finished[trial] = view
            views.append(view)
        return views

    def _read_trial(self, job_id: str, cache: _JobCache, trial: str) -> TrialView | None:
        view = trials.read_trial(self.root, job_id, trial, cache.sweeps.get(trial),
                                 poll=lambda launch: self.launcher(launch["launcher"]).poll(launch["handle"]))
        if view is not None:
            cache.sweeps[trial] = view.sweep
            view.cost_usd = self._cost(view.launch, self.clock())
        return view

    # -- costs ---------------------------------------------------------------------------------
    def _cost(self, launch: dict[str, Any] | None, at: float) -> float:
        """The trial's cost up to `at`: the earlier attempts', plus the current attempt's as its
        launcher prices it (its `cost`), or from the hourly price saved at launch."""
        launch = launch or {}
        if isinstance(launch.get("cost_usd"), (int, float)) or not launch.get("handle") \
                or not isinstance(launch.get("launched_at"), (int, float)):
            return recorded_cost(launch, at)
        launcher = self.launcher(launch["launcher"])
        price = getattr(launcher, "cost", None)
        elapsed = max(0.0, at - launch["launched_at"])
        current = price(launch["handle"], elapsed) if price else None
        if current is None:
            return recorded_cost(launch, at)
        return float(launch.get("spent_usd") or 0.0) + float(current)

    def _settle(self, job_id: str, view: TrialView) -> None:
        """A finished trial's final cost, written once into its launch.json (with when it ended:
        the trainer's last status update, else now)."""
        launch = view.launch
        if not launch or isinstance(launch.get("cost_usd"), (int, float)):
            view.cost_usd = recorded_cost(launch, self.clock())
            return
        now = self.clock()
        ended = (view.status or {}).get("updated_at")
        started = launch.get("launched_at")
        if not (isinstance(ended, (int, float)) and isinstance(started, (int, float)) and started <= ended <= now):
            ended = now
        cost = self._cost(launch, ended)
        view.launch = {**launch, "ended_at": ended, "cost_usd": round(cost, 6)}
        view.cost_usd = view.launch["cost_usd"]
        self.root.storage.write_json(self.root.trial_key(job_id, view.trial_id, FILES.launch), view.launch)

    # -- actions -------------------------------------------------------------------------------
    def _apply(self, job_id: str, cache: _JobCache, job: JobView, action: Any, sampler) -> None:
        if isinstance(action, CreateTrials):
            history = [Observation(t.sweep.get("subspace", 0), t.params, t.primary(cache.spec.primary_metric),
                                   t.trial_id) for t in job.trials if t.is_terminal] + cache.seeds
            pending = [Observation(t.sweep.get("subspace", 0), t.params, None, t.trial_id)
                       for t in job.trials if not t.is_terminal]
            for index, proposal in zip(action.indices, sampler.ask(action.indices, history, pending)):
                if not self._may_act(job_id):
                    return
                view = self._create_trial(job_id, cache, index, proposal.to_json())
                if view is not None:
                    job.trials.append(view)
                    self._apply(job_id, cache, job, Launch(view.trial_id, 1), sampler)
        elif isinstance(action, Launch):
            self._launch(job_id, cache, action)
        elif isinstance(action, RequestStop):
            self._request_stop(job_id, job, action)
        elif isinstance(action, FinishTrial):
            self._finish_trial(job_id, cache, job, action)
        elif isinstance(action, Publish):
            self._publish(job_id, cache, job, action.final)
        elif isinstance(action, SetJobStatus):
            self._set_status(job_id, job, action)

    def _create_trial(self, job_id: str, cache: _JobCache, index: int, sweep: dict[str, Any]) -> TrialView | None:
        spec = cache.spec
        trial = trial_id(index)
        trial_spec = TrialSpec(
            job_id=job_id, trial_id=trial, task=spec.task, primary_metric=spec.primary_metric,
            training_data=cache.data["training_data"], validation_data=cache.data.get("validation_data"),
            hyperparameters=spec.trial_hyperparameters(sweep["subspace"], sweep["params"]),
            output=self.root.trial_url(job_id, trial), seed=spec.seed * 1000 + index,
            weights_cache=spec.weights_cache, datastores=spec.datastores, compile=spec.compile,
            lenient_labels=spec.lenient_labels, sweep=sweep)
        created = self.root.storage.create_exclusive(self.root.trial_key(job_id, trial, FILES.spec),
                                                     trial_spec.to_json().encode())
        if not created:
            return None  # an earlier pass (or another controller) created it; the next pass sees it
        cache.sweeps[trial] = sweep
        self.log(f"job {job_id}: trial {trial} created: {_params_text(sweep['params'])}")
        return TrialView(trial, sweep)

    def _launch(self, job_id: str, cache: _JobCache, action: Launch) -> None:
        launcher = self.launcher(cache.spec.compute.launcher)
        key = self.root.trial_key(job_id, action.trial_id, FILES.launch)
        previous = self.root.storage.read_json(key) or {}
        if previous.get("handle") and action.attempt > previous.get("attempt", 0):
            self._save_launcher_log(job_id, action.trial_id, previous)
        # What the earlier attempts cost (a lost run is charged until now: when it died is unknown).
        spent = self._cost(previous, self.clock()) if previous.get("handle") else float(previous.get("spent_usd") or 0.0)
        record = {"launcher": launcher.name, "attempt": action.attempt, "requested_at": self.clock(), "handle": None,
                  "spent_usd": round(spent, 6)}
        self.root.storage.write_json(key, record)  # the intent first: a crash here relaunches, never loses
        threads = max(1, (os.cpu_count() or 1) // cache.spec.limits.max_concurrent_trials)
        request = LaunchRequest(job_id, action.trial_id, self.root.spec_url(job_id, action.trial_id),
                                action.attempt, threads=threads, compute=cache.spec.compute)
        record["handle"] = launcher.launch(request)
        record["launched_at"] = self.clock()
        record["hourly_price_usd"] = _hourly_price(launcher, record["handle"])
        self.root.storage.write_json(key, record)
        again = f" (attempt {action.attempt}, resuming)" if action.attempt > 1 else ""
        self.log(f"job {job_id}: trial {action.trial_id} launched on {launcher.name}{again}")

    def _request_stop(self, job_id: str, job: JobView, action: RequestStop) -> None:
        stop = {"reason": action.reason, "requested_at": self.clock()}
        self.root.storage.write_json(self.root.trial_key(job_id, action.trial_id, FILES.stop), stop)
        view = _find(job, action.trial_id)
        view.stop = stop
        if view.launched:
            self.launcher(view.launch["launcher"]).cancel(view.launch["handle"])
        self.log(f"job {job_id}: trial {action.trial_id} asked to stop: {action.reason}")

    def _finish_trial(self, job_id: str, cache: _JobCache, job: JobView, action: FinishTrial) -> None:
        view = _find(job, action.trial_id)
        if view.launched:
            self._save_launcher_log(job_id, action.trial_id, view.launch)
        status = dict(view.status or {})
        status.update(status=action.status.value, reason=action.reason, updated_at=self.clock(),
                      finished_by="controller")
        if action.error_kind is not None:
            status["error"] = {"kind": action.error_kind.value, "message": action.reason}
        self.root.storage.write_json(self.root.trial_key(job_id, action.trial_id, FILES.status), status)
        view.status = status
        self._settle(job_id, view)
        cache.finished[action.trial_id] = view
        self.log(f"job {job_id}: trial {action.trial_id} {action.status.value}: {action.reason}")

    def _save_launcher_log(self, job_id: str, trial: str, launch: dict[str, Any]) -> None:
        output = self.launcher(launch["launcher"]).logs(launch["handle"])
        if output:
            name = f"{FILES.logs_dir}/launcher-attempt-{launch.get('attempt', 1)}.log"
            self.root.storage.write_bytes(self.root.trial_key(job_id, trial, name), output)

    def _publish(self, job_id: str, cache: _JobCache, job: JobView, final: bool) -> None:
        spec = cache.spec
        storage = self.root.storage
        self._save_summary(job_id, cache)
        board = leaderboard.build(spec.primary_metric, spec.direction, job.trials)
        if final:
            best = leaderboard.best_trial(board)
            if best is not None:
                storage.copy_tree(self.root.trial_key(job_id, best["trial_id"], FILES.model_dir),
                                  self.root.best(job_id))
                storage.write_json(self.root.best(job_id, "trial.json"),
                                   {**best, "model_url": storage.url(self.root.best(job_id))})
        storage.write_text(self.root.leaderboard(job_id, "csv"), leaderboard.to_csv(board))
        storage.write_text(self.root.leaderboard(job_id, "json"), leaderboard.to_json(board))
        job.state["published_trials"] = sum(t.is_terminal for t in job.trials)
        job.state["cost_usd"] = round(job.cost_usd, 6)
        storage.write_json(self.root.job_state(job_id), job.state)

    def _set_status(self, job_id: str, job: JobView, action: SetJobStatus) -> None:
        state = job.state
        state.update(status=action.status.value, reason=action.reason, updated_at=self.clock())
        if action.status.is_terminal():
            state["finished_at"] = self.clock()
            state["cost_usd"] = round(job.cost_usd, 6)
            if action.status is JobStatus.FAILED:
                self.root.storage.write_json(self.root.job_error(job_id),
                                             {"error": "job failed", "message": action.reason})
        self.root.storage.write_json(self.root.job_state(job_id), state)
        self.log(f"job {job_id}: {action.status.value}" + (f" ({action.reason})" if action.reason else ""))

    # -- people --------------------------------------------------------------------------------
    def _report_progress(self, job_id: str, cache: _JobCache, job: JobView) -> None:
        metric = cache.spec.primary_metric
        for trial in job.trials:
            status = trial.status or {}
            key = (status.get("status"), status.get("epoch"))
            if status and cache.progress.get(trial.trial_id) != key:
                cache.progress[trial.trial_id] = key
                last = (status.get("history") or [{}])[-1]
                value = last.get(metric)
                shown = f", {metric}={value:.4f}" if isinstance(value, (int, float)) else ""
                total = status.get("epochs_total")
                self.log(f"job {job_id}: trial {trial.trial_id} {status.get('status')}: "
                         f"epoch {status.get('epoch', 0)}{f'/{total}' if total else ''}{shown}")


    def _report_job(self, job_id: str, cache: _JobCache, job: JobView) -> None:
        """One line per job whenever its trials' counts or best change, with its cost and time so
        far: the live view of `automl-images controller`."""
        line = progress_line(cache.spec, job)
        key = line.rsplit(" | $", 1)[0]  # the cost grows with every pass: not a change by itself
        if key != cache.headline:
            cache.headline = key
            elapsed = _duration(self.clock() - job.state.get("accepted_at", self.clock()))
            self.log(f"job {job_id}: {line} | {elapsed}")


def progress_line(spec: JobSpec, job: JobView) -> str:
    """`6/10 trials: 2 running, 3 completed, 1 stopped | best accuracy=0.9312 (t0002) | $1.20`"""
    counts: dict[str, int] = {}
    for trial in job.trials:
        counts[trial.trial_status.value] = counts.get(trial.trial_status.value, 0) + 1
    order = ("running", "pending", "completed", "stopped", "failed")
    parts = ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))
    board = leaderboard.build(spec.primary_metric, spec.direction, job.trials)
    best = leaderboard.best_trial(board)
    best_text = f"best {spec.primary_metric}={best['metrics'][spec.primary_metric]:.4f} ({best['trial_id']})" \
        if best else "no result yet"
    budget = f" of ${spec.limits.max_cost_usd:g}" if spec.limits.max_cost_usd is not None else ""
    return (f"{job.status.value}, {len(job.trials)}/{spec.limits.max_trials} trials"
            + (f": {parts}" if parts else "") + f" | {best_text} | ${job.cost_usd:.2f}{budget}")


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _hourly_price(launcher: Launcher, handle: dict[str, Any]) -> float | None:
    """USD per hour of the run: the handle's own price, else what the launcher says an hour costs."""
    if isinstance(handle, dict) and isinstance(handle.get("hourly_price_usd"), (int, float)):
        return float(handle["hourly_price_usd"])
    price = getattr(launcher, "cost", None)
    hourly = price(handle, 3600.0) if price else None
    return None if hourly is None else float(hourly)


def _find(job: JobView, trial: str) -> TrialView:
    return next(t for t in job.trials if t.trial_id == trial)


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobSpecError(source, [Problem("", f"not UTF-8 text (byte {exc.start})")]) from None


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "defaults"
