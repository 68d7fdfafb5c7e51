"""Outages: a read-only root, permission denied, a full disk, a bucket that vanishes, an endpoint
that does not answer. Each ends in one clear line and a retry on the next pass (the controller), or
a clear failure with exit code 3 (the CLI, `controller --once`, a batch controller once the outage
has lasted its limit); none fails a job, and a trial whose run died meanwhile is resolved once the
outage ends.

As root (as the tests may run) chmod does not stop writes, so the read-only, permission and
full-disk roots are a filesystem double at the fsspec boundary (`outage://`, a local folder whose
writes fail with the error set); the vanished bucket is a moto server's, deleted, and the endpoint
that does not answer is an unused port.
"""
from __future__ import annotations

import errno
import socket

import boto3
import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from simulated import FakeClock, SimLauncher, run_until_done, sim_job, submit
from synthetic import write_job, write_squares

from automl_images.controller.cli import main
from automl_images.controller.launch.base import RunState
from automl_images.controller.loop import MAX_JOB_ERRORS, Controller, Outage
from automl_images.core.layout import FILES, Root

ERRORS = {
    "read-only": (OSError(errno.EROFS, "Read-only file system"), "the root is read-only"),
    "permission denied": (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
    "disk full": (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
}


class OutageFileSystem(LocalFileSystem):
    """A local folder behind `outage://` whose writes raise `error` while it is set."""
    protocol = "outage"
    error: OSError | None = None

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith("outage://"):
            path = path[len("outage://"):]
        return super()._strip_protocol(path)

    def _check(self) -> None:
        if OutageFileSystem.error is not None:
            raise OutageFileSystem.error

    def pipe_file(self, path, value, *args, **kwargs):
        self._check()
        self.makedirs(self._parent(path), exist_ok=True)
        return super().pipe_file(path, value, *args, **kwargs)

    def rm_file(self, path):
        self._check()
        return super().rm_file(path)


@pytest.fixture
def outage_root(tmp_path):
    fsspec.register_implementation("outage", OutageFileSystem, clobber=True)
    OutageFileSystem.error = None
    yield f"outage://{tmp_path}/root"
    OutageFileSystem.error = None


@pytest.mark.parametrize("kind", list(ERRORS))
def test_an_outage_fails_passes_not_the_job_and_no_trial_stays_running(outage_root, kind):
    error, words = ERRORS[kind]
    root, clock = Root(outage_root), FakeClock()
    sim = SimLauncher(clock=clock, epoch_s=10.0)
    log: list[str] = []
    controller = Controller(root, log=log.append, clock=clock, launchers={"local": sim})
    submit(root, "job", sim_job(max_trials=3, concurrent=2, epochs=3))
    for _ in range(3):
        controller.reconcile_once()
        clock.advance(5)
    running = [t for t in root.trial_ids("job") if root.read_trial("job", t, FILES.status, {}).get("status") == "running"]
    assert running
    OutageFileSystem.error = error
    before = len(log)
    for _ in range(MAX_JOB_ERRORS + 3):  # longer than a job's failures are tolerated
        assert controller.reconcile_once() >= 1
        assert controller.outage == words
        clock.advance(5)
    during = log[before:]
    assert during and all(words in line and "trying again on the next pass" in line for line in during)
    assert all("\n" not in line for line in during)  # one line each, no traceback
    for run in sim._runs.values():  # the trials died meanwhile (their disk failed them too)
        run["state"] = RunState.GONE
    OutageFileSystem.error = None
    run_until_done(controller, clock)
    assert controller.outage is None
    assert root.storage.read_json(root.job_state("job"))["status"] == "completed", "\n".join(log)
    assert root.trial_ids("job") == ["t0000", "t0001", "t0002"]
    for trial in running:  # resolved: launched again, resumed, finished
        assert root.read_trial("job", trial, FILES.launch)["attempt"] == 2
        assert root.read_trial("job", trial, FILES.status)["status"] == "completed"


def test_a_vanished_bucket_is_reported_and_a_batch_controller_gives_up(s3_endpoint):
    bucket = f"vanishing-{socket.gethostname().lower()[:8]}-{id(s3_endpoint) % 10000}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    root, clock = Root(f"s3://{bucket}/automl"), FakeClock()
    log: list[str] = []
    controller = Controller(root, log=log.append, clock=clock, launchers={"local": SimLauncher(clock=clock)})
    submit(root, "job", sim_job(max_trials=2))
    controller.reconcile_once()
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=item["Key"])
    s3.delete_bucket(Bucket=bucket)
    assert controller.reconcile_once() == 1  # not "nothing left to run"
    assert controller.outage == "the root is gone"
    assert f"job list: the root is gone (RootMissing: [Errno 2] its bucket does not exist: 's3://{bucket}/automl')" \
        in log[-1]
    with pytest.raises(Outage, match="the root is gone"):
        controller.run(until_done=True, interval_s=0, outage_limit_s=0)


@pytest.fixture
def endpoint_down(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    # botocore's own retries (5 attempts by default) under the storage layer's 5: without this a
    # call takes ~36 s to give up; the outcome is the same
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")


@pytest.mark.parametrize("argv", [["status"], ["controller", "--once"]], ids=["status", "controller --once"])
def test_cli_with_the_endpoint_down_says_so_in_one_line_and_exits_3(endpoint_down, argv, capsys):
    assert main(argv + ["--root", "s3://bucket/automl"]) == 3
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert "the bucket is not answering (EndpointConnectionError: Could not connect" in text, text
    assert "Traceback" not in text


def test_submit_to_a_missing_bucket_or_a_read_only_root_exits_3(s3_endpoint, outage_root, tmp_path, capsys):
    write_squares(tmp_path / "data", per_class=2, validation_per_class=1)
    job = write_job(tmp_path / "data", max_trials=1)
    assert main(["submit", str(job), "--root", "s3://no-such-bucket/automl", "--job-id", "j1"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("automl-images submit: the bucket does not exist") and "\n" not in err, err
    OutageFileSystem.error = ERRORS["read-only"][0]
    assert main(["submit", str(job), "--root", outage_root, "--job-id", "j2"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("automl-images submit: the root is read-only (OSError: [Errno 30]") and "\n" not in err, err


def test_no_credentials_for_the_bucket_says_so_in_one_line_and_exits_3(s3_endpoint, monkeypatch, tmp_path, capsys):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws/credentials
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask for
    fsspec.config.conf.pop("s3", None)
    fsspec.filesystem("s3").clear_instance_cache()
    assert main(["status", "--root", "s3://bucket/automl"]) == 3
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("automl-images status: no credentials for the bucket (AWS_ACCESS_KEY_ID"), line


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """`automl-images ... | head`: the pipe closes before the command prints; no traceback."""
    import subprocess
    import sys

    write_squares(tmp_path / "data", per_class=2, validation_per_class=1)
    job = write_job(tmp_path / "data", max_trials=1)
    command = [sys.executable, "-c", "import sys; from automl_images.controller.cli import main; sys.exit(main())",
               "validate", str(job)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before it has printed: it starts in more than a second
    _, err = process.communicate(timeout=120)
    assert (process.returncode, err.decode()) == (141, "")
