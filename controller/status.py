"""`automl-images status`: what every job is doing, read from the bucket (never written).

Finished trials come from each job's trials.json (core/trials.py), the others from their folders, so
a job with a long history costs a few requests. A running trial's cost is its launch record's
hourly price times its time so far.
"""
from __future__ import annotations

import collections
import time
from typing import Any

from automl_images.core import trials
from automl_images.core.layout import Root


def job_summaries(root: Root, now: float | None = None) -> list[dict[str, Any]]:
    now = now or time.time()
    out = []
    for job_id in root.job_ids():
        state = root.storage.read_json(root.job_state(job_id)) or {"status": "accepting"}
        board = root.storage.read_json(root.leaderboard(job_id)) or {}
        counts: collections.Counter = collections.Counter()
        views = trials.read_all(root, job_id, now)
        for trial in views:
            counts[trial.trial_status.value] += 1
        best = next((row for row in board.get("trials", [])
                     if isinstance(row["metrics"].get(board.get("primary_metric")), (int, float))), None)
        end = state.get("finished_at") or now
        out.append({
            "job_id": job_id,
            "status": state.get("status"),
            "reason": state.get("reason", ""),
            "trials": dict(counts),
            "primary_metric": board.get("primary_metric"),
            "best": None if best is None else {"trial_id": best["trial_id"],
                                               "value": best["metrics"][board["primary_metric"]]},
            "elapsed_s": round(end - state["accepted_at"], 1) if "accepted_at" in state else None,
            "cost_usd": round(sum(t.cost_usd for t in views), 6),
        })
    return out


def render_summaries(summaries: list[dict[str, Any]]) -> str:
    if not summaries:
        return "no jobs"
    lines = []
    for s in summaries:
        trials = ", ".join(f"{n} {k}" for k, n in sorted(s["trials"].items())) or "no trials"
        best = f"best {s['primary_metric']}={s['best']['value']:.4f} ({s['best']['trial_id']})" if s["best"] else ""
        elapsed = f"{s['elapsed_s']:.0f}s" if s["elapsed_s"] is not None else ""
        cost = f"${s['cost_usd']:.2f}"
        lines.append(f"{s['job_id']}  {s['status']}  {trials}  {best}  {elapsed}  {cost}".rstrip())
        if s["status"] in ("failed", "rejected") and s["reason"]:
            lines.append("    " + s["reason"].replace("\n", "\n    "))
    return "\n".join(lines)


def render_job(root: Root, job_id: str) -> str:
    now = time.time()
    job = next(s for s in job_summaries(root, now) if s["job_id"] == job_id)
    lines = [render_summaries([job]), ""]
    for trial in trials.read_all(root, job_id, now):
        status = trial.status or {}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        epoch = f"epoch {status.get('epoch', 0)}/{status.get('epochs_total', '?')}"
        error = (status.get("error") or {}).get("message", "").replace("\n", "\n      ")  # every line indented
        lines.append(f"  {trial.trial_id}  {trial.trial_status.value:9}  {epoch:12}  ${trial.cost_usd:<7.2f}  {shown}"
                     + (f"\n      {error}" if error else ""))
    return "\n".join(lines)
