"""reconcile.decide: the job as it is in, the actions that move it on out. Pure, so every case is a
JobView built by hand and a list of actions compared."""
from __future__ import annotations

import textwrap

import pytest

from automl_images.controller import reconcile
from automl_images.controller.launch.base import RunState
from automl_images.controller.reconcile import (
    CreateTrials,
    FinishTrial,
    Launch,
    Publish,
    RequestStop,
    SetJobStatus,
    decide,
)
from automl_images.controller.spec import parse_job
from automl_images.core.records import ErrorKind, JobStatus, JobView, TrialStatus, TrialView

NOW = 1_000_000.0


def make_spec(max_trials=4, concurrent=2, timeout_hours=1, metric="accuracy", early_termination=""):
    text = textwrap.dedent(f"""\
        task: image-classification
        training_data: train.jsonl
        primary_metric: {metric}
        limits:
          max_trials: {max_trials}
          max_concurrent_trials: {concurrent}
          timeout_hours: {timeout_hours}
        search_space:
          - learning_rate: uniform(0.001, 0.1)
        """) + textwrap.dedent(early_termination)
    return parse_job(text)


def trial(index: int, status: str | None = None, *, launched: bool = True, attempt: int = 1,
          run: RunState | None = RunState.RUNNING, metrics: dict | None = None, error: tuple | None = None,
          history: list | None = None, stop: dict | None = None) -> TrialView:
    """A trial as the controller reads it: `status` is the trainer's (or the controller's) verdict."""
    record = None
    if status is not None or history is not None:
        record = {"status": status or "running"}
        if metrics is not None:
            record["metrics"] = metrics
        if error is not None:
            record["error"] = {"kind": error[0], "message": error[1]}
        if history is not None:
            record["history"] = history
    launch = {"attempt": attempt, "handle": {"pid": 100 + index}, "launcher": "local"} if launched else \
        ({"attempt": attempt} if attempt > 1 else None)  # between attempts: launch.json without a handle
    return TrialView(f"t{index:04d}", {"subspace": 0, "params": {"learning_rate": 0.01}}, launch=launch,
                     status=record, stop=stop, run_state=run if launched else None)


def completed(index: int, value: float = 0.9, metric: str = "accuracy") -> TrialView:
    return trial(index, "completed", run=RunState.SUCCEEDED, metrics={metric: value})


def failed(index: int, message: str = "label 'x' of line 3 is not in training", kind: str = "user") -> TrialView:
    return trial(index, "failed", run=RunState.FAILED, error=(kind, message))


def make_job(trials=(), status="running", accepted_at=NOW - 60, cancel=False, published=True, **state) -> JobView:
    """`published`: the leaderboard already shows every finished trial (no Publish expected)."""
    trials = list(trials)
    record = {"status": status, "accepted_at": accepted_at, **state}
    if published:
        record["published_trials"] = sum(t.is_terminal for t in trials)
    return JobView("job", record, trials, cancel_requested=cancel)


def of_type(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


# ------------------------------------------------------------------------------------------------
# Creating and launching trials


def test_new_job_creates_up_to_the_concurrency_and_launches_them():
    assert decide(make_spec(max_trials=4, concurrent=2), make_job(), NOW, None) == [
        CreateTrials([0, 1]), Launch("t0000", 1), Launch("t0001", 1)]


@pytest.mark.parametrize("max_trials, concurrent, done, running, expected", [
    (5, 2, 0, 0, [0, 1]),        # min(2 - 0, 5 - 0) = 2
    (5, 2, 2, 1, [3]),           # min(2 - 1, 5 - 3) = 1
    (5, 3, 3, 1, [4]),           # min(3 - 1, 5 - 4) = 1: never past max_trials
    (5, 2, 3, 2, None),          # concurrency full
    (5, 4, 5, 0, None),          # every trial created
    (3, 10, 0, 0, [0, 1, 2]),    # concurrency above max_trials
    (10, 4, 6, 1, [7, 8, 9]),
])
def test_to_add_is_katibs_arithmetic(max_trials, concurrent, done, running, expected):
    trials = [completed(i) for i in range(done)] + [trial(done + i) for i in range(running)]
    actions = decide(make_spec(max_trials, concurrent), make_job(trials), NOW, None)
    creates = of_type(actions, CreateTrials)
    assert creates == ([CreateTrials(expected)] if expected else [])
    assert of_type(actions, Launch) == [Launch(f"t{i:04d}", 1) for i in expected or []]  # each new trial


def test_grid_capacity_caps_the_trials():
    spec = make_spec(max_trials=5, concurrent=4)
    assert decide(spec, make_job(), NOW, 2) == [CreateTrials([0, 1]), Launch("t0000", 1), Launch("t0001", 1)]
    assert decide(spec, make_job([trial(0), trial(1)]), NOW, 2) == []
    assert decide(spec, make_job([completed(0), completed(1)]), NOW, 2) == [
        Publish(final=True), SetJobStatus(JobStatus.COMPLETED, "all trials finished")]


def test_unlaunched_trials_are_launched():
    job = make_job([trial(0, launched=False), trial(1, launched=False, attempt=2), trial(2)])
    actions = decide(make_spec(max_trials=3, concurrent=3), job, NOW, None)
    assert actions == [Launch("t0000", 1), Launch("t0001", 2)]


class World:
    """A small fake of the bucket and the launcher: applies actions, and finishes running trials in
    a fixed order, so `decide` can be run pass after pass."""

    def __init__(self, spec, capacity=None):
        self.spec, self.capacity = spec, capacity
        self.job = make_job()
        self.max_running = 0

    def step(self, finish: int) -> list:
        actions = decide(self.spec, self.job, NOW, self.capacity)
        for action in actions:
            if isinstance(action, CreateTrials):
                assert action.indices == list(range(len(self.job.trials), len(self.job.trials) + len(action.indices)))
                self.job.trials += [trial(i, launched=False) for i in action.indices]
            elif isinstance(action, Launch):
                view = next(t for t in self.job.trials if t.trial_id == action.trial_id)
                view.launch = {"attempt": action.attempt, "handle": {"pid": 1}}
                view.run_state = RunState.RUNNING
            elif isinstance(action, SetJobStatus):
                self.job.state["status"] = action.status.value
            elif isinstance(action, Publish):
                self.job.state["published_trials"] = sum(t.is_terminal for t in self.job.trials)
        running = [t for t in self.job.trials if t.launched and not t.is_terminal]
        self.max_running = max(self.max_running, len(running))
        for view in running[:finish]:
            view.status = {"status": "completed", "metrics": {"accuracy": 0.5}}
            view.run_state = RunState.SUCCEEDED
        return actions


@pytest.mark.parametrize("max_trials, concurrent, finish, capacity", [
    (7, 3, 1, None), (7, 3, 2, None), (5, 5, 5, None), (1, 1, 1, None), (10, 4, 3, 6), (4, 100, 1, None),
])
def test_never_more_than_max_trials_nor_concurrency(max_trials, concurrent, finish, capacity):
    world = World(make_spec(max_trials, concurrent), capacity)
    for _ in range(50):
        world.step(finish)
        assert len(world.job.trials) <= min(max_trials, capacity or max_trials)
        if world.job.status.is_terminal():
            break
    assert world.job.status is JobStatus.COMPLETED
    assert len(world.job.trials) == min(max_trials, capacity or max_trials)
    assert world.max_running <= concurrent


# ------------------------------------------------------------------------------------------------
# Runs that end without the trainer's verdict


@pytest.mark.parametrize("run", [RunState.GONE, RunState.FAILED, RunState.SUCCEEDED])
def test_lost_run_is_launched_again(run):
    for status in (None, "running", "pending"):
        job = make_job([trial(0, status, run=run, attempt=1)])
        assert decide(make_spec(max_trials=1, concurrent=1), job, NOW, None) == [Launch("t0000", 2)]


def test_lost_run_is_retried_up_to_max_attempts_then_failed():
    spec = make_spec(max_trials=1, concurrent=1)
    assert reconcile.MAX_ATTEMPTS == 3
    assert decide(spec, make_job([trial(0, run=RunState.GONE, attempt=2)]), NOW, None) == [Launch("t0000", 3)]
    actions = decide(spec, make_job([trial(0, run=RunState.GONE, attempt=3)]), NOW, None)
    finish = of_type(actions, FinishTrial)
    assert len(finish) == 1
    assert finish[0].trial_id == "t0000"
    assert finish[0].status is TrialStatus.FAILED
    assert finish[0].error_kind is ErrorKind.INFRASTRUCTURE
    assert "3 times" in finish[0].reason and "gone" in finish[0].reason
    assert not of_type(actions, Launch)
    assert Publish(final=False) in actions  # a trial finished: the leaderboard is rewritten


def test_run_cancelled_outside_the_controller():
    actions = decide(make_spec(), make_job([trial(0, run=RunState.CANCELLED)]), NOW, None)
    assert of_type(actions, FinishTrial) == [
        FinishTrial("t0000", TrialStatus.STOPPED, "cancelled outside the controller")]


@pytest.mark.parametrize("run", [RunState.PENDING, RunState.RUNNING, RunState.RECOVERING, None])
def test_live_run_is_left_alone(run):
    job = make_job([trial(0, "running", run=run)])
    assert decide(make_spec(max_trials=1, concurrent=1), job, NOW, None) == []


def test_run_that_ended_after_a_stop_request_is_stopped():
    stop = {"reason": "early termination (bandit) at evaluation 4"}
    actions = decide(make_spec(max_trials=1, concurrent=1),
                     make_job([trial(0, "running", run=RunState.GONE, stop=stop)]), NOW, None)
    assert of_type(actions, FinishTrial) == [FinishTrial("t0000", TrialStatus.STOPPED, stop["reason"])]


# ------------------------------------------------------------------------------------------------
# Cancel, timeout, fail fast


def test_cancel_stops_every_trial():
    job = make_job([completed(0), trial(1), trial(2, launched=False)], cancel=True)
    actions = decide(make_spec(max_trials=5, concurrent=3), job, NOW, None)
    assert actions[0] == SetJobStatus(JobStatus.STOPPING, "cancelled")
    assert of_type(actions, RequestStop) == [RequestStop("t0001", "cancelled")]
    assert of_type(actions, FinishTrial) == [FinishTrial("t0002", TrialStatus.STOPPED, "cancelled")]
    assert not of_type(actions, CreateTrials) and not of_type(actions, Launch)


def test_cancel_asks_once_and_ends_cancelled():
    spec = make_spec(max_trials=5, concurrent=3)
    stop = {"reason": "cancelled"}
    waiting = make_job([completed(0), trial(1, stop=stop)], status="stopping", cancel=True, reason="cancelled")
    assert decide(spec, waiting, NOW, None) == []  # the stop request is out; nothing to repeat
    ended = make_job([completed(0), trial(1, "running", run=RunState.CANCELLED, stop=stop)], status="stopping",
                     cancel=True, reason="cancelled")
    actions = decide(spec, ended, NOW, None)
    assert actions == [FinishTrial("t0001", TrialStatus.STOPPED, "cancelled"), Publish(final=False)]
    ended.trials[1].status = {"status": "stopped", "metrics": {"accuracy": 0.7}}
    ended.state["published_trials"] = 2
    assert decide(spec, ended, NOW, None) == [Publish(final=True), SetJobStatus(JobStatus.CANCELLED, "cancelled")]


def test_timeout_stops_the_job():
    spec = make_spec(max_trials=5, concurrent=2, timeout_hours=1)
    job = make_job([completed(0), trial(1)], accepted_at=NOW - 3600)
    assert of_type(decide(spec, job, NOW, None), SetJobStatus) == []  # exactly the limit: not yet
    job = make_job([completed(0), trial(1)], accepted_at=NOW - 3601)
    actions = decide(spec, job, NOW, None)
    reason = "timeout: timeout_hours=1 reached"
    assert actions == [SetJobStatus(JobStatus.STOPPING, reason), RequestStop("t0001", reason)]


def test_timeout_with_a_model_completes():
    spec = make_spec(max_trials=5, concurrent=2, timeout_hours=1)
    job = make_job([completed(0), failed(1, "x")], accepted_at=NOW - 7200)
    actions = decide(spec, job, NOW, None)
    assert actions == [SetJobStatus(JobStatus.STOPPING, "timeout: timeout_hours=1 reached"), Publish(final=True),
                       SetJobStatus(JobStatus.COMPLETED, "timeout: timeout_hours=1 reached")]


def test_timeout_without_a_model_fails():
    spec = make_spec(max_trials=5, concurrent=2, timeout_hours=1)
    job = make_job([failed(0, "out of memory", kind="infrastructure")], status="stopping",
                   accepted_at=NOW - 7200, reason="timeout: timeout_hours=1 reached")
    actions = decide(spec, job, NOW, None)
    assert actions == [Publish(final=True), SetJobStatus(JobStatus.FAILED, "no trial produced a model: out of memory")]


def test_fail_fast_when_the_first_trials_fail_alike():
    spec = make_spec(max_trials=10, concurrent=4)
    message = "label 'cat' of line 3 is not in the training data"
    job = make_job([failed(0, message), failed(1, message), failed(2, message), trial(3)])
    actions = decide(spec, job, NOW, None)
    reason = f"failed: the first 3 trial(s) all failed: {message}"
    assert actions == [SetJobStatus(JobStatus.STOPPING, reason), RequestStop("t0003", reason)]
    # once the last trial has stopped, the job fails with the shared message
    job.trials[3] = trial(3, "stopped", run=RunState.CANCELLED, stop={"reason": reason})
    job.state.update(status="stopping", reason=reason, published_trials=4)
    assert decide(spec, job, NOW, None) == [
        Publish(final=True), SetJobStatus(JobStatus.FAILED, f"the first 3 trial(s) all failed: {message}")]


def test_fail_fast_with_a_single_trial():
    actions = decide(make_spec(max_trials=1, concurrent=1), make_job([failed(0, "bad jsonl")]), NOW, None)
    assert actions[-1] == SetJobStatus(JobStatus.FAILED, "the first 1 trial(s) all failed: bad jsonl")


@pytest.mark.parametrize("trials", [
    [failed(0, "a"), failed(1, "a"), failed(2, "b")],                       # different messages
    [failed(0, "a"), failed(1, "a"), failed(2, "a", kind="infrastructure")],  # not all the user's
    [failed(0, "a"), failed(1, "a"), trial(2)],                              # the third still runs
    [failed(0, "a"), completed(1), failed(2, "a"), failed(3, "a")],           # the first three differ
])
def test_no_fail_fast(trials):
    actions = decide(make_spec(max_trials=10, concurrent=4), make_job(trials), NOW, None)
    assert not of_type(actions, SetJobStatus)
    assert of_type(actions, CreateTrials)


# ------------------------------------------------------------------------------------------------
# The end of a job


def test_completion_publishes_the_final_leaderboard():
    job = make_job([completed(0), completed(1, 0.8), failed(2, "x")])
    assert decide(make_spec(max_trials=3, concurrent=2), job, NOW, None) == [
        Publish(final=True), SetJobStatus(JobStatus.COMPLETED, "all trials finished")]


def test_stopped_trial_with_metrics_counts_as_a_model():
    stopped = trial(1, "stopped", run=RunState.CANCELLED, metrics={"accuracy": 0.6})
    job = make_job([failed(0, "a", kind="internal"), stopped])
    actions = decide(make_spec(max_trials=2, concurrent=2), job, NOW, None)
    assert actions[-1] == SetJobStatus(JobStatus.COMPLETED, "all trials finished")


def test_all_failed_fails_the_job_with_their_errors():
    job = make_job([failed(0, "b", kind="infrastructure"), failed(1, "a", kind="internal"),
                    trial(2, "stopped", run=RunState.CANCELLED)])
    actions = decide(make_spec(max_trials=3, concurrent=3), job, NOW, None)
    assert actions == [Publish(final=True), SetJobStatus(JobStatus.FAILED, "no trial produced a model: a; b; stopped")]


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled", "rejected"])
def test_terminal_job_does_nothing(status):
    job = make_job([trial(0, run=RunState.GONE)], status=status, cancel=True, accepted_at=0)
    assert decide(make_spec(), job, NOW, None) == []


def test_leaderboard_is_published_when_trials_finished_since():
    spec = make_spec(max_trials=4, concurrent=2)
    job = make_job([completed(0), trial(1)], published=False, published_trials=0)
    assert decide(spec, job, NOW, None) == [CreateTrials([2]), Launch("t0002", 1), Publish(final=False)]
    job.state["published_trials"] = 1
    assert decide(spec, job, NOW, None) == [CreateTrials([2]), Launch("t0002", 1)]


# ------------------------------------------------------------------------------------------------
# Early termination through decide


BANDIT = """\
early_termination:
  policy: bandit
  slack_amount: 0.1
"""


def evaluations(metric: str, *values: float) -> list[dict]:
    return [{metric: v} for v in values]


def test_early_termination_requests_a_stop():
    spec = make_spec(max_trials=3, concurrent=3, early_termination=BANDIT)
    good = trial(0, "running", history=evaluations("accuracy", 0.6, 0.8))
    bad = trial(1, "running", history=evaluations("accuracy", 0.5, 0.65))
    job = make_job([good, bad, trial(2, "running", history=evaluations("accuracy", 0.6, 0.75))])
    assert decide(spec, job, NOW, None) == [RequestStop("t0001", "early termination (bandit) at evaluation 2")]
    bad.stop = {"reason": "early termination (bandit) at evaluation 2"}
    assert decide(spec, job, NOW, None) == []  # asked once


def test_early_termination_of_a_minimised_metric():
    spec = make_spec(max_trials=2, concurrent=2, metric="log_loss", early_termination=BANDIT)
    low = trial(0, "running", history=evaluations("log_loss", 0.9, 0.3))
    high = trial(1, "running", history=evaluations("log_loss", 0.8, 0.45))
    assert decide(spec, make_job([low, high]), NOW, None) == [
        RequestStop("t0001", "early termination (bandit) at evaluation 2")]
    high.status["history"][-1]["log_loss"] = 0.35
    assert decide(spec, make_job([low, high]), NOW, None) == []


def test_finished_trials_count_for_early_termination():
    spec = make_spec(max_trials=3, concurrent=2, early_termination=BANDIT)
    done = trial(0, "completed", run=RunState.SUCCEEDED, metrics={"accuracy": 0.9},
                 history=evaluations("accuracy", 0.7, 0.9))
    running = trial(1, "running", history=evaluations("accuracy", 0.6, 0.7))
    actions = decide(spec, make_job([done, running]), NOW, None)
    assert RequestStop("t0001", "early termination (bandit) at evaluation 2") in actions
