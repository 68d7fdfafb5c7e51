"""The controller killed with SIGKILL at several points of a sweep, and started again: the job still
finishes with exactly max_trials trials, none launched twice, none lost."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from synthetic import write_job, write_squares

from automl_images.core.layout import FILES, Root

CLI = str(Path(sys.executable).with_name("automl-images"))


def start_controller(root_url: str, log: Path) -> subprocess.Popen:
    out = open(log, "ab")
    return subprocess.Popen([CLI, "controller", "--root", root_url, "--interval", "0.2"], stdout=out,
                            stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_sigkill_and_restart_at_several_points(root_url, tmp_path):
    data = tmp_path / "data"
    write_squares(data, per_class=4, validation_per_class=2)
    job = write_job(data, max_trials=4, concurrent=2, epochs=2)
    result = subprocess.run([CLI, "submit", str(job), "--root", root_url, "--job-id", "crash"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    root = Root(root_url)
    log = tmp_path / "controller.log"

    # Kill points spread over the sweep: during acceptance, trial creation and launch, while
    # trials run, and around their completion and the final publication.
    kills = 0
    for delay in (0.4, 0.9, 1.5, 3.0, 6.0, 9.0, 12.0):
        controller = start_controller(root_url, log)
        time.sleep(delay)
        controller.send_signal(signal.SIGKILL)
        controller.wait()
        state = root.storage.read_json(root.job_state("crash")) or {}
        if state.get("status") == "completed":
            break
        kills += 1
    assert kills >= 4, "the sweep finished before the controller was killed in its middle"

    final = subprocess.run([CLI, "controller", "--root", root_url, "--until-done", "--interval", "0.3"],
                           capture_output=True, text=True, timeout=400)
    assert final.returncode == 0, final.stdout + final.stderr
    state = root.storage.read_json(root.job_state("crash"))
    assert state["status"] == "completed", (state, log.read_text())
    trials = root.trial_ids("crash")
    assert trials == ["t0000", "t0001", "t0002", "t0003"]
    for trial in trials:
        status = root.read_trial("crash", trial, FILES.status)
        assert status["status"] == "completed", status
        assert status["epochs"] == 2
        launch = root.read_trial("crash", trial, FILES.launch)
        assert launch["attempt"] == 1, f"{trial} launched again: {launch}"
        # One evaluation per epoch, none repeated: each epoch's metrics written once.
        assert root.storage.list(root.trial_key("crash", trial, FILES.metrics_dir)) == \
            ["000001.json", "000002.json"]
    board = root.storage.read_json(root.leaderboard("crash"))
    assert sorted(row["trial_id"] for row in board["trials"]) == trials
    assert root.storage.exists(root.best("crash", "model.pt"))


@pytest.mark.slow
def test_sigkill_at_random_moments_ten_times(local_root, tmp_path):
    """A Bayesian sweep whose controller is killed at random moments (fixed seed) at least ten
    times: each restarted controller takes over the dead one's lease at once (same machine, dead
    process), and the job ends with exactly its trials, none launched twice, no metric lost."""
    import json
    import random

    from automl_images.core.trials import read_summary

    data = tmp_path / "data"
    write_squares(data, per_class=3, validation_per_class=1)
    job = write_job(data, max_trials=4, concurrent=2, epochs=2, sampling="bayesian")
    job.write_text(job.read_text() + "sampling_options:\n  estimator: et\n  n_initial_points: 2\n")
    result = subprocess.run([CLI, "submit", str(job), "--root", local_root, "--job-id", "kills"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    root = Root(local_root)
    log = tmp_path / "controller.log"
    rng = random.Random(20240611)
    kills = 0
    while kills < 12:
        controller = start_controller(local_root, log)
        time.sleep(rng.uniform(0.2, 2.0))
        controller.send_signal(signal.SIGKILL)
        controller.wait()
        if (root.storage.read_json(root.job_state("kills")) or {}).get("status") == "completed":
            break
        kills += 1
    assert kills >= 10, f"the sweep finished after {kills} kills"

    final = subprocess.run([CLI, "controller", "--root", local_root, "--until-done", "--interval", "0.3"],
                           capture_output=True, text=True, timeout=400)
    assert final.returncode == 0, final.stdout + final.stderr
    state = root.storage.read_json(root.job_state("kills"))
    assert state["status"] == "completed", (state, log.read_text()[-3000:])
    trials = root.trial_ids("kills")
    assert trials == [f"t{i:04d}" for i in range(4)]
    text = log.read_text() + final.stdout
    for trial in trials:
        assert root.read_trial("kills", trial, FILES.launch)["attempt"] == 1, trial
        # launched by at most one controller: a controller killed between saving the handle and
        # printing leaves no line, and a later one adopting the running process prints none either
        assert text.count(f"trial {trial} launched on local") <= 1, trial
        status = root.read_trial("kills", trial, FILES.status)
        assert status["status"] == "completed" and status["epochs"] == 2
        assert [h["epoch"] for h in status["history"]] == [1, 2]
        assert root.storage.list(root.trial_key("kills", trial, FILES.metrics_dir)) == \
            ["000001.json", "000002.json"]
    # the leaderboard and the job summary have every trial with its metric
    board = root.storage.read_json(root.leaderboard("kills"))
    assert sorted(row["trial_id"] for row in board["trials"]) == trials
    assert all(isinstance(row["metrics"].get("accuracy"), float) for row in board["trials"])
    assert sorted(read_summary(root, "kills")) == trials
    # each trial's proposal was saved once: the sweeps in the trial specs are the leaderboard's
    specs = {t: root.read_trial("kills", t, FILES.spec)["sweep"]["params"] for t in trials}
    assert {row["trial_id"]: row["params"] for row in board["trials"]} == specs
    assert json.dumps(specs)  # plain JSON values
