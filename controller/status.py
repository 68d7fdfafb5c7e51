"""`automl-images status`: what every job is doing, read from the bucket (never written).

Finished trials come from each job's trials.json (core/trials.py), the others from their folders, so
a job with a long history costs a few requests. A running trial's cost is its launch record's
hourly price times its time so far. Torn files are read as the controller reads them (a job's
state rebuilt from its folder, a trial's files as core/trials.py says), and never written.
"""
from __future__ import annotations

import collections
import time
from typing import Any

from automl_images.core import trials
from automl_images.core.layout import Root, job_id_from_name
from automl_images.core.records import TrialView
from automl_images.core.storage import InvalidJSON

from . import accepted, leaderboard
from .job_state import read_state
from .spec import JobSpec, JobSpecError


def queued_jobs(root: Root, job_ids: list[str] | None = None) -> dict[str, str]:
    """The job files in the inbox that no controller has taken yet: inbox file name by the id the
    job will run under (the name's). One with a job folder already is being accepted: it is
    shown with the jobs."""
    accepted_ids = set(root.job_ids() if job_ids is None else job_ids)
    named = {job_id_from_name(name): name for name in root.inbox_files()}
    return {job_id: name for job_id, name in named.items() if job_id not in accepted_ids}


def job_summaries(root: Root, now: float | None = None) -> list[dict[str, Any]]:
    """Every job: the accepted ones, then the queued ones."""
    now = now or time.time()
    job_ids = root.job_ids()
    return ([_summary(root, job_id, now) for job_id in job_ids]
            + [_queued(root, job_id, name) for job_id, name in queued_jobs(root, job_ids).items()])


def _summary(root: Root, job_id: str, now: float, views: list[TrialView] | None = None) -> dict[str, Any]:
    """`views`: the job's trials when the caller has read them already."""
    state = read_state(root, job_id, now)[0] or {"status": "accepting"}
    try:
        board = root.storage.read_json(root.leaderboard(job_id)) or {}
    except InvalidJSON:  # torn: rewritten by the job's next publish
        board = {}
    counts: collections.Counter = collections.Counter()
    views = trials.read_all(root, job_id, now) if views is None else views
    for trial in views:
        counts[trial.trial_status.value] += 1
    best = next((row for row in board.get("trials", [])
                 if isinstance(row["metrics"].get(board.get("primary_metric")), (int, float))), None)
    end = state.get("finished_at") or now
    return {
        "job_id": job_id,
        "status": state.get("status"),
        "reason": state.get("reason", ""),
        "trials": dict(counts),
        "primary_metric": board.get("primary_metric"),
        "best": None if best is None else {"trial_id": best["trial_id"],
                                           "value": best["metrics"][board["primary_metric"]]},
        "elapsed_s": round(end - state["accepted_at"], 1) if "accepted_at" in state else None,
        "cost_usd": round(sum(t.cost_usd for t in views), 6),
    }


def _queued(root: Root, job_id: str, name: str) -> dict[str, Any]:
    return {"job_id": job_id, "status": "queued", "trials": {}, "primary_metric": None, "best": None,
            "elapsed_s": None, "cost_usd": 0.0,
            "reason": f"{root.storage.url(root.inbox_key(name))}: waiting for a controller to accept it"}


def render_summaries(summaries: list[dict[str, Any]]) -> str:
    if not summaries:
        return "no jobs"
    lines = []
    for s in summaries:
        trials = ", ".join(f"{n} {k}" for k, n in sorted(s["trials"].items())) or "no trials"
        best = f"best {s['primary_metric']}={s['best']['value']:.4f} ({s['best']['trial_id']})" if s["best"] else ""
        elapsed = f"{s['elapsed_s']:.0f}s" if s["elapsed_s"] is not None else ""
        cost = f"${s['cost_usd']:.2f}"
        lines.append("  ".join(part for part in (s["job_id"], s["status"], trials, best, elapsed, cost) if part))
        if s["status"] in ("queued", "failed", "rejected") and s["reason"]:
            lines.append("    " + s["reason"].replace("\n", "\n    "))
    return "\n".join(lines)


def render_job(root: Root, job_id: str) -> str | None:
    """The job's summary and a line per trial; None when the root has no such job, accepted or queued."""
    job_ids = root.job_ids()
    if job_id not in job_ids:
        name = queued_jobs(root, job_ids).get(job_id)
        return None if name is None else render_summaries([_queued(root, job_id, name)])
    now = time.time()
    views = trials.read_all(root, job_id, now)  # read once, for the summary and the trial lines
    lines = [render_summaries([_summary(root, job_id, now, views)]), ""]
    spec = _accepted_spec(root, job_id)
    space = spec.search_space if spec is not None else ()
    for trial in views:
        status = trial.status or {}
        shown = leaderboard.params_text(leaderboard.shown_params(space, trial.sweep))
        epoch = f"epoch {status.get('epoch', 0)}/{status.get('epochs_total', '?')}"
        figures = []
        if spec is not None:  # the figure the leaderboard ranks by: the trial's best epoch
            value = (status.get("metrics") or (status.get("best") or {}).get("metrics") or {}).get(spec.primary_metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                figures.append(f"{spec.primary_metric}={value:.4f}")
        if status.get("skipped_images_count"):
            figures.append(f"{status['skipped_images_count']} image(s) skipped")
        error = (status.get("error") or {}).get("message", "").replace("\n", "\n      ")  # every line indented
        why = "" if error else leaderboard.stop_reason(status)
        lines.append(f"  {trial.trial_id}  {trial.trial_status.value:9}  {epoch:12}  ${trial.cost_usd:<7.2f}  {shown}"
                     + "".join(f"  {figure}" for figure in figures)
                     + (f"\n      {error}" if error else "") + (f"\n      {why}" if why else ""))
    return "\n".join(lines)


def _accepted_spec(root: Root, job_id: str) -> JobSpec | None:
    """What the trials' shown params and figures are computed from; None when the job has no spec
    of this version (rejected; accepted by another version): its trials then show their sampled values."""
    try:
        return accepted.load(root, job_id)
    except (FileNotFoundError, JobSpecError):
        return None