"""The controller loop: accept job files from the inbox, then reconcile every job, again and again.

    automl-images controller --root ./bucket            # until interrupted
    automl-images controller --root s3://b/automl --once  # one pass (cron, a cloud function)

Nothing lives only in this process. Each pass rebuilds every job from the bucket, asks
`reconcile.decide` what to do, and applies the actions, each written before it is acted on and safe
to repeat, so the process may be killed at any moment and started again. In-memory caches hold
only what cannot change any more (parsed job files, trial sweeps, finished trials).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from automl_images.trainer.config import TrialSpec
from automl_images.trainer.report import FILES
from automl_images.trainer.storage import Storage, resolve

from . import leaderboard, reconcile
from .launch import LaunchRequest, get_launcher
from .launch.base import Launcher
from .reconcile import CreateTrials, FinishTrial, Launch, Publish, RequestStop, SetJobStatus
from .search import Observation, make_sampler
from .spec import JobSpec, JobSpecError, Problem, parse_job
from .state import JobStatus, JobView, TrialView
from .store import Root, job_id_from_name, trial_id

Log = Callable[[str], None]


@dataclass
class _JobCache:
    spec: JobSpec
    data: dict[str, Any]                      # spec.json: resolved data URLs
    finished: dict[str, TrialView] = field(default_factory=dict)
    sweeps: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)  # last progress printed, per trial


class Controller:
    def __init__(self, root: Root | str, log: Log | None = None, clock: Callable[[], float] = time.time,
                 launchers: dict[str, Launcher] | None = None):
        self.root = root if isinstance(root, Root) else Root(root)
        self.log = log or (lambda message: None)
        self.clock = clock
        self._launchers: dict[str, Launcher] = dict(launchers or {})
        self._jobs: dict[str, _JobCache] = {}

    # -- the loop ------------------------------------------------------------------------------
    def run(self, once: bool = False, interval_s: float = 2.0, until_done: bool = False) -> None:
        """Reconcile forever (or once; or until no job is left running)."""
        while True:
            active = self.reconcile_once()
            if once or (until_done and not active):
                return
            time.sleep(interval_s)

    def reconcile_once(self) -> int:
        """One pass over the root. Returns how many jobs are still running."""
        for name in self.root.inbox_files():
            self.accept(name)
        active = 0
        for job_id in self.root.job_ids():
            status = self.reconcile_job(job_id)
            active += status is not None and not status.is_terminal()
        return active

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

    # -- one job -------------------------------------------------------------------------------
    def _cache(self, job_id: str) -> _JobCache:
        if job_id not in self._jobs:
            text = self.root.storage.read_text(self.root.job_file(job_id))
            spec = parse_job(text, self.root.storage.url(self.root.job_file(job_id)))
            data = self.root.storage.read_json(self.root.job_spec(job_id))
            self._jobs[job_id] = _JobCache(spec, data)
        return self._jobs[job_id]

    def reconcile_job(self, job_id: str) -> JobStatus | None:
        storage = self.root.storage
        state = storage.read_json(self.root.job_state(job_id))
        if state is None:
            return None  # acceptance still under way: the inbox file is still there
        status = JobStatus(state["status"])
        if status.is_terminal():
            self._jobs.pop(job_id, None)
            return status
        cache = self._cache(job_id)
        job = JobView(job_id, state, self._trials(job_id, cache),
                      cancel_requested=storage.exists(self.root.cancel_request(job_id)))
        self._report_progress(job_id, cache, job)
        sampler = make_sampler(cache.spec)
        actions = reconcile.decide(cache.spec, job, self.clock(), sampler.capacity())
        for action in actions:
            self._apply(job_id, cache, job, action, sampler)
        return job.status

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
                cache.finished[trial] = view
            views.append(view)
        return views

    def _read_trial(self, job_id: str, cache: _JobCache, trial: str) -> TrialView | None:
        if trial not in cache.sweeps:
            spec = self.root.read_trial(job_id, trial, FILES.spec)
            if spec is None:
                return None
            cache.sweeps[trial] = spec.get("sweep") or {}
        view = TrialView(trial, cache.sweeps[trial])
        view.launch = self.root.read_trial(job_id, trial, FILES.launch)
        if view.launched:
            # Poll before reading the status: a trial that finishes in between then shows its
            # verdict, instead of looking like a run that ended without one.
            view.run_state = self.launcher(view.launch["launcher"]).poll(view.launch["handle"])
        view.status = self.root.read_trial(job_id, trial, FILES.status)
        view.stop = self.root.read_trial(job_id, trial, FILES.stop)
        return view

    # -- actions -------------------------------------------------------------------------------
    def _apply(self, job_id: str, cache: _JobCache, job: JobView, action: Any, sampler) -> None:
        if isinstance(action, CreateTrials):
            history = [Observation(t.sweep.get("subspace", 0), t.params, t.primary(cache.spec.primary_metric))
                       for t in job.trials if t.is_terminal]
            for index, proposal in zip(action.indices, sampler.ask(action.indices, history)):
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
            weights_cache=spec.weights_cache, sweep=sweep)
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
        record = {"launcher": launcher.name, "attempt": action.attempt, "requested_at": self.clock(), "handle": None}
        self.root.storage.write_json(key, record)  # the intent first: a crash here relaunches, never loses
        threads = max(1, (os.cpu_count() or 1) // cache.spec.limits.max_concurrent_trials)
        request = LaunchRequest(job_id, action.trial_id, self.root.spec_url(job_id, action.trial_id),
                                action.attempt, threads=threads)
        record["handle"] = launcher.launch(request)
        record["launched_at"] = self.clock()
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
        cache.finished[action.trial_id] = view
        self.log(f"job {job_id}: trial {action.trial_id} {action.status.value}: {action.reason}")

    def _save_launcher_log(self, job_id: str, trial: str, launch: dict[str, Any]) -> None:
        output = self.launcher(launch["launcher"]).logs(launch["handle"])
        if output:
            name = f"{FILES.logs_dir}/launcher-attempt-{launch.get('attempt', 1)}.log"
            self.root.storage.write_bytes(self.root.trial_key(job_id, trial, name), output)

    def _publish(self, job_id: str, cache: _JobCache, job: JobView, final: bool) -> None:
        spec = cache.spec
        board = leaderboard.build(spec.primary_metric, spec.direction, job.trials)
        storage = self.root.storage
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
        storage.write_json(self.root.job_state(job_id), job.state)

    def _set_status(self, job_id: str, job: JobView, action: SetJobStatus) -> None:
        state = job.state
        state.update(status=action.status.value, reason=action.reason, updated_at=self.clock())
        if action.status.is_terminal():
            state["finished_at"] = self.clock()
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
