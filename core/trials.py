"""Reading a job's trials: the one reader of a trial folder, and `trials.json`, the summary of
every finished trial, that the controller, `automl-images status`, warm start and the report use.

A trial's view is its `spec.json` sweep, `launch.json`, `status.json` and `stop.json`
(`read_trial`). A finished trial never changes again, so what a reader needs of it (its sweep, its
final status without the traceback and skipped-image list, its launch record with the final cost) is
copied once into `jobs/<job_id>/trials.json`:

    {"version": 1, "trials": {"t0000": {"sweep": {...}, "status": {...}, "launch": {...}, "stop": {...}}}}

so a pass, a restarted controller or `status` reads one object instead of four per trial: a pass
over a job with 1,000 finished trials makes a handful of requests, not thousands
(bench/reconcile_requests.py). The summary is a cache of what the trial folders hold, written by
the lease holder after the trials' own files: losing it, or a crash before it is rewritten, only
means the trials it lacks are read from their folders again, and added.
"""
from __future__ import annotations

from typing import Any, Callable

from .layout import FILES, Root
from .records import RunState, TrialView, recorded_cost

VERSION = 1
# Status fields too big or too detailed to copy: the trial folder keeps them.
_LEFT_OUT = ("skipped_images",)


def read_trial(root: Root, job_id: str, trial: str, sweep: dict[str, Any] | None = None, *, now: float,
               poll: Callable[[dict[str, Any]], RunState] | None = None) -> TrialView | None:
    """One trial as its folder holds it; None when its spec is not written yet. `sweep`: the
    trial's sweep when the caller already has it (it never changes). `poll`: asks the launcher
    about a launched run; called after reading launch.json and before status.json, so that a trial
    that finishes in between shows its verdict instead of looking like a run that ended without
    one. `now`: the time a running attempt's cost is counted to."""
    if sweep is None:
        spec = root.read_trial(job_id, trial, FILES.spec)
        if spec is None:
            return None
        sweep = spec.get("sweep") or {}
    view = TrialView(trial, sweep, launch=root.read_trial(job_id, trial, FILES.launch))
    if poll is not None and view.launched:
        view.run_state = poll(view.launch)
    view.status = root.read_trial(job_id, trial, FILES.status)
    view.stop = root.read_trial(job_id, trial, FILES.stop)
    view.cost_usd = recorded_cost(view.launch, now)
    return view


def read_all(root: Root, job_id: str, now: float) -> list[TrialView]:
    """Every trial of the job as far as a reader can tell (no launcher is asked): the finished ones
    from the summary, the others from their folders."""
    views = read_summary(root, job_id)
    for trial in root.trial_ids(job_id):
        if trial not in views:
            view = read_trial(root, job_id, trial, now=now)
            if view is not None:
                views[trial] = view
    return [views[t] for t in sorted(views)]


def read_finished(root: Root, job_id: str) -> list[TrialView]:
    """The job's finished trials."""
    return [view for view in read_all(root, job_id, 0.0) if view.is_terminal]


def summary_entry(view: TrialView) -> dict[str, Any]:
    status = {k: v for k, v in (view.status or {}).items() if k not in _LEFT_OUT}
    if isinstance(status.get("error"), dict):
        status["error"] = {k: v for k, v in status["error"].items() if k != "traceback"}
    return {"sweep": view.sweep, "status": status, "launch": view.launch, "stop": view.stop}


def _summary_view(trial_id: str, item: dict[str, Any]) -> TrialView:
    launch = item.get("launch")
    return TrialView(trial_id, item.get("sweep") or {}, launch=launch, status=item.get("status"),
                     stop=item.get("stop"), cost_usd=recorded_cost(launch, 0.0))


def read_summary(root: Root, job_id: str) -> dict[str, TrialView]:
    """The finished trials the summary holds (none when it is absent or of another version)."""
    data = root.storage.read_json(root.trials_summary(job_id)) or {}
    if data.get("version") != VERSION:
        return {}
    views = {trial: _summary_view(trial, item) for trial, item in (data.get("trials") or {}).items()}
    return {trial: view for trial, view in views.items() if view.is_terminal}


def write_summary(root: Root, job_id: str, finished: dict[str, TrialView]) -> None:
    trials = {trial: summary_entry(v) for trial, v in sorted(finished.items())}
    root.storage.write_json(root.trials_summary(job_id), {"version": VERSION, "trials": trials})
