"""The controller over simulated trials (tests/simulated.py): ASHA stops the trials it should, lost
runs are retried and not counted as failures, the user's failures are recorded, the job summary
(trials.json) matches the trial folders, and the live progress lines read well."""
from __future__ import annotations

import math

import pytest
from simulated import FakeClock, SimLauncher, curve, run_until_done, sim_job, submit

from automl_images.controller.loop import Controller
from automl_images.controller.progress import progress_line
from automl_images.core import trials
from automl_images.core.layout import FILES, Root
from automl_images.core.trial_spec import TrialSpec

# Four learning rates of known quality (best 0.02), evaluated one after another.
GRID = "  - learning_rate: choice(0.02, 0.001, 0.005, 0.1, 0.0003, 0.04, 0.01, 0.2, 0.0001)\n"


def run(root: Root, name: str, text: str, clock: FakeClock | None = None, **sim) -> tuple[SimLauncher, list[str]]:
    clock = clock or FakeClock()
    launcher = SimLauncher(clock=clock, **sim)
    log: list[str] = []
    controller = Controller(root, log=log.append, clock=clock, launchers={"local": launcher})
    submit(root, name, text)
    run_until_done(controller, clock, step_s=sim.get("epoch_s", 10.0))
    return launcher, log


def test_asha_through_the_controller(local_root):
    root = Root(local_root)
    # grid order, one trial at a time; 9 epochs: rungs at 1 and 3 (reduction factor 3)
    text = sim_job(max_trials=9, concurrent=1, epochs=9, sampling="grid", space=GRID,
                   extra="early_termination:\n  policy: asha\n")
    run(root, "asha", text)
    lrs = [0.02, 0.001, 0.005, 0.1, 0.0003, 0.04, 0.01, 0.2, 0.0001]
    score = {lr: curve({"learning_rate": lr}, 1) for lr in lrs}  # rung 1 values (rung 3 ranks the same)
    statuses = [root.read_trial("asha", f"t{i:04d}", FILES.status) for i in range(9)]
    stopped_at = {i: (s["epoch"] if s["status"] == "stopped" else None) for i, s in enumerate(statuses)}
    # by hand: trial i continues at rung 1 when fewer than ceil((i + 1) / 3) earlier trials were better
    expected = {}
    for i, lr in enumerate(lrs):
        better = sum(score[other] > score[lr] for other in lrs[:i])
        expected[i] = 1 if better >= math.ceil((i + 1) / 3) else None
        if expected[i] is None:  # through rung 1; at rung 3, against the trials that reached it
            reached = [other for j, other in enumerate(lrs[:i]) if expected[j] != 1]
            better = sum(score[other] > score[lr] for other in reached)
            expected[i] = 3 if better >= math.ceil((len(reached) + 1) / 3) else None
    assert stopped_at == expected
    # the same by hand: qualities 0.945, 0.227, 0.791, 0.738, 0, 0.907, 0.907, 0.521, 0. At rung 1
    # trial 2 has 1 better of 3 (keep ceil(3/3) = 1): stops; trial 5 has 1 better of 6 (keep 2):
    # continues, then at rung 3 meets trial 0 only (keep ceil(2/3) = 1): stops; trial 6 ties with 5
    # (a tie is not better), 1 better of 7 (keep 3), then 1 better of 3 at rung 3 (keep 1): stops
    assert expected == {0: None, 1: 1, 2: 1, 3: 1, 4: 1, 5: 3, 6: 3, 7: 1, 8: 1}
    for i, epoch in expected.items():
        if epoch:
            assert statuses[i]["reason"] == f"early termination (asha) at epoch {epoch}"
    board = root.storage.read_json(root.leaderboard("asha"))
    assert board["trials"][0]["trial_id"] == "t0000"  # the best one ran to the end
    assert root.storage.read_json(root.job_state("asha"))["status"] == "completed"


def test_lost_runs_are_retried_and_not_failures(local_root):
    root = Root(local_root)
    sim, log = run(root, "lost", sim_job(max_trials=3, concurrent=3, epochs=3), lose={"t0000", "t0002"})
    for trial in ("t0000", "t0002"):
        launch = root.read_trial("lost", trial, FILES.launch)
        assert launch["attempt"] == 2
        status = root.read_trial("lost", trial, FILES.status)
        assert status["status"] == "completed" and len(status["history"]) == 3  # the lost epoch was kept
    assert root.read_trial("lost", "t0001", FILES.launch)["attempt"] == 1
    assert any("trial t0000 launched on local (attempt 2, resuming)" in line for line in log)
    state = root.storage.read_json(root.job_state("lost"))
    assert state["status"] == "completed"
    board = root.storage.read_json(root.leaderboard("lost"))
    assert {row["status"] for row in board["trials"]} == {"completed"}


def test_user_failures_are_recorded_and_fail_fast(local_root):
    root = Root(local_root)
    message = "train.jsonl:3: label is missing"
    run(root, "bad", sim_job(max_trials=8, concurrent=2, epochs=2),
        fail={f"t{i:04d}": message for i in range(8)})
    state = root.storage.read_json(root.job_state("bad"))
    assert state["status"] == "failed"
    assert state["reason"] == f"the first 3 trial(s) all failed: {message}"
    assert len(root.trial_ids("bad")) <= 4  # no budget spent past the fourth trial
    board = root.storage.read_json(root.leaderboard("bad"))
    assert board["trials"][0]["error"] == message


def test_one_user_failure_among_successes(local_root):
    root = Root(local_root)
    run(root, "mixed", sim_job(max_trials=4, concurrent=2, epochs=2), fail={"t0001": "out of memory"})
    assert root.storage.read_json(root.job_state("mixed"))["status"] == "completed"
    status = root.read_trial("mixed", "t0001", FILES.status)
    assert status["status"] == "failed" and status["error"] == {"kind": "user", "message": "out of memory"}


def test_the_summary_holds_every_finished_trial(root_url):
    root = Root(root_url)
    run(root, "summed", sim_job(max_trials=3, concurrent=2, epochs=2), lose={"t0001"})
    finished = trials.read_summary(root, "summed")
    assert sorted(finished) == root.trial_ids("summed")
    for trial, view in finished.items():
        status = root.read_trial("summed", trial, FILES.status)
        assert view.status["history"] == status["history"] and view.status["status"] == status["status"]
        assert view.launch == root.read_trial("summed", trial, FILES.launch)
        assert view.sweep == root.read_trial("summed", trial, FILES.spec)["sweep"]
    # a controller started afresh reads the summary instead of the trial folders
    fresh = Controller(root, launchers={"local": SimLauncher()})
    assert sorted(fresh.job("summed").finished) == sorted(finished)


def test_a_lost_summary_is_rebuilt_from_the_trial_folders(local_root):
    root, clock = Root(local_root), FakeClock()
    sim = SimLauncher(clock=clock)
    controller = Controller(root, clock=clock, launchers={"local": sim})
    submit(root, "rebuilt", sim_job(max_trials=4, concurrent=2, epochs=2))
    for _ in range(20):  # until the first two trials have finished
        controller.reconcile_once()
        clock.advance(10)
        if trials.read_summary(root, "rebuilt"):
            break
    assert sorted(trials.read_summary(root, "rebuilt")) == ["t0000", "t0001"]
    assert root.storage.read_json(root.job_state("rebuilt"))["status"] == "running"
    root.storage.delete(root.trials_summary("rebuilt"))  # lost (or never written: a crash)
    restarted = Controller(root, clock=clock, launchers={"local": sim})
    run_until_done(restarted, clock, step_s=10)
    assert sorted(trials.read_summary(root, "rebuilt")) == root.trial_ids("rebuilt") == [f"t{i:04d}" for i in range(4)]


def test_progress_lines(local_root):
    root = Root(local_root)
    _, log = run(root, "watched", sim_job(max_trials=3, concurrent=2, epochs=2), price_per_hour=36.0)
    lines = [line for line in log if line.startswith(("job watched: running,", "job watched: completed,"))]
    assert lines[0] == "job watched: running, 2/3 trials: 2 pending | no result yet | $0.00 | 0m00s"
    assert any(line.startswith("job watched: running, 3/3 trials: 1 running, 2 completed | best accuracy=")
               for line in lines)
    assert lines[-1].startswith("job watched: completed, 3/3 trials: 3 completed | best accuracy=")
    assert lines[-1].split(" | ")[2].startswith("$0.")  # three trials of ~20 s at $36 an hour
    # one line per change of counts or best, not one per pass
    assert len(lines) == len(set(line.rsplit(" | ", 2)[0] for line in lines))
    trial_lines = [line for line in log if line.startswith("job watched: trial t0000")]
    # the model (a constant of the space: the default one) first, then every sampled value
    params = root.read_trial("watched", "t0000", FILES.spec)["sweep"]["params"]
    assert trial_lines[0] == (f"job watched: trial t0000 created: model_name=resnet50, "
                              f"learning_rate={params['learning_rate']:.4g}, momentum={params['momentum']:.4g}")
    assert any(" completed: epoch 2/2, accuracy=" in line for line in trial_lines)


def test_progress_line_with_a_budget():
    from automl_images.controller.spec import parse_job
    from automl_images.core.records import JobView, TrialView

    spec = parse_job(sim_job(max_trials=10).replace("limits:\n", "limits:\n  max_cost_usd: 20\n"))
    job = JobView("j", {"status": "running"}, [
        TrialView("t0000", {}, status={"status": "completed", "metrics": {"accuracy": 0.91}}, cost_usd=1.5),
        TrialView("t0001", {}, status={"status": "running"}, cost_usd=0.25),
        TrialView("t0002", {}, status={"status": "failed"}, cost_usd=0.05)])
    assert progress_line(spec, job) == ("running, 3/10 trials: 1 running, 1 completed, 1 failed | "
                                        "best accuracy=0.9100 (t0000) | $1.80 of $20")


def test_a_trial_line_shows_the_best_beside_the_last_epoch_and_progress_within_an_epoch():
    from automl_images.controller.progress import trial_line

    history = [{"epoch": 1, "accuracy": 0.5}, {"epoch": 2, "accuracy": 0.75}, {"epoch": 3, "accuracy": 0.625}]
    status = {"status": "running", "epoch": 3, "epochs_total": 10, "history": history,
              "best": {"epoch": 2, "metrics": {"accuracy": 0.75}}}
    assert trial_line(status, "accuracy") == "epoch 3/10, accuracy=0.6250 (best 0.7500 at epoch 2)"
    status["progress"] = {"epoch": 4, "step": 120, "steps": 400, "images_per_second": 85.3, "eta_s": 185.2}
    assert trial_line(status, "accuracy") == "epoch 4/10: step 120/400, 85.3 img/s, 3m05s to the end of its training"
    # the leaderboard's figure when the last epoch is the best: no second figure
    done = {"status": "completed", "epoch": 2, "epochs_total": 2, "history": history[:2],
            "best": {"epoch": 2, "metrics": {"accuracy": 0.75}}, "progress": {"epoch": 2, "step": 3, "steps": 3}}
    assert trial_line(done, "accuracy") == "epoch 2/2, accuracy=0.7500"


@pytest.mark.parametrize("setting, prepare, copy", [("", True, False), ("prepared_images: bucket\n", True, True),
                                                    ("prepared_images: off\n", False, False)])
def test_the_trial_spec_says_where_prepared_images_go(local_root, setting, prepare, copy):
    root = Root(local_root)
    clock = FakeClock()
    submit(root, "prep", sim_job(max_trials=1, concurrent=1, epochs=1, extra=setting))
    Controller(root, clock=clock, launchers={"local": SimLauncher(clock)}).reconcile_once()
    spec = TrialSpec.from_dict(root.read_trial("prep", "t0000", FILES.spec))
    assert spec.prepare_images is prepare
    assert spec.prepared_copy == (root.storage.url("jobs/prep/prepared") if copy else None)
