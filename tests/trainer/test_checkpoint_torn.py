"""Torn and invalid checkpoints: a last.pt cut at any byte (or not a checkpoint of this trainer)
makes the relaunched attempt start the trial afresh, the file kept aside, never a failed trial; a
cut model.pt is reported by name. The writes stay atomic: a kill mid-write leaves the previous
last.pt whole, and a full disk leaves no temporary file."""
from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from trial_data import write_dataset, write_spec

from automl_images.core.layout import FILES
from automl_images.core.storage import Storage
from automl_images.trainer import checkpoint, engine, export, run, weights

CUTS = 30   # random cut points of a small checkpoint, besides its first and last bytes


def small_checkpoint(epoch: int = 1) -> dict:
    """A checkpoint as the trainer writes one (checkpoint.state_dict), of a tiny model."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    progress = checkpoint.Progress(epoch=epoch, history=[{"epoch": epoch, "accuracy": 0.5}])
    progress.record_best(epoch, {"accuracy": 0.5}, model)
    return checkpoint.state_dict(model=model, optimizer=optimizer,
                                 lr_scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                                 scaler=None, early_stopping=engine.EarlyStopping(True, 3, 1, "accuracy"),
                                 progress=progress, labels=["a", "b", "c"], rng=engine.rng_state())


def encoded(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def aside_key(data: bytes) -> str:
    return f"{FILES.checkpoint}.corrupt-{hashlib.sha256(data).hexdigest()[:12]}"


def assert_set_aside(trial: Storage, data: bytes) -> None:
    """last.pt gone, its bytes kept beside it (and nothing else there)."""
    assert trial.list("checkpoints") == [aside_key(data).rsplit("/", 1)[1]]
    assert trial.read_bytes(aside_key(data)) == data


def test_a_last_pt_cut_at_any_byte_is_kept_aside_and_the_trial_starts_afresh(tmp_path, caplog):
    whole = encoded(small_checkpoint())
    trial = Storage(str(tmp_path / "whole"))
    trial.write_bytes(FILES.checkpoint, whole)
    assert checkpoint.load(trial)["epoch"] == 1   # the uncut file is a checkpoint

    rng = random.Random(11)
    cuts = [0, 1, len(whole) - 1] + sorted(rng.sample(range(2, len(whole) - 1), CUTS))
    for cut in cuts:
        trial = Storage(str(tmp_path / f"cut-{cut}"))
        trial.write_bytes(FILES.checkpoint, whole[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="automl_images.trainer"):
            assert checkpoint.load(trial) is None, cut
        assert_set_aside(trial, whole[:cut])
        assert f"{trial.url(FILES.checkpoint)}: not loadable as weights: " in caplog.text, cut
        assert f"starting this trial afresh, the file kept as {trial.url(aside_key(whole[:cut]))}" in caplog.text


@pytest.mark.parametrize("value, reason", [
    (torch.zeros(3), "not a checkpoint: a Tensor, not a dict"),
    ({**small_checkpoint(), "format_version": 0}, "checkpoint format 0 is not 1"),
    ({k: v for k, v in small_checkpoint().items() if k not in ("optimizer", "rng")},
     "not a checkpoint: no optimizer, rng"),
])
def test_a_last_pt_that_is_not_a_checkpoint_of_this_format_is_kept_aside(tmp_path, caplog, value, reason):
    trial = Storage(str(tmp_path))
    data = encoded(value)
    trial.write_bytes(FILES.checkpoint, data)
    with caplog.at_level(logging.WARNING, logger="automl_images.trainer"):
        assert checkpoint.load(trial) is None
    assert_set_aside(trial, data)
    assert f"{trial.url(FILES.checkpoint)}: {reason}; starting this trial afresh" in caplog.text


def test_setting_aside_again_after_a_kill_writes_no_second_copy(tmp_path):
    # Killed between the copy and the removal: the next attempt finds both, and keeps one copy.
    trial = Storage(str(tmp_path))
    torn = encoded(small_checkpoint())[:500]
    trial.write_bytes(FILES.checkpoint, torn)
    trial.write_bytes(aside_key(torn), torn)
    assert checkpoint.load(trial) is None
    assert_set_aside(trial, torn)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch trial (mobilenetv2 on 12 tiny images): a real last.pt and model.pt."""
    tmp_path = tmp_path_factory.mktemp("finished")
    root = Storage(str(tmp_path / "root"))
    data = write_dataset(root, per_class=4, validation_per_class=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AUTOML_IMAGES_THREADS", "1")
            env.setenv("AUTOML_IMAGES_IMAGE_CACHE", str(tmp_path / "image-cache"))
            status = run.run_trial(write_spec(root, "first", *data, model_name="mobilenetv2", number_of_epochs=1,
                                                spec_fields={"keep_checkpoints": True}))
    finally:
        torch.set_num_threads(threads)
    assert status["status"] == "completed", status.get("error")
    return root, data


def test_a_relaunched_trial_whose_last_pt_is_torn_trains_afresh_to_the_end(finished, trial_process):
    root, data = finished
    whole = root.read_bytes(f"first/{FILES.checkpoint}")
    torn = whole[:random.Random(5).randrange(len(whole))]
    spec_url = write_spec(root, "relaunched", *data, model_name="mobilenetv2", number_of_epochs=2,
                          spec_fields={"keep_checkpoints": True})
    trial = Storage(root.url("relaunched"))
    # What an attempt killed after epoch 1 leaves, its last.pt then cut short.
    trial.write_json(FILES.status, {"status": "running", "attempt": 1, "epoch": 1, "epochs_total": 2})
    trial.write_bytes(FILES.checkpoint, torn)

    status = run.run_trial(spec_url)
    assert status["status"] == "completed" and status["attempt"] == 2, status.get("error")
    assert [entry["epoch"] for entry in status["history"]] == [1, 2]   # both epochs trained by this attempt
    assert trial.read_bytes(aside_key(torn)) == torn
    assert checkpoint.load(trial)["epoch"] == 2
    log = trial.read_text(FILES.trainer_log)
    assert f"{trial.url(FILES.checkpoint)}: not loadable as weights: truncated or not a torch file" in log
    assert "starting this trial afresh" in log


def test_a_cut_model_pt_is_reported_by_name(finished, tmp_path):
    root, _ = finished
    whole = root.read_bytes(f"first/{FILES.model_weights}")
    model = Storage(str(tmp_path / "model"))
    model.write_bytes(FILES.model_info, root.read_bytes(f"first/{FILES.model_info}"))
    for cut in random.Random(7).sample(range(len(whole)), 3):
        model.write_bytes(FILES.model_weights, whole[:cut])
        with pytest.raises(weights.WeightsError, match=rf"^{model.url(FILES.model_weights)}: not loadable as "
                                                       rf"weights: truncated or not a torch file"):
            export.load_model(model.root)


def test_a_full_disk_fails_the_write_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trial = Storage(str(tmp_path))
    checkpoint.save(trial, small_checkpoint(epoch=1))

    def full(fd):  # where a full disk shows on a filesystem that allocates on flush
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as failed:
        checkpoint.save(trial, small_checkpoint(epoch=2))
    monkeypatch.undo()
    assert failed.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path / "checkpoints") == ["last.pt"]   # no temporary file left behind
    assert checkpoint.load(trial)["epoch"] == 1


WRITER = """
import sys
import torch
from automl_images.core.storage import Storage
from automl_images.trainer import checkpoint

trial = Storage(sys.argv[1])
for epoch in range(1, 1000):  # 64 MB each: the kill lands mid-write
    checkpoint.save(trial, {"epoch": epoch, "model": {"w": torch.full((16_000_000,), float(epoch))}})
"""


@pytest.mark.slow  # about 10 s: a process that imports torch
def test_a_kill_mid_write_leaves_the_previous_last_pt_whole(tmp_path):
    folder = tmp_path / "checkpoints"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)],
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            names = os.listdir(folder) if folder.exists() else []
            if "last.pt" in names and any(name.startswith(".tmp-") for name in names):
                os.kill(process.pid, signal.SIGKILL)   # a second last.pt is being written
                break
        else:
            pytest.fail(f"no write of a second checkpoint seen (exit code {process.poll()})")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert Storage(str(tmp_path)).list("checkpoints") == ["last.pt"]   # the killed write's temporary file unseen
    saved = weights.safe_load((folder / "last.pt").read_bytes(), "last.pt")
    assert saved["epoch"] >= 1 and torch.equal(saved["model"]["w"], torch.full((16_000_000,), float(saved["epoch"])))
