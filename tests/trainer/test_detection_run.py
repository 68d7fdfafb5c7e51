"""Detection and segmentation trials through `run_trial`, the same entry point and loop as
classification: status, per-epoch metrics, checkpoint and resume, the exported model's predictions,
tiles, aspect-ratio batches and lenient labels. Tiny images (64 px) and two epochs keep each trial
to seconds; what the models learn is measured in bench/, not here."""
from __future__ import annotations

import json

import pytest
from trial_data import write_detection_dataset, write_spec

from automl_images.core.detection_labels import parse_detection_label
from automl_images.core.layout import FILES
from automl_images.core.records import TrialStatus
from automl_images.core.storage import Storage
from automl_images.trainer import checkpoint, export, run

pytestmark = pytest.mark.usefixtures("trial_process")


@pytest.fixture
def root(tmp_path):
    return Storage(str(tmp_path / "bucket"))


@pytest.fixture
def dataset(root):
    return write_detection_dataset(root)


def metrics_of(trial: Storage, epoch: int) -> dict:
    return trial.read_json(f"{FILES.metrics_dir}/{epoch:06d}.json")


def test_detection_trial_trains_evaluates_exports_and_predicts(root, dataset):
    train, val = dataset
    status = run.run_trial(write_spec(root, "t1", train, val, task="image-object-detection",
                                      validation_metric_type="coco_voc"))
    assert status["status"] == TrialStatus.COMPLETED.value, status.get("error")
    trial = Storage(root.url("t1"))
    first = metrics_of(trial, 1)
    assert 0.0 <= first["mean_average_precision"] <= 1.0
    assert {"voc_map", "coco_map", "coco_map_50", "per_class"} <= set(first)
    assert first["train_images"] == 6 and "loss" not in first       # no validation loss for detectors
    assert [h["loss"] for h in status["history"]] == [None, None]
    assert status["best"]["metrics"]["mean_average_precision"] == pytest.approx(
        max(metrics_of(trial, e)["mean_average_precision"] for e in (1, 2)))

    info = trial.read_json(FILES.model_info)
    assert info["task"] == "image-object-detection" and info["hyperparameters"]["min_size"] == 64
    model = export.load_model(trial)
    image = root.url("detection/images/0.png")
    [prediction] = model.predict([image])
    label = parse_detection_label(prediction["label"], scored=True)   # what `evaluate` reads
    assert all(o.label in ("blue", "green", "red") and 0 <= o.score <= 1 for o in label.objects)


def test_a_detection_trial_resumes_from_its_checkpoint(root, dataset):
    """One epoch, then the same spec asked for two: the second run starts at epoch 2 from the
    checkpoint, the way a trial restarted on a new spot machine does."""
    train, val = dataset
    # keep_checkpoints: a completed trial otherwise drops the checkpoint that this test extends
    spec_url = write_spec(root, "t2", train, val, task="image-object-detection", number_of_epochs=1,
                          spec_fields={"keep_checkpoints": True})
    assert run.run_trial(spec_url)["status"] == TrialStatus.COMPLETED.value
    trial = Storage(root.url("t2"))
    spec = json.loads(trial.read_text(FILES.spec))
    spec["hyperparameters"]["number_of_epochs"] = 2
    trial.write_json(FILES.spec, spec)
    trial.write_json(FILES.status, {**trial.read_json(FILES.status), "status": TrialStatus.RUNNING.value})
    status = run.run_trial(spec_url)
    assert status["status"] == TrialStatus.COMPLETED.value, status.get("error")
    assert status["attempt"] == 2 and [h["epoch"] for h in status["history"]] == [1, 2]
    assert checkpoint.load(trial)["epoch"] == 2


def test_tiles_add_training_samples_and_tiled_inference_evaluates(root, dataset):
    train, val = dataset
    status = run.run_trial(write_spec(root, "t3", train, val, task="image-object-detection", number_of_epochs=1,
                                      tile_grid_size="2x1", tile_overlap_ratio=0.25))
    assert status["status"] == TrialStatus.COMPLETED.value, status.get("error")
    metrics = metrics_of(Storage(root.url("t3")), 1)
    assert metrics["train_images"] == 6 * 3          # every image and its two tiles
    assert 0.0 <= metrics["mean_average_precision"] <= 1.0


def test_no_validation_metric_keeps_the_last_epoch(root, dataset):
    train, val = dataset
    status = run.run_trial(write_spec(root, "t4", train, val, task="image-object-detection",
                                      validation_metric_type="none", number_of_epochs=1))
    assert status["status"] == TrialStatus.COMPLETED.value, status.get("error")
    assert status["best_epoch"] == 1 and status["metrics"]["mean_average_precision"] is None


def test_out_of_bounds_boxes_fail_the_trial_unless_lenient(root, dataset, tmp_path):
    train, val = dataset
    line = json.dumps({"image_url": "images/0.png", "label": [
        {"label": "red", "topX": 0.1, "topY": 0.1, "bottomX": 1.02, "bottomY": 0.5}]})
    bad = root.url("detection/bad.jsonl")
    root.write_text("detection/bad.jsonl", root.read_text("detection/train.jsonl") + line + "\n")
    status = run.run_trial(write_spec(root, "strict", bad, val, task="image-object-detection", number_of_epochs=1))
    assert status["status"] == TrialStatus.FAILED.value and status["error"]["kind"] == "user"
    assert "bad.jsonl:7" in status["error"]["message"] and "bottomX" in status["error"]["message"]
    status = run.run_trial(write_spec(root, "lenient", bad, val, task="image-object-detection", number_of_epochs=1,
                                      spec_fields={"lenient_labels": True}))
    assert status["status"] == TrialStatus.COMPLETED.value, status.get("error")
    [change] = status["image_warnings"]
    assert change["where"].endswith("bad.jsonl:7") and "'bottomX' 1.02 clipped to 1.0" in change["warning"]


@pytest.mark.slow
def test_segmentation_trial_predicts_polygons(root, dataset):
    train, val = dataset
    status = run.run_trial(write_spec(root, "seg", train, val, task="image-instance-segmentation",
                                      model_name="maskrcnn_resnet50_fpn", number_of_epochs=1,
                                      validation_metric_type="coco"))
    assert status["status"] == TrialStatus.COMPLETED.value, status.get("error")
    trial = Storage(root.url("seg"))
    assert "coco_map" in metrics_of(trial, 1)
    [prediction] = export.load_model(trial).predict([root.url("detection/images/1.png")])
    label = parse_detection_label(prediction["label"], scored=True, segmentation=True)
    assert all(o.polygons for o in label.objects)


def test_yolov5_trial_trains_and_predicts(root, dataset):
    train, val = dataset
    status = run.run_trial(write_spec(root, "yolo", train, val, task="image-object-detection", model_name="yolov5",
                                      model_size="small", img_size=64, multi_scale=1, number_of_epochs=1,
                                      learning_rate=0.01, box_score_thresh=0.01))
    assert status["status"] == TrialStatus.COMPLETED.value, status.get("error")
    trial = Storage(root.url("yolo"))
    assert 0.0 <= metrics_of(trial, 1)["mean_average_precision"] <= 1.0
    [prediction] = export.load_model(trial).predict([root.url("detection/images/0.png")])
    parse_detection_label(prediction["label"], scored=True)
