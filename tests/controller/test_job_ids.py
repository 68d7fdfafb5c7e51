"""Job ids: a safe set of characters, never a path; a taken id is refused, never renamed or dropped;
the id `submit` prints is the id the job runs under."""
from __future__ import annotations

import datetime
import functools

import pytest
from simulated import SimLauncher, sim_job, write_sim_data

from automl_images.controller import submit as submit_module
from automl_images.controller.cli import main
from automl_images.controller.loop import Controller
from automl_images.controller.submit import JobIdError, submit
from automl_images.core.layout import JOB_ID_RULE, Root, job_id_from_name, job_id_problem

LONG_ID = "a" * 63


@pytest.fixture
def job_file(tmp_path):
    write_sim_data(Root(str(tmp_path)), folder="")
    path = tmp_path / "fridge.yaml"
    path.write_text(sim_job())
    return path


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("job_id", ["../../x", "a/b", "/abs", "..", "Fridge", "-x", "x y", "x.yaml", "é",
                                    LONG_ID + "b", ""])
def test_submit_refuses_an_id_that_is_no_job_id_before_writing_anything(tmp_path, job_file, capsys, job_id):
    root = tmp_path / "deep" / "root"
    assert main(["submit", str(job_file), "--root", str(root), f"--job-id={job_id}"]) == 2
    assert capsys.readouterr().err == (f"automl-images submit: job id {job_id!r} is not allowed: a job id is "
                                       f"{JOB_ID_RULE}\n")
    assert not (tmp_path / "deep").exists()
    assert _files(tmp_path) == ["a0.png", "a1.png", "b0.png", "b1.png", "fridge.yaml", "train.jsonl"]


def test_job_id_rule():
    assert [job_id_problem(i) for i in ("fridge", "0-a--b-", LONG_ID)] == [None, None, None]
    assert job_id_problem("a/b") == f"job id 'a/b' is not allowed: a job id is {JOB_ID_RULE}"


@pytest.mark.parametrize("holder", ["jobs/taken/state.json", "inbox/taken.yaml", "inbox/taken.yml"])
def test_a_taken_id_is_refused_with_what_holds_it(tmp_path, job_file, capsys, holder):
    root = Root(str(tmp_path / "root"))
    root.storage.write_text(holder, "theirs")
    assert main(["submit", str(job_file), "--root", root.url, "--job-id", "taken"]) == 2
    held = holder if holder.startswith("inbox") else "jobs/taken"
    assert capsys.readouterr().err == (f"automl-images submit: job id 'taken' is taken: {root.storage.url(held)} "
                                       "exists; choose another --job-id\n")
    assert root.storage.read_text(holder) == "theirs"
    assert _files(tmp_path / "root") == [holder]


def test_submitting_the_same_id_twice_refuses_the_second(tmp_path, job_file):
    root = str(tmp_path / "root")
    assert submit(str(job_file), root, job_id="fridge", progress=lambda m: None) == "fridge"
    with pytest.raises(JobIdError, match="job id 'fridge' is taken: .*inbox/fridge.yaml exists"):
        submit(str(job_file), root, job_id="fridge", progress=lambda m: None)


def test_same_second_submits_of_one_file_get_distinct_ids(tmp_path, job_file, monkeypatch, capsys):
    now = datetime.datetime(2026, 12, 6, 9, 30, 0, tzinfo=datetime.timezone.utc)
    monkeypatch.setattr(submit_module, "new_job_id", functools.partial(submit_module.new_job_id, now=now))
    root = Root(str(tmp_path / "root"))
    printed = []
    for _ in range(3):
        assert main(["submit", str(job_file), "--root", root.url]) == 0
        printed.append(capsys.readouterr().out.strip())
    assert printed == ["fridge-20261206-093000", "fridge-20261206-093000-2", "fridge-20261206-093000-3"]
    assert root.inbox_files() == sorted(f"{job_id}.yaml" for job_id in printed)
    root.storage.delete(root.inbox_key(f"{printed[0]}.yaml"))
    root.storage.write_text(f"jobs/{printed[0]}/state.json", "{}")  # an accepted job holds the id as well
    assert submit(str(job_file), root.url, progress=lambda m: None) == "fridge-20261206-093000-4"


@pytest.mark.parametrize("job_id", ["fridge", "a--b", "trailing-", LONG_ID])
def test_the_printed_id_is_the_id_the_job_runs_under(tmp_path, job_file, capsys, job_id):
    root = Root(str(tmp_path / "root"))
    assert main(["submit", str(job_file), "--root", root.url, "--job-id", job_id]) == 0
    assert capsys.readouterr().out == f"{job_id}\n"
    Controller(root, launchers={"local": SimLauncher()}).reconcile_once()
    assert root.job_ids() == [job_id]
    assert root.storage.read_json(root.job_state(job_id))["status"] == "running"


def test_a_hand_dropped_file_whose_name_is_taken_runs_under_a_longer_id_that_is_still_an_id(tmp_path):
    root = Root(str(tmp_path / "root"))
    text = sim_job().replace("training_data: train.jsonl", f"training_data: {write_sim_data(root)}")
    controller = Controller(root, launchers={"local": SimLauncher()})
    for n in range(2):
        root.storage.write_text(f"inbox/{LONG_ID}.yaml", text + f"seed: {n}\n")
        controller.reconcile_once()
    first, second = root.job_ids()
    assert LONG_ID in (first, second)
    renamed = first if second == LONG_ID else second
    assert job_id_problem(renamed) is None and renamed.startswith("a" * 54 + "-")


def test_job_id_from_name_keeps_an_id_and_makes_one_of_any_other_name():
    assert [job_id_from_name(n) for n in ("a--b.yaml", f"{LONG_ID}.yml", "My Fridge.YAML", "../x/../..yaml")] == \
        ["a--b", LONG_ID, "my-fridge", "job"]
