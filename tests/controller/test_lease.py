"""Per-job leases: one controller acts on a job, the others only read it; takeover after expiry, on
release, or at once from a dead controller of the same machine; and two controllers on one root
finish a sweep with every trial launched exactly once; on a folder, S3, GCS and Azure Blob Storage
(`exclusive_root_url`: the conditional create that leases rest on differs per store)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from simulated import FakeClock, SimLauncher, run_until_done, sim_job, submit
from synthetic import write_job, write_squares

from automl_images.controller.lease import Leases
from automl_images.controller.loop import Controller
from automl_images.core.layout import FILES, Root

CLI = str(Path(sys.executable).with_name("automl-images"))
JOB = "job-1"


def leases(root: Root, clock, owner: str, ttl: float = 60.0) -> Leases:
    return Leases(root, owner=owner, ttl_s=ttl, clock=clock, margin_s=10.0)


def test_one_holder_and_renewal_at_half_life(local_root):
    root, clock = Root(local_root), FakeClock()
    a, b = leases(root, clock, "a"), leases(root, clock, "b")
    assert a.acquire(JOB) and a.holds(JOB)
    assert root.lease_numbers(JOB) == [0]
    assert not b.acquire(JOB) and not b.holds(JOB)
    assert b.holder(JOB)["owner"] == "a"
    clock.advance(29)  # more than half the TTL left: nothing written
    assert a.acquire(JOB) and root.lease_numbers(JOB) == [0]
    clock.advance(2)   # under half left: renewed as the next number, the old one deleted
    assert a.acquire(JOB) and root.lease_numbers(JOB) == [1]
    assert root.storage.read_json(root.lease(JOB, 1))["expires_at"] == clock.now + 60
    clock.advance(59)  # b's clock: a's renewed lease has not expired
    assert not b.acquire(JOB)


def test_a_lease_not_renewed_is_taken_over_after_expiry(exclusive_root_url):
    root, clock = Root(exclusive_root_url), FakeClock()
    a, b = leases(root, clock, "a"), leases(root, clock, "b")
    assert a.acquire(JOB)
    clock.advance(49)
    assert a.holds(JOB) and not b.acquire(JOB)
    clock.advance(2)   # 51 s: inside the margin, a stops acting; b still waits for the expiry
    assert not a.holds(JOB) and not b.acquire(JOB)
    clock.advance(10)  # expired
    assert b.acquire(JOB) and b.holds(JOB)
    assert root.lease_numbers(JOB) == [1]
    assert not a.acquire(JOB) and not a.holds(JOB)  # a comes back: b holds it now


def test_release_hands_over_at_once(local_root):
    root, clock = Root(local_root), FakeClock()
    a, b = leases(root, clock, "a"), leases(root, clock, "b")
    assert a.acquire(JOB)
    a.release_all()
    assert not a.holds(JOB)
    assert root.lease_numbers(JOB) == [1]  # a's release; 0 (a's lease) deleted
    assert root.storage.read_json(root.lease(JOB, 1))["released"] is True
    assert b.acquire(JOB)
    assert root.lease_numbers(JOB) == [2]  # b's


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_dead_controller_of_this_machine_is_taken_over_at_once(local_root):
    root, clock = Root(local_root), FakeClock()
    b = leases(root, clock, "b")
    record = {"owner": "dead", "number": 0, "machine": b.machine, "pid": dead_pid(), "process_started": None,
              "expires_at": clock.now + 3600, "released": False}
    root.storage.write_json(root.lease(JOB, 0), record)
    assert b.acquire(JOB)
    # a live process of this machine is not: our own pid, started when we did
    root2 = Root(local_root + "-2")
    alive = dict(record, pid=os.getpid(), process_started=b.process_started)
    root2.storage.write_json(root2.lease(JOB, 0), alive)
    assert not leases(root2, clock, "c").acquire(JOB)
    # nor a process of another machine, dead pid or not
    root3 = Root(local_root + "-3")
    root3.storage.write_json(root3.lease(JOB, 0), dict(record, machine="elsewhere/boot/ns"))
    assert not leases(root3, clock, "c").acquire(JOB)


def test_a_number_recreated_from_a_stale_listing_does_not_hold(local_root):
    root, clock = Root(local_root), FakeClock()
    a = leases(root, clock, "a")
    assert a.acquire(JOB)
    for _ in range(3):
        clock.advance(31)
        assert a.acquire(JOB)
    assert root.lease_numbers(JOB) == [3]
    # b listed long ago, saw number 1 as the highest, and creates 2 (deleted since, so it succeeds)
    stale = StaleListing(root.storage, first=[1])
    b = leases(stale, clock, "b")
    assert not b.acquire(JOB) and not b.holds(JOB)
    assert root.lease_numbers(JOB) == [2, 3]  # b did create 2, and backed off on seeing 3
    assert a.holds(JOB)


class StaleListing(Root):
    """A root whose first listing of a job's leases is `first`, as an old listing would be."""

    def __init__(self, storage, first: list[int]):
        super().__init__(storage)
        self.first: list[int] | None = first

    def lease_numbers(self, job: str) -> list[int]:
        numbers, self.first = self.first, None
        return numbers if numbers is not None else super().lease_numbers(job)


def test_racing_controllers_one_winner(exclusive_root_url):
    root = Root(exclusive_root_url)
    won = []

    def race(i: int) -> None:
        if leases(root, time.time, f"c{i}").acquire(JOB):
            won.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert root.storage.read_json(root.lease(JOB, root.lease_numbers(JOB)[-1]))["owner"] == f"c{won[0]}"


# ------------------------------------------------------------------------------------------------
# Controllers


def test_two_controllers_at_once_launch_each_trial_once(exclusive_root_url):
    root = Root(exclusive_root_url)
    # a launch takes a while, as a cloud's does: without leases the other controller would see the
    # launch intent without its handle and launch the trial again
    sim = SimLauncher(epoch_s=0.05, launch_delay_s=0.2)
    submit(root, "shared", sim_job(max_trials=4, concurrent=2, epochs=2))
    logs: list[list[str]] = [[], []]
    controllers = [Controller(root, log=logs[i].append, launchers={"local": sim}, owner=f"c{i}") for i in (0, 1)]
    errors = []

    def loop(controller) -> None:
        try:
            controller.run(interval_s=0.02, until_done=True)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(c,)) for c in controllers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert root.storage.read_json(root.job_state("shared"))["status"] == "completed"
    assert root.trial_ids("shared") == [f"t{i:04d}" for i in range(4)]
    assert sim.launches == {f"t{i:04d}": 1 for i in range(4)}
    for trial in root.trial_ids("shared"):
        assert root.read_trial("shared", trial, FILES.launch)["attempt"] == 1
    watching = [i for i in (0, 1) if any("only watches it" in line for line in logs[i])]
    assert len(watching) == 1  # the other controller only watched
    launched = [line for log in logs for line in log if " launched on " in line]
    assert len(launched) == 4


def test_a_silent_controller_is_replaced_after_the_ttl(local_root):
    root, clock = Root(local_root), FakeClock()
    sim = SimLauncher(clock=clock, epoch_s=10.0)
    submit(root, "handover", sim_job(max_trials=4, concurrent=2, epochs=3))
    first = Controller(root, clock=clock, launchers={"local": sim}, owner="first", lease_ttl_s=60)
    second = Controller(root, clock=clock, launchers={"local": sim}, owner="second", lease_ttl_s=60)
    for _ in range(3):  # first accepts the job and launches two trials, second only watches
        first.reconcile_once()
        second.reconcile_once()
        clock.advance(5)
    assert sim.launches == {"t0000": 1, "t0001": 1}
    # first goes silent (a hung machine: no release, no renewal); second waits out the lease
    for _ in range(12):
        second.reconcile_once()
        clock.advance(5)
        if sim.launches.get("t0002"):
            break
    assert 45 <= clock.now - 1_000_000 - 15 <= 65
    run_until_done(second, clock)
    assert root.storage.read_json(root.job_state("handover"))["status"] == "completed"
    # the running trials were adopted, not launched again
    assert sim.launches == {f"t{i:04d}": 1 for i in range(4)}
    assert first.reconcile_once() == 0  # first comes back to a finished job, and does nothing


@pytest.mark.slow
def test_two_controller_processes_finish_one_sweep(root_url, tmp_path):
    data = tmp_path / "data"
    write_squares(data, per_class=3, validation_per_class=1)
    job = write_job(data, max_trials=3, concurrent=2, epochs=1)
    submitted = subprocess.run([CLI, "submit", str(job), "--root", root_url, "--job-id", "pair"],
                               capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    command = [CLI, "controller", "--root", root_url, "--until-done", "--interval", "0.2"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=400)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    root = Root(root_url)
    assert root.storage.read_json(root.job_state("pair"))["status"] == "completed", outputs
    trials = root.trial_ids("pair")
    assert trials == ["t0000", "t0001", "t0002"]
    launched = [line for out in outputs for line in out.splitlines() if " launched on " in line]
    assert sorted(line.split(" trial ")[1].split()[0] for line in launched) == trials, outputs
    for trial in trials:
        assert root.read_trial("pair", trial, FILES.launch)["attempt"] == 1
        assert root.read_trial("pair", trial, FILES.status)["status"] == "completed"
    assert sum("only watches it" in out for out in outputs) >= 1
    # The job ended and both exited cleanly: one lease object is left, and it says it was released.
    [number] = root.lease_numbers("pair")
    assert root.storage.read_json(root.lease("pair", number))["released"] is True
