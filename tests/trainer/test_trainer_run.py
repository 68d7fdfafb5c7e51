"""Whole trials through `run_trial` on a tiny synthetic dataset (coloured squares): status, metrics,
checkpoint, exported model, stop requests, SIGTERM, resume, and failures that name their cause."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image

from automl_images.core.hyperparameters import Task, resolve
from automl_images.core.layout import FILES
from automl_images.core.storage import Storage
from automl_images.trainer import checkpoint, export, run

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def make_dataset(root, per_class: int = 24, size: int = 16) -> tuple[str, str]:
    """train.jsonl and val.jsonl of noisy coloured squares, images in a subfolder."""
    rng = np.random.default_rng(0)
    os.makedirs(root / "images", exist_ok=True)
    lines = {"train": [], "val": []}
    for label, color in COLORS.items():
        for i in range(per_class + per_class // 2):
            pixels = np.clip(np.array(color) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            name = f"images/{label}_{i}.png"
            Image.fromarray(pixels).save(root / name)
            split = "train" if i < per_class else "val"
            lines[split].append(json.dumps({"image_url": name, "label": label,
                                            "image_details": {"format": "png", "width": size, "height": size}}))
    for split, content in lines.items():
        (root / f"{split}.jsonl").write_text("\n".join(content) + "\n")
    return str(root / "train.jsonl"), str(root / "val.jsonl")


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data")


pytestmark = pytest.mark.usefixtures("trial_process")


def write_spec(folder, dataset, validation: bool = True, keep_checkpoints: bool = False, **hyperparameters) -> str:
    train, val = dataset
    hp = {"model_name": "resnet18", "pretrained": 0, "number_of_epochs": 2, "training_batch_size": 16,
          "validation_batch_size": 32, "learning_rate": 0.01, "resize_size": 16, "crop_size": 16,
          "early_stopping": 0, **hyperparameters}
    spec = {"job_id": "job", "trial_id": folder.name, "task": "image-classification",
            "primary_metric": "accuracy", "training_data": train, "validation_data": val if validation else None,
            "hyperparameters": resolve(Task.CLASSIFICATION, hp), "output": str(folder), "seed": 3,
            "keep_checkpoints": keep_checkpoints}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(spec))
    return str(folder / "spec.json")


def read(folder, key):
    return json.loads((folder / key).read_text())


def test_trial_completes_and_exports_a_working_model(tmp_path, dataset):
    folder = tmp_path / "trial"
    # From scratch, batch norm's running statistics need steady steps before the model does well
    # in eval mode: a low rate and 5 epochs reached 100% for each of 6 seeds tried (3 epochs at
    # 0.01: for 2 of 6).
    status = run.run_trial(write_spec(folder, dataset, number_of_epochs=5, learning_rate=0.005,
                                      checkpoint_frequency=2))

    assert status == read(folder, FILES.status)
    assert status["status"] == "completed", status.get("error")
    assert status["epochs"] == 5 and status["epoch"] == 5 and status["epochs_total"] == 5
    assert [h["epoch"] for h in status["history"]] == [1, 2, 3, 4, 5]
    best = max(status["history"], key=lambda h: h["accuracy"])
    assert status["best_epoch"] == best["epoch"] and status["metrics"]["accuracy"] == best["accuracy"]
    assert status["duration_s"] > 0 and status["skipped_images_count"] == 0
    assert status["metrics"]["accuracy"] == 1.0  # coloured squares are easy
    assert sorted(os.listdir(folder / "metrics")) == [f"{epoch:06d}.json" for epoch in range(1, 6)]
    metrics = read(folder, FILES.metrics(2))
    assert {"accuracy", "loss", "log_loss", "precision_score_weighted", "recall_score_weighted",
            "f1_score_weighted", "epoch", "last_learning_rate", "time", "train_loss"} <= set(metrics)
    # The checkpoints checkpoint_frequency asked for stay; the resume checkpoint goes once the trial is done.
    assert sorted(os.listdir(folder / "checkpoints")) == ["epoch_0002.pt", "epoch_0004.pt"]
    log = (folder / "logs" / "trainer.log").read_text()
    assert "epoch 5/5" in log and "deleted checkpoints/last.pt" in log

    info = read(folder, FILES.model_info)
    assert info["labels"] == ["blue", "green", "red"] and info["num_classes"] == 3
    assert info["epoch"] == status["best_epoch"] and info["primary_metric"] == "accuracy"
    assert info["preprocessing"]["crop_size"] == 16
    loaded = export.load_model(str(folder / "model"))
    images = [Image.new("RGB", (16, 16), color) for color in COLORS.values()]
    predictions = loaded.predict(images)
    assert [p["label"] for p in predictions] == list(COLORS)
    assert sum(predictions[0]["scores"].values()) == pytest.approx(1.0)
    assert export.predict(str(folder), [str(tmp_path / "data" / "images" / "red_0.png")])[0]["label"] == "red"

    # A finished trial is never touched again.
    assert run.run_trial(str(folder / "spec.json")) == status


def test_split_without_validation_data(tmp_path, dataset):
    folder = tmp_path / "trial"
    status = run.run_trial(write_spec(folder, dataset, validation=False, number_of_epochs=1, split_ratio=0.25,
                                      model_name="mobilenetv2", optimizer="adamw", learning_rate=0.001,
                                      lr_scheduler="step", layers_to_freeze=2, weighted_loss=1))
    assert status["status"] == "completed", status.get("error")
    assert read(folder, FILES.metrics(1))["samples"] == 18  # a quarter of 72


def test_trial_folder_in_a_bucket(tmp_path, dataset):
    """Every write goes through Storage: a trial folder behind fsspec (here its in-memory bucket)
    works like a local one."""
    with open(write_spec(tmp_path / "local", dataset, number_of_epochs=1)) as f:
        spec = json.load(f)
    url = f"memory://trainer-tests/{tmp_path.name}/trial"
    bucket = Storage(url)
    bucket.write_json(FILES.spec, {**spec, "output": url, "keep_checkpoints": True})
    status = run.run_trial(f"{url}/{FILES.spec}")
    assert status["status"] == "completed", status.get("error")
    # keep_checkpoints: the resume checkpoint stays
    assert {FILES.checkpoint, FILES.metrics(1), FILES.model_info, FILES.model_weights,
            "logs/trainer.log"} <= set(bucket.walk(""))
    assert export.load_model(url).labels == ["blue", "green", "red"]


def test_stop_request_is_honoured_at_the_first_evaluation(tmp_path, dataset):
    folder = tmp_path / "trial"
    spec = write_spec(folder, dataset, number_of_epochs=5)
    Storage(str(folder)).write_json(FILES.stop, {"reason": "early_termination"})
    status = run.run_trial(spec)
    assert status["status"] == "stopped" and status["reason"] == "early_termination"
    assert status["epochs"] == 1 and os.listdir(folder / "metrics") == ["000001.json"]
    assert not (folder / FILES.checkpoint).exists()  # a stop request is final: nothing resumes it
    assert export.load_model(str(folder)).info["epoch"] == 1  # the best model so far is exported
    assert run.main([spec]) == 0


def test_resume_continues_without_repeating_epochs(tmp_path, dataset):
    straight = run.run_trial(write_spec(tmp_path / "straight", dataset, number_of_epochs=2))

    folder = tmp_path / "resumed"
    # A stopped trial keeps its checkpoint only when the job says so (otherwise a stop is final).
    spec = write_spec(folder, dataset, number_of_epochs=2, keep_checkpoints=True)
    storage = Storage(str(folder))
    storage.write_json(FILES.stop, {"reason": "paused"})
    assert run.run_trial(spec)["status"] == "stopped"
    first_metrics = (folder / FILES.metrics(1)).read_bytes()
    # The controller relaunches a stopped trial by withdrawing the stop and setting it pending.
    storage.delete(FILES.stop)
    storage.write_json(FILES.status, {**read(folder, FILES.status), "status": "pending"})
    status = run.run_trial(spec)

    assert status["status"] == "completed" and status["attempt"] == 2
    assert [h["epoch"] for h in status["history"]] == [1, 2]
    assert (folder / FILES.metrics(1)).read_bytes() == first_metrics  # epoch 1 was not trained again
    log = (folder / "logs" / "trainer.log").read_text()
    assert "resumed from the checkpoint of epoch 1" in log and log.count("epoch 1/2") == 1
    # Data order, RNG and optimizer state were restored: the same result as without the stop.
    for a, b in zip(straight["history"], status["history"]):
        assert a["accuracy"] == b["accuracy"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_sigterm_stops_at_the_next_step(tmp_path, dataset):
    folder = tmp_path / "trial"
    spec = write_spec(folder, dataset, number_of_epochs=200)

    def terminate_after_first_epoch():
        deadline = time.time() + 60
        while time.time() < deadline and not (folder / FILES.metrics(1)).exists():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    handler_before = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=terminate_after_first_epoch)
    killer.start()
    status = run.run_trial(spec)
    killer.join()
    assert status["status"] == "stopped" and status["reason"] == "terminated"
    assert 1 <= status["epochs"] < 200
    saved = checkpoint.load(Storage(str(folder)))
    assert saved["epoch"] == status["epochs"]
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the trial's handler is removed


def test_bad_images_under_the_threshold_are_skipped_and_listed(tmp_path, dataset):
    os.remove(tmp_path / "data" / "images" / "red_1.png")
    (tmp_path / "data" / "images" / "green_2.png").write_bytes(b"not an image")
    folder = tmp_path / "trial"
    status = run.run_trial(write_spec(folder, dataset, number_of_epochs=1))
    assert status["status"] == "completed", status.get("error")
    assert status["skipped_images_count"] == 2
    reasons = {s["image_url"].rsplit("/", 1)[-1]: s["reason"] for s in status["skipped_images"]}
    assert reasons["red_1.png"] == "not found" and reasons["green_2.png"].startswith("cannot decode")
    assert all("train.jsonl:" in s["where"] for s in status["skipped_images"])


def test_too_many_bad_images_fail_the_trial_with_the_list(tmp_path, dataset):
    for i in range(8):
        os.remove(tmp_path / "data" / "images" / f"blue_{i}.png")
    folder = tmp_path / "trial"
    spec = write_spec(folder, dataset)
    status = run.run_trial(spec)
    assert status["status"] == "failed"
    assert status["error"]["kind"] == "user"
    message = status["error"]["message"]
    assert "8 of 108 images could not be read" in message and "train.jsonl:" in message and "blue_7.png" in message
    assert status["skipped_images_count"] == 8
    assert "could not be read" in (folder / "logs" / "trainer.log").read_text()
    assert not (folder / "model").exists()
    assert run.main([spec]) == 1  # a failed trial stays failed


def test_bad_annotation_fails_with_file_line_and_field(tmp_path, dataset):
    with open(dataset[1], "a") as f:
        f.write(json.dumps({"image_url": "images/red_0.png"}) + "\n")
    status = run.run_trial(write_spec(tmp_path / "trial", dataset))
    assert status["status"] == "failed" and status["error"]["kind"] == "user"
    assert "val.jsonl:37: field 'label': missing" in status["error"]["message"]
    assert "Traceback" in status["error"]["traceback"]


def test_validation_class_unseen_in_training_fails(tmp_path, dataset):
    with open(dataset[1], "a") as f:
        f.write(json.dumps({"image_url": "images/red_0.png", "label": "purple"}) + "\n")
    status = run.run_trial(write_spec(tmp_path / "trial", dataset))
    assert status["status"] == "failed"
    assert "val.jsonl:37: field 'label': class 'purple' does not occur in the training data" in status["error"]["message"]


def test_bad_settings_are_user_errors(tmp_path, dataset):
    status = run.run_trial(write_spec(tmp_path / "trial", dataset, model_name="yolov5"))
    assert status["status"] == "failed" and status["error"]["kind"] == "user"
    assert "model_name" in status["error"]["message"] and "not a model for image-classification" in status["error"]["message"]


def test_invalid_spec_exits_3_and_marks_the_trial_failed(tmp_path, dataset, capsys):
    folder = tmp_path / "trial"
    spec = write_spec(folder, dataset)
    content = read(folder, "spec.json")
    content["learning_rate"] = 0.1  # a hyperparameter where a spec field belongs
    (folder / "spec.json").write_text(json.dumps(content))
    assert run.main([spec]) == 3
    assert "unknown field(s) in trial spec: learning_rate" in capsys.readouterr().err
    status = read(folder, FILES.status)
    assert status["status"] == "failed" and "learning_rate" in status["error"]["message"]
    (folder / "spec.json").write_text(json.dumps({**content, "schema_version": 99}))
    assert run.main([spec]) == 3
    assert "schema_version 99 is not supported" in capsys.readouterr().err
    assert run.main([str(tmp_path / "missing" / "spec.json")]) == 3


def test_a_torn_status_is_started_afresh_and_a_torn_stop_request_still_stops(tmp_path, dataset):
    folder = tmp_path / "trial"
    spec = write_spec(folder, dataset, number_of_epochs=1)
    (folder / FILES.status).write_text('{"status": "running", "epo')  # cut by a kill
    status = run.run_trial(spec)
    assert status["status"] == "completed", status.get("error")

    folder = tmp_path / "stopped"
    spec = write_spec(folder, dataset, number_of_epochs=3)
    (folder / FILES.stop).write_text('{"reason": "early_term')  # the controller only writes it to stop the trial
    status = run.run_trial(spec)
    assert status["status"] == "stopped" and status["epochs"] == 1
    assert status["reason"].startswith("stop requested (") and "stop.json" in status["reason"]
