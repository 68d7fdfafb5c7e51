"""`automl-images export`: a trained model (model.pt + model.json) as ONNX, TorchScript or a Triton model
repository, each with a batch of any size for every task and model family.

    automl-images export JOB --root s3://bucket --format onnx            # the job's best model
    automl-images export s3://bucket/jobs/j/trials/t0003 --format triton --out ./models
    automl-images export ./model --format torchscript --out ./ts

The network is `onnx_graphs.graph_of(model)`: classifiers as they are; detectors as one batched
function with NMS inside the graph and detections padded to [B, max_det, ...] (see onnx_graphs.py).
Beside each model, `model.json`: the trained model's own model.json (task, labels, hyperparameters,
what the trainer's adapter needs to rebuild the pipeline) and an `export` section with the format,
the inputs, the preprocessing (resize, crop, mean, std), the outputs and, for tiled detectors, how the
tiles are run. Written to OUT, by default the `onnx/`, `torchscript/` or `triton/` folder inside the
model folder, where `--runtime onnx` (onnx_runtime.py) looks for it.

What the graphs do not do, as `export.preprocessing` says: decoding (EXIF orientation, the JPEG draft
scale of `decode_size`), resizing (detectors: each image by its own factor), cropping and normalising
(classifiers; detectors normalise too, before padding) and, for a model trained with tiles, the tiling
(run the model on the image and each tile and merge: `export.tiling`). onnx_runtime.py does all of it.
"""
from __future__ import annotations

import io
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

from automl_images.core.hyperparameters import Task
from automl_images.core.storage import Storage

from .export import LoadedModel, load_model, model_folder
from .onnx_graphs import ClassifierGraph, DetectorInput, graph_of

FORMATS = ("onnx", "torchscript", "triton")
EXPORT_VERSION = 1
OPSET = 18                # the dynamo exporter's own; RoiAlign's output_half_pixel mode needs 16
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"
INFO_FILE = "model.json"
TRITON_MAX_BATCH = 8
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


class ExportError(Exception):
    """A model that could not be exported in the format asked for; the message says why."""


# -- the network and its example input ------------------------------------------------------------

def _example(loaded: LoadedModel) -> tuple[torch.Tensor, ...]:
    """An input for tracing: two images of different sizes (detectors), so that no size is a constant."""
    task = Task(loaded.info["task"])
    generator = torch.Generator().manual_seed(0)
    if task.is_classification:
        crop = int(loaded.info["preprocessing"]["crop_size"])
        return (torch.rand(2, 3, crop, crop, generator=generator),)
    prepare = DetectorInput.of(loaded.model)
    side = prepare.min_size
    images = [torch.rand(3, side, side * 3 // 2, generator=generator),
              torch.rand(3, side * 5 // 4, side, generator=generator)]
    return prepare(images)


def _names(loaded: LoadedModel) -> tuple[list[str], list[str]]:
    """The graph's input and output names, as model.json lists them."""
    return [t["name"] for t in _inputs(loaded)], [t["name"] for t in _outputs(loaded)]


def onnx_model(loaded: LoadedModel) -> tuple[bytes, str]:
    """The ONNX model of `loaded` (checked by onnx.checker) and the exporter that wrote it."""
    graph = graph_of(loaded.model, Task(loaded.info["task"])).eval()
    example = _example(loaded)
    inputs, outputs = _names(loaded)
    if isinstance(graph, ClassifierGraph):
        data, exporter = _dynamo_export(graph, example, inputs, outputs), "torch.onnx (dynamo)"
    else:
        # The new (dynamo) exporter fails on the detectors: torch.export fixes the batch size to the
        # example's ("Constraints violated (batch)", torch 2.14: NMS's PyTorch form loops over the
        # batch, and what follows NMS has data-dependent shapes; pytorch/vision issue 8937). The
        # legacy TorchScript-based exporter takes ONNX's NonMaxSuppression from its symbolic.
        data, exporter = _legacy_export(graph, example, inputs, outputs), "torch.onnx (legacy, dynamo=False)"
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    return data, exporter


def _dynamic_axes(inputs: list[str], outputs: list[str]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {"images": {0: "batch", 2: "height", 3: "width"}, "image_sizes": {0: "batch"}}
    for name in outputs:
        axes[name] = {0: "batch"} if name in ("logits", "probabilities", "num_detections") else \
            {0: "batch", 1: "detections"}
    return {name: axes[name] for name in inputs + outputs}


def _legacy_export(graph: torch.nn.Module, example: tuple[torch.Tensor, ...], inputs: list[str],
                   outputs: list[str]) -> bytes:
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns at every Python int taken from a shape; the sizes that must stay free are
        # named in dynamic_axes, and the tests run the graph at other batch sizes and image sizes.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, example, buffer, dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=_dynamic_axes(inputs, outputs))
    return buffer.getvalue()


def _dynamo_export(graph: torch.nn.Module, example: tuple[torch.Tensor, ...], inputs: list[str],
                   outputs: list[str]) -> bytes:
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, example, dynamo=True, opset_version=OPSET, input_names=inputs,
                                    output_names=outputs, dynamic_shapes=({0: batch},), verbose=False)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, ONNX_FILE)
        program.save(str(path), external_data=False)
        return path.read_bytes()


def torchscript_model(loaded: LoadedModel) -> bytes:
    """The same network traced to TorchScript (the NMS's loop over the batch is scripted, so the
    batch size stays free)."""
    graph = graph_of(loaded.model, Task(loaded.info["task"])).eval()
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, _example(loaded), strict=False, check_trace=False)
        torch.jit.save(traced, buffer)   # deprecated (FutureWarning) like the rest of TorchScript
    return buffer.getvalue()


# -- what goes beside the model ---------------------------------------------------------------------

def _inputs(loaded: LoadedModel) -> list[dict[str, Any]]:
    if Task(loaded.info["task"]).is_classification:
        crop = int(loaded.info["preprocessing"]["crop_size"])
        return [{"name": "images", "dtype": "float32", "shape": ["batch", 3, crop, crop],
                 "description": "RGB images, preprocessed as `preprocessing` says"}]
    return [{"name": "images", "dtype": "float32", "shape": ["batch", 3, "height", "width"],
             "description": "RGB images resized, normalised and padded as `preprocessing` says"},
            {"name": "image_sizes", "dtype": "int64", "shape": ["batch", 2],
             "description": "each image's (height, width) after resizing, inside the padding"}]


def _outputs(loaded: LoadedModel) -> list[dict[str, Any]]:
    task = Task(loaded.info["task"])
    classes = len(loaded.labels)
    if task.is_classification:
        return [{"name": "logits", "dtype": "float32", "shape": ["batch", classes]},
                {"name": "probabilities", "dtype": "float32", "shape": ["batch", classes],
                 "description": "sigmoid of each logit (a label applies at `threshold` or above)"
                 if task is Task.MULTI_LABEL else "softmax of the logits"}]
    outputs = [
        {"name": "boxes", "dtype": "float32", "shape": ["batch", "detections", 4],
         "description": "topX, topY, bottomX, bottomY as fractions of the image's width and height"},
        {"name": "scores", "dtype": "float32", "shape": ["batch", "detections"], "description": "best first"},
        {"name": "labels", "dtype": "int64", "shape": ["batch", "detections"],
         "description": "1 + the index of the class in `labels`; 0 is the background (RetinaNet can "
                        "return it; skip it)"},
        {"name": "num_detections", "dtype": "int64", "shape": ["batch"],
         "description": "how many rows of each image's detections are real; the rest are zeros"},
    ]
    if task is Task.INSTANCE_SEGMENTATION:
        outputs.append({"name": "masks", "dtype": "float32", "shape": ["batch", "detections", 28, 28],
                        "description": "each detection's mask probabilities inside its box: resize to the "
                                       "box (torchvision's paste_masks_in_image) and threshold at 0.5"})
    return outputs


def _preprocessing(loaded: LoadedModel) -> dict[str, Any]:
    info = loaded.info
    decode = {"decode": "RGB; EXIF orientation applied; transparency on white",
              "decode_size": info.get("decode_size")}
    if Task(info["task"]).is_classification:
        p = info["preprocessing"]
        return {**decode, "resize_size": p["resize_size"], "crop_size": p["crop_size"],
                "mean": p["mean"], "std": p["std"], "interpolation": p["interpolation"],
                "how": f"shorter side resized to resize_size ({p['interpolation']}, antialiased), centre crop "
                       f"of crop_size, RGB scaled to [0, 1], then (x - mean) / std"}
    return {**decode, **DetectorInput.of(loaded.model).to_dict()}


def _tiling(loaded: LoadedModel) -> dict[str, Any] | None:
    hp = loaded.info["hyperparameters"]
    if not hp.get("tile_grid_size"):
        return None
    return {"tile_grid_size": hp["tile_grid_size"], "tile_overlap_ratio": hp["tile_overlap_ratio"],
            "tile_predictions_nms_thresh": hp["tile_predictions_nms_thresh"],
            "detections_per_img": hp["box_detections_per_img"],
            "runs": "outside the graph: run the model on the whole image and on each tile (tiling.TileGrid), "
                    "shift each tile's boxes by its offset, merge with class-aware NMS at "
                    "tile_predictions_nms_thresh and keep the detections_per_img best "
                    "(automl_images.trainer.onnx_runtime does it)"}


def export_info(loaded: LoadedModel, fmt: str, exporter: str) -> dict[str, Any]:
    """model.json beside an exported model: the trained model's model.json and `export`."""
    return {**loaded.info, "export": {
        "version": EXPORT_VERSION, "format": fmt, "exporter": exporter,
        "opset": OPSET if fmt != "torchscript" else None, "torch": torch.__version__,
        "inputs": _inputs(loaded), "preprocessing": _preprocessing(loaded), "outputs": _outputs(loaded),
        "tiling": _tiling(loaded)}}


# -- formats ---------------------------------------------------------------------------------------

def export_onnx(loaded: LoadedModel, out: Storage) -> list[str]:
    data, exporter = onnx_model(loaded)
    out.write_bytes(ONNX_FILE, data)
    out.write_json(INFO_FILE, export_info(loaded, "onnx", exporter))   # last: a folder with it is complete
    return [out.url(ONNX_FILE), out.url(INFO_FILE)]


def export_torchscript(loaded: LoadedModel, out: Storage) -> list[str]:
    out.write_bytes(TORCHSCRIPT_FILE, torchscript_model(loaded))
    out.write_json(INFO_FILE, export_info(loaded, "torchscript", "torch.jit.trace"))
    return [out.url(TORCHSCRIPT_FILE), out.url(INFO_FILE)]


def export_triton(loaded: LoadedModel, out: Storage, name: str = "automl_images") -> list[str]:
    """A Triton model repository at `out`: <name>/config.pbtxt, <name>/1/model.onnx and, beside the
    config, model.json."""
    data, exporter = onnx_model(loaded)
    info = export_info(loaded, "triton", exporter)
    out.write_bytes(f"{name}/1/{ONNX_FILE}", data)
    out.write_text(f"{name}/config.pbtxt", triton_config(name, info))
    out.write_json(f"{name}/{INFO_FILE}", info)
    return [out.url(f"{name}/config.pbtxt"), out.url(f"{name}/1/{ONNX_FILE}"), out.url(f"{name}/{INFO_FILE}")]


_TRITON_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}


def triton_config(name: str, info: dict[str, Any]) -> str:
    """config.pbtxt for the ONNX model: the batch dimension is Triton's (max_batch_size), the others
    are listed (-1: free). Triton's dynamic batcher joins requests whose other dimensions agree:
    classifiers' always do; detectors' when their clients pad to one size (max_size square)."""
    def tensors(kind: str) -> str:
        rows = []
        for tensor in info["export"][kind]:
            dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in tensor["shape"][1:])
            # a tensor of the batch dimension alone (num_detections) is [1] per request to Triton
            shape = f"dims: [ {dims} ]" if dims else "dims: [ 1 ]\n    reshape: { shape: [ ] }"
            rows.append(f'  {{\n    name: "{tensor["name"]}"\n    data_type: {_TRITON_TYPES[tensor["dtype"]]}\n'
                        f'    {shape}\n  }}')
        return ",\n".join(rows)

    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {TRITON_MAX_BATCH}\n'
            f"input [\n{tensors('inputs')}\n]\noutput [\n{tensors('outputs')}\n]\n"
            f"dynamic_batching {{\n  max_queue_delay_microseconds: 2000\n}}\n")


_WRITERS = {"onnx": export_onnx, "torchscript": export_torchscript, "triton": export_triton}


def export(source: str, fmt: str, out: str | None = None, root: str | None = None) -> list[str]:
    """Export the model of `source` (a model, trial or job folder, or a job id with `root`) as `fmt`
    into `out` (default: the model folder's `<fmt>/`); the URLs written."""
    if fmt not in FORMATS:
        raise ExportError(f"the format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    folder = model_folder(source, root)
    loaded = load_model(folder)
    try:
        return _WRITERS[fmt](loaded, Storage(out) if out else Storage(folder.url(fmt)))
    except OSError:
        raise
    except Exception as exc:   # torch's exporters raise many types: the reason, not a traceback
        raise ExportError(f"could not export {loaded.info['model_name']} as {fmt}: {type(exc).__name__}: "
                          f"{exc}") from exc


def run_cli(source: str, fmt: str, out: str | None, root: str | None) -> int:
    """`automl-images export`: the files written on stdout, one a line."""
    try:
        written = export(source, fmt, out, root)
    except FileNotFoundError as exc:
        print(f"automl-images export: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except ExportError as exc:
        print(f"automl-images export: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # storage unreachable, permissions: not the input's fault
        print(f"automl-images export: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(written))
    return EXIT_OK


def read_info(folder: Storage) -> dict[str, Any] | None:
    """model.json of an export folder, or None when `folder` holds none."""
    info = folder.read_json(INFO_FILE)
    return info if isinstance(info, dict) and "export" in info else None
