"""Resumable on spot machines: a trial killed with SIGKILL in the middle of an epoch and run again
ends exactly where an uninterrupted run ends, without losing or repeating an epoch; and the
checkpoint holds everything that takes.

Exact equality holds on the CPU with a fixed thread count: the trainer asks for deterministic
algorithms, the training order and each image's augmentation are functions of (seed, epoch, image),
and the RNG, optimizer, scheduler and early-stopping states come back from the checkpoint."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import time

import pytest
import torch
from trial_data import CLI, learning_figures, write_dataset, write_spec

from automl_images.core.layout import FILES
from automl_images.core.storage import Storage
from automl_images.trainer import checkpoint, engine, run

EPOCHS = 3


def trial_env(tmp_path, name: str) -> dict[str, str]:
    return dict(os.environ, AUTOML_IMAGES_THREADS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                AUTOML_IMAGES_HEARTBEAT_S="0.1",  # status.json several times an epoch: the test sees the step
                AUTOML_IMAGES_IMAGE_CACHE=str(tmp_path / f"cache-{name}"))


def kill_in_epoch_2(spec_url: str, trial: Storage, env: dict[str, str], log) -> dict:
    """Start the trial, SIGKILL it once epoch 1 is checkpointed and epoch 2 has taken a step;
    returns the status.json it left."""
    process = subprocess.Popen([CLI, "trial", "run", spec_url], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            status = trial.read_json(FILES.status) or {}
            progress = status.get("progress") or {}
            if status.get("epoch") == 1 and progress.get("epoch") == 2 and progress["step"] < progress["steps"]:
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        else:
            pytest.fail(f"the trial never reached the middle of epoch 2 (exit code {process.poll()})")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return trial.read_json(FILES.status)


@pytest.mark.slow  # about 30 s for each backend: three trainer processes
def test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run(root_url, tmp_path, monkeypatch):
    root = Storage(root_url)
    train, val = write_dataset(root, per_class=16)  # 48 training images, 12 steps an epoch
    # mobilenetv2: a small checkpoint, and dropout, whose RNG state must come back too. (At 16 px
    # it barely learns in 3 epochs, but every weight moves at every step: equal weights and losses
    # at the end mean equal trajectories.) A low rate: batches of 4 diverge at 0.005.
    hp = {"model_name": "mobilenetv2", "learning_rate": 0.001, "number_of_epochs": EPOCHS, "early_stopping": 1,
          "early_stopping_patience": 5, "early_stopping_delay": 1}
    killed_url = write_spec(root, "killed", train, val, **hp)
    straight_url = write_spec(root, "straight", train, val, **hp)
    killed = Storage(root.url("killed"))

    with open(tmp_path / "trial.log", "wb") as log:
        left = kill_in_epoch_2(killed_url, killed, trial_env(tmp_path, "killed"), log)
        # The kill landed mid-epoch: status still says running, and the checkpoint is epoch 1's.
        assert left["status"] == "running" and left["epoch"] == 1 and left["progress"]["epoch"] == 2
        assert checkpoint.load(killed)["epoch"] == 1
        assert killed.list(FILES.metrics_dir) == ["000001.json"]
        # Run again, as the controller does for a vanished trial.
        again = subprocess.run([CLI, "trial", "run", killed_url], env=trial_env(tmp_path, "killed"),
                               stdout=log, stderr=subprocess.STDOUT, timeout=300)
    assert again.returncode == 0, (tmp_path / "trial.log").read_text()[-3000:]

    # The uninterrupted run, in this process (same thread count and seed).
    monkeypatch.setenv("AUTOML_IMAGES_THREADS", "1")
    monkeypatch.setenv("AUTOML_IMAGES_IMAGE_CACHE", str(tmp_path / "cache-straight"))
    threads = torch.get_num_threads()
    try:
        straight = run.run_trial(straight_url)
    finally:
        torch.set_num_threads(threads)
    resumed = killed.read_json(FILES.status)

    assert straight["status"] == resumed["status"] == "completed"
    assert resumed["attempt"] == 2
    # No epoch lost or repeated.
    assert resumed["epochs"] == resumed["epoch"] == EPOCHS
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, EPOCHS + 1))
    assert killed.list(FILES.metrics_dir) == [f"{e:06d}.json" for e in range(1, EPOCHS + 1)]
    log_text = killed.read_text("logs/trainer.log")
    assert log_text.count("resumed from the checkpoint of epoch 1") == 1
    for epoch in range(1, EPOCHS + 1):
        assert log_text.count(f"epoch {epoch}/{EPOCHS}:") == 1, log_text
    # The same numbers, exactly: every evaluation, the best epoch, the exported weights.
    straight_store = Storage(root.url("straight"))
    for epoch in range(1, EPOCHS + 1):
        key = FILES.metrics(epoch)
        assert learning_figures(killed.read_json(key)) == learning_figures(straight_store.read_json(key)), epoch
    assert resumed["history"] == straight["history"]
    assert resumed["best_epoch"] == straight["best_epoch"]
    assert learning_figures(resumed["metrics"]) == learning_figures(straight["metrics"])
    resumed_weights = torch.load(io.BytesIO(killed.read_bytes(FILES.model_weights)), weights_only=True)
    straight_weights = torch.load(io.BytesIO(straight_store.read_bytes(FILES.model_weights)), weights_only=True)
    assert resumed_weights.keys() == straight_weights.keys()
    assert all(torch.equal(resumed_weights[k], straight_weights[k]) for k in resumed_weights)


def test_checkpoint_holds_everything_resume_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOML_IMAGES_THREADS", "1")
    monkeypatch.setenv("AUTOML_IMAGES_IMAGE_CACHE", str(tmp_path / "cache"))
    root = Storage(str(tmp_path / "root"))
    train, val = write_dataset(root, per_class=6, validation_per_class=2)
    spec = write_spec(root, "trial", train, val, number_of_epochs=2, training_batch_size=6,
                      early_stopping=1, early_stopping_patience=3, early_stopping_delay=1,
                      checkpoint_frequency=1, spec_fields={"keep_checkpoints": True})
    threads = torch.get_num_threads()
    try:
        status = run.run_trial(spec)
    finally:
        torch.set_num_threads(threads)
    assert status["status"] == "completed", status.get("error")
    trial = Storage(root.url("trial"))
    first = torch.load(io.BytesIO(trial.read_bytes(FILES.epoch_checkpoint(1))), weights_only=True)
    last = checkpoint.load(trial)

    assert last["epoch"] == 2 and first["epoch"] == 1
    model_keys = set(last["model"])
    assert {"conv1.weight", "fc.weight", "bn1.running_mean", "bn1.num_batches_tracked"} <= model_keys
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in model_keys)  # bare module keys
    # SGD's momentum buffers and the per-step schedule's position.
    assert all("momentum_buffer" in s for s in last["optimizer"]["state"].values())
    assert last["lr_scheduler"]["last_epoch"] == 2 * 3 and first["lr_scheduler"]["last_epoch"] == 3
    assert last["scaler"] is None  # no float16 autocast on the CPU (see the round trip below)
    assert last["early_stopping"] == {"evaluations": 2, "best": last["early_stopping"]["best"],
                                      "bad_evaluations": last["early_stopping"]["bad_evaluations"]}
    assert [m["epoch"] for m in last["history"]] == [1, 2] and last["labels"] == ["blue", "green", "red"]
    assert set(last["rng"]) >= {"python", "numpy", "torch"} and last["rng_by_rank"] is None
    assert last["best_epoch"] in (1, 2) and last["duration_s"] > 0
    # The RNG state is the one after epoch 2, not epoch 1's.
    assert not torch.equal(first["rng"]["torch"], last["rng"]["torch"])


def test_checkpoint_state_round_trips_into_fresh_objects():
    """state_dict → save → load → restore gives back every state, the AMP scaler's too."""
    from automl_images.core import hyperparameters

    torch.manual_seed(0)
    hp = hyperparameters.resolve(hyperparameters.Task.CLASSIFICATION, {"model_name": "resnet18"})

    def build():
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
        optimizer = engine.build_optimizer(model.parameters(), hp)
        scheduler = engine.build_lr_scheduler(optimizer, hp, steps_per_epoch=5, epochs=3)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
        stopping = engine.EarlyStopping(True, patience=2, delay=1, metric="accuracy")
        return model, optimizer, scheduler, scaler, stopping

    model, optimizer, scheduler, scaler, stopping = build()
    for _ in range(7):
        loss = model(torch.randn(6, 4)).square().mean()
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
    stopping.improved(0.5), stopping.improved(0.4), stopping.improved(0.3)
    progress = checkpoint.Progress(epoch=2, history=[{"epoch": 1, "accuracy": 0.5}, {"epoch": 2, "accuracy": 0.4}])
    progress.record_best(1, {"epoch": 1, "accuracy": 0.5}, model)
    rng = engine.rng_state()
    state = checkpoint.snapshot(checkpoint.state_dict(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, scaler=scaler, early_stopping=stopping,
        progress=progress, labels=["a", "b"], rng=rng))
    # The snapshot shares nothing with the live model: training on does not change it.
    before = state["model"]["0.weight"].clone()
    model[0].weight.data.add_(1.0)
    assert torch.equal(state["model"]["0.weight"], before)

    storage = Storage("memory://resume-tests/round-trip")
    checkpoint.save(storage, state)
    loaded = checkpoint.load(storage)
    fresh = build()
    restored, restored_rng = checkpoint.restore(loaded, model=fresh[0], optimizer=fresh[1], lr_scheduler=fresh[2],
                                                scaler=fresh[3], early_stopping=fresh[4], labels=["a", "b"])
    assert torch.equal(fresh[0][0].weight, before)
    assert fresh[1].state_dict()["state"][0]["momentum_buffer"].equal(optimizer.state_dict()["state"][0]["momentum_buffer"])
    assert fresh[2].state_dict() == scheduler.state_dict()
    assert fresh[3].state_dict() == scaler.state_dict() and fresh[3].get_scale() != 1024.0
    assert fresh[4].state_dict() == stopping.state_dict() == {"evaluations": 3, "best": 0.5, "bad_evaluations": 2}
    assert restored.epoch == 2 and restored.best_epoch == 1 and restored.history == progress.history
    assert torch.equal(restored_rng["torch"], rng["torch"])
    with pytest.raises(Exception, match="classes"):
        checkpoint.restore(loaded, model=fresh[0], optimizer=fresh[1], lr_scheduler=fresh[2], scaler=fresh[3],
                           early_stopping=fresh[4], labels=["a", "c"])


def test_background_writes_keep_their_order_and_surface_failures():
    """Checkpoints and status go through one background thread: in order (status N never before
    checkpoint N), at most one checkpoint waiting, and a failed write raised to the trainer."""
    from automl_images.core.records import TrialStatus
    from automl_images.trainer.report import BackgroundWriter, Reporter

    writer = BackgroundWriter(max_heavy=1)
    done: list[int] = []

    def slow(i: int):
        time.sleep(0.002)
        done.append(i)

    for i in range(12):
        writer.submit(lambda i=i: slow(i), heavy=i % 4 == 0)
    writer.flush()
    assert done == list(range(12))

    def broken():
        raise OSError("the bucket is not answering")

    writer.submit(broken)
    with pytest.raises(OSError, match="not answering"):
        writer.flush()
    writer.submit(broken)
    time.sleep(0.05)
    with pytest.raises(OSError, match="not answering"):
        writer.submit(lambda: None)  # the next write reports the earlier failure

    storage = Storage("memory://resume-tests/reporter")
    reporter = Reporter(storage, "", BackgroundWriter())
    status = reporter.update(TrialStatus.RUNNING, epoch=1)
    reporter.update(TrialStatus.RUNNING, epoch=2)  # the first write's content was taken at its call
    reporter.writer.close()
    assert status["epoch"] == 2 and storage.read_json(FILES.status)["epoch"] == 2
    writer.close()
