"""Torn state files: each file the controller reads, cut at a random byte (seeded), with the
controller stopped and while it runs; the job still ends with every trial accounted for (the exact
trial count, each trial once, each finished), no traceback, and the damaged file named in the log.

A torn file is what a tool that does not write atomically, a damaged disk or a hand edit leaves
behind (our own writes are atomic). The trials are simulated (tests/simulated.py); their trainer
keeps its status in memory, as the real one does, and dies when it meets a torn file
(`TrainerStandIn`), so what the test checks is what the controller makes of that.
"""
from __future__ import annotations

import random
from typing import Callable

import pytest
from simulated import FakeClock, SimLauncher, run_until_done, sim_job, submit

from automl_images.controller.launch.base import Handle, RunState
from automl_images.controller.loop import Controller
from automl_images.core import trials
from automl_images.core.layout import FILES, Root
from automl_images.core.records import JobStatus
from automl_images.core.storage import InvalidJSON

JOB = "torn"
TRIALS = 6
# Six learning rates evaluated three at a time for six epochs; ASHA stops some of them at epochs
# 1 and 3 (the learning rates far from the best, 0.02), so stop requests exist to be torn.
SPACE = "  - learning_rate: choice(0.02, 0.0001, 0.005, 0.2, 0.04, 0.0003)\n"
TEXT = sim_job(max_trials=TRIALS, concurrent=3, epochs=6, sampling="grid", space=SPACE,
               extra="early_termination:\n  policy: asha\n")


class TrainerStandIn(SimLauncher):
    """The simulated trainer, which reads its stop request and status back from the trial folder,
    dies (its run failed, no verdict) on a torn one, as a trainer that cannot read it would."""

    def poll(self, handle: Handle) -> RunState:
        try:
            return super().poll(handle)
        except InvalidJSON:
            with self._lock:
                self._runs[handle["spec_url"]]["state"] = RunState.FAILED
            return RunState.FAILED


def running_trial(root: Root, name: str) -> str | None:
    """`name` of a trial that is running (launched, not finished)."""
    for view in trials.read_all(root, JOB, 0.0):
        if view.launched and not view.is_terminal and root.storage.exists(root.trial_key(JOB, view.trial_id, name)):
            return root.trial_key(JOB, view.trial_id, name)
    return None


def stop_request(root: Root) -> str | None:
    for trial in root.trial_ids(JOB):
        key = root.trial_key(JOB, trial, FILES.stop)
        if root.storage.exists(key):
            return key
    return None


def after_two_finished(key: Callable[[Root], str]) -> Callable[[Root], str | None]:
    return lambda root: key(root) if sum(v.is_terminal for v in trials.read_all(root, JOB, 0.0)) >= 2 else None


# What to cut, as soon as it exists (None until then).
TARGETS: dict[str, Callable[[Root], str | None]] = {
    "job state": after_two_finished(lambda root: root.job_state(JOB)),
    "trial status": lambda root: running_trial(root, FILES.status),
    "launch": lambda root: running_trial(root, FILES.launch),
    "stop": stop_request,
    "summary": lambda root: root.trials_summary(JOB) if root.storage.exists(root.trials_summary(JOB)) else None,
    "job spec": after_two_finished(lambda root: root.job_spec(JOB)),
}


def cut(root: Root, key: str, seed: str) -> None:
    """Cut the object's JSON text short at a random byte (seeded by `seed`)."""
    data = root.storage.read_bytes(key)
    root.storage.write_bytes(key, data[:random.Random(seed).randrange(len(data.rstrip()))])


@pytest.mark.parametrize("controller_stopped", [True, False], ids=["controller stopped", "while it runs"])
@pytest.mark.parametrize("target", list(TARGETS))
def test_a_torn_state_file_leaves_every_trial_accounted_for(local_root, target, controller_stopped):
    root, clock = Root(local_root), FakeClock()
    sim = TrainerStandIn(clock=clock, epoch_s=10.0)
    log: list[str] = []
    controller = Controller(root, log=log.append, clock=clock, launchers={"local": sim}, owner="first")
    submit(root, JOB, TEXT)
    for _ in range(200):
        controller.reconcile_once()
        clock.advance(5)
        key = TARGETS[target](root)
        if key is not None:
            break
    else:
        raise AssertionError(f"no {target} file to cut")
    if controller_stopped:
        controller.leases.release_all()
        controller = Controller(root, log=log.append, clock=clock, launchers={"local": sim}, owner="second")
    cut(root, key, f"{target}-{controller_stopped}")
    run_until_done(controller, clock, step_s=5)

    assert not [line for line in log if "Traceback" in line], "\n".join(log)
    state = root.storage.read_json(root.job_state(JOB))
    assert state["status"] == JobStatus.COMPLETED.value, "\n".join(log)
    assert root.trial_ids(JOB) == [f"t{i:04d}" for i in range(TRIALS)]
    views = trials.read_all(root, JOB, clock.now)
    assert [v.trial_id for v in views] == root.trial_ids(JOB) and all(v.is_terminal for v in views)
    board = root.storage.read_json(root.leaderboard(JOB))
    assert sorted(row["trial_id"] for row in board["trials"]) == root.trial_ids(JOB)  # each trial once
    assert all(attempts <= 3 for attempts in sim.launches.values())
    summary = trials.read_summary(root, JOB)  # rewritten whole at the end, whatever was cut
    assert sorted(summary) == root.trial_ids(JOB)
    # The summary is a cache: a torn one is read as absent, silently. A running controller keeps
    # the spec it loaded, and never reads spec.json again: the next controller would rebuild it.
    if target != "summary" and not (target == "job spec" and not controller_stopped):
        url = root.storage.url(key)
        assert any(url in line and "not valid JSON" in line for line in log), "\n".join(log)


def test_a_torn_status_of_a_finished_run_relaunches_it_once(local_root):
    """A verdict lost with its status.json: the run ended without one, as far as anyone can tell,
    so it is launched again (resuming), the rebuilt status written first for its trainer to read."""
    root, clock = Root(local_root), FakeClock()
    sim = TrainerStandIn(clock=clock, epoch_s=10.0)
    log: list[str] = []
    controller = Controller(root, log=log.append, clock=clock, launchers={"local": sim})
    submit(root, JOB, sim_job(max_trials=1, concurrent=1, epochs=3))
    controller.reconcile_once()  # accepted, launched
    controller.reconcile_once()
    handle = root.read_trial(JOB, "t0000", FILES.launch)["handle"]
    clock.advance(30)
    assert sim.poll(handle) is RunState.SUCCEEDED  # the run finished; no pass saw it
    status_key = root.trial_key(JOB, "t0000", FILES.status)
    assert root.storage.read_json(status_key)["status"] == "completed"
    root.storage.write_bytes(status_key, root.storage.read_bytes(status_key)[:40])
    run_until_done(controller, clock, step_s=10)
    assert root.read_trial(JOB, "t0000", FILES.launch)["attempt"] == 2
    status = root.read_trial(JOB, "t0000", FILES.status)
    assert status["status"] == "completed" and [h["epoch"] for h in status["history"]] == [1, 2, 3]
    assert root.storage.read_json(root.job_state(JOB))["status"] == "completed"


def test_a_torn_trial_spec_fails_that_trial_only(local_root):
    root, clock = Root(local_root), FakeClock()
    sim = TrainerStandIn(clock=clock, epoch_s=10.0)
    log: list[str] = []
    controller = Controller(root, log=log.append, clock=clock, launchers={"local": sim})
    submit(root, JOB, sim_job(max_trials=3, concurrent=1, epochs=2))
    controller.reconcile_once()
    spec_key = root.trial_key(JOB, "t0000", FILES.spec)
    cut(root, spec_key, "trial spec")  # its trainer meets it at its next read, and dies
    # A controller that has read the spec keeps the trial's sweep: the trial would fail as a run
    # that ends without a result, MAX_ATTEMPTS times. One that has not reads the torn spec.
    controller.leases.release_all()
    controller = Controller(root, log=log.append, clock=clock, launchers={"local": sim})
    run_until_done(controller, clock, step_s=10)
    assert sim.launches["t0000"] == 1
    assert root.trial_ids(JOB) == ["t0000", "t0001", "t0002"]
    status = root.read_trial(JOB, "t0000", FILES.status)
    assert status["status"] == "failed"
    assert status["error"]["message"].startswith(f"{root.storage.url(spec_key)}: not valid JSON")
    assert [root.read_trial(JOB, t, FILES.status)["status"] for t in ("t0001", "t0002")] == ["completed"] * 2
    assert root.storage.read_json(root.job_state(JOB))["status"] == "completed"
    assert not [line for line in log if "Traceback" in line]


def test_a_torn_state_of_a_failed_job_is_failed_once(local_root):
    root = Root(local_root)
    log: list[str] = []
    controller = Controller(root, log=log.append, clock=FakeClock(), launchers={"local": SimLauncher()})
    submit(root, JOB, sim_job(max_trials=1))
    controller.reconcile_once()
    controller.states.fail(JOB, "the first 3 trial(s) all failed: train.jsonl:3: label is missing")
    state_key = root.job_state(JOB)
    root.storage.write_bytes(state_key, root.storage.read_bytes(state_key)[:25])
    for _ in range(3):
        assert controller.reconcile_once() == 0
    state = root.storage.read_json(state_key)
    assert state["status"] == "failed" and state["reason"].endswith("label is missing")
    assert root.storage.url(state_key) in state["rebuilt"]
    assert len([line for line in log if "rebuilt from the job's folder" in line]) == 1  # once


def test_a_torn_spec_without_its_job_file_fails_the_job_once_naming_it(local_root):
    root = Root(local_root)
    log: list[str] = []
    controller = Controller(root, log=log.append, clock=FakeClock(), launchers={"local": SimLauncher()})
    submit(root, JOB, sim_job(max_trials=2))
    controller.reconcile_once()
    spec_key = root.job_spec(JOB)
    root.storage.write_bytes(spec_key, root.storage.read_bytes(spec_key)[:100])
    root.storage.delete(root.job_file(JOB))
    controller.leases.release_all()  # stopped; the next controller loads the job afresh
    controller = Controller(root, log=log.append, clock=FakeClock(), launchers={"local": SimLauncher()})
    for _ in range(3):
        controller.reconcile_once()
    error = root.storage.read_json(root.job_error(JOB))
    assert error["message"].startswith(f"{root.storage.url(spec_key)}: not valid JSON")
    assert "job.yaml to save it again from is missing" in error["message"]
    assert root.storage.read_json(root.job_state(JOB))["status"] == "failed"
    assert len([line for line in log if line.startswith(f"job {JOB}: failed")]) == 1
    assert not [line for line in log if "Traceback" in line]


def test_status_reads_torn_files_without_writing(local_root, capsys):
    from automl_images.controller.cli import main

    root, clock = Root(local_root), FakeClock()
    sim = SimLauncher(clock=clock, epoch_s=10.0)
    controller = Controller(root, clock=clock, launchers={"local": sim})
    submit(root, JOB, sim_job(max_trials=2, concurrent=2, epochs=2))
    for _ in range(4):
        controller.reconcile_once()
        clock.advance(10)
    keys = [root.job_state(JOB), root.leaderboard(JOB), root.trial_key(JOB, "t0000", FILES.status),
            root.trial_key(JOB, "t0001", FILES.launch)]
    for key in keys:
        if root.storage.exists(key):
            root.storage.write_bytes(key, root.storage.read_bytes(key)[:30])
    before = {key: root.storage.read_bytes(key) for key in keys if root.storage.exists(key)}
    assert main(["status", "--root", local_root]) == 0
    assert main(["status", JOB, "--root", local_root]) == 0
    out = capsys.readouterr().out
    assert f"{JOB}  running" in out and "t0000" in out and "t0001" in out
    assert {key: root.storage.read_bytes(key) for key in before} == before  # status never writes
