"""End to end through the CLI: submit → controller → trials (subprocesses) → leaderboard and best model,
on a local folder and on the S3 API server (the sweep on Azure Blob Storage too, on Azurite)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic import write_job, write_squares

from automl_images.core.layout import FILES, Root

CLI = [str(Path(sys.executable).with_name("automl-images"))]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout)


def run_to_completion(root_url: str, timeout: float = 400) -> subprocess.CompletedProcess:
    result = cli("controller", "--root", root_url, "--until-done", "--interval", "0.5", timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
@pytest.mark.parametrize("root_url", ["local", "s3", "azure"], indirect=True)
def test_sweep_end_to_end(root_url, tmp_path):
    data = tmp_path / "data"
    write_squares(data)
    job = write_job(data, max_trials=3, concurrent=2, epochs=2)

    submitted = cli("submit", str(job), "--root", root_url)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    root = Root(root_url)
    assert root.inbox_files() == [f"{job_id}.yaml"]

    log = run_to_completion(root_url).stdout
    assert f"job {job_id}: completed" in log

    state = root.storage.read_json(root.job_state(job_id))
    assert state["status"] == "completed"
    assert root.inbox_files() == []
    assert root.trial_ids(job_id) == ["t0000", "t0001", "t0002"]
    for trial in root.trial_ids(job_id):
        status = root.read_trial(job_id, trial, FILES.status)
        assert status["status"] == "completed", status
        assert status["epochs"] == 2
        assert 0.0 <= status["metrics"]["accuracy"] <= 1.0
        spec = root.read_trial(job_id, trial, FILES.spec)
        assert spec["hyperparameters"]["number_of_epochs"] == 2
        assert spec["hyperparameters"]["optimizer"] == "sgd"  # defaults resolved
        assert root.storage.exists(root.trial_key(job_id, trial, FILES.model_weights))
        assert root.read_trial(job_id, trial, FILES.launch)["attempt"] == 1
        # what the run printed, in the trial folder where the README says; the resume checkpoint gone
        launcher_log = root.storage.read_text(root.trial_key(job_id, trial, FILES.launcher_log(1)))
        assert "trial completed" in launcher_log, launcher_log[-2000:]
        assert not root.storage.exists(root.trial_key(job_id, trial, FILES.checkpoint))

    board = json.loads(cli("leaderboard", job_id, "--root", root_url, "--format", "json").stdout)
    assert board["primary_metric"] == "accuracy" and board["direction"] == "maximize"
    values = [row["metrics"]["accuracy"] for row in board["trials"]]
    assert values == sorted(values, reverse=True)
    assert {row["trial_id"] for row in board["trials"]} == {"t0000", "t0001", "t0002"}
    assert set(board["trials"][0]) >= {"trial_id", "status", "params", "metrics", "epochs", "duration_s"}
    assert root.storage.read_text(root.leaderboard(job_id, "csv")).startswith("rank,trial_id,status,accuracy")

    best = root.storage.read_json(root.best_trial(job_id))
    assert best["trial_id"] == board["trials"][0]["trial_id"]
    model_info = root.storage.read_json(root.best(job_id, "model.json"))
    assert model_info["labels"] == ["blue", "green", "red"]

    table = cli("leaderboard", job_id, "--root", root_url).stdout
    assert "t0000" in table and "accuracy" in table
    status = cli("status", "--root", root_url).stdout
    assert job_id in status and "3 completed" in status


def test_invalid_job_is_moved_with_its_error(root_url, tmp_path):
    root = Root(root_url)
    text = b"task: image-classification\ntraining_data: train.jsonl\nlimits:\n  max_trials: 0\n"
    root.storage.write_bytes(root.inbox_key("broken.yaml"), text)
    result = cli("controller", "--root", root_url, "--once")
    assert result.returncode == 0, result.stderr
    assert root.inbox_files() == []
    assert root.storage.read_bytes(root.job_file("broken")) == text
    error = root.storage.read_json(root.job_error("broken"))
    assert any(p["path"] == "limits.max_trials" and p["line"] == 4 for p in error["problems"])
    assert root.storage.read_json(root.job_state("broken"))["status"] == "rejected"
    assert "rejected" in cli("status", "--root", root_url).stdout


def test_queued_cancelled_and_exit_codes_through_the_cli(root_url, tmp_path):
    """What a script sees: a submitted job is `queued` and cancelled in the inbox; a root that
    does not exist is exit 2; `--until-done` over a rejected job is exit 1."""
    root = Root(root_url)
    missing = cli("status", "--root", root_url)
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr == f"automl-images status: {root_url} does not exist: no job was ever submitted there " \
                             "(check --root)\n"
    data = tmp_path / "data"
    write_squares(data, per_class=2, validation_per_class=1)
    job_id = cli("submit", str(write_job(data, max_trials=1)), "--root", root_url).stdout.strip()
    assert cli("status", job_id, "--root", root_url).stdout.startswith(f"{job_id}  queued  no trials  $0.00\n")
    assert cli("cancel", job_id, "--root", root_url).returncode == 0
    assert root.storage.read_json(root.job_state(job_id))["status"] == "cancelled" and root.inbox_files() == []
    root.storage.write_bytes(root.inbox_key("broken.yaml"), b"task: image-classification\n")
    done = cli("controller", "--root", root_url, "--until-done", "--interval", "0.1")
    assert done.returncode == 1 and done.stdout.endswith(" 1 of the 1 jobs this controller ran did not complete: "
                                                         "broken (rejected)\n")
    assert cli("status", "--root", root_url).stdout.startswith("broken  rejected  no trials  0s  $0.00\n")


def test_missing_training_data_rejects_the_job(local_root):
    root = Root(local_root)
    root.storage.write_bytes(root.inbox_key("nodata.yaml"), b"task: image-classification\ntraining_data: nope.jsonl\n")
    assert cli("controller", "--root", local_root, "--once").returncode == 0
    error = root.storage.read_json(root.job_error("nodata"))
    assert "nope.jsonl does not exist" in error["message"]


def test_submit_rejects_invalid_job_without_touching_the_root(local_root, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("task: image-clasification\ntraining_data: t.jsonl\n")
    result = cli("submit", str(job), "--root", local_root)
    assert result.returncode == 2
    assert f"{job}:1: field 'task': unknown task 'image-clasification' (did you mean 'image-classification'?)" in result.stderr
    assert not os.path.exists(local_root)


@pytest.mark.slow
def test_detection_sweep_end_to_end(tmp_path):
    """A detection job from the job file to the leaderboard, through the same controller and the
    same trial subprocess as classification."""
    from trial_data import write_detection_dataset

    from automl_images.core.storage import Storage

    write_detection_dataset(Storage(str(tmp_path / "data")), prefix="")
    job = tmp_path / "data" / "job.yaml"
    job.write_text("""\
task: image-object-detection
training_data: train.jsonl
validation_data: val.jsonl
primary_metric: mean_average_precision
sampling: random
limits: {max_trials: 2, max_concurrent_trials: 1}
arguments:
  pretrained: 0
  number_of_epochs: 1
  min_size: 64
  max_size: 96
  validation_metric_type: coco_voc
search_space:
  - model_name: fasterrcnn_resnet18_fpn
    learning_rate: uniform(0.001, 0.01)
""")
    root_url = str(tmp_path / "bucket")
    submitted = cli("submit", str(job), "--root", root_url)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert f"job {job_id}: completed" in run_to_completion(root_url).stdout
    board = json.loads(cli("leaderboard", job_id, "--root", root_url, "--format", "json").stdout)
    assert board["primary_metric"] == "mean_average_precision"
    assert [row["status"] for row in board["trials"]] == ["completed", "completed"]
    assert all(0.0 <= row["metrics"]["mean_average_precision"] <= 1.0 for row in board["trials"])
    root = Root(root_url)
    assert root.storage.read_json(root.best(job_id, "model.json"))["task"] == "image-object-detection"
