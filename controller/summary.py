"""`jobs/<job_id>/trials.json`: every finished trial of a job in one object.

A finished trial never changes again, so what the controller needs of it (its sweep, its final
status without the traceback and skipped-image list, its launch record with the final cost) is
copied here once, and a pass, a restarted controller or `automl-images status` reads one object
instead of four per trial: a pass over a job with 1,000 finished trials makes a handful of
requests, not thousands (bench/reconcile_requests.py).

It is a cache of what the trial folders hold, written by the lease holder after the trials' own
files: losing it, or a crash before it is rewritten, only means the trials it lacks are read from
their folders on the next pass, and added.

    {"version": 1, "trials": {"t0000": {"sweep": {...}, "status": {...}, "launch": {...}, "stop": {...}}}}
"""
from __future__ import annotations

from typing import Any

from .state import TrialView, recorded_cost
from .store import Root

VERSION = 1
# Status fields too big or too detailed to copy: the trial folder keeps them.
_LEFT_OUT = ("skipped_images",)


def summary_key(root: Root, job_id: str) -> str:
    return root.job_key(job_id, "trials.json")


def entry(view: TrialView) -> dict[str, Any]:
    status = {k: v for k, v in (view.status or {}).items() if k not in _LEFT_OUT}
    if isinstance(status.get("error"), dict):
        status["error"] = {k: v for k, v in status["error"].items() if k != "traceback"}
    return {"sweep": view.sweep, "status": status, "launch": view.launch, "stop": view.stop}


def view(trial_id: str, item: dict[str, Any]) -> TrialView:
    launch = item.get("launch")
    return TrialView(trial_id, item.get("sweep") or {}, launch=launch, status=item.get("status"),
                     stop=item.get("stop"), cost_usd=recorded_cost(launch, 0.0))


def read(root: Root, job_id: str) -> dict[str, TrialView]:
    """The finished trials the summary holds (none when it is absent or of another version)."""
    data = root.storage.read_json(summary_key(root, job_id)) or {}
    if data.get("version") != VERSION:
        return {}
    return {trial: view(trial, item) for trial, item in (data.get("trials") or {}).items()
            if TrialView(trial, {}, status=item.get("status")).is_terminal}


def write(root: Root, job_id: str, finished: dict[str, TrialView]) -> None:
    trials = {trial: entry(v) for trial, v in sorted(finished.items())}
    root.storage.write_json(summary_key(root, job_id), {"version": VERSION, "trials": trials})
