"""Reconcile: the job as it is (rebuilt from the bucket) in, the actions that move it on out.

Pure: no I/O, no clock (the time is an argument). The job's controller (`job.py`) applies the
actions in order, each of which is safe to repeat, so a controller killed halfway through applying
them simply does the rest on its next pass. New trials are created, then launched: `CreateTrials`
is followed by a `Launch` of each. The arithmetic is Katib's:

    to_add = min(max_concurrent_trials - active, max_trials - created)

and, with `limits.max_cost_usd`, no more trials than the budget left affords at the expected cost
of a trial (`expected_trial_cost`); the job stops once the budget is spent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

from automl_images.core.layout import trial_id
from automl_images.core.records import ErrorKind, JobStatus, JobView, RunState, TrialStatus, TrialView

from . import stopping
from .spec import JobSpec

# A trial lost to the infrastructure (its process or machine vanished without a verdict) is run
# again, resuming from its checkpoint, this many times in all before it counts as failed.
MAX_ATTEMPTS = 3
# When this many trials have all failed for the user's reasons with the same message, the job
# fails with that message instead of spending the rest of its budget.
FAIL_FAST_TRIALS = 3


@dataclass(frozen=True)
class CreateTrials:
    indices: list[int]


@dataclass(frozen=True)
class Launch:
    trial_id: str
    attempt: int


@dataclass(frozen=True)
class RequestStop:
    trial_id: str
    reason: str


@dataclass(frozen=True)
class FinishTrial:
    """The controller's verdict on a trial whose run ended without the trainer's."""
    trial_id: str
    status: TrialStatus
    reason: str
    error_kind: ErrorKind | None = None


@dataclass(frozen=True)
class SetJobStatus:
    status: JobStatus
    reason: str = ""


@dataclass(frozen=True)
class Publish:
    """Rewrite the leaderboard (and the best model when `final`)."""
    final: bool = False


Action = Union[CreateTrials, Launch, RequestStop, FinishTrial, SetJobStatus, Publish]


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)

    def add(self, action: Action) -> None:
        self.actions.append(action)


def decide(spec: JobSpec, job: JobView, now: float, capacity: int | None) -> list[Action]:
    """`capacity`: how many distinct trials the sampler can propose (grid), None when unbounded."""
    plan = Plan()
    status = job.status
    if status.is_terminal():
        return []

    stop_reason = _stop_reason(spec, job, now)
    if stop_reason and status is JobStatus.RUNNING:
        plan.add(SetJobStatus(JobStatus.STOPPING, stop_reason))
        status = JobStatus.STOPPING
    stopping_reason = stop_reason or job.state.get("reason", "")

    active = [t for t in job.trials if not t.is_terminal]
    for trial in active:
        _reconcile_trial(spec, job, trial, status, stopping_reason, plan)

    if status is JobStatus.RUNNING:
        max_trials = spec.limits.max_trials if capacity is None else min(spec.limits.max_trials, capacity)
        created = len(job.trials)
        to_add = min(spec.limits.max_concurrent_trials - len(active), max_trials - created,
                     _affordable(spec, job, active))
        if to_add > 0:
            indices = list(range(created, created + to_add))
            plan.add(CreateTrials(indices))
            for index in indices:
                plan.add(Launch(trial_id(index), 1))
        elif not active and created >= max_trials:
            _finish(job, plan, reason="all trials finished")
    elif not active:
        _finish(job, plan, reason=stopping_reason)

    newly_finished = any(isinstance(a, FinishTrial) for a in plan.actions)
    if newly_finished or job.state.get("published_trials") != _terminal_count(job):
        if not any(isinstance(a, Publish) for a in plan.actions):
            plan.add(Publish(final=False))
    return plan.actions


def expected_trial_cost(job: JobView) -> float:
    """What one more trial is expected to cost: the mean of the finished trials that ran; while
    none has finished, the most any running trial has cost so far (a lower bound); 0 when nothing
    has been spent yet."""
    ran = [t.cost_usd for t in job.trials if t.is_terminal and t.launch and t.launch.get("launched_at")]
    if ran:
        return sum(ran) / len(ran)
    return max((t.cost_usd for t in job.trials), default=0.0)


def _committed(job: JobView, active: list[TrialView], expected: float) -> float:
    """Spent so far, plus what the running trials are expected to spend before they end."""
    return job.cost_usd + sum(max(0.0, expected - t.cost_usd) for t in active)


def _affordable(spec: JobSpec, job: JobView, active: list[TrialView]) -> int:
    """How many more trials max_cost_usd allows: none once another one (at the expected cost)
    could cross it."""
    budget = spec.limits.max_cost_usd
    expected = expected_trial_cost(job)
    if budget is None or expected <= 0:
        return spec.limits.max_trials
    return max(0, math.floor((budget - _committed(job, active, expected)) / expected))


def _budget_reason(spec: JobSpec, job: JobView) -> str:
    """Why the budget ends the job: spent, or, with nothing running and trials still to create,
    another trial could cross it (no trial could ever start again)."""
    budget = spec.limits.max_cost_usd
    if budget is None:
        return ""
    spent = job.cost_usd
    if spent >= budget:
        return f"budget: max_cost_usd={budget:g} reached (${spent:.2f} spent)"
    active = [t for t in job.trials if not t.is_terminal]
    expected = expected_trial_cost(job)
    if not active and len(job.trials) < spec.limits.max_trials and 0 < expected and spent + expected > budget:
        return (f"budget: max_cost_usd={budget:g} would be crossed by another trial "
                f"(${spent:.2f} spent, about ${expected:.2f} a trial)")
    return ""


def _terminal_count(job: JobView) -> int:
    return sum(t.is_terminal for t in job.trials)


def _stop_reason(spec: JobSpec, job: JobView, now: float) -> str:
    if job.cancel_requested:
        return "cancelled"
    if now - job.state["accepted_at"] > spec.limits.timeout_hours * 3600:
        return f"timeout: timeout_hours={spec.limits.timeout_hours:g} reached"
    failed = _fail_fast_reason(spec, job)
    if failed:
        return f"failed: {failed}"
    return _budget_reason(spec, job)


def _fail_fast_reason(spec: JobSpec, job: JobView) -> str | None:
    """The shared message when the first trials all failed for the same user-side reason."""
    count = min(FAIL_FAST_TRIALS, spec.limits.max_trials)
    first = sorted(job.trials, key=lambda t: t.trial_id)[:count]
    if len(first) < count or any(t.trial_status is not TrialStatus.FAILED or t.error_kind is not ErrorKind.USER
                                 for t in first):
        return None
    messages = {(t.error or {}).get("message", "") for t in first}
    return f"the first {count} trial(s) all failed: {messages.pop()}" if len(messages) == 1 else None


def _reconcile_trial(spec: JobSpec, job: JobView, trial: TrialView, status: JobStatus, reason: str,
                     plan: Plan) -> None:
    if status is JobStatus.STOPPING and not trial.stop:
        if trial.launched:
            plan.add(RequestStop(trial.trial_id, reason))
        else:
            plan.add(FinishTrial(trial.trial_id, TrialStatus.STOPPED, reason))
            return
    if not trial.launched:
        if status is JobStatus.RUNNING:
            plan.add(Launch(trial.trial_id, max(trial.attempt, 1)))
        return
    state = trial.run_state
    if state is None or not state.is_terminal():
        if status is JobStatus.RUNNING and spec.early_termination and not trial.stop:
            _early_termination(spec, job, trial, plan)
        return
    # The run ended but the trainer left no verdict: stopped on request, or lost.
    if trial.stop or status is JobStatus.STOPPING:
        plan.add(FinishTrial(trial.trial_id, TrialStatus.STOPPED, (trial.stop or {}).get("reason", reason)))
    elif state is RunState.CANCELLED:
        plan.add(FinishTrial(trial.trial_id, TrialStatus.STOPPED, "cancelled outside the controller"))
    elif trial.attempt < MAX_ATTEMPTS:
        plan.add(Launch(trial.trial_id, trial.attempt + 1))
    else:
        plan.add(FinishTrial(trial.trial_id, TrialStatus.FAILED,
                             f"the trial's run ended without a result {trial.attempt} times "
                             f"(last launcher state: {state.value}); see its logs/",
                             ErrorKind.INFRASTRUCTURE))


def _early_termination(spec: JobSpec, job: JobView, trial: TrialView, plan: Plan) -> None:
    assert spec.early_termination is not None
    policy = stopping.make_policy(spec.early_termination)
    metric = spec.primary_metric
    history = stopping.scores(metric, trial.history(metric, by=policy.unit))
    others = [stopping.scores(metric, t.history(metric, by=policy.unit))
              for t in job.trials if t.trial_id != trial.trial_id]
    if policy.decide(history, [h for h in others if h], (trial.status or {}).get("epochs_total")):
        plan.add(RequestStop(trial.trial_id, f"early termination ({spec.early_termination.policy}) "
                                             f"at {policy.unit} {history[-1][0]}"))


def _finish(job: JobView, plan: Plan, reason: str) -> None:
    plan.add(Publish(final=True))
    if reason == "cancelled":
        plan.add(SetJobStatus(JobStatus.CANCELLED, reason))
    elif reason.startswith("failed: "):
        plan.add(SetJobStatus(JobStatus.FAILED, reason[len("failed: "):]))
    elif not any(t.trial_status is TrialStatus.COMPLETED or
                 (t.trial_status is TrialStatus.STOPPED and (t.status or {}).get("metrics"))
                 for t in job.trials):
        errors = sorted({(t.error or {}).get("message", t.trial_status.value) for t in job.trials})
        plan.add(SetJobStatus(JobStatus.FAILED, "no trial produced a model: " + "; ".join(errors)[:2000]))
    else:
        plan.add(SetJobStatus(JobStatus.COMPLETED, reason))
