"""What `automl-images status`, `cancel` and `controller --until-done` tell a user and a script,
through the CLI's `main`: a job in the inbox is `queued` and can be cancelled there (its file kept),
a root that does not exist is an error (exit 2), and `--until-done` exits 1 when a job it ran
failed or was rejected."""
from __future__ import annotations

import json
import uuid

import pytest
from simulated import FakeClock, SimLauncher, run_until_done, sim_job, submit

from automl_images.controller import inbox
from automl_images.controller.cli import main
from automl_images.controller.job_state import JobStates
from automl_images.controller.loop import Controller
from automl_images.core.layout import FILES, Root


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_submitted_job_is_queued_until_accepted_and_cancelled_in_the_inbox(root_url, capsys):
    root = Root(root_url)
    submit(root, "waiting", sim_job())
    text = root.storage.read_bytes("inbox/waiting.yaml")
    queued = (f"waiting  queued  no trials  $0.00\n"
              f"    {root.storage.url('inbox/waiting.yaml')}: waiting for a controller to accept it\n")
    assert cli(capsys, "status", "--root", root_url) == (0, queued, "")
    assert cli(capsys, "status", "waiting", "--root", root_url) == (0, queued, "")

    code, out, err = cli(capsys, "cancel", "waiting", "--root", root_url)
    assert (code, err) == (0, "")
    assert out == (f"waiting cancelled before any controller accepted it; its job file is now "
                   f"{root.storage.url('jobs/waiting/job.yaml')}\n")
    assert root.inbox_files() == []
    assert root.storage.read_bytes(root.job_file("waiting")) == text  # the user's bytes, moved, not deleted
    state = root.storage.read_json(root.job_state("waiting"))
    assert (state["status"], state["reason"]) == ("cancelled", "cancelled before a controller accepted it")
    assert cli(capsys, "status", "--root", root_url) == (0, "waiting  cancelled  no trials  $0.00\n", "")
    # a controller leaves it be: no trial, and not counted as a job it ran
    controller = Controller(root)
    assert controller.reconcile_once() == 0
    assert root.trial_ids("waiting") == [] and controller.ran == {}


def test_cancel_of_a_job_a_controller_accepted_meanwhile_asks_its_controller(local_root):
    root = Root(local_root)
    submit(root, "raced", sim_job())
    JobStates(root, lambda: 0.0, print).accept("raced", "raced", "raced.yaml")  # a controller got there first
    states = JobStates(root, lambda: 0.0, print)
    assert inbox.cancel(root, "raced.yaml", "raced", states) is False  # the cancel command then writes cancel.json
    assert root.storage.read_json(root.job_state("raced"))["status"] == "running"
    assert root.inbox_files() == []


def test_a_queued_file_whose_id_holds_another_job_file_stays_in_the_inbox(local_root):
    root = Root(local_root)
    submit(root, "clash", sim_job())
    root.storage.write_text(root.job_file("clash"), "task: image-classification\n")  # written meanwhile
    with pytest.raises(FileExistsError, match="holds another job file"):
        inbox.cancel(root, "clash.yaml", "clash", JobStates(root, lambda: 0.0, print))
    assert root.inbox_files() == ["clash.yaml"] and not root.storage.exists(root.job_state("clash"))


def test_unknown_job(local_root, capsys):
    submit(Root(local_root), "other", sim_job())
    for command in ("status", "cancel"):
        assert cli(capsys, command, "nope", "--root", local_root) == \
            (2, "", f"automl-images {command}: no job 'nope' in {local_root}\n")


def test_a_root_that_does_not_exist_is_an_error(root_url, s3_endpoint, capsys):
    # root_url is a root nothing was written to: a folder not created, a bucket's empty prefix
    missing_bucket = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/automl"
    for url in (root_url, missing_bucket):
        for command in (["status"], ["status", "job"], ["leaderboard", "job"], ["cancel", "job"]):
            assert cli(capsys, *command, "--root", url) == \
                (2, "", f"automl-images {command[0]}: {url} does not exist: no job was ever submitted there "
                        "(check --root)\n")


def test_until_done_exits_1_when_a_job_it_ran_was_rejected(local_root, capsys):
    root = Root(local_root)
    root.storage.write_text("inbox/broken.yaml", "task: image-classification\n")
    code, out, _ = cli(capsys, "controller", "--root", local_root, "--until-done", "--interval", "0")
    assert code == 1
    assert out.splitlines()[-1].split(" ", 1)[1] == \
        "1 of the 1 jobs this controller ran did not complete: broken (rejected)"
    # a job that had already ended before the controller started is not one it ran
    code, out, _ = cli(capsys, "controller", "--root", local_root, "--until-done", "--interval", "0")
    assert (code, out) == (0, "")
    assert cli(capsys, "controller", "--root", local_root, "--once")[0] == 0


def test_failed_jobs_are_those_it_ran_that_failed(local_root):
    root, clock = Root(local_root), FakeClock()
    launcher = SimLauncher(clock=clock)
    submit(root, "good", sim_job(max_trials=2, epochs=1))
    first = Controller(root, clock=clock, launchers={"local": launcher})
    run_until_done(first, clock, step_s=10)
    assert first.failed_jobs() == {} and {job: s.value for job, s in first.ran.items()} == {"good": "completed"}
    launcher.fail = {f"t{i:04d}": "out of memory" for i in range(3)}  # the sim fails trials by id
    submit(root, "bad", sim_job(max_trials=4, concurrent=1, epochs=1))
    second = Controller(root, clock=clock, launchers={"local": launcher})
    run_until_done(second, clock, step_s=10)
    assert root.storage.read_json(root.job_state("bad"))["status"] == "failed"
    assert {job: s.value for job, s in second.failed_jobs().items()} == {"bad": "failed"}
    assert {job: s.value for job, s in second.ran.items()} == {"bad": "failed"}  # "good" had ended before


def test_the_model_and_the_sampled_values_are_shown_alike_everywhere(local_root, capsys):
    root, clock = Root(local_root), FakeClock()
    log: list[str] = []
    controller = Controller(root, log=log.append, clock=clock, launchers={"local": SimLauncher(clock=clock)})
    submit(root, "fixed", sim_job(max_trials=2, epochs=1,
                                  space="  - model_name: mobilenetv2\n    learning_rate: uniform(0.001, 0.1)\n"))
    run_until_done(controller, clock, step_s=10)
    code, out, _ = cli(capsys, "leaderboard", "fixed", "--root", local_root, "--format", "json")
    assert code == 0
    board = json.loads(out)
    shown = {row["trial_id"]: row["params"] for row in board["trials"]}
    for trial in ("t0000", "t0001"):
        rate = root.read_trial("fixed", trial, FILES.spec)["sweep"]["params"]["learning_rate"]
        assert shown[trial] == {"model_name": "mobilenetv2", "learning_rate": rate}
        text = f"model_name=mobilenetv2, learning_rate={rate:.4g}"
        assert f"job fixed: trial {trial} created: {text}" in log
        status_line = next(line for line in cli(capsys, "status", "fixed", "--root", local_root)[1].splitlines()
                           if line.startswith(f"  {trial}"))
        accuracy = next(row["metrics"]["accuracy"] for row in board["trials"] if row["trial_id"] == trial)
        # then the figure the leaderboard ranks by
        assert status_line.endswith(f"  {text}  accuracy={accuracy:.4f}") and " completed " in status_line


def test_status_says_why_a_trial_stopped_and_how_many_images_it_skipped(local_root, capsys):
    root, clock = Root(local_root), FakeClock()
    controller = Controller(root, clock=clock, launchers={"local": SimLauncher(clock=clock)})
    submit(root, "why", sim_job(max_trials=2, concurrent=2, epochs=2))
    controller.reconcile_once()
    # What the trainer writes when a stop request ends it after its first epoch.
    root.storage.write_json(root.trial_key("why", "t0001", FILES.status), {
        "status": "stopped", "epoch": 1, "epochs_total": 2, "skipped_images_count": 3,
        "reason": "early termination: bandit policy, slack_factor 0.1",
        "history": [{"epoch": 1, "accuracy": 0.25}], "metrics": {"accuracy": 0.25}})
    run_until_done(controller, clock, step_s=10)
    lines = cli(capsys, "status", "why", "--root", local_root)[1].splitlines()
    at = lines.index(next(line for line in lines if line.startswith("  t0001")))
    assert " stopped " in lines[at] and lines[at].endswith("  accuracy=0.2500  3 image(s) skipped")
    assert lines[at + 1] == "      early termination: bandit policy, slack_factor 0.1"
