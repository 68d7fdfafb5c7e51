"""The leaderboard: every trial, best first, as JSON, CSV or a terminal table, ranked by the job's
primary metric, with each trial's skipped images and why it stopped.

A trial's `params` here are those that tell the job's trials apart (`shown_params`); the controller's
log and `automl-images status` show the same ones (`params_text`).
"""
from __future__ import annotations

import csv
import io
import math
from typing import Any, Sequence

from automl_images.core.hyperparameters import metric_direction, oriented
from automl_images.core.records import TrialView
from automl_images.core.storage import json_bytes

from .distributions import Distribution

Space = Sequence[dict[str, Any]]  # a job spec's search_space: one dict per subspace


def shown_params(search_space: Space, sweep: dict[str, Any]) -> dict[str, Any]:
    """What tells a trial apart from the job's other trials: its model (always, sampled or a
    subspace's constant), every sampled value, and the subspace's constants that other subspaces
    set otherwise. The rest is the same in every trial, and the trial's spec.json has it all.
    Without a search space (a job accepted without a saved spec): the sampled values only."""
    params = sweep.get("params", {})
    if not search_space:
        return dict(params)
    subspace = search_space[sweep.get("subspace", 0)]
    differing = {name: value for name, value in subspace.items()
                 if not isinstance(value, Distribution) and any(other.get(name) != value for other in search_space)}
    model = {"model_name": params.get("model_name", subspace.get("model_name"))}
    return {**model, **differing, **params}


def params_text(params: dict[str, Any]) -> str:
    """`model_name=resnet18, learning_rate=0.01234`: a trial's shown params in one line."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def build(primary_metric: str, trials: list[TrialView], search_space: Space = ()) -> dict[str, Any]:
    rows = []
    for trial in trials:
        status = trial.status or {}
        rows.append({
            "trial_id": trial.trial_id,
            "status": trial.trial_status.value,
            "params": shown_params(search_space, trial.sweep),
            "metrics": _scalars(status.get("metrics") or (status.get("best") or {}).get("metrics") or {}),
            "epochs": status.get("epochs", status.get("epoch", 0)),
            "duration_s": status.get("duration_s"),
            "cost_usd": round(trial.cost_usd, 6),
            "error": (status.get("error") or {}).get("message"),
            "reason": stop_reason(status),
            "skipped_images": status.get("skipped_images_count", 0),
        })

    def rank(row: dict[str, Any]) -> tuple:
        value = row["metrics"].get(primary_metric)
        if not is_number(value):
            return (1, 0.0, row["trial_id"])
        return (0, -oriented(primary_metric, value), row["trial_id"])  # the best score first

    rows.sort(key=rank)
    return {"primary_metric": primary_metric, "direction": metric_direction(primary_metric),
            "cost_usd": round(sum(t.cost_usd for t in trials), 6), "trials": rows}


def stop_reason(status: dict[str, Any]) -> str:
    """Why a trial ended, in one line: its error, the stop's reason (early termination, cancel, the
    job's timeout, a lost machine), early stopping, or "" (it ran its epochs, or runs still)."""
    error = (status.get("error") or {}).get("message")
    if error:
        return str(error).strip().splitlines()[0] if str(error).strip() else "failed"
    if status.get("reason"):
        return str(status["reason"])
    if status.get("early_stopped"):
        return "early stopping: the primary metric stopped improving"
    return ""


def is_number(value: Any) -> bool:
    """A usable metric: a diverged trial's NaN ranks with the trials that have none."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best_trial(board: dict[str, Any]) -> dict[str, Any] | None:
    """The best trial that produced a metric (completed, or stopped after an evaluation)."""
    for row in board["trials"]:
        if is_number(row["metrics"].get(board["primary_metric"])) and \
                row["status"] in ("completed", "stopped"):
            return row
    return None


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def param_names(board: dict[str, Any]) -> list[str]:
    """The model first, as in the controller's log and `status`, then the others by name."""
    return sorted({k for row in board["trials"] for k in row["params"]}, key=lambda name: (name != "model_name", name))


def metric_names(board: dict[str, Any]) -> list[str]:
    names = sorted({k for row in board["trials"] for k, v in row["metrics"].items() if isinstance(v, (int, float))})
    primary = board["primary_metric"]
    return [primary] + [n for n in names if n != primary] if primary in names else names


def _flat_rows(board: dict[str, Any], metric_names: list[str]) -> tuple[list[str], list[list[Any]]]:
    params = param_names(board)
    header = (["rank", "trial_id", "status"] + metric_names + params
              + ["epochs", "duration_s", "cost_usd", "skipped_images", "reason"])
    rows = []
    for i, row in enumerate(board["trials"], start=1):
        rows.append([i, row["trial_id"], row["status"]] + [row["metrics"].get(m, "") for m in metric_names]
                    + [row["params"].get(p, "") for p in params]
                    + [row["epochs"], row["duration_s"] or "", row.get("cost_usd", ""),
                       row.get("skipped_images", 0), row.get("reason", "")])
    return header, rows


def to_csv(board: dict[str, Any]) -> str:
    header, rows = _flat_rows(board, metric_names(board))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def to_json(board: dict[str, Any]) -> str:
    return json_bytes(board).decode("utf-8")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _shortened(reason: str, limit: int = 60) -> str:
    """A reason in a table cell: one line, cut at `limit` characters (the JSON and CSV have it whole)."""
    return reason if len(reason) <= limit else reason[:limit - 1] + "…"


def to_table(board: dict[str, Any], markdown: bool = False) -> str:
    """A terminal table (or Markdown) with the primary metric and a few others, and why each
    trial stopped (the last column)."""
    metrics = metric_names(board)
    shown = metrics[:1] + [m for m in ("loss", "log_loss") if m in metrics[1:]]
    header, rows = _flat_rows(board, shown)
    cells = [header] + [[_cell(v) for v in row[:-1]] + [_shortened(row[-1])] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in cells[0]) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
        return "\n".join(lines) + "\n"
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if isinstance(board.get("cost_usd"), (int, float)):
        lines.append(f"job cost: ${board['cost_usd']:.2f}")
    return "\n".join(lines) + "\n"
