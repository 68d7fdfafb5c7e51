"""The demo a new user runs first: a real sweep on the handwritten digits, best accuracy >= 0.90."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from automl_images.core.layout import Root


@pytest.mark.slow
def test_demo_sweep_reaches_ninety_percent(local_root):
    cli = str(Path(sys.executable).with_name("automl-images"))
    result = subprocess.run([cli, "demo", "--root", local_root], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    root = Root(local_root)
    (job_id,) = root.job_ids()
    board = root.storage.read_json(root.leaderboard(job_id))
    assert len(board["trials"]) == 4
    assert {row["params"]["model_name"] for row in board["trials"]} <= {"resnet18", "mobilenetv2"}
    assert board["trials"][0]["metrics"]["accuracy"] >= 0.90
    assert root.storage.exists(root.best(job_id, "model.pt"))
    assert f"best trial {board['trials'][0]['trial_id']}" in result.stdout
