"""The command a cloud trial runs (sky/trial.yaml's `run` script), run here: by the local launcher,
under the real `torchrun` when SkyPilot says there are several GPUs, and through a preemption (the
trial's process killed mid-epoch with SIGKILL, launched again, resuming without repeating an epoch)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from synthetic import write_squares

from automl_images.controller.launch import LaunchRequest, RunState, template
from automl_images.controller.launch.local import LocalLauncher, trial_command
from automl_images.core.hyperparameters import Task, resolve
from automl_images.core.layout import FILES
from automl_images.trainer.run import HEARTBEAT_ENV

URL = "s3://my-bucket/automl/jobs/sweep/trials/t0000/spec.json"


def test_the_local_launcher_runs_the_run_script_of_the_trial_task():
    command, env = trial_command(URL)
    assert command == ["bash", "-c", template.load()["run"]]
    assert env["SPEC_URL"] == URL
    assert os.path.exists(os.path.join(env["PATH"].split(os.pathsep)[0], "automl-images"))


def fake_cli(folder: Path) -> Path:
    """An `automl-images` that prints what torchrun (or nobody) gave it."""
    folder.mkdir(parents=True, exist_ok=True)
    cli = folder / "automl-images"
    cli.write_text('#!/bin/sh\necho "rank=${RANK:-none} world=${WORLD_SIZE:-none} args=$*"\n')
    cli.chmod(0o755)
    return folder


def run_script(path: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SKYPILOT_")}
    return subprocess.run(["bash", "-c", template.run_script()], env={**base, "PATH": path, **env},
                          capture_output=True, text=True, timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_gpu_runs_the_trial_directly(tmp_path):
    path = f"{fake_cli(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}"
    for gpus in (None, "0", "1"):
        extra = {"SKYPILOT_NUM_GPUS_PER_NODE": gpus} if gpus else {}
        result = run_script(path, SPEC_URL=URL, **extra)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"rank=none world=none args=trial run {URL}\n"
    missing = run_script(path)
    assert missing.returncode != 0 and "SPEC_URL must be the URL of the trial spec.json" in missing.stderr


def test_several_gpus_run_the_trial_under_the_real_torchrun(tmp_path):
    """SkyPilot's variables for one node with two GPUs: the script's torchrun line, run by the real
    torchrun of this environment (on the CPU), starts two ranks of the trial command."""
    path = f"{fake_cli(tmp_path / 'bin')}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"
    result = run_script(path, SPEC_URL=URL, SKYPILOT_NUM_GPUS_PER_NODE="2", SKYPILOT_NUM_NODES="1",
                        SKYPILOT_NODE_RANK="0", SKYPILOT_NODE_IPS="127.0.0.1", MASTER_PORT=str(free_port()))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("rank="))
    assert lines == [f"rank=0 world=2 args=trial run {URL}", f"rank=1 world=2 args=trial run {URL}"]


def test_several_nodes_point_torchrun_at_the_first_node(tmp_path):
    folder = fake_cli(tmp_path / "bin")
    (folder / "torchrun").write_text('#!/bin/sh\necho "torchrun $*"\n')
    (folder / "torchrun").chmod(0o755)
    result = run_script(f"{folder}{os.pathsep}{os.environ['PATH']}", SPEC_URL=URL, SKYPILOT_NUM_GPUS_PER_NODE="1",
                        SKYPILOT_NUM_NODES="2", SKYPILOT_NODE_RANK="1", SKYPILOT_NODE_IPS="10.0.0.7\n10.0.0.8")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("torchrun --nnodes=2 --nproc-per-node=1 --node-rank=1 --master-addr=10.0.0.7 "
                             f"--master-port=29500 --no-python automl-images trial run {URL}\n")


# ------------------------------------------------------------------------------------------------
# A preemption, locally: the trial's process dies with SIGKILL mid-epoch, as on a reclaimed spot
# machine, and the next attempt resumes from the checkpoint.


def wait_for(condition, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_a_trial_killed_mid_epoch_resumes_without_repeating_an_epoch(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOML_IMAGES_IMAGE_CACHE", str(tmp_path / "image-cache"))
    # A heartbeat after every step: the test kills the trainer when it reports the first steps of
    # epoch 2, which leaves the rest of the epoch (dozens of steps) between the kill and epoch 2's end.
    monkeypatch.setenv(HEARTBEAT_ENV, "0")
    data = tmp_path / "data"
    train, val = write_squares(data, per_class=96, size=24, validation_per_class=4)
    folder = tmp_path / "trial"
    folder.mkdir()
    epochs = 3
    spec = {"job_id": "sweep", "trial_id": "t0000", "task": "image-classification", "primary_metric": "accuracy",
            "training_data": str(train), "validation_data": str(val), "output": str(folder), "seed": 5,
            "hyperparameters": resolve(Task.CLASSIFICATION, {
                "model_name": "resnet18", "pretrained": 0, "number_of_epochs": epochs, "training_batch_size": 8,
                "validation_batch_size": 16, "learning_rate": 0.01, "resize_size": 24, "crop_size": 24,
                "early_stopping": 0})}
    (folder / "spec.json").write_text(json.dumps(spec))
    spec_url = str(folder / "spec.json")
    launcher = LocalLauncher()
    status_path = folder / FILES.status

    def early_in_epoch_2() -> dict | None:
        status = read_json(status_path) or {}
        progress = status.get("progress") or {}
        return status if progress.get("epoch") == 2 and progress.get("step", 0) >= 2 else None

    handle = launcher.launch(LaunchRequest("sweep", "t0000", spec_url, attempt=1, threads=1))
    try:
        running = wait_for(lambda: read_json(status_path), 60, "the trial to start")
        before = wait_for(early_in_epoch_2, 180, "step 2 of epoch 2", step=0.01)
        os.kill(handle["pid"], signal.SIGKILL)
        first_metrics = (folder / FILES.metrics(1)).read_bytes()
        wait_for(lambda: launcher.poll(handle) is RunState.GONE, 10, "the lock to go with the process")
    finally:
        try:
            os.kill(handle["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert before["progress"]["step"] < before["progress"]["steps"] - 10, before
    assert before["progress"]["images_per_second"] > 0 and before["progress"]["eta_s"] > 0, before
    assert running["pid"] == handle["pid"]  # the script ends in `exec`: the launched pid is the trainer
    killed = read_json(status_path)
    # Killed in epoch 2: epoch 1 is the last one reported and checkpointed.
    assert killed["status"] == "running" and killed["epoch"] == before["epoch"] == 1, killed

    again = launcher.launch(LaunchRequest("sweep", "t0000", spec_url, attempt=2, threads=1))
    wait_for(lambda: launcher.poll(again) is RunState.GONE, 240, "the second attempt to finish", step=0.2)
    status = read_json(status_path)
    assert status["status"] == "completed", status
    assert status["attempt"] == 2
    assert [h["epoch"] for h in status["history"]] == list(range(1, epochs + 1))
    assert sorted(p.name for p in (folder / FILES.metrics_dir).iterdir()) == \
        [f"{e:06d}.json" for e in range(1, epochs + 1)]
    assert (folder / FILES.metrics(1)).read_bytes() == first_metrics  # epoch 1 was not trained again
    log = (folder / "logs" / "trainer.log").read_text()
    assert "resumed from the checkpoint of epoch 1" in log
    for epoch in range(1, epochs + 1):
        assert log.count(f"epoch {epoch}/{epochs}:") == 1, log
