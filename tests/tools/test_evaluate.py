"""`automl-images evaluate`: saved predictions scored against labels, matched by image_url, with the
same figures as scikit-learn; bad input exits 2 naming the file, line and field."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from automl_images.controller import cli
from automl_images.trainer.evaluate import EvaluationError, evaluate_files

CLI = str(Path(sys.executable).with_name("automl-images"))
CLASSES = ["cat", "dog", "fox"]


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def multiclass_files(tmp_path):
    """20 images; predictions right for about two thirds, listed in another order than the labels."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 20)
    p = rng.dirichlet(np.ones(3), 20)
    p[::3] = np.eye(3)[(y[::3] + 1) % 3] * 0.7 + 0.1   # every third one confidently wrong
    p[1::3] = np.eye(3)[y[1::3]] * 0.7 + 0.1
    labels = [{"image_url": f"images/{i}.png", "label": CLASSES[y[i]]} for i in range(20)]
    predictions = [{"image_url": f"images/{i}.png", "label": CLASSES[int(p[i].argmax())],
                    "scores": dict(zip(CLASSES, map(float, p[i])))} for i in reversed(range(20))]
    return (write_jsonl(tmp_path / "labels.jsonl", labels),
            write_jsonl(tmp_path / "predictions.jsonl", predictions), y, p)


def test_cli_prints_the_metrics_of_sklearn(multiclass_files):
    labels, predictions, y, p = multiclass_files
    result = subprocess.run([CLI, "evaluate", "--task", "image-classification", "--labels", labels,
                             "--predictions", predictions], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["task"] == "image-classification" and out["samples"] == 20
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(axis=1)))
    assert out["f1_score_weighted"] == pytest.approx(skm.f1_score(y, p.argmax(axis=1), average="weighted"))
    assert out["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=[0, 1, 2]))
    assert out["auc_macro"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    assert out["confusion_matrix"]["labels"] == CLASSES
    assert out["confusion_matrix"]["matrix"] == skm.confusion_matrix(y, p.argmax(axis=1)).tolist()


def test_cli_exits_2_naming_the_file_and_line(multiclass_files, tmp_path):
    labels, predictions, _, _ = multiclass_files
    lines = Path(predictions).read_text().splitlines()
    bad = json.loads(lines[3])
    bad["scores"]["dog"] = 1.7
    lines[3] = json.dumps(bad)
    Path(predictions).write_text("\n".join(lines) + "\n")
    result = subprocess.run([CLI, "evaluate", "--task", "image-classification", "--labels", labels,
                             "--predictions", predictions], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert f"{predictions}:4: field 'scores': class 'dog': must be a probability in [0, 1], got 1.7" in result.stderr


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["evaluate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_missing_and_extra_images(multiclass_files, capsys):
    labels, predictions, _, _ = multiclass_files
    lines = Path(predictions).read_text().splitlines()
    dropped = json.loads(lines.pop(0))["image_url"]           # images/19.png: now without prediction
    extra = json.loads(lines[0])
    extra["image_url"] = "elsewhere/19.png"
    lines.append(json.dumps(extra))                             # line 20: an image with no label
    Path(predictions).write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(capsys, "--task", "image-classification", "--labels", labels,
                             "--predictions", predictions)
    assert code == 2 and out == ""
    assert f"{labels}:20: field 'image_url': {dropped!r} has no prediction in {predictions}" in err
    assert f"{predictions}:20: field 'image_url': 'elsewhere/19.png' is not in the labels file {labels}" in err


@pytest.mark.parametrize("change, line, message", [
    (lambda r: r.pop("scores"), 2, "field 'scores': missing"),
    (lambda r: r.update(scores=[0.2, 0.8]), 2, "field 'scores': must be a non-empty object"),
    (lambda r: r.update(scores={"cat": 0.5, "dog": 0.2, "fox": 0.1}), 2,
     "field 'scores': image-classification scores are probabilities of one class and must sum to 1, got 0.8"),
    (lambda r: r.update(scores={"cat": 0.5, "dog": 0.5}), 2, "field 'scores': scores other classes than line 1: "
                                                               "missing fox"),
    (lambda r: r.update(scores={"cat": 0.5, "dog": 0.5, "fox": True}), 2,
     "field 'scores': class 'fox': must be a probability in [0, 1], got True"),
    (lambda r: r.pop("image_url"), 2, "field 'image_url': missing"),
    (lambda r: r.update(image_url="images/19.png"), 2, "field 'image_url': 'images/19.png' is also on line 1"),
])
def test_bad_predictions(multiclass_files, capsys, change, line, message):
    labels, predictions, _, _ = multiclass_files
    lines = Path(predictions).read_text().splitlines()
    record = json.loads(lines[line - 1])
    change(record)
    lines[line - 1] = json.dumps(record)
    Path(predictions).write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(capsys, "--task", "image-classification", "--labels", labels, "--predictions", predictions)
    assert code == 2
    assert f"{predictions}:{line}: {message}" in err


def test_bad_labels_and_files(multiclass_files, tmp_path, capsys):
    labels, predictions, _, _ = multiclass_files
    lines = Path(labels).read_text().splitlines()
    lines[4] = json.dumps({"image_url": "images/4.png", "label": "wolf"})
    lines[6] = "{not json"
    Path(labels).write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(capsys, "--task", "image-classification", "--labels", labels, "--predictions", predictions)
    assert code == 2
    assert f"{labels}:7: invalid JSON" in err
    code, _, err = run_cli(capsys, "--task", "image-classification", "--labels", labels, "--predictions", predictions)
    lines[6] = json.dumps({"image_url": "images/6.png", "label": "cat"})
    Path(labels).write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(capsys, "--task", "image-classification", "--labels", labels, "--predictions", predictions)
    assert code == 2
    assert f"{labels}:5: field 'label': class(es) 'wolf' have no score in {predictions}" in err
    code, _, err = run_cli(capsys, "--task", "image-classification", "--labels", str(tmp_path / "none.jsonl"),
                           "--predictions", predictions)
    assert code == 2 and "none.jsonl: file not found" in err


def test_metric_type_is_refused_for_classification(multiclass_files):
    # detection is evaluated in tests/trainer/test_detection_metrics.py
    labels, predictions, _, _ = multiclass_files
    with pytest.raises(EvaluationError, match="--metric-type applies to image-object-detection"):
        evaluate_files("image-classification", labels, predictions, metric_type="coco")


def test_multi_label_against_sklearn(tmp_path):
    rng = np.random.default_rng(3)
    names = ["can", "carton", "milk_bottle", "water_bottle"]
    t = (rng.random((30, 4)) < 0.4).astype(int)
    p = np.clip(t * 0.4 + rng.random((30, 4)) * 0.6, 0, 1)
    labels = write_jsonl(tmp_path / "labels.jsonl", [
        {"image_url": f"{i}.jpg", "label": [n for n, on in zip(names, t[i]) if on]} for i in range(30)])
    predictions = write_jsonl(tmp_path / "predictions.jsonl", [
        {"image_url": f"{i}.jpg", "scores": dict(zip(names, map(float, p[i])))} for i in range(30)])
    out = evaluate_files("image-multi-labeling", labels, predictions)
    q = p >= 0.5
    assert out["iou"] == pytest.approx(skm.jaccard_score(t, q, average="samples", zero_division=1))
    assert out["f1_score_micro"] == pytest.approx(skm.f1_score(t, q, average="micro"))
    assert out["average_precision_score_macro"] == pytest.approx(skm.average_precision_score(t, p))
    for j, name in enumerate(names):
        assert out["per_class"][name]["average_precision"] == pytest.approx(
            skm.average_precision_score(t[:, j], p[:, j]))


def test_multi_label_predictions_need_list_labels(tmp_path):
    labels = write_jsonl(tmp_path / "labels.jsonl", [{"image_url": "a.jpg", "label": "can"}])
    predictions = write_jsonl(tmp_path / "predictions.jsonl", [{"image_url": "a.jpg", "scores": {"can": 0.9}}])
    with pytest.raises(EvaluationError, match=r"labels.jsonl:1: field 'label': must be a list of class names"):
        evaluate_files("image-multi-labeling", labels, predictions)
