"""A bucket that fails now and then (connection resets, 5xx, throttling) and once for longer than the
storage layer's retries: the sweep still finishes, nothing is lost or done twice, and the controller
says what happened.

The bucket is a small fsspec filesystem we own (`flaky://`): a local folder whose calls fail on a
fixed schedule, so the test is the same every run."""
from __future__ import annotations

import threading

import fsspec
from fsspec.implementations.local import LocalFileSystem
from simulated import FakeClock, SimLauncher, sim_job, submit

from automl_images.controller.loop import Controller
from automl_images.core.layout import FILES, Root

ERRORS = [ConnectionError("Connection reset by peer"),
          OSError("An error occurred (SlowDown) when calling the PutObject operation: Please reduce your request rate"),
          OSError("503 Service Unavailable"),
          OSError("An error occurred (InternalError): We encountered an internal error. Please try again.")]


class FlakyFileSystem(LocalFileSystem):
    """A local folder behind `flaky://` whose calls fail: every 9th alone (the retries absorb it),
    and calls OUTAGE_START to OUTAGE_START + OUTAGE_CALLS all (longer than the 5 tries of
    core.storage.with_retries)."""
    protocol = "flaky"
    OUTAGE_START, OUTAGE_CALLS = 150, 6
    calls = 0
    failures = 0
    lock = threading.Lock()

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith("flaky://"):
            path = path[len("flaky://"):]
        return super()._strip_protocol(path)

    def _maybe_fail(self) -> None:
        with FlakyFileSystem.lock:
            FlakyFileSystem.calls += 1
            n = FlakyFileSystem.calls
            fail = n % 9 == 0 or self.OUTAGE_START <= n < self.OUTAGE_START + self.OUTAGE_CALLS
            if fail:
                FlakyFileSystem.failures += 1
        if fail:
            raise ERRORS[n % len(ERRORS)]

    def cat_file(self, path, *args, **kwargs):
        self._maybe_fail()
        return super().cat_file(path, *args, **kwargs)

    def pipe_file(self, path, value, *args, **kwargs):
        self._maybe_fail()
        self.makedirs(self._parent(path), exist_ok=True)
        return super().pipe_file(path, value, *args, **kwargs)

    def ls(self, path, *args, **kwargs):
        self._maybe_fail()
        return super().ls(path, *args, **kwargs)

    def exists(self, path, **kwargs):
        self._maybe_fail()
        return super().exists(path, **kwargs)

    def rm_file(self, path):
        self._maybe_fail()
        return super().rm_file(path)

    def find(self, path, *args, **kwargs):
        self._maybe_fail()
        return super().find(path, *args, **kwargs)


def test_a_flaky_bucket_does_not_fail_the_job(tmp_path):
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    FlakyFileSystem.calls = FlakyFileSystem.failures = 0
    root, clock = Root(f"flaky://{tmp_path}/root"), FakeClock()
    sim = SimLauncher(clock=clock, epoch_s=5.0)
    log: list[str] = []
    controller = Controller(root, log=log.append, clock=clock, launchers={"local": sim})
    submit(root, "flaky", sim_job(max_trials=4, concurrent=2, epochs=3))
    for _ in range(200):
        if not controller.reconcile_once() and root.storage.read_json(root.job_state("flaky")):
            break
        clock.advance(5)
    state = root.storage.read_json(root.job_state("flaky"))
    assert state["status"] == "completed", "\n".join(log)
    assert FlakyFileSystem.failures > 20 and FlakyFileSystem.calls > FlakyFileSystem.OUTAGE_START + 10
    outage = [line for line in log if "the bucket is not answering" in line]
    assert outage and controller.failed_passes >= 1  # the outage outlasted the retries: a pass failed
    assert not [line for line in log if "Traceback" in line]  # and it was no bug
    trials = root.trial_ids("flaky")
    assert trials == ["t0000", "t0001", "t0002", "t0003"]
    for trial in trials:
        assert root.read_trial("flaky", trial, FILES.launch)["attempt"] == 1
        status = root.read_trial("flaky", trial, FILES.status)
        assert status["status"] == "completed" and len(status["history"]) == 3
        assert root.storage.list(root.trial_key("flaky", trial, FILES.metrics_dir)) == \
            ["000001.json", "000002.json", "000003.json"]
    board = root.storage.read_json(root.leaderboard("flaky"))
    assert sorted(row["trial_id"] for row in board["trials"]) == trials
