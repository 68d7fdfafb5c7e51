"""Bad data and cancellation through the whole path: a clear error in the trial's status and in the
job (error.json), never a hang or a bare traceback."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from synthetic import write_job, write_squares

from automl_images.core.layout import FILES, Root

CLI = str(Path(sys.executable).with_name("automl-images"))


def run_job(root_url: str, job: Path, job_id: str) -> dict:
    submitted = subprocess.run([CLI, "submit", str(job), "--root", root_url, "--job-id", job_id],
                               capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    done = subprocess.run([CLI, "controller", "--root", root_url, "--until-done", "--interval", "0.3"],
                          capture_output=True, text=True, timeout=300)
    state = Root(root_url).storage.read_json(Root(root_url).job_state(job_id))
    # --until-done exits 1 when the job it ran failed
    assert done.returncode == (0 if state["status"] == "completed" else 1), done.stdout + done.stderr
    return state


def _break_images(data: Path, count: int) -> None:
    """Delete one image and corrupt the others among the first `count` training images."""
    lines = (data / "train.jsonl").read_text().splitlines()
    for i, line in enumerate(lines[:count]):
        path = data / json.loads(line)["image_url"]
        if i == 0:
            path.unlink()
        else:
            path.write_bytes(b"not a png at all")


def _spoil(data: Path, problem: str) -> None:
    if problem == "images":
        _break_images(data, count=3)  # 3 of 12 images: over the 5% threshold
    elif problem == "unseen_label":
        lines = (data / "val.jsonl").read_text().splitlines()
        first = json.loads(lines[0])
        first["label"] = "purple"
        (data / "val.jsonl").write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    else:
        lines = (data / "train.jsonl").read_text().splitlines()
        lines[2] = json.dumps({"image_url": json.loads(lines[2])["image_url"]})
        (data / "train.jsonl").write_text("\n".join(lines) + "\n")


PROBLEMS = [
    ("images", ["train.jsonl:1", "train.jsonl:2"]),
    ("unseen_label", ["val.jsonl:1", "class 'purple'"]),
    ("bad_line", ["train.jsonl:3", "label"]),
]


@pytest.mark.parametrize("problem, expected", PROBLEMS)
def test_bad_data_is_refused_before_any_trial(local_root, tmp_path, problem, expected):
    """check-data runs in submit (exit 2, nothing dropped) and, for a file dropped by hand, when the
    controller accepts the job (rejected with error.json and the report, no trial launched)."""
    data = tmp_path / "data"
    write_squares(data, per_class=4, validation_per_class=1)
    _spoil(data, problem)
    job = write_job(data, max_trials=1, concurrent=1, epochs=1, models="resnet18")
    submitted = subprocess.run([CLI, "submit", str(job), "--root", local_root, "--job-id", "bad"],
                               capture_output=True, text=True)
    assert submitted.returncode == 2, submitted.stdout + submitted.stderr
    for fragment in expected:
        assert fragment in submitted.stderr, submitted.stderr
    root = Root(local_root)
    assert root.inbox_files() == [] and root.job_ids() == []

    root.storage.write_bytes(root.inbox_key("by-hand.yaml"), job.read_bytes().replace(
        b"training_data: ", f"training_data: {data}/".encode()).replace(
        b"validation_data: ", f"validation_data: {data}/".encode()))
    done = subprocess.run([CLI, "controller", "--root", local_root, "--until-done", "--interval", "0.3"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr  # the job it ran was rejected
    assert root.storage.read_json(root.job_state("by-hand"))["status"] == "rejected"
    error = json.dumps(root.storage.read_json(root.job_error("by-hand")))
    for fragment in expected:
        assert fragment in error, error
    assert root.storage.read_json(root.data_check("by-hand"))["summary"]
    assert root.trial_ids("by-hand") == []


@pytest.mark.parametrize("problem, expected", PROBLEMS)
def test_data_spoiled_after_acceptance_fails_the_trial_and_job_clearly(local_root, tmp_path, problem, expected):
    from automl_images.controller.inbox import accept
    from automl_images.controller.job_state import JobStates

    data = tmp_path / "data"
    write_squares(data, per_class=4, validation_per_class=1)
    job = write_job(data, max_trials=1, concurrent=1, epochs=1, models="resnet18")
    submitted = subprocess.run([CLI, "submit", str(job), "--root", local_root, "--job-id", "bad"],
                               capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    root = Root(local_root)
    assert accept(root, "bad.yaml", JobStates(root, time.time, print), print, time.time()) == "bad"
    _spoil(data, problem)  # after the check: the trainer is the last line of defence
    done = subprocess.run([CLI, "controller", "--root", local_root, "--until-done", "--interval", "0.3"],
                          capture_output=True, text=True, timeout=300)
    state = root.storage.read_json(root.job_state("bad"))
    assert done.returncode == 1 and state["status"] == "failed", done.stdout + done.stderr
    trial_status = root.read_trial("bad", "t0000", FILES.status)
    assert trial_status["status"] == "failed"
    assert trial_status["error"]["kind"] == "user"
    for fragment in expected:
        assert fragment in trial_status["error"]["message"], trial_status["error"]["message"]
    error = root.storage.read_json(root.job_error("bad"))
    for fragment in expected:
        assert fragment in error["message"]


def test_few_bad_images_are_skipped_and_listed(local_root, tmp_path):
    data = tmp_path / "data"
    write_squares(data, per_class=12, validation_per_class=2)  # 36 training images
    _break_images(data, count=1)  # 1 of 42: under 5%
    job = write_job(data, max_trials=1, concurrent=1, epochs=1, models="resnet18")
    state = run_job(local_root, job, "few-bad")
    assert state["status"] == "completed"
    status = Root(local_root).read_trial("few-bad", "t0000", FILES.status)
    skipped = json.dumps(status["skipped_images"])
    assert "train.jsonl:1" in skipped


@pytest.mark.slow
def test_cancel_stops_running_trials(local_root, tmp_path):
    data = tmp_path / "data"
    write_squares(data, per_class=30, size=32)
    job = write_job(data, max_trials=4, concurrent=2, epochs=200, size=32)
    subprocess.run([CLI, "submit", str(job), "--root", local_root, "--job-id", "long"], check=True,
                   capture_output=True)
    root = Root(local_root)
    controller = subprocess.Popen([CLI, "controller", "--root", local_root, "--interval", "0.3"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until both trials have finished an epoch
            statuses = [root.read_trial("long", t, FILES.status) or {} for t in root.trial_ids("long")]
            if len(statuses) == 2 and all(s.get("epoch", 0) >= 1 for s in statuses):
                break
            time.sleep(0.5)
        assert subprocess.run([CLI, "cancel", "long", "--root", local_root]).returncode == 0
        deadline = time.time() + 120
        while time.time() < deadline:
            if (root.storage.read_json(root.job_state("long")) or {}).get("status") == "cancelled":
                break
            time.sleep(0.5)
    finally:
        controller.kill()
    assert root.storage.read_json(root.job_state("long"))["status"] == "cancelled"
    assert root.trial_ids("long") == ["t0000", "t0001"]  # no new trials after the cancel
    for trial in root.trial_ids("long"):
        status = root.read_trial("long", trial, FILES.status)
        assert status["status"] == "stopped"
        assert status["epoch"] < 200
    board = root.storage.read_json(root.leaderboard("long"))
    assert {row["status"] for row in board["trials"]} == {"stopped"}
