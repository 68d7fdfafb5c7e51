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
        metric = self.spec.primary_metric
        for trial in job.trials:
            status = trial.status or {}
            key = (status.get("status"), status.get("epoch"))
            if status and self._trials.get(trial.trial_id) != key:
                self._trials[trial.trial_id] = key
                last = (status.get("history") or [{}])[-1]
                value = last.get(metric)
                shown = f", {metric}={value:.4f}" if isinstance(value, (int, float)) else ""
                total = status.get("epochs_total")
                self.log(f"job {self.job_id}: trial {trial.trial_id} {status.get('status')}: "
                         f"epoch {status.get('epoch', 0)}{f'/{total}' if total else ''}{shown}")

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


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
