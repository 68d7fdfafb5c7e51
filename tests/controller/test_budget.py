"""max_cost_usd: reconcile.decide starts no trial that the budget could not pay for, and stops the job
once it is spent. Costs by hand; then through the controller, with trials priced by their launcher."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from simulated import FakeClock, SimLauncher, run_until_done, sim_job, submit
from test_reconcile import NOW, make_job, make_spec

from automl_images.controller.launch.base import RunState
from automl_images.controller.loop import Controller
from automl_images.controller.reconcile import (
    CreateTrials,
    Launch,
    Publish,
    RequestStop,
    SetJobStatus,
    decide,
    expected_trial_cost,
)
from automl_images.core.layout import FILES, Root
from automl_images.core.records import JobStatus, TrialView, recorded_cost

CLI = str(Path(sys.executable).with_name("automl-images"))


def priced(index: int, cost: float, status: str | None = "completed") -> TrialView:
    """A launched trial that has cost `cost` so far (finished unless status is None or running)."""
    record = None if status is None else {"status": status, "metrics": {"accuracy": 0.5}}
    return TrialView(f"t{index:04d}", {"subspace": 0, "params": {}}, status=record,
                     launch={"attempt": 1, "handle": {"pid": 1}, "launcher": "local", "launched_at": NOW - 100},
                     run_state=RunState.SUCCEEDED if status == "completed" else RunState.RUNNING, cost_usd=cost)


def budget_spec(budget: float | None, max_trials: int = 10, concurrent: int = 3):
    spec = make_spec(max_trials=max_trials, concurrent=concurrent)
    from dataclasses import replace

    return replace(spec, limits=replace(spec.limits, max_cost_usd=budget))


def test_expected_cost_of_a_trial():
    assert expected_trial_cost(make_job([])) == 0.0
    # nothing finished: the most a running trial has cost so far (a lower bound)
    assert expected_trial_cost(make_job([priced(0, 0.5, None), priced(1, 1.5, None)])) == 1.5
    # the mean of the finished trials that ran
    assert expected_trial_cost(make_job([priced(0, 2.0), priced(1, 4.0), priced(2, 9.0, None)])) == 3.0


def test_recorded_cost_from_the_launch_record():
    assert recorded_cost(None, NOW) == 0.0
    assert recorded_cost({"cost_usd": 1.25, "spent_usd": 9}, NOW) == 1.25  # final
    launch = {"handle": {"pid": 1}, "launched_at": NOW - 1800, "hourly_price_usd": 3.0, "spent_usd": 0.5}
    assert recorded_cost(launch, NOW) == pytest.approx(0.5 + 1.5)  # earlier attempts + half an hour at $3
    assert recorded_cost({**launch, "hourly_price_usd": None}, NOW) == 0.5


@pytest.mark.parametrize("budget, expected", [
    # finished 2.0 and 4.0 (expected 3.0 a trial); one running at 1.0 (2.0 more to come): committed
    # 6.0 + 1.0 + 2.0 = 9.0
    (None, [3, 4]),          # no budget: the concurrency (3 - 1 running) decides
    (11.9, None),            # 9.0 + 3.0 = 12.0 > 11.9: none
    (12.0, [3]),             # exactly affordable: one
    (14.9, [3]),
    (15.0, [3, 4]),          # two, and the concurrency allows no more
])
def test_no_trial_starts_that_could_cross_the_budget(budget, expected):
    job = make_job([priced(0, 2.0), priced(1, 4.0), priced(2, 1.0, "running")])
    creates = [a for a in decide(budget_spec(budget), job, NOW, None) if isinstance(a, CreateTrials)]
    assert creates == ([CreateTrials(expected)] if expected else [])


def test_nothing_known_nothing_held_back():
    # no trial has cost anything yet (a free launcher, or nothing launched): the concurrency decides
    assert decide(budget_spec(1.0), make_job([]), NOW, None) == [
        CreateTrials([0, 1, 2]), Launch("t0000", 1), Launch("t0001", 1), Launch("t0002", 1)]


def test_a_spent_budget_stops_the_job():
    job = make_job([priced(0, 6.0), priced(1, 4.5, "running")])
    actions = decide(budget_spec(10.0), job, NOW, None)
    reason = "budget: max_cost_usd=10 reached ($10.50 spent)"
    assert actions == [SetJobStatus(JobStatus.STOPPING, reason), RequestStop("t0001", reason)]


def test_the_job_ends_when_no_further_trial_is_affordable():
    # nothing runs, 8 trials still to create, but another trial (3.0) would cross 10.0
    job = make_job([priced(0, 3.0), priced(1, 4.0), priced(2, 2.0)])
    actions = decide(budget_spec(10.0), job, NOW, None)
    reason = "budget: max_cost_usd=10 would be crossed by another trial ($9.00 spent, about $3.00 a trial)"
    assert actions == [SetJobStatus(JobStatus.STOPPING, reason), Publish(final=True),
                       SetJobStatus(JobStatus.COMPLETED, reason)]


# ------------------------------------------------------------------------------------------------
# Through the controller: trials priced by their launcher, costs saved in the bucket


def test_budget_ends_the_sweep_early(local_root):
    root, clock = Root(local_root), FakeClock()
    # $36 an hour, 10 s an epoch, 4 epochs: about $0.40 to $0.45 a trial (polls every 5 s)
    sim = SimLauncher(clock=clock, price_per_hour=36.0, epoch_s=10.0)
    controller = Controller(root, clock=clock, launchers={"local": sim})
    submit(root, "capped", sim_job(max_trials=10, concurrent=2, epochs=4, extra="limits_:\n")
           .replace("limits:\n", "limits:\n  max_cost_usd: 1.5\n").replace("limits_:\n", ""))
    run_until_done(controller, clock)
    state = root.storage.read_json(root.job_state("capped"))
    assert state["status"] == "completed"
    assert state["reason"].startswith("budget: max_cost_usd=1.5 would be crossed by another trial")
    trials = root.trial_ids("capped")
    assert len(trials) == 3  # two at once, then one more that the remaining $0.6 could pay for
    costs = [root.read_trial("capped", t, FILES.launch)["cost_usd"] for t in trials]
    assert all(0.39 < c < 0.46 for c in costs), costs
    assert state["cost_usd"] == pytest.approx(sum(costs)) and state["cost_usd"] <= 1.5
    board = root.storage.read_json(root.leaderboard("capped"))
    assert board["cost_usd"] == pytest.approx(sum(costs))
    assert {row["trial_id"]: row["cost_usd"] for row in board["trials"]} == dict(zip(trials, costs))
    status = subprocess.run([CLI, "status", "--root", local_root], capture_output=True, text=True).stdout
    assert f"${sum(costs):.2f}" in status
    leaderboard = subprocess.run([CLI, "leaderboard", "capped", "--root", local_root, "--format", "csv"],
                                 capture_output=True, text=True).stdout
    assert ",cost_usd," in leaderboard.splitlines()[0]


def test_running_trials_are_stopped_once_the_budget_is_spent(local_root):
    root, clock = Root(local_root), FakeClock()
    sim = SimLauncher(clock=clock, price_per_hour=36.0, epoch_s=10.0)  # $0.10 an epoch
    controller = Controller(root, clock=clock, launchers={"local": sim})
    submit(root, "small", sim_job(max_trials=6, concurrent=3, epochs=10)
           .replace("limits:\n", "limits:\n  max_cost_usd: 0.9\n"))
    run_until_done(controller, clock)
    state = root.storage.read_json(root.job_state("small"))
    assert state["status"] == "completed" and state["reason"].startswith("budget: max_cost_usd=0.9 reached")
    statuses = [root.read_trial("small", t, FILES.status) for t in root.trial_ids("small")]
    assert [s["status"] for s in statuses] == ["stopped"] * 3  # three started at once, none finished
    assert all(s["reason"].startswith("budget") for s in statuses)
    assert all(s["metrics"]["accuracy"] > 0 for s in statuses)  # each keeps its best so far
    # the pass that sees the budget spent asks the trials to stop, and they end by the next pass:
    # at most two passes' worth of three trials ($0.05 each a pass) over
    assert 0.9 <= state["cost_usd"] <= 0.9 + 2 * 3 * 0.05 + 1e-9


def test_relaunch_carries_the_cost_of_the_lost_attempt(local_root):
    root, clock = Root(local_root), FakeClock()
    sim = SimLauncher(clock=clock, price_per_hour=36.0, epoch_s=10.0, lose={"t0000"})
    controller = Controller(root, clock=clock, launchers={"local": sim})
    submit(root, "lost", sim_job(max_trials=1, concurrent=1, epochs=3))
    run_until_done(controller, clock)
    launch = root.read_trial("lost", "t0000", FILES.launch)
    assert launch["attempt"] == 2 and launch["spent_usd"] > 0
    assert launch["cost_usd"] > launch["spent_usd"]  # both attempts are paid for
    assert root.storage.read_json(root.job_state("lost"))["cost_usd"] == pytest.approx(launch["cost_usd"])


def test_a_free_launcher_never_limits(local_root):
    root, clock = Root(local_root), FakeClock()
    controller = Controller(root, clock=clock, launchers={"local": SimLauncher(clock=clock)})
    submit(root, "free", sim_job(max_trials=4, concurrent=2, epochs=2)
           .replace("limits:\n", "limits:\n  max_cost_usd: 0.01\n"))
    run_until_done(controller, clock)
    assert len(root.trial_ids("free")) == 4
    assert root.storage.read_json(root.job_state("free"))["cost_usd"] == 0.0
