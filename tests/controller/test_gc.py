"""`automl-images gc JOB`: the resume checkpoints of an ended job's trials deleted, what they
freed said; the checkpoints checkpoint_frequency asked for kept; a running job refused (its trials
may resume), as is an unknown one."""
from __future__ import annotations

import pytest
from simulated import FakeClock, SimLauncher, run_until_done, sim_job, submit

from automl_images.controller.cli import main
from automl_images.controller.loop import Controller
from automl_images.core.layout import FILES, Root
from automl_images.core.storage import Storage


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def ended_job(local_root) -> Root:
    root = Root(local_root)
    clock = FakeClock()
    submit(root, "done", sim_job(max_trials=3, concurrent=3, epochs=2))
    run_until_done(Controller(root, clock=clock, launchers={"local": SimLauncher(clock)}), clock)
    assert root.storage.read_json(root.job_state("done"))["status"] == "completed"
    # Left behind: by trials killed between their final status and the deletion, or a job that kept them.
    for trial, size in (("t0000", 3_000_000), ("t0002", 1_500_000)):
        root.storage.write_bytes(root.trial_key("done", trial, FILES.checkpoint), b"\0" * size)
    root.storage.write_bytes(root.trial_key("done", "t0000", FILES.epoch_checkpoint(2)), b"asked for")
    return root


def test_gc_deletes_the_resume_checkpoints_of_an_ended_job(ended_job, capsys):
    root = ended_job
    checkpoints = [root.storage.url(root.trial_key("done", t, FILES.checkpoint)) for t in ("t0000", "t0002")]

    code, out, err = cli(capsys, "gc", "done", "--root", root.url, "--dry-run")
    assert (code, err) == (0, "")
    assert out.splitlines() == [*checkpoints, "done: 2 checkpoint(s), would free 4.5 MB"]
    assert root.storage.size(root.trial_key("done", "t0000", FILES.checkpoint)) == 3_000_000

    code, out, err = cli(capsys, "gc", "done", "--root", root.url)
    assert (code, out.splitlines()[-1], err) == (0, "done: 2 checkpoint(s), freed 4.5 MB", "")
    assert all(root.storage.size(root.trial_key("done", t, FILES.checkpoint)) is None for t in root.trial_ids("done"))
    assert root.storage.read_bytes(root.trial_key("done", "t0000", FILES.epoch_checkpoint(2))) == b"asked for"
    assert root.read_trial("done", "t0000", FILES.status)["status"] == "completed"

    assert cli(capsys, "gc", "done", "--root", root.url)[:2] == (0, "done: 0 checkpoint(s), freed 0.0 MB\n")


def test_gc_refuses_a_running_job_and_an_unknown_one(local_root, capsys):
    root = Root(local_root)
    clock = FakeClock()
    submit(root, "busy", sim_job(max_trials=3, concurrent=1, epochs=2))
    Controller(root, clock=clock, launchers={"local": SimLauncher(clock)}).reconcile_once()
    key = root.trial_key("busy", "t0000", FILES.checkpoint)
    root.storage.write_bytes(key, b"resume from me")

    code, out, err = cli(capsys, "gc", "busy", "--root", root.url)
    assert (code, out) == (2, "")
    assert err == ("automl-images gc: job 'busy' is running: its trials may still resume from their checkpoints; "
                   "cancel it first, or wait for it to end\n")
    assert root.storage.read_bytes(key) == b"resume from me"

    code, out, err = cli(capsys, "gc", "nope", "--root", root.url)
    assert (code, err) == (2, f"automl-images gc: no job 'nope' in {root.url}\n")


def test_gc_deletes_the_jobs_copy_of_its_prepared_images(ended_job, capsys, monkeypatch):
    root = ended_job
    prefix = root.prepared_images("done")
    root.storage.write_bytes(f"{prefix}/k1/images/a.ppm", b"p" * 1_000_000)
    root.storage.write_bytes(f"{prefix}/k1/index.json", b"{}")
    deleted = []
    delete = Storage.delete
    monkeypatch.setattr(Storage, "delete", lambda self, key: (deleted.append(key), delete(self, key)))
    code, out, err = cli(capsys, "gc", "done", "--root", root.url)
    assert (code, out.splitlines()[-1], err) == (0, "done: 2 checkpoint(s), 2 prepared image file(s), freed 5.5 MB",
                                                 "")
    assert root.storage.walk(prefix) == []
    assert deleted.index(f"{prefix}/k1/index.json") < deleted.index(f"{prefix}/k1/images/a.ppm")
