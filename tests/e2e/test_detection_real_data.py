"""A detection trial on real photos end to end: ../shared/datasets/fridge-detection's COCO JSON
converted by our converter, then one short trial through `run_trial`. Tiny (8 training and 4
validation images, one epoch at 128 px) so that it checks the pipeline, not what the model learns
(bench/detection_real_data.py tracks that); skipped where the shared datasets are absent."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import shared_dataset
from trial_data import write_spec

from automl_images.core.hyperparameters import Task
from automl_images.core.layout import FILES
from automl_images.core.records import TrialStatus
from automl_images.core.storage import Storage
from automl_images.trainer import convert, run


@pytest.fixture(autouse=True)
def one_thread(monkeypatch, tmp_path):
    """Like the local launcher: one thread per trial; and a private image cache."""
    before = torch.get_num_threads()
    monkeypatch.setenv("AUTOML_IMAGES_THREADS", "1")
    monkeypatch.setenv("AUTOML_IMAGES_IMAGE_CACHE", str(tmp_path / "image-cache"))
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_a_detection_trial_on_converted_fridge_photos_completes(tmp_path):
    dataset = shared_dataset("fridge-detection")
    root = Storage(str(tmp_path / "bucket"))
    jsonl = {split: str(tmp_path / f"{split}.jsonl") for split in ("train", "val")}
    conversion = convert.from_coco(str(dataset / "annotations" / "odFridgeObjects_coco.json"),
                                   str(dataset / "images"), jsonl["train"], Task.OBJECT_DETECTION)
    assert len(conversion.records) == 128 and conversion.count_objects() == 336 and not conversion.warnings
    # Images outside the output's folder keep their absolute paths; the first 8 train, the next 4 validate.
    convert.write_jsonl(conversion.records[:8], jsonl["train"])
    convert.write_jsonl(conversion.records[8:12], jsonl["val"])

    status = run.run_trial(write_spec(root, "fridge", jsonl["train"], jsonl["val"], task="image-object-detection",
                                      number_of_epochs=1, min_size=128, max_size=171,
                                      validation_metric_type="coco_voc"))
    assert status["status"] == TrialStatus.COMPLETED.value, status.get("error")
    metrics = Storage(root.url("fridge")).read_json(FILES.metrics(1))
    assert metrics["train_images"] == 8
    for name in ("mean_average_precision", "voc_map", "coco_map"):
        assert math.isfinite(metrics[name]) and 0.0 <= metrics[name] <= 1.0, (name, metrics[name])
    assert set(metrics["per_class"]) <= {"can", "carton", "milk_bottle", "water_bottle"}
