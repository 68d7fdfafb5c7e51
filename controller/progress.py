"""The live view of `automl-images controller`: a line for a trial whenever its status or epoch
changes, and a line for the job whenever its trials' counts or best change, with its cost and time
so far. Printed by the controller holding the job, one line per change, not one per pass."""
from __future__ import annotations

from typing import Any, Callable

from automl_images.core.records import JobView

from . import leaderboard
from .spec import JobSpec


class Progress:
    def __init__(self, job_id: str, spec: JobSpec, log: Callable[[str], None], clock: Callable[[], float]):
        self.job_id = job_id
        self.spec = spec
        self.log = log
        self.clock = clock
        self._trials: dict[str, Any] = {}  # (status, epoch) last printed, per trial
        self._headline = ""                # the job's last line, without its cost and clock

    def report_trials(self, job: JobView) -> None:
        for trial in job.trials:
            status = trial.status or {}
            progress = status.get("progress") or {}
            key = (status.get("status"), status.get("epoch"), progress.get("epoch"), progress.get("step"))
            if status and self._trials.get(trial.trial_id) != key:
                self._trials[trial.trial_id] = key
                self.log(f"job {self.job_id}: trial {trial.trial_id} {status.get('status')}: "
                         f"{trial_line(status, self.spec.primary_metric)}")

    def report_job(self, job: JobView) -> None:
        line = progress_line(self.spec, job)
        key = line.rsplit(" | $", 1)[0]  # the cost grows with every pass: not a change by itself
        if key != self._headline:
            self._headline = key
            elapsed = _duration(self.clock() - job.state.get("accepted_at", self.clock()))
            self.log(f"job {self.job_id}: {line} | {elapsed}")


def progress_line(spec: JobSpec, job: JobView) -> str:
    """`6/10 trials: 2 running, 3 completed, 1 stopped | best accuracy=0.9312 (t0002) | $1.20`"""
    counts: dict[str, int] = {}
    for trial in job.trials:
        counts[trial.trial_status.value] = counts.get(trial.trial_status.value, 0) + 1
    order = ("running", "pending", "completed", "stopped", "failed")
    parts = ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))
    best = leaderboard.best_trial(leaderboard.build(spec.primary_metric, job.trials))
    best_text = f"best {spec.primary_metric}={best['metrics'][spec.primary_metric]:.4f} ({best['trial_id']})" \
        if best else "no result yet"
    budget = f" of ${spec.limits.max_cost_usd:g}" if spec.limits.max_cost_usd is not None else ""
    return (f"{job.status.value}, {len(job.trials)}/{spec.limits.max_trials} trials"
            + (f": {parts}" if parts else "") + f" | {best_text} | ${job.cost_usd:.2f}{budget}")


def trial_line(status: dict[str, Any], metric: str) -> str:
    """`epoch 3/10, accuracy=0.8123 (best 0.8410 at epoch 2)` after an epoch, `epoch 4/10: step
    120/400, 85.3 img/s, 3m05s to the end of its training` within one (the trainer's heartbeat).
    The best is the figure the leaderboard ranks by (the epoch whose weights the trial keeps)."""
    total = status.get("epochs_total")
    text = f"epoch {status.get('epoch', 0)}{f'/{total}' if total else ''}"
    last = (status.get("history") or [{}])[-1].get(metric)
    best = status.get("best") or {}
    best_value = (best.get("metrics") or {}).get(metric)
    if _is_number(last):
        text += f", {metric}={last:.4f}"
        if _is_number(best_value) and best.get("epoch") != status.get("epoch"):
            text += f" (best {best_value:.4f} at epoch {best.get('epoch')})"
    progress = status.get("progress") or {}
    if status.get("status") == "running" and progress.get("epoch", 0) > status.get("epoch", 0):
        rate = progress.get("images_per_second")
        eta = progress.get("eta_s")
        text = (f"epoch {progress['epoch']}{f'/{total}' if total else ''}: step {progress.get('step')}/"
                f"{progress.get('steps')}" + (f", {rate:g} img/s" if _is_number(rate) else "")
                + (f", {_duration(eta)} to the end of its training" if _is_number(eta) else ""))
    return text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
