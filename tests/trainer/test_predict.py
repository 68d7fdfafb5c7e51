"""`automl-images predict` and the one prediction schema: records of the training JSONL schema plus
scores, which `evaluate` reads unchanged and training takes as labels, for every task; bad images
listed and skipped; an existing output kept; a job's best model found by its id."""
from __future__ import annotations

import io
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from automl_images.controller import cli
from automl_images.core.hyperparameters import Task, resolve
from automl_images.core.layout import FILES, Root
from automl_images.core.storage import Storage
from automl_images.trainer import data, export
from automl_images.trainer.evaluate import evaluate_files
from automl_images.trainer.tasks import get_adapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABELS = ["blue", "red"]
COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220)}
HYPERPARAMETERS = {
    Task.CLASSIFICATION: {"model_name": "resnet18", "resize_size": 16, "crop_size": 16},
    Task.MULTI_LABEL: {"model_name": "resnet18", "resize_size": 16, "crop_size": 16},
    # box_score_thresh 0: an untrained detector's low scores still make objects to check.
    Task.OBJECT_DETECTION: {"model_name": "fasterrcnn_resnet18_fpn", "min_size": 64, "max_size": 64,
                            "box_score_thresh": 0.0, "box_detections_per_img": 5},
    Task.INSTANCE_SEGMENTATION: {"model_name": "maskrcnn_resnet50_fpn", "min_size": 64, "max_size": 64,
                                 "box_score_thresh": 0.0, "box_detections_per_img": 5},
}
TRUE_LABELS = {  # the label of the images red_*.png for each task
    Task.CLASSIFICATION: "red",
    Task.MULTI_LABEL: ["red"],
    Task.OBJECT_DETECTION: [{"label": "red", "topX": 0.25, "topY": 0.25, "bottomX": 0.75, "bottomY": 0.75}],
    Task.INSTANCE_SEGMENTATION: [{"label": "red", "polygon": [[0.25, 0.25, 0.75, 0.25, 0.75, 0.75, 0.25, 0.75]]}],
}


def exported_model(folder, task: Task = Task.CLASSIFICATION, seed: int = 0) -> str:
    """An untrained model of `task` exported as a trial exports its best one; returns the folder."""
    torch.manual_seed(seed)
    hyperparameters = resolve(task, {"pretrained": 0, **HYPERPARAMETERS[task]})
    adapter = get_adapter(task, hyperparameters)
    model = adapter.build_model(len(LABELS))
    storage = Storage(str(folder))
    export.export_model(storage, model.state_dict(), {
        "task": task.value, "model_name": hyperparameters["model_name"], "labels": LABELS,
        "hyperparameters": hyperparameters, **adapter.model_info, "primary_metric": "accuracy",
        "best_metric": 0.5, "epoch": 1})
    return storage.url(FILES.model_dir)


def png(colour, size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(folder, task: Task, n: int = 3) -> str:
    """n red squares and their labels for `task`; returns the labels file."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        (folder / "images" / f"red_{i}.png").write_bytes(png(COLOURS["red"]))
        lines.append({"image_url": f"images/red_{i}.png", "label": TRUE_LABELS[task]})
    (folder / "labels.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(folder / "labels.jsonl")


def predict(*argv) -> int:
    return cli.main(["predict", *map(str, argv)])


@pytest.mark.parametrize("task", list(HYPERPARAMETERS), ids=lambda task: task.value)
def test_predictions_are_what_evaluate_reads_and_training_takes_as_labels(tmp_path, task):
    model = exported_model(tmp_path / "trial", task)
    labels = write_images(tmp_path / "data", task)
    out = tmp_path / "data" / "predictions.jsonl"
    assert predict(model, "--jsonl", labels, "--out", out, "--batch-size", 2) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["image_url"] for line in lines] == [f"images/red_{i}.png" for i in range(3)]

    # evaluate reads the file unchanged
    metric_type = {} if task.is_classification else {"metric_type": "coco"}
    assert evaluate_files(task, labels, str(out), **metric_type)["task"] == task.value
    # and training reads it as a label file
    adapter = get_adapter(task, resolve(task, {"pretrained": 0, **HYPERPARAMETERS[task]}))
    records = data.read_jsonl(str(out), adapter.parse_label)
    assert [r.image_url for r in records] == [str(tmp_path / "data" / "images" / f"red_{i}.png") for i in range(3)]

    for line, record in zip(lines, records):
        if task is Task.CLASSIFICATION:
            assert set(line["scores"]) == set(LABELS) and sum(line["scores"].values()) == pytest.approx(1.0)
            assert line["label"] == max(LABELS, key=line["scores"].get) == record.label
        elif task is Task.MULTI_LABEL:
            assert set(line["scores"]) == set(LABELS)
            assert line["label"] == sorted((name for name in LABELS if line["scores"][name] >= 0.5),
                                           key=lambda name: -line["scores"][name])
        else:
            assert len(record.label.objects) == len(line["label"])
            for obj in line["label"]:
                assert 0 <= obj["topX"] < obj["bottomX"] <= 1 and 0 <= obj["topY"] < obj["bottomY"] <= 1
                assert obj["label"] in LABELS and 0 <= obj["score"] <= 1
                assert ("polygon" in obj) == (task is Task.INSTANCE_SEGMENTATION)
    if task is Task.OBJECT_DETECTION:  # an untrained detector at score threshold 0 finds something
        assert any(line["label"] for line in lines)


def test_the_python_predict_returns_the_same_records(tmp_path):
    model = exported_model(tmp_path / "trial")
    labels = write_images(tmp_path / "data", Task.CLASSIFICATION, n=2)
    out = tmp_path / "predictions.jsonl"
    assert predict(model, "--jsonl", labels, "--out", out) == 0
    images = [str(tmp_path / "data" / "images" / f"red_{i}.png") for i in range(2)]
    records = export.load_model(model).predict(images)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in line.items() if k != "image_url"} for line in lines] == records


def test_bad_images_are_listed_and_skipped(tmp_path, capsys):
    model = exported_model(tmp_path / "trial")
    good = tmp_path / "good.png"
    good.write_bytes(png(COLOURS["blue"]))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png(COLOURS["red"])[:40])
    out = tmp_path / "out.jsonl"
    assert predict(model, good, text, truncated, tmp_path / "missing.jpg", "--out", out) == 0
    assert [json.loads(line)["image_url"] for line in out.read_text().splitlines()] == [str(good)]
    err = capsys.readouterr().err
    assert "skipped 3 of 4 images" in err
    assert f"{text}: cannot decode: UnidentifiedImageError" in err and f"{truncated}: cannot decode" in err
    assert f"{tmp_path / 'missing.jpg'}: not found" in err

    assert predict(model, text, "--out", tmp_path / "none.jsonl") == 1          # nothing readable
    assert "no image could be read" in capsys.readouterr().err and not (tmp_path / "none.jsonl").exists()


def test_an_existing_output_is_kept_unless_overwrite(tmp_path, capsys):
    model = exported_model(tmp_path / "trial")
    image = tmp_path / "a.png"
    image.write_bytes(png(COLOURS["red"]))
    out = tmp_path / "out.jsonl"
    out.write_text("mine\n")
    assert predict(model, image, "--out", out) == 2
    assert f"{out}: already exists (pass --overwrite to replace it)" in capsys.readouterr().err
    assert out.read_text() == "mine\n"
    assert predict(model, image, "--out", out, "--overwrite") == 0
    assert json.loads(out.read_text())["image_url"] == str(image)


@pytest.mark.parametrize("argv, message", [
    (["--jsonl", "{data}/bad.jsonl"], "bad.jsonl:2: field 'image_url': missing"),
    ([], "give the images as arguments, or --jsonl FILE, or --prefix URL (exactly one)"),
    (["{data}/a.png", "--prefix", "{data}"], "(exactly one)"),
    (["--prefix", "{data}/empty"], "no image files"),
    (["{data}/a.png", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
])
def test_bad_input_is_refused_with_where_and_why(tmp_path, capsys, argv, message):
    model = exported_model(tmp_path / "trial")
    folder = tmp_path / "data"
    (folder / "empty").mkdir(parents=True)
    (folder / "a.png").write_bytes(png(COLOURS["red"]))
    (folder / "bad.jsonl").write_text('{"image_url": "a.png"}\n{"label": "red"}\n')
    assert predict(model, *[a.format(data=folder) for a in argv], "--out", tmp_path / "out.jsonl") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_a_prefix_of_a_bucket_in_and_out(root_url, tmp_path):
    """Model, images and output all in the root (a folder, or an S3 API server)."""
    root = Storage(root_url)
    exported_model(tmp_path / "trial")
    for name in ("model.pt", "model.json"):
        root.write_bytes(f"models/m/{name}", (tmp_path / "trial" / "model" / name).read_bytes())
    root.write_bytes("new/a.png", png(COLOURS["red"]))
    root.write_bytes("new/sub/b.jpg", png(COLOURS["blue"]))  # PIL reads the content, not the name
    root.write_text("new/readme.txt", "not an image file name: not listed")
    assert predict(root.url("models/m"), "--prefix", root.url("new"), "--out", root.url("out/p.jsonl")) == 0
    lines = [json.loads(line) for line in root.read_text("out/p.jsonl").splitlines()]
    assert [line["image_url"] for line in lines] == [root.url("new/a.png"), root.url("new/sub/b.jpg")]


def test_a_job_id_with_root_predicts_with_the_best_model(tmp_path, capsys):
    root = Root(str(tmp_path / "root"))
    shutil.copytree(exported_model(tmp_path / "trial"), root.storage.url(root.best("job-1")))
    image = tmp_path / "a.png"
    image.write_bytes(png(COLOURS["red"]))
    assert predict("job-1", image, "--root", root.url, "--out", tmp_path / "a.jsonl") == 0
    # a job folder is the same
    assert predict(root.storage.url(root.job_key("job-1")), image, "--out", tmp_path / "b.jsonl") == 0
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    # a job without a published best model
    assert predict("job-2", image, "--root", root.url, "--out", tmp_path / "c.jsonl") == 2
    assert "no exported model at" in capsys.readouterr().err


def test_multi_label_threshold_comes_from_model_json(tmp_path):
    folder = exported_model(tmp_path / "trial", Task.MULTI_LABEL)
    loaded = export.load_model(folder)
    images = [Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)) for value in (0, 255)]
    scores = [record["scores"] for record in loaded.predict(images)]
    loaded.info["threshold"] = 0.0
    assert all(record["label"] == sorted(LABELS, key=lambda name: -s[name])
               for record, s in zip(loaded.predict(images), scores))


def test_a_segmentation_object_without_mask_pixels_is_left_out():
    """Neither a label file nor evaluate takes an object without a polygon."""
    adapter = get_adapter(Task.INSTANCE_SEGMENTATION, resolve(Task.INSTANCE_SEGMENTATION, {
        "pretrained": 0, **HYPERPARAMETERS[Task.INSTANCE_SEGMENTATION]}))
    masks = torch.zeros(2, 1, 20, 40)
    masks[0, 0, 5:15, 10:30] = 0.9
    output = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 15.0], [0.0, 0.0, 40.0, 20.0]]),
              "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.9, 0.8]), "masks": masks}
    [record] = adapter.predictions([output], LABELS, {}, [(20, 40)])
    assert record == {"label": [{"label": "red", "topX": 0.25, "topY": 0.25, "bottomX": 0.75, "bottomY": 0.75,
                                 "score": pytest.approx(0.9),
                                 "polygon": [[0.25, 0.25, 0.75, 0.25, 0.75, 0.75, 0.25, 0.75]]}]}


@pytest.mark.slow   # exporting to ONNX takes about 10 s
def test_the_onnx_runtime_writes_the_same_records(tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed: pip install 'automl-images[export]'")
    model = exported_model(tmp_path / "trial")
    labels = write_images(tmp_path / "data", Task.CLASSIFICATION, n=2)
    outputs = {}
    for runtime in ("torch", "onnx"):
        outputs[runtime] = tmp_path / f"{runtime}.jsonl"
        assert predict(model, "--jsonl", labels, "--out", outputs[runtime], "--runtime", runtime) == 0
    torch_lines, onnx_lines = ([json.loads(line) for line in outputs[r].read_text().splitlines()] for r in outputs)
    assert [line["label"] for line in onnx_lines] == [line["label"] for line in torch_lines]
    for mine, theirs in zip(onnx_lines, torch_lines):
        assert mine["scores"] == pytest.approx(theirs["scores"], rel=1e-3, abs=1e-5)


def test_without_onnx_runtime_the_onnx_runtime_is_refused_with_the_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "automl_images.trainer.onnx_runtime", None)   # import fails
    model = exported_model(tmp_path / "trial")
    (tmp_path / "a.png").write_bytes(png(COLOURS["red"]))
    assert predict(model, tmp_path / "a.png", "--out", tmp_path / "out.jsonl", "--runtime", "onnx") == 2
    assert "--runtime onnx: ONNX Runtime is not installed" in capsys.readouterr().err
