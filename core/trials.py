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
means the trials it lacks are read from their folders again, and added; a torn one is read as
absent, and rewritten.

A trial file that is torn or invalid (cut short by a tool that does not write atomically, a
damaged disk) stands rebuilt, as the protocol allows, and is named in the view's `damaged`:
- status.json: the evaluations its metrics/ files hold, the trial running when launched (else
  pending); a verdict it held is lost, so a run that has ended counts as one that ended without
  one, and is launched again (resuming from its checkpoint);
- launch.json: absent, so the trial is launched again, and the launcher adopts a run still going;
- stop.json: a stop request whose reason is lost;
- spec.json: the trial cannot run (its sweep is lost): failed, unless it has a verdict already or
  a run of it is still going (it read the spec whole; it ends as it will).
"""
from __future__ import annotations

from typing import Any, Callable

from .layout import FILES, Root
from .records import ErrorKind, RunState, TrialStatus, TrialView, recorded_cost
from .storage import InvalidJSON, join

VERSION = 1
# Status fields too big or too detailed to copy: the trial folder keeps them.
_LEFT_OUT = ("skipped_images",)


def read_trial(root: Root, job_id: str, trial: str, sweep: dict[str, Any] | None = None, *, now: float,
               poll: Callable[[dict[str, Any]], RunState] | None = None,
               rewrite_stop: Callable[[TrialView], None] | None = None) -> TrialView | None:
    """One trial as its folder holds it; None when its spec is not written yet. `sweep`: the
    trial's sweep when the caller already has it (it never changes). `poll`: asks the launcher
    about a launched run; called after reading launch.json and before status.json, so that a trial
    that finishes in between shows its verdict instead of looking like a run that ended without
    one. `now`: the time a running attempt's cost is counted to. `rewrite_stop`: writes back a
    torn stop.json as rebuilt, before the launcher is polled (the controller, its writer, so
    that the trainer reads it whole)."""
    damaged: dict[str, str] = {}
    if sweep is None:
        spec = _read(root, job_id, trial, FILES.spec, _is_spec, damaged)
        if spec is None and not damaged:
            return None
        sweep = (spec or {}).get("sweep") or {}
    view = TrialView(trial, sweep, launch=_read(root, job_id, trial, FILES.launch, _is_launch, damaged),
                     damaged=damaged)
    view.stop = _read(root, job_id, trial, FILES.stop, lambda v: isinstance(v, dict), damaged)
    if FILES.stop in damaged:
        view.stop = {"reason": "stop requested (its reason is lost)", "rebuilt": damaged[FILES.stop]}
        if rewrite_stop is not None:
            rewrite_stop(view)
    if poll is not None and view.launched:
        view.run_state = poll(view.launch)
    view.status = _read(root, job_id, trial, FILES.status, _is_status, damaged)
    if FILES.status in damaged:
        view.status = _status_from_metrics(root, job_id, trial, view.launched, damaged[FILES.status])
    going = view.run_state is not None and not view.run_state.is_terminal()
    if FILES.spec in damaged and not view.is_terminal and not going:  # a run going read it whole: left to end
        view.status = {**(view.status or {}), "status": TrialStatus.FAILED.value, "finished_by": "controller",
                       "rebuilt": damaged[FILES.spec],
                       "error": {"kind": ErrorKind.INTERNAL.value, "message": f"{damaged[FILES.spec]}: "
                                                                              "the trial cannot run"}}
    view.cost_usd = recorded_cost(view.launch, now)
    return view


def _read(root: Root, job_id: str, trial: str, name: str, valid: Callable[[Any], bool],
          damaged: dict[str, str]) -> dict[str, Any] | None:
    """A trial file's object; None when absent, or when torn or invalid (then noted in `damaged`)."""
    try:
        value = root.read_trial(job_id, trial, name)
    except InvalidJSON as exc:
        damaged[name] = str(exc)
        return None
    if value is not None and not valid(value):
        damaged[name] = f"{root.trial_url(job_id, trial, name)}: not a valid {name}"
        return None
    return value


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("sweep", {}), dict)


def _is_launch(value: Any) -> bool:
    return (isinstance(value, dict) and _is_count(value.get("attempt", 0))
            and (value.get("handle") is None or isinstance(value.get("launcher"), str)))


def _is_status(value: Any) -> bool:
    history = value.get("history", []) if isinstance(value, dict) else None
    return (isinstance(value, dict) and value.get("status") in TrialStatus._value2member_map_
            and isinstance(history, list) and all(isinstance(item, dict) for item in history))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _status_from_metrics(root: Root, job_id: str, trial: str, launched: bool, why: str) -> dict[str, Any]:
    """The status the trainer's metrics files imply: every evaluation's numbers (the files that
    are themselves torn left out), running when launched, else pending."""
    folder = root.trial_key(job_id, trial, FILES.metrics_dir)
    history: list[dict[str, Any]] = []
    for name in root.storage.list(folder):
        try:
            metrics = root.storage.read_json(join(folder, name))
        except InvalidJSON:
            continue
        if isinstance(metrics, dict):
            numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            history.append({"epoch": len(history) + 1, **numbers})
    status = TrialStatus.RUNNING if launched else TrialStatus.PENDING
    return {"status": status.value, "epoch": len(history), "history": history,
            "rebuilt": f"{why}; rebuilt from {FILES.metrics_dir}/"}


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
    """The finished trials the summary holds (none when it is absent, torn, or of another
    version; an entry that is not a finished trial's is left out: read from its folder)."""
    try:
        data = root.storage.read_json(root.trials_summary(job_id))
    except InvalidJSON:
        return {}
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("trials"), dict):
        return {}
    return {trial: _summary_view(trial, item) for trial, item in data["trials"].items()
            if isinstance(item, dict) and _is_status(item.get("status"))
            and TrialStatus(item["status"]["status"]).is_terminal()
            and isinstance(item.get("sweep") or {}, dict) and _is_launch(item.get("launch") or {})}


def write_summary(root: Root, job_id: str, finished: dict[str, TrialView]) -> None:
    trials = {trial: summary_entry(v) for trial, v in sorted(finished.items())}
    root.storage.write_json(root.trials_summary(job_id), {"version": VERSION, "trials": trials})
