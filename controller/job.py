"""One job's controller: what it keeps of the job between passes, and one pass over it.

It keeps only what cannot change any more: the spec the job was accepted with (spec.json), its
finished trials (from trials.json, then as they finish), the trials' sweeps and the warm-start
seeds. A pass rebuilds the job from the bucket, asks `reconcile.decide` what to do and applies
the actions in order, through `_APPLY` (action type -> method). Each action is written before it
is acted on and is safe to repeat, so a pass cut short anywhere is finished by the next one, by
this controller or another.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from automl_images.core import trials
from automl_images.core.layout import FILES, Root, trial_id
from automl_images.core.records import JobStatus, JobView, TrialView
from automl_images.core.seeds import trial_seed
from automl_images.core.trial_spec import TrialSpec

from . import accepted, leaderboard, mlflow_sync, report, warmstart
from .costs import Costs, hourly_price
from .job_state import JobStates
from .launch import LaunchRequest
from .launch.base import Launcher
from .lease import Leases
from .progress import Progress
from .reconcile import CreateTrials, FinishTrial, Launch, Publish, RequestStop, SetJobStatus, decide
from .search import Observation, make_sampler
from .spec import JobSpec

Log = Callable[[str], None]


@dataclass(frozen=True)
class Context:
    """What the loop shares with every job's controller."""
    root: Root
    clock: Callable[[], float]
    log: Log
    launcher: Callable[[str], Launcher]  # by name (a launch record's `launcher`)
    leases: Leases
    states: JobStates


class JobController:
    def __init__(self, context: Context, job_id: str, spec: JobSpec, finished: dict[str, TrialView],
                 seeds: list[Observation]):
        self.context = context
        self.root = context.root
        self.job_id = job_id
        self.spec = spec
        self.finished = finished                    # trial id -> view: final, never read again
        self.seeds = seeds                          # warm start
        self.sampler = make_sampler(spec)
        self.costs = Costs(context.launcher, context.clock)
        self.progress = Progress(job_id, spec, context.log, context.clock)
        self.report = report.Refresher(context.root, job_id, context.log)
        self._sweeps = {trial: view.sweep for trial, view in finished.items()}
        self._summarized = len(finished)            # finished trials in trials.json, as last read or written
        self._told: set[tuple[str, str]] = set()     # the torn trial files logged (trial, why): once each

    @classmethod
    def load(cls, context: Context, job_id: str) -> "JobController":
        """From the bucket: the saved spec (JobSpecError when another version saved it), the
        finished trials of trials.json, and the warm-start seeds (gathered and saved on first use)."""
        spec = accepted.upgrade(context.root, job_id, context.log)
        seeds = warmstart.seeds(context.root, job_id, spec, context.log) if spec.warm_start else []
        return cls(context, job_id, spec, trials.read_summary(context.root, job_id), seeds)

    def reconcile(self, state: dict[str, Any]) -> JobStatus:
        """One pass, by the holder of the job's lease; `state` is the job's state.json."""
        job = JobView(self.job_id, state, self._trials(),
                      cancel_requested=self.root.storage.exists(self.root.cancel_request(self.job_id)))
        self.progress.report_trials(job)
        for action in decide(self.spec, job, self.context.clock(), self.sampler.capacity()):
            if not self._may_act():
                break
            self._APPLY[type(action)](self, job, action)
        if self.context.leases.holds(self.job_id):
            self._save_summary()
        self.progress.report_job(job)
        return job.status

    def _may_act(self) -> bool:
        """Renew the lease when due, and say whether this controller still holds it."""
        leases = self.context.leases
        if leases.acquire(self.job_id) and leases.holds(self.job_id):
            return True
        self.context.log(f"job {self.job_id}: lease lost to another controller; this one only watches it now")
        return False

    # -- the job as the bucket holds it ---------------------------------------------------------
    def _trials(self) -> list[TrialView]:
        views = []
        for trial in self.root.trial_ids(self.job_id):
            view = self.finished.get(trial) or self._read_trial(trial)
            if view is None:
                continue
            if view.damaged:
                self._tell_damaged(view)
            if view.is_terminal and trial not in self.finished:
                self._settle(view)
                self.finished[trial] = view
            views.append(view)
        return views

    def _tell_damaged(self, view: TrialView) -> None:
        """Say, once, which of the trial's files were torn (trials.read_trial rebuilds them). The
        controller writes back those it writes: stop.json at once (`_rewrite_stop`), launch.json
        when it launches the trial again; and status.json only then too, since until the run has
        ended its trainer may still write it."""
        for why in view.damaged.values():
            if (view.trial_id, why) not in self._told:
                self._told.add((view.trial_id, why))
                self.context.log(f"job {self.job_id}: trial {view.trial_id}: {why}; read as rebuilt")
        if FILES.spec in view.damaged and (view.status or {}).get("rebuilt") == view.damaged[FILES.spec]:
            # failed for its spec (no run of it is going): the verdict in its folder too
            self.root.storage.write_json(self.root.trial_key(self.job_id, view.trial_id, FILES.status), view.status)

    def _rewrite_stop(self, view: TrialView) -> None:
        self.root.storage.write_json(self.root.trial_key(self.job_id, view.trial_id, FILES.stop), view.stop)

    def _read_trial(self, trial: str) -> TrialView | None:
        launcher, now = self.context.launcher, self.context.clock()
        view = trials.read_trial(self.root, self.job_id, trial, self._sweeps.get(trial), now=now,
                                 poll=lambda launch: launcher(launch["launcher"]).poll(launch["handle"]),
                                 rewrite_stop=self._rewrite_stop)
        if view is not None:
            self._sweeps[trial] = view.sweep
            view.cost_usd = self.costs.until(view.launch, now)  # as the launcher prices a running attempt
        return view

    def _settle(self, view: TrialView) -> None:
        """A finished trial's final cost, written once into its launch.json, and what its last run
        printed, kept in its folder (logs/launcher-attempt-N.log)."""
        if view.launched:
            self._save_launcher_log(view.trial_id, view.launch)
        if self.costs.settle(view):
            self.root.storage.write_json(self.root.trial_key(self.job_id, view.trial_id, FILES.launch), view.launch)

    def _save_summary(self, always: bool = False) -> None:
        """trials.json, when trials finished since it was last read or written (their own files
        are final by then), or `always` (the job's end: a summary torn since is written whole)."""
        if always or len(self.finished) != self._summarized:
            trials.write_summary(self.root, self.job_id, self.finished)
            self._summarized = len(self.finished)

    # -- actions ---------------------------------------------------------------------------------
    def _create_trials(self, job: JobView, action: CreateTrials) -> None:
        """Each trial's spec.json, a conditional create: a trial that exists already (an earlier
        pass, another controller) keeps the proposal it was created with."""
        metric = self.spec.primary_metric
        history = [Observation(t.sweep.get("subspace", 0), t.params, t.primary(metric), t.trial_id)
                   for t in job.trials if t.is_terminal] + self.seeds
        pending = [Observation(t.sweep.get("subspace", 0), t.params, None, t.trial_id)
                   for t in job.trials if not t.is_terminal]
        for index, proposal in zip(action.indices, self.sampler.ask(action.indices, history, pending)):
            if not self._may_act():
                return
            sweep, trial = proposal.to_json(), trial_id(index)
            key = self.root.trial_key(self.job_id, trial, FILES.spec)
            if self.root.storage.create_exclusive(key, self._trial_spec(index, sweep).to_json().encode()):
                self._sweeps[trial] = sweep
                job.trials.append(TrialView(trial, sweep))
                shown = leaderboard.shown_params(self.spec.search_space, sweep)
                self.context.log(f"job {self.job_id}: trial {trial} created: {leaderboard.params_text(shown)}")

    def _trial_spec(self, index: int, sweep: dict[str, Any]) -> TrialSpec:
        spec, trial = self.spec, trial_id(index)
        return TrialSpec(
            job_id=self.job_id, trial_id=trial, task=spec.task, primary_metric=spec.primary_metric,
            training_data=spec.training_data, validation_data=spec.validation_data,
            hyperparameters=spec.trial_hyperparameters(sweep["subspace"], sweep["params"]),
            output=self.root.trial_url(self.job_id, trial), seed=trial_seed(spec.seed, index),
            weights_cache=spec.weights_cache, datastores=spec.datastores, compile=spec.compile,
            lenient_labels=spec.lenient_labels, keep_checkpoints=spec.keep_checkpoints,
            prepare_images=spec.prepared_images != "off",
            prepared_copy=self.root.storage.url(self.root.prepared_images(self.job_id))
            if spec.prepared_images == "bucket" else None,
            allow_private_image_urls=spec.allow_private_image_urls, split=self._split_url(), sweep=sweep)

    def _split_url(self) -> str | None:
        """The job's split file (written at acceptance when it has no validation data); None for a
        job accepted before splits were saved, whose trials then split by their own seed."""
        key = self.root.job_split(self.job_id)
        if self.spec.validation_data is None and self.root.storage.exists(key):
            return self.root.storage.url(key)
        return None

    def _launch(self, job: JobView, action: Launch) -> None:
        """The intent first, then the launch, then its handle: a crash in between launches again,
        and the launcher adopts the run that is already there instead of starting a second one."""
        view = next((t for t in job.trials if t.trial_id == action.trial_id), None)
        if view is None:
            return  # not created by this pass (another controller did, while leases overlapped): its own
        if FILES.status in view.damaged:  # the trainer reads it when it starts: whole, as rebuilt
            self.root.storage.write_json(self.root.trial_key(self.job_id, action.trial_id, FILES.status), view.status)
        launcher = self.context.launcher(self.spec.compute.launcher)
        key = self.root.trial_key(self.job_id, action.trial_id, FILES.launch)
        previous = view.launch or {}
        if previous.get("handle") and action.attempt > previous.get("attempt", 0):
            self._save_launcher_log(action.trial_id, previous)
        # What the earlier attempts cost (a lost run is charged until now: when it died is unknown).
        now = self.context.clock()
        spent = self.costs.until(previous, now) if previous.get("handle") else float(previous.get("spent_usd") or 0.0)
        record = {"launcher": launcher.name, "attempt": action.attempt, "requested_at": now, "handle": None,
                  "spent_usd": round(spent, 6)}
        self.root.storage.write_json(key, record)
        threads = max(1, (os.cpu_count() or 1) // self.spec.limits.max_concurrent_trials)
        request = LaunchRequest(self.job_id, action.trial_id, self.root.spec_url(self.job_id, action.trial_id),
                                action.attempt, threads=threads, compute=self.spec.compute)
        record["handle"] = launcher.launch(request)
        record["launched_at"] = self.context.clock()
        record["hourly_price_usd"] = hourly_price(launcher, record["handle"])
        self.root.storage.write_json(key, record)
        again = f" (attempt {action.attempt}, resuming)" if action.attempt > 1 else ""
        self.context.log(f"job {self.job_id}: trial {action.trial_id} launched on {launcher.name}{again}")

    def _request_stop(self, job: JobView, action: RequestStop) -> None:
        """stop.json first (the trainer honours it at its next evaluation), then the launcher's cancel."""
        stop = {"reason": action.reason, "requested_at": self.context.clock()}
        self.root.storage.write_json(self.root.trial_key(self.job_id, action.trial_id, FILES.stop), stop)
        view = _find(job, action.trial_id)
        view.stop = stop
        if view.launched:
            self.context.launcher(view.launch["launcher"]).cancel(view.launch["handle"])
        self.context.log(f"job {self.job_id}: trial {action.trial_id} asked to stop: {action.reason}")

    def _finish_trial(self, job: JobView, action: FinishTrial) -> None:
        """The controller's verdict in the trial's status.json, for a run that ended without the trainer's."""
        view = _find(job, action.trial_id)
        status = dict(view.status or {})
        status.update(status=action.status.value, reason=action.reason, updated_at=self.context.clock(),
                      finished_by="controller")
        if action.error_kind is not None:
            status["error"] = {"kind": action.error_kind.value, "message": action.reason}
        self.root.storage.write_json(self.root.trial_key(self.job_id, action.trial_id, FILES.status), status)
        view.status = status
        self._settle(view)
        self.finished[action.trial_id] = view
        self.context.log(f"job {self.job_id}: trial {action.trial_id} {action.status.value}: {action.reason}")

    def _save_launcher_log(self, trial: str, launch: dict[str, Any]) -> None:
        output = self.context.launcher(launch["launcher"]).logs(launch["handle"])
        if output:
            key = self.root.trial_key(self.job_id, trial, FILES.launcher_log(launch.get("attempt", 1)))
            self.root.storage.write_bytes(key, output)

    def _publish(self, job: JobView, action: Publish) -> None:
        """trials.json, the leaderboard and, when final, the best model: all before the state that
        counts them, so a job that says it is completed has its best model."""
        storage = self.root.storage
        self._save_summary(always=action.final)
        board = leaderboard.build(self.spec.primary_metric, job.trials, self.spec.search_space)
        best = leaderboard.best_trial(board) if action.final else None
        if best is not None:
            storage.copy_tree(self.root.trial_key(self.job_id, best["trial_id"], FILES.model_dir),
                              self.root.best(self.job_id))
            storage.write_json(self.root.best_trial(self.job_id),
                               {**best, "model_url": storage.url(self.root.best(self.job_id))})
        storage.write_text(self.root.leaderboard(self.job_id, "csv"), leaderboard.to_csv(board))
        storage.write_text(self.root.leaderboard(self.job_id, "json"), leaderboard.to_json(board))
        # Publish comes only when the set of finished trials changed, and at the end: so does the report
        # (at most once a minute until the end).
        self.report(job, self.spec, final=action.final)
        mlflow_sync.sync(self.root, self.job_id, self.spec, job.trials, action.final, self.context.log)
        self.context.states.published(self.job_id, job.state, sum(t.is_terminal for t in job.trials), job.cost_usd)

    def _set_status(self, job: JobView, action: SetJobStatus) -> None:
        self.context.states.transition(self.job_id, job.state, action.status, action.reason, job.cost_usd)

    _APPLY: dict[type, Callable[["JobController", JobView, Any], None]] = {
        CreateTrials: _create_trials, Launch: _launch, RequestStop: _request_stop,
        FinishTrial: _finish_trial, Publish: _publish, SetJobStatus: _set_status,
    }


def _find(job: JobView, trial: str) -> TrialView:
    return next(t for t in job.trials if t.trial_id == trial)
