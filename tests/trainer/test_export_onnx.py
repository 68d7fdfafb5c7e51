"""`automl-images export`: ONNX with a batch of any size for every task and model family, checked
against the PyTorch model it came from.

Parity: ONNX Runtime and PyTorch on the same images, at batch 1, 3 and 8, of mixed sizes, one of them
with no detections; every graph passes onnx.checker. Tolerance: torchvision's own ONNX tests'
(rtol 1e-3, atol 1e-5) on logits, probabilities, scores, boxes (in pixels) and mask probabilities;
labels and detection counts exactly. Detections of equal score (an untrained YOLOv5 has many) may
come in either order, so they are matched by label, box and score rather than by position.

Models are untrained (pretrained 0) at 64 px (seresnext and the ViTs at 224, the only size they take),
three classes; each family is exported once per run. Every classification family of the model registry
has one representative: ResNet (resnet18, multi-class and multi-label), MobileNetV2, ResNeSt (timm's
resnest50d), SE-ResNeXt and ViT (vits16r224, the smallest).
"""
from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torchvision.models.resnet import Bottleneck

from automl_images.controller import cli
from automl_images.core.hyperparameters import Task, resolve
from automl_images.core.layout import FILES, Root
from automl_images.core.storage import Storage
from automl_images.trainer import export, onnx_export
from automl_images.trainer.export import LoadedModel
from automl_images.trainer.masks import polygon_mask
from automl_images.trainer.onnx_graphs import DetectorInput, graph_of
from automl_images.trainer.onnx_runtime import OnnxModel, load_onnx_model
from automl_images.trainer.tasks import get_adapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RTOL, ATOL = 1e-3, 1e-5          # torchvision's test_onnx.py
POLYGON_IOU = 0.95               # a pixel of probability ~0.5 can fall on either side of the threshold
RECORD_ATOL = 1e-4               # records: normalised boxes, scores and probabilities
LABELS = ["cat", "dog", "fox"]
DETECTION = {"min_size": 64, "max_size": 96, "box_detections_per_img": 20}
SMALL = {"resize_size": 72, "crop_size": 64}
FAMILIES = {
    "classification": (Task.CLASSIFICATION, {"model_name": "resnet18", **SMALL}),
    "multi-label": (Task.MULTI_LABEL, {"model_name": "resnet18", **SMALL}),
    "mobilenetv2": (Task.CLASSIFICATION, {"model_name": "mobilenetv2", **SMALL}),
    "resnest": (Task.CLASSIFICATION, {"model_name": "resnest50", **SMALL}),
    "seresnext": (Task.CLASSIFICATION, {"model_name": "seresnext"}),     # 224 px, the default crop
    "vit": (Task.CLASSIFICATION, {"model_name": "vits16r224"}),
    "faster-rcnn": (Task.OBJECT_DETECTION, {"model_name": "fasterrcnn_resnet18_fpn", **DETECTION}),
    "retinanet": (Task.OBJECT_DETECTION, {"model_name": "retinanet_resnet50_fpn", **DETECTION}),
    "yolov5": (Task.OBJECT_DETECTION, {"model_name": "yolov5", "img_size": 64}),
    "mask-rcnn": (Task.INSTANCE_SEGMENTATION, {"model_name": "maskrcnn_resnet50_fpn", **DETECTION}),
}
# (height, width): mixed sizes and aspect ratios, whose resized heights keep torchvision's pooler
# scales those of the FPN's strides (see onnx_graphs._Pooler)
SIZES = [(64, 96), (80, 80), (48, 72), (96, 64), (64, 64), (70, 100), (64, 80), (90, 60)]


def images(seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=generator) for h, w in SIZES]


def crops(batch: list[torch.Tensor], size: int) -> torch.Tensor:
    """The images at a classifier's input size, as the adapter's inputs are."""
    return torch.stack([torch.nn.functional.interpolate(image[None], (size, size))[0] for image in batch])


def pictures(batch: list[torch.Tensor]) -> list[Image.Image]:
    return [Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for image in batch]


@dataclass
class Case:
    loaded: LoadedModel          # the PyTorch model
    data: bytes                  # its ONNX model
    onnx_model: OnnxModel
    images: list[torch.Tensor]   # detectors: image 1 has no detection, the others have some


@functools.lru_cache(maxsize=None)
def exported(family: str) -> Case:
    """Each family built and exported once per test run."""
    task, hyperparameters = FAMILIES[family]
    torch.manual_seed(0)
    hyperparameters = resolve(task, {"pretrained": 0, **hyperparameters})
    adapter = get_adapter(task, hyperparameters)
    info = {"task": task.value, "model_name": hyperparameters["model_name"], "labels": LABELS,
            "hyperparameters": hyperparameters, **adapter.model_info}
    loaded = LoadedModel(adapter.build_model(len(LABELS)).eval(), info, adapter)
    for module in loaded.model.modules():
        # torchvision's zero_init_residual: an untrained ResNet-50's activations otherwise grow by orders
        # of magnitude through its 16 residual blocks (a trained one's do not), which turns the two
        # runtimes' rounding differences into more than ATOL (torchvision's parity tests use trained weights).
        # Not SE-ResNeXt's: its squeeze-and-excitation keeps them small, and its SE blocks would get zeros.
        if isinstance(module, Bottleneck) and not task.is_classification:
            torch.nn.init.zeros_(module.bn3.weight)
    if family == "yolov5":
        # An untrained YOLOv5's activations fade layer by layer until its scores are its head's
        # biases, the same for every image; batch norm statistics of a smaller variance keep the
        # image in them, so that one image can have no detection while the others have some.
        for module in loaded.model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.fill_(0.15)
    if task.is_classification:
        batch = images()
        _scale_logits_to_one(loaded.model, crops(batch, loaded.info["preprocessing"]["crop_size"]))
    else:
        batch = _threshold_between(loaded, images())
    data, exporter = onnx_export.onnx_model(loaded)
    described = onnx_export.export_info(loaded, "onnx", exporter)
    return Case(loaded, data, OnnxModel.from_bytes(data, described, threads=1), batch)


def _scale_logits_to_one(model: torch.nn.Module, inputs: torch.Tensor) -> None:
    """The head (the last Linear) scaled so that the largest logit of `inputs` is 1: an untrained head's
    logits can be ~0.01 (MobileNetV2's and timm's heads start at std 0.01), where ATOL would be a
    thousandth of them rather than the rounding it stands for."""
    head = [module for module in model.modules() if isinstance(module, torch.nn.Linear)][-1]
    with torch.no_grad():
        scale = model(inputs).abs().max()
        head.weight /= scale
        head.bias /= scale


def _threshold_between(loaded: LoadedModel, batch: list[torch.Tensor]) -> list[torch.Tensor]:
    """The images reordered, and a score threshold set, so that image 1 has no detection and every
    other image has some (an untrained detector's scores are alike everywhere)."""
    _set_score_thresh(loaded, 0.0)
    with torch.no_grad():
        best = [float(o["scores"].max()) for o in loaded.model(batch)]
    order = sorted(range(len(best)), key=best.__getitem__)
    assert best[order[0]] < best[order[1]]
    _set_score_thresh(loaded, (best[order[0]] + best[order[1]]) / 2)
    batch = list(batch)
    batch[1], batch[order[0]] = batch[order[0]], batch[1]
    return batch


def _set_score_thresh(loaded: LoadedModel, value: float) -> None:
    model = loaded.model
    if hasattr(model, "roi_heads"):
        model.roi_heads.score_thresh = value
    else:
        model.score_thresh = value
    loaded.info["hyperparameters"]["box_score_thresh"] = value


def assert_same_detections(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert len(got["scores"]) == len(want["scores"])
    unused = list(range(len(want["scores"])))
    for i in range(len(got["scores"])):
        match = next((j for j in unused if int(got["labels"][i]) == int(want["labels"][j])
                      and torch.allclose(got["scores"][i], want["scores"][j], rtol=RTOL, atol=ATOL)
                      and torch.allclose(got["boxes"][i], want["boxes"][j], rtol=RTOL, atol=ATOL)), None)
        assert match is not None, f"detection {i} of ONNX Runtime has no match in PyTorch's"
        unused.remove(match)
        if "masks" in want:
            torch.testing.assert_close(got["masks"][i], want["masks"][match], rtol=RTOL, atol=ATOL)


# The other classifier families than ResNet: the same ClassifierGraph, preprocessing and records, so
# the parity of their networks alone is tested.
BACKBONES = ("mobilenetv2", "resnest", "seresnext", "vit")
# Over 10 s each: the ResNet-50 detectors, and the deeper classifiers, whose export (torch.export's
# tracing and decompositions) takes most of it; seresnext and the ViT also run at 224 px.
SLOW = ("retinanet", "mask-rcnn", "resnest", "seresnext", "vit")


def by_family(families) -> list:
    return [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in families]


@pytest.mark.parametrize("family", by_family(FAMILIES))
def test_onnx_runtime_matches_pytorch_at_batch_1_3_and_8(family):
    case = exported(family)
    onnx.checker.check_model(onnx.load_from_string(case.data), full_check=True)
    classifier = Task(case.loaded.info["task"]).is_classification
    for size in (1, 3, 8):
        batch = case.images[:size]
        with torch.no_grad():
            if classifier:
                inputs = crops(batch, case.loaded.info["preprocessing"]["crop_size"])
                logits, probabilities = map(torch.from_numpy, case.onnx_model.model.session.run(
                    ["logits", "probabilities"], {"images": inputs.numpy()}))
                want = case.loaded.model(inputs)
                torch.testing.assert_close(logits, want, rtol=RTOL, atol=ATOL)
                torch.testing.assert_close(probabilities, want.sigmoid() if family == "multi-label" else
                                           want.softmax(1), rtol=RTOL, atol=ATOL)
                continue
            got, want = case.onnx_model.model(batch), case.loaded.model(batch)
        counts = [len(o["scores"]) for o in want]
        assert counts[0] > 0 and (size == 1 or counts[1] == 0)   # images with and without detections
        for g, w in zip(got, want):
            assert_same_detections(g, w)


@pytest.mark.parametrize("family", by_family(f for f in FAMILIES if f not in BACKBONES))
def test_onnx_model_predicts_the_records_of_the_pytorch_model(family):
    case = exported(family)
    batch = pictures(case.images[:4])
    got, want = case.onnx_model.predict(batch, batch_size=3), case.loaded.predict(batch, batch_size=3)
    assert case.onnx_model.labels == case.loaded.labels == LABELS
    assert_same_records(got, want)


def assert_same_records(got: list[dict], want: list[dict]) -> None:
    assert _same(got, want), (got, want)


def _same(a, b) -> bool:
    """Records equal to RECORD_ATOL in their numbers, detections in any order (those of equal score
    come in either runtime's), polygons (segmentation) covering the same pixels to POLYGON_IOU."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            _same_polygons(a[k], b[k]) if k == "polygon" else _same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return False
        if not (a and isinstance(a[0], dict) and "score" in a[0]):
            return all(_same(x, y) for x, y in zip(a, b))
        unused = list(range(len(b)))
        for x in a:
            match = next((j for j in unused if _same(x, b[j])), None)
            if match is None:
                return False
            unused.remove(match)
        return True
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= RECORD_ATOL
    return a == b


def _same_polygons(a: list, b: list) -> bool:
    first, second = polygon_mask(a, 200, 200).astype(bool), polygon_mask(b, 200, 200).astype(bool)
    return (first & second).sum() >= POLYGON_IOU * (first | second).sum()


def test_tiled_models_run_their_tiles_outside_the_graph_and_match_pytorch():
    case = exported("faster-rcnn")
    tiles = {"tile_grid_size": "2x1", "tile_overlap_ratio": 0.25, "tile_predictions_nms_thresh": 0.25}
    info = {**case.loaded.info, "hyperparameters": {**case.loaded.info["hyperparameters"], **tiles}}
    tiled = LoadedModel(case.loaded.model, info, get_adapter(Task.OBJECT_DETECTION, info["hyperparameters"]))
    # the wrapper predict builds takes the model's eval mode: in train mode it skips the tiles
    assert not tiled.adapter.inference_model(tiled.model).training
    described = onnx_export.export_info(tiled, "onnx", "test")
    assert described["export"]["tiling"]["tile_grid_size"] == "2x1"
    assert "outside the graph" in described["export"]["tiling"]["runs"]
    onnx_tiled = OnnxModel.from_bytes(case.data, described, threads=1)
    batch = pictures(case.images[:3])
    assert_same_records(onnx_tiled.predict(batch), tiled.predict(batch))


def test_model_json_describes_inputs_preprocessing_and_outputs():
    case = exported("faster-rcnn")
    info = onnx_export.export_info(case.loaded, "onnx", "test")
    model = onnx.load_from_string(case.data)
    assert [i.name for i in model.graph.input] == [i["name"] for i in info["export"]["inputs"]]
    assert [o.name for o in model.graph.output] == [o["name"] for o in info["export"]["outputs"]]
    # the batch, height and width are free in the graph
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and isinstance(dims[2], str) and isinstance(dims[3], str)
    assert info["labels"] == LABELS and info["export"]["tiling"] is None
    preprocessing = info["export"]["preprocessing"]
    assert preprocessing["kind"] == "rcnn" and preprocessing["min_size"] == 64 and preprocessing["max_size"] == 96
    assert preprocessing["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert DetectorInput.from_dict(preprocessing) == DetectorInput.of(case.loaded.model)

    preprocessing = onnx_export.export_info(exported("classification").loaded, "onnx", "test")["export"]["preprocessing"]
    assert (preprocessing["resize_size"], preprocessing["crop_size"]) == (72, 64)
    assert preprocessing["std"] == pytest.approx([0.229, 0.224, 0.225])


def test_torchscript_keeps_the_batch_free():
    case = exported("faster-rcnn")
    traced = torch.jit.load(io.BytesIO(onnx_export.torchscript_model(case.loaded)))
    graph = graph_of(case.loaded.model, Task.OBJECT_DETECTION)
    prepare = DetectorInput.of(case.loaded.model)
    for size in (1, 3):
        inputs = prepare(case.images[:size])
        with torch.no_grad():
            got, want = traced(*inputs), graph(*inputs)
        for name in ("boxes", "scores", "labels", "num_detections"):
            torch.testing.assert_close(got[name], want[name], rtol=RTOL, atol=ATOL)


def test_triton_repository_has_a_config_for_the_onnx_model(tmp_path):
    written = onnx_export.export_triton(exported("yolov5").loaded, Storage(str(tmp_path)), name="detector")
    assert sorted(written) == sorted(str(tmp_path / p) for p in
                                     ("detector/config.pbtxt", "detector/1/model.onnx", "detector/model.json"))
    config = (tmp_path / "detector" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and f"max_batch_size: {onnx_export.TRITON_MAX_BATCH}" in config
    assert "dynamic_batching" in config
    model = onnx.load(str(tmp_path / "detector" / "1" / "model.onnx"))
    for tensor in list(model.graph.input) + list(model.graph.output):
        rank = len(tensor.type.tensor_type.shape.dim)
        block = config.split(f'name: "{tensor.name}"')[1].split("\n  }")[0]
        # Triton's dims leave out the batch dimension; a tensor of the batch alone is reshaped from [1]
        assert block.count(",") == max(rank - 2, 0) and ("reshape" in block) == (rank == 1), (tensor.name, block)


def test_export_cli_writes_the_best_model_of_a_job_and_predict_uses_it(tmp_path, capsys):
    case = exported("yolov5")
    root = Root(str(tmp_path / "root"))
    trial = Storage(root.storage.url(root.trial_prefix("job-1", "t0001")))
    export.export_model(trial, case.loaded.model.state_dict(), {
        **case.loaded.info, "primary_metric": "mean_average_precision", "best_metric": 0.5, "epoch": 1})
    root.storage.copy_tree(root.trial_key("job-1", "t0001", FILES.model_dir), root.best("job-1"))  # as a job publishes
    best = Storage(root.storage.url(root.best("job-1")))
    assert cli.main(["export", "job-1", "--root", root.url, "--format", "onnx"]) == 0
    assert capsys.readouterr().out.split() == [best.url("onnx/model.onnx"), best.url("onnx/model.json")]
    written = json.loads((tmp_path / "root" / "jobs" / "job-1" / "best" / "onnx" / "model.json").read_text())
    assert written["export"]["format"] == "onnx" and written["labels"] == LABELS

    # predict --runtime onnx finds the export beside the model, and agrees with the PyTorch model
    batch = pictures(case.images[:2])
    assert_same_records(load_onnx_model("job-1", root=root.url, threads=1).predict(batch), case.loaded.predict(batch))

    assert cli.main(["export", str(tmp_path / "nothing"), "--format", "onnx"]) == 2
    assert "no exported model" in capsys.readouterr().err


def test_an_export_of_another_model_is_not_used(tmp_path):
    """A best/ folder republished with another trial's model keeps its old onnx/ folder: the ONNX
    runtime uses an export only when it was made from the model.json beside it."""
    case = exported("yolov5")
    model = Storage(str(tmp_path / "model"))
    export.export_model(Storage(str(tmp_path)), case.loaded.model.state_dict(), {**case.loaded.info, "epoch": 1})
    assert onnx_export.export(model.root, "onnx") == [model.url("onnx/model.onnx"), model.url("onnx/model.json")]
    model.write_bytes("onnx/model.onnx", b"not a model")     # so that using it fails
    with pytest.raises(Exception, match="INVALID_PROTOBUF"):
        load_onnx_model(model.root)
    model.write_json("model.json", {**model.read_json("model.json"), "epoch": 2})   # another model now
    assert load_onnx_model(model.root, threads=1).labels == LABELS
