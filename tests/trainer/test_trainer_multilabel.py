"""image-multi-labeling: labels as lists, the BCE loss and its weights, a whole trial on images with a
red and/or a blue square, the exported model's predictions, and a job through the controller."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm

from automl_images.controller.loop import Controller
from automl_images.controller.submit import submit
from automl_images.core.hyperparameters import Task, resolve
from automl_images.core.layout import FILES, Root
from automl_images.trainer import data, export, metrics, run
from automl_images.trainer.tasks import get_adapter
from automl_images.trainer.tasks.multilabel import MultiLabelEvaluator, positive_weights


def multi_label(**hyperparameters):
    """The multi-label adapter for the registry's defaults, but `hyperparameters`."""
    return get_adapter(Task.MULTI_LABEL, resolve(Task.MULTI_LABEL, hyperparameters))


COMBINATIONS = ([], ["red"], ["blue"], ["blue", "red"])


def write_dataset(folder: Path, train: int = 24, validation: int = 12, size: int = 16) -> tuple[str, str]:
    """Noise with a red square top left and/or a blue square bottom right; the four combinations
    in turn, so that every split holds each of them."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    half = size // 2
    for split, n in (("train", train), ("val", validation)):
        lines = []
        for i in range(n):
            labels = COMBINATIONS[i % 4]
            pixels = rng.integers(0, 40, size=(size, size, 3)).astype(np.uint8)
            if "red" in labels:
                pixels[1:half - 1, 1:half - 1] = (220, 30, 30)
            if "blue" in labels:
                pixels[half + 1:size - 1, half + 1:size - 1] = (40, 60, 220)
            name = f"images/{split}_{i}.png"
            Image.fromarray(pixels).save(folder / name)
            lines.append(json.dumps({"image_url": name, "label": labels}))
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "train.jsonl"), str(folder / "val.jsonl")


pytestmark = pytest.mark.usefixtures("trial_process")


# -- labels ------------------------------------------------------------------------------------------

def test_labels_are_lists_or_json_lists(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in [
        {"image_url": "a.png", "label": ["can", "milk_bottle"]},
        {"image_url": "b.png", "label": []},
        {"image_url": "c.png", "label": "[\"water_bottle\", \"can\", \"can\"]"},
        {"image_url": "d.png", "label": [3]},
    ]) + "\n")
    records = data.read_jsonl(str(path), multi_label().parse_label)
    assert [r.label for r in records] == [("can", "milk_bottle"), (), ("can", "water_bottle"), ("3",)]


@pytest.mark.parametrize("label, message", [
    ("can", "must be a list of class names for image-multi-labeling, got the string 'can'"),
    ({"label": "can"}, "must be a list of class names"),
    (7, "must be a list of class names"),
    (["can", ""], "item 1: must be a non-empty class name"),
    (["can", {"x": 1}], "item 1: must be a class name"),
    ("[\"can\", ", "a string label must hold a JSON list"),
])
def test_bad_labels_name_file_line_and_field(tmp_path, label, message):
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps({"image_url": "a.png", "label": ["ok"]}) + "\n"
                    + json.dumps({"image_url": "b.png", "label": label}) + "\n")
    with pytest.raises(data.DataError) as info:
        data.read_jsonl(str(path), multi_label().parse_label)
    assert f"{path}:2: field 'label': {message}" in str(info.value)


def test_encode_is_multi_hot():
    adapter = multi_label()
    target = adapter.encode(("blue", "red"), {"blue": 0, "green": 1, "red": 2})
    assert target.dtype == torch.float32 and target.tolist() == [1.0, 0.0, 1.0]


# -- loss --------------------------------------------------------------------------------------------

def test_positive_weights_from_label_frequencies():
    assert positive_weights([10, 50, 100], 100, 0) is None
    # 10 of 100: 90 negatives / 10 positives; 50 of 100: balanced; present everywhere: 1.
    assert positive_weights([10, 50, 100], 100, 2).tolist() == pytest.approx([9.0, 1.0, 1.0])
    assert positive_weights([10, 50, 100], 100, 1).tolist() == pytest.approx([3.0, 1.0, 1.0])


def test_weighted_loss_is_bce_with_pos_weight():
    loss = multi_label(weighted_loss=2).loss([1, 3], 4)
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.3]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets,
                                                                    pos_weight=torch.tensor([3.0, 1 / 3]))
    assert loss(torch.nn.Identity(), logits, targets).item() == pytest.approx(expected.item())
    unweighted = multi_label(weighted_loss=0).loss([1, 3], 4)
    assert unweighted(torch.nn.Identity(), logits, targets).item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, targets).item())


def test_evaluator_uses_the_sigmoid_at_one_half():
    evaluator = MultiLabelEvaluator(["blue", "red"])
    logits = torch.tensor([[2.0, -2.0], [0.0, 1.0], [-3.0, -1.0]])   # sigmoid(0) = 0.5: predicted
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    evaluator.update(logits[:2], targets[:2])
    evaluator.update(logits[2:], targets[2:])
    m = evaluator.compute()
    # Sample 1: {blue} vs {blue}; 2: {blue, red} vs {red}; 3: {} vs {}.
    assert m["iou"] == pytest.approx((1 + 0.5 + 1) / 3)
    probabilities = torch.sigmoid(logits).numpy()
    predicted = probabilities >= 0.5
    assert m["iou"] == pytest.approx(skm.jaccard_score(targets.numpy(), predicted, average="samples",
                                                       zero_division=1))
    assert m["f1_score_micro"] == pytest.approx(skm.f1_score(targets.numpy(), predicted, average="micro"))
    assert m["loss"] == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(
        logits, targets).item())


# -- a whole trial ---------------------------------------------------------------------------------

def write_spec(folder: Path, dataset: tuple[str, str], **hyperparameters) -> str:
    train, val = dataset
    hp = {"model_name": "resnet18", "pretrained": 0, "number_of_epochs": 2, "training_batch_size": 8,
          "validation_batch_size": 16, "learning_rate": 0.01, "resize_size": 16, "crop_size": 16,
          "early_stopping": 0, "warmup_cosine_lr_warmup_epochs": 0, **hyperparameters}
    spec = {"job_id": "job", "trial_id": folder.name, "task": "image-multi-labeling", "primary_metric": "iou",
            "training_data": train, "validation_data": val, "hyperparameters": resolve(Task.MULTI_LABEL, hp),
            "output": str(folder),
            "seed": 1}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(spec))
    return str(folder / "spec.json")


def test_trial_completes_writes_iou_and_exports_a_multi_label_model(tmp_path):
    dataset = write_dataset(tmp_path / "data")
    folder = tmp_path / "trial"
    status = run.run_trial(write_spec(folder, dataset, weighted_loss=1))
    assert status["status"] == "completed", status.get("error")
    assert status["epochs"] == 2 and 0.0 <= status["metrics"]["iou"] <= 1.0
    assert [h["iou"] for h in status["history"]] and "per_class" not in status["metrics"]

    for epoch in (1, 2):
        evaluation = json.loads((folder / FILES.metrics(epoch)).read_text())
        assert 0.0 <= evaluation["iou"] <= 1.0 and evaluation["samples"] == 12
        assert set(evaluation["per_class"]) == {"blue", "red"}
        assert {"f1_score_micro", "f1_score_macro", "average_precision_score_macro", "loss"} <= set(evaluation)

    info = json.loads((folder / FILES.model_info).read_text())
    assert info["task"] == "image-multi-labeling" and info["threshold"] == 0.5
    assert info["labels"] == ["blue", "red"] and info["primary_metric"] == "iou"

    images = [str(tmp_path / "data" / "images" / f"val_{i}.png") for i in range(12)]
    predictions = export.predict(str(folder), images)
    assert len(predictions) == 12
    for p in predictions:
        assert set(p["scores"]) == {"blue", "red"}
        assert p["label"] == sorted((name for name, value in p["scores"].items() if value >= 0.5),
                                    key=lambda name: -p["scores"][name])
    # The exported model's predictions give the best epoch's validation IoU.
    truth = np.array([[name in COMBINATIONS[i % 4] for name in ("blue", "red")] for i in range(12)])
    predicted = np.array([[name in p["label"] for name in ("blue", "red")] for p in predictions])
    assert metrics.jaccard_samples(truth, predicted) == pytest.approx(info["best_metric"])


def test_a_multi_class_label_file_is_refused_for_multi_labeling(tmp_path):
    dataset = write_dataset(tmp_path / "data", train=8, validation=4)
    Path(dataset[0]).write_text(json.dumps({"image_url": "images/train_0.png", "label": "red"}) + "\n")
    status = run.run_trial(write_spec(tmp_path / "trial", dataset))
    assert status["status"] == "failed" and status["error"]["kind"] == "user"
    assert "train.jsonl:1: field 'label': must be a list of class names" in status["error"]["message"]


# -- through the controller ------------------------------------------------------------------------

JOB = """\
task: image-multi-labeling
training_data: data/train.jsonl
validation_data: data/val.jsonl
limits:
  max_trials: 1
search_space:
  - model_name: mobilenetv2
    learning_rate: uniform(0.01, 0.03)
arguments:
  pretrained: 0
  number_of_epochs: 1
  training_batch_size: 8
  validation_batch_size: 16
  resize_size: 16
  crop_size: 16
  weighted_loss: 2
"""


def test_a_multi_label_job_runs_through_the_controller(tmp_path):
    write_dataset(tmp_path / "data", train=16, validation=8)
    (tmp_path / "job.yaml").write_text(JOB)
    root_url = str(tmp_path / "root")
    job_id = submit(str(tmp_path / "job.yaml"), root_url, job_id="multilabel")
    Controller(root_url).run(interval_s=0.3, until_done=True)
    root = Root(root_url)
    assert root.storage.read_json(root.job_state(job_id))["status"] == "completed"
    status = root.read_trial(job_id, "t0000", FILES.status)
    assert status["status"] == "completed", status.get("error")
    board = root.storage.read_json(root.leaderboard(job_id))
    assert board["primary_metric"] == "iou" and board["direction"] == "maximize"
    assert math.isfinite(board["trials"][0]["metrics"]["iou"])
    assert root.storage.read_json(root.best(job_id, "model.json"))["task"] == "image-multi-labeling"
