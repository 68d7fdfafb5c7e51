"""The SkyPilot launcher's logic against a small fake of its one boundary with SkyPilot (`SkyJobs`:
launch, queue, cancel, logs): SkyPilot's statuses as RunState, idempotent launches that adopt a
live managed job, cost, and no credential ever written to the bucket, a log or an error."""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
from synthetic import write_squares

from automl_images.controller.launch import LaunchRequest, RunState, skypilot
from automl_images.controller.launch.extras import skypilot_installed
from automl_images.controller.launch.skypilot import Price, Record, SkyJobs, SkyPilotError, SkyPilotLauncher
from automl_images.controller.loop import Controller
from automl_images.controller.spec import parse_job
from automl_images.core.layout import FILES, Root

IMAGE = "ghcr.io/you/automl-images-trainer:0.1.0"
COMPUTE = f"""\
compute:
  launcher: skypilot
  accelerators: [A10G:1, L4:1]
  clouds: [aws]
  image: {IMAGE}
"""
needs_skypilot = pytest.mark.skipif(not skypilot_installed(),
                                    reason="SkyPilot is not installed (the job file names it)")


class FakeJobs:
    """SkyPilot's managed jobs as a dict, answering as `SkyJobs` does. `name` matches as a
    substring, like the queue's name_match."""

    def __init__(self):
        self.records: dict[int, Record] = {}
        self.tasks: dict[int, dict] = {}
        self.cancelled: list[int] = []
        self.queries = 0
        self.closed = 0

    def launch(self, task: dict, name: str) -> int:
        job_id = max(self.records, default=0) + 1
        self.records[job_id] = Record(job_id, name, "PENDING")
        self.tasks[job_id] = copy.deepcopy(task)
        return job_id

    def queue(self, name: str | None = None, job_id: int | None = None) -> list[Record]:
        self.queries += 1
        return [r for r in self.records.values()
                if (name is None or name in r.name) and (job_id is None or r.job_id == job_id)]

    def cancel(self, job_id: int) -> None:
        self.cancelled.append(job_id)
        self.set(job_id, "CANCELLING")

    def logs(self, job_id: int) -> bytes | None:
        return f"managed job {job_id}: trial output\n".encode()

    def close(self) -> None:
        self.closed += 1

    def set(self, job_id: int, status: str, **fields) -> None:
        self.records[job_id] = replace(self.records[job_id], status=status, **fields)


class FixedPrices:
    """Stands in for CatalogPricer (whose catalog lookups tests/controller/test_sky_task.py runs for real)."""

    def plan(self, task: dict) -> Price:
        return Price(0.38, "aws", "g5.xlarge", "us-west-2", True)

    def instance(self, record: Record) -> float | None:
        return {"g5.xlarge": 0.38, "g6.xlarge": 0.28}.get(record.instance_type)


def compute(extra: str = ""):
    return parse_job(f"task: image-classification\ntraining_data: t.jsonl\n{COMPUTE}{extra}", "job.yaml").compute


def request(trial: str = "t0000", attempt: int = 1, **kwargs) -> LaunchRequest:
    return LaunchRequest("sweep", trial, f"s3://b/automl/jobs/sweep/trials/{trial}/spec.json", attempt,
                         threads=2, compute=kwargs.pop("compute", None) or compute(), **kwargs)


@pytest.fixture
def jobs() -> FakeJobs:
    return FakeJobs()


@pytest.fixture
def launcher(jobs) -> SkyPilotLauncher:
    return SkyPilotLauncher(jobs=jobs, pricer=FixedPrices(), refresh_s=0)


def test_launch_sends_the_trial_task_under_the_trial_name(jobs, launcher):
    handle = launcher.launch(request())
    assert handle["job_id"] == 1 and handle["name"] == "sweep-t0000" and not handle.get("adopted")
    assert handle["hourly_price_usd"] == 0.38
    assert handle["planned"] == {"cloud": "aws", "instance_type": "g5.xlarge", "region": "us-west-2", "use_spot": True}
    task = jobs.tasks[1]
    assert task["name"] == "sweep-t0000"
    assert task["envs"] == {"SPEC_URL": "s3://b/automl/jobs/sweep/trials/t0000/spec.json"}
    assert task["resources"]["ordered"] == [{"accelerators": "A10G:1", "infra": "aws"},
                                            {"accelerators": "L4:1", "infra": "aws"}]
    assert task["resources"]["image_id"] == f"docker:{IMAGE}" and task["resources"]["use_spot"] is True
    assert "automl-images trial run" in task["run"] and "secrets" not in task
    json.dumps(handle)  # saved in launch.json


@pytest.mark.parametrize("status, state", [
    ("PENDING", RunState.PENDING), ("STARTING", RunState.PENDING), ("RUNNING", RunState.RUNNING),
    ("RECOVERING", RunState.RECOVERING), ("SUCCEEDED", RunState.SUCCEEDED), ("FAILED", RunState.FAILED),
    ("FAILED_SETUP", RunState.FAILED), ("FAILED_PRECHECKS", RunState.FAILED),
    ("FAILED_NO_RESOURCE", RunState.GONE), ("FAILED_CONTROLLER", RunState.GONE),
    ("CANCELLING", RunState.RUNNING), ("CANCELLED", RunState.CANCELLED), ("WINDING_DOWN", RunState.RUNNING),
    ("A_STATUS_OF_SKYPILOT_0_15", RunState.PENDING)])
def test_skypilot_statuses_as_run_states(jobs, launcher, status, state):
    handle = launcher.launch(request())
    jobs.set(handle["job_id"], status)
    assert launcher.poll(handle) is state


def test_a_preempted_trial_is_recovering_not_failed_through_its_whole_life(jobs, launcher):
    handle = launcher.launch(request())
    seen = []
    for status in ("PENDING", "STARTING", "RUNNING", "RECOVERING", "STARTING", "RUNNING", "SUCCEEDED"):
        jobs.set(handle["job_id"], status)
        seen.append(launcher.poll(handle))
    assert seen == [RunState.PENDING, RunState.PENDING, RunState.RUNNING, RunState.RECOVERING,
                    RunState.PENDING, RunState.RUNNING, RunState.SUCCEEDED]
    assert not any(s.is_terminal() for s in seen[:-1])


def test_a_job_the_queue_no_longer_knows_is_gone(jobs, launcher):
    handle = launcher.launch(request())
    del jobs.records[handle["job_id"]]
    assert launcher.poll(handle) is RunState.GONE


def test_launching_again_adopts_the_live_job(jobs, launcher):
    first = launcher.launch(request())
    jobs.set(first["job_id"], "RUNNING")
    # A restarted controller (a fresh launcher) launches the same trial: no second managed job.
    again = SkyPilotLauncher(jobs=jobs, pricer=FixedPrices(), refresh_s=0).launch(request())
    assert again["job_id"] == first["job_id"] and again["adopted"] is True
    assert list(jobs.records) == [1]
    jobs.set(1, "RECOVERING")  # recovering is alive too
    assert launcher.launch(request())["job_id"] == 1 and list(jobs.records) == [1]


def test_a_finished_job_is_not_adopted_and_names_are_matched_exactly(jobs, launcher):
    jobs.records[7] = Record(7, "big-sweep-t0000", "RUNNING")   # another job whose name contains ours
    jobs.records[8] = Record(8, "sweep-t0000", "FAILED_NO_RESOURCE")  # our earlier attempt, over
    handle = launcher.launch(request(attempt=2))
    assert handle["job_id"] == 9 and not handle.get("adopted")
    assert jobs.cancelled == []


def test_duplicates_from_a_race_are_cancelled_and_the_oldest_kept(jobs, launcher):
    jobs.records[3] = Record(3, "sweep-t0000", "RUNNING")
    jobs.records[5] = Record(5, "sweep-t0000", "PENDING")
    handle = launcher.launch(request())
    assert handle["job_id"] == 3 and handle["adopted"]
    assert jobs.cancelled == [5]


def test_cancel_and_logs_go_to_the_managed_job(jobs, launcher):
    handle = launcher.launch(request())
    jobs.set(1, "RUNNING")
    launcher.cancel(handle)
    assert jobs.cancelled == [1] and launcher.poll(handle) is RunState.RUNNING  # CANCELLING: not over yet
    jobs.set(1, "CANCELLED")
    assert launcher.poll(handle) is RunState.CANCELLED
    assert launcher.logs(handle) == b"managed job 1: trial output\n"


def test_the_queue_is_asked_at_most_every_refresh_s(jobs):
    now = [1000.0]
    launcher = SkyPilotLauncher(jobs=jobs, pricer=FixedPrices(), clock=lambda: now[0], refresh_s=10)
    handle = launcher.launch(request())
    before = jobs.queries
    jobs.set(1, "RUNNING")
    assert launcher.poll(handle) is RunState.RUNNING
    jobs.set(1, "SUCCEEDED")
    now[0] += 5
    assert launcher.poll(handle) is RunState.RUNNING  # cached
    now[0] += 6
    assert launcher.poll(handle) is RunState.SUCCEEDED
    now[0] += 60
    assert launcher.poll(handle) is RunState.SUCCEEDED  # terminal: never asked again
    assert jobs.queries - before == 2


def test_cost_is_the_price_of_the_machine_it_ran_on(jobs, launcher):
    handle = launcher.launch(request())
    # Before the queue names a machine: the planned one's price.
    assert launcher.cost(handle, 1800) == pytest.approx(0.19)
    # The optimizer fell back to L4; once seen, its price counts, even after the queue forgets it.
    jobs.set(1, "RUNNING", instance_type="g6.xlarge", use_spot=True, cloud="aws", region="us-west-2")
    launcher.poll(handle)
    jobs.set(1, "SUCCEEDED", instance_type=None, cloud=None)
    launcher.poll(handle)
    assert launcher.cost(handle, 7200) == pytest.approx(0.56)
    assert launcher.cost({**handle, "job_id": 99, "hourly_price_usd": None}, 60) is None  # unknown price


def test_credentials_are_refused_as_envs_and_secrets_go_as_secrets(jobs, launcher, monkeypatch):
    with pytest.raises(ValueError) as info:
        launcher.launch(request(env={"AWS_SECRET_ACCESS_KEY": "do-not-print-me"}))
    assert "AWS_SECRET_ACCESS_KEY" in str(info.value) and "do-not-print-me" not in str(info.value)
    with_secret = compute("  secrets: [R2_SECRET_ACCESS_KEY]\n")
    monkeypatch.delenv("R2_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(ValueError, match="R2_SECRET_ACCESS_KEY, which the controller's environment does not set"):
        launcher.launch(request(compute=with_secret))
    monkeypatch.setenv("R2_SECRET_ACCESS_KEY", "r2-secret-value")
    handle = launcher.launch(request(compute=with_secret))
    assert jobs.tasks[handle["job_id"]]["secrets"] == {"R2_SECRET_ACCESS_KEY": "r2-secret-value"}
    assert "r2-secret-value" not in json.dumps(handle)


@needs_skypilot
def test_nothing_the_controller_writes_holds_a_credential(tmp_path, jobs, monkeypatch):
    """A whole sweep through the controller loop with the skypilot launcher: the bucket (specs,
    launch.json, status, leaderboard, launcher logs) and the controller's log hold no credential
    value, and only SkyPilot's `secrets` carry the one the job names."""
    secrets = {"AWS_SECRET_ACCESS_KEY": "aws-secret-0123456789", "AWS_SESSION_TOKEN": "aws-session-token-42",
               "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY000", "R2_SECRET_ACCESS_KEY": "r2-secret-abcdef",
               "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "gcp-key-file.json")}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    data = tmp_path / "data"
    write_squares(data, per_class=2, validation_per_class=1)
    job = (f"task: image-classification\ntraining_data: {data / 'train.jsonl'}\n"
           f"validation_data: {data / 'val.jsonl'}\nlimits:\n  max_trials: 2\n  max_concurrent_trials: 2\n"
           f"arguments:\n  pretrained: 0\n{COMPUTE}  secrets: [R2_SECRET_ACCESS_KEY]\n")
    root = Root(str(tmp_path / "root"))
    root.storage.write_text(root.inbox_key("creds.yaml"), job)
    lines: list[str] = []
    launcher = SkyPilotLauncher(jobs=jobs, pricer=FixedPrices(), refresh_s=0)
    controller = Controller(root, log=lines.append, launchers={"skypilot": launcher})

    controller.reconcile_once()
    assert sorted(r.name for r in jobs.records.values()) == ["creds-t0000", "creds-t0001"]
    # t0000 is preempted for good (relaunched: attempt 2), t0001 ends as the trainer would.
    jobs.set(1, "FAILED_NO_RESOURCE")
    controller.reconcile_once()
    assert root.read_trial("creds", "t0000", FILES.launch)["attempt"] == 2
    for trial, job_id in (("t0000", 3), ("t0001", 2)):
        status = {"status": "completed", "epochs": 1, "metrics": {"accuracy": 0.5},
                  "history": [{"epoch": 1, "accuracy": 0.5}]}
        root.storage.write_json(root.trial_key("creds", trial, FILES.status), status)
        jobs.set(job_id, "SUCCEEDED")
    controller.reconcile_once()
    assert root.storage.read_json(root.job_state("creds"))["status"] == "completed"

    written = [p for p in Path(tmp_path / "root").rglob("*") if p.is_file()]
    assert any(p.name == "launch.json" for p in written) and any(p.name == "spec.json" for p in written)
    assert any(p.name.startswith("launcher-attempt-") for p in written)
    text = "\n".join(p.read_text(errors="replace") for p in written) + "\n".join(lines)
    for name, value in secrets.items():
        assert value not in text, f"the value of {name} was written"
    for job_id, task in jobs.tasks.items():
        assert task["secrets"] == {"R2_SECRET_ACCESS_KEY": "r2-secret-abcdef"}
        plain = json.dumps({k: v for k, v in task.items() if k != "secrets"})
        assert not any(value in plain for value in secrets.values()), f"job {job_id}'s task holds a credential"


# -- SkyJobs itself: SkyPilot's SDK replaced at its calls (sky.jobs.*, sky.get, sky.api_stop) --------

class SdkCalls:
    """The SDK functions SkyJobs calls, answering as told; what was called is kept."""

    def __init__(self, monkeypatch, server_down: bool, error: BaseException | None = None):
        import sky

        self.calls: list[str] = []
        self.error = error
        monkeypatch.setattr(skypilot, "_local_server_down", lambda: server_down)
        monkeypatch.setattr(sky.jobs, "cancel", lambda job_ids: self.call("cancel"))
        monkeypatch.setattr(sky, "get", lambda request: request)
        monkeypatch.setattr(sky, "api_stop", lambda: self.calls.append("api_stop"))

    def call(self, name: str):
        self.calls.append(name)
        if self.error is not None:
            raise self.error
        return "request-id"


@needs_skypilot
def test_a_skypilot_failure_is_named_as_skypilots_without_its_markup(monkeypatch):
    payload = '<sky-payload>{"code": 7}</sky-payload>\n'
    SdkCalls(monkeypatch, server_down=False,
             error=RuntimeError(f"{payload}\x1b[31mFailed to fetch the AWS catalog\x1b[0m"))
    with pytest.raises(SkyPilotError) as caught:
        SkyJobs().cancel(3)
    assert str(caught.value) == "SkyPilot failed cancelling managed job 3: RuntimeError: Failed to fetch the AWS catalog"
    assert not caught.value.transient  # SkyPilot answered: a refusal counts towards failing the job


@needs_skypilot
def test_an_api_server_that_does_not_answer_is_transient(monkeypatch):
    from sky import exceptions

    SdkCalls(monkeypatch, server_down=False, error=exceptions.ApiServerConnectionError("http://127.0.0.1:1"))
    with pytest.raises(SkyPilotError) as caught:
        SkyJobs().cancel(3)
    assert caught.value.transient and str(caught.value).startswith("SkyPilot failed cancelling managed job 3")


@needs_skypilot
@pytest.mark.parametrize("server_down", [True, False])
def test_close_stops_the_local_api_server_only_when_this_process_started_it(monkeypatch, server_down):
    sdk = SdkCalls(monkeypatch, server_down=server_down)
    jobs = SkyJobs()
    jobs.close()
    assert sdk.calls == []  # no call made: nothing started
    jobs.cancel(3)
    jobs.close()
    jobs.close()
    assert sdk.calls == ["cancel", "api_stop"] if server_down else ["cancel"]


def test_the_launcher_closes_its_skypilot_boundary(jobs, launcher):
    launcher.close()
    assert jobs.closed == 1


class UnansweringJobs(FakeJobs):
    """SkyPilot failing every queue request: as SkyJobs raises it (transient: its API server did not
    answer, with a ConnectionError underneath, like a bucket's; or a refusal)."""

    def __init__(self, transient: bool):
        super().__init__()
        self.transient = transient

    def queue(self, name: str | None = None, job_id: int | None = None) -> list[Record]:
        try:
            raise ConnectionError("connection refused") if self.transient else ValueError("No enabled cloud")
        except Exception as exc:
            raise SkyPilotError(f"SkyPilot failed reading the managed jobs queue: {type(exc).__name__}: {exc}",
                                transient=self.transient) from exc


@pytest.mark.parametrize("transient", [True, False])
def test_skypilot_failures_are_said_as_skypilots_and_only_refusals_fail_the_job(tmp_path, transient):
    from automl_images.controller.loop import MAX_JOB_ERRORS

    data = tmp_path / "data"
    write_squares(data, per_class=2, validation_per_class=1)
    root = Root(str(tmp_path / "root"))
    root.storage.write_text(root.inbox_key("sky.yaml"), f"task: image-classification\ntraining_data: "
                            f"{data / 'train.jsonl'}\nlimits:\n  max_trials: 1\n{COMPUTE}")
    jobs = UnansweringJobs(transient)
    lines: list[str] = []
    controller = Controller(root, log=lines.append,
                            launchers={"skypilot": SkyPilotLauncher(jobs=jobs, pricer=FixedPrices(), refresh_s=0)})
    controller.run(once=True)
    for _ in range(MAX_JOB_ERRORS):
        controller.reconcile_once()
    failures = [line for line in lines if "SkyPilot failed" in line]
    assert failures and all("Traceback" not in line and "bucket" not in line for line in failures)
    assert failures[0] == ("job sky: SkyPilot failed reading the managed jobs queue: " +
                           ("ConnectionError: connection refused; trying again on the next pass" if transient
                            else "ValueError: No enabled cloud"))
    state = root.storage.read_json(root.job_state("sky"))
    # A SkyPilot that does not answer is waited for; one that refuses fails the job like any other error.
    assert state["status"] == ("running" if transient else "failed"), state
    assert jobs.closed == 1  # run() closes its launchers on the way out
