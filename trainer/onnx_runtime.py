"""The exported ONNX model in ONNX Runtime, behind the interface of export.LoadedModel, for
`automl-images predict --runtime onnx` and `serve`:

    from automl_images.trainer.onnx_runtime import load_onnx_model
    print(load_onnx_model("s3://bucket/jobs/j/best").predict(["cat.jpg"]))

Only the network runs in ONNX Runtime. `OnnxNetwork` takes and returns what the PyTorch model does
(a normalised batch -> logits; detectors: a list of [0, 1] images -> per image `boxes` in its pixels,
1-based `labels`, `scores`, `masks` [N, 1, H, W]), so the rest is LoadedModel's: the same decoding,
the adapter's `inputs`, its `inference_model` (the tiles of a model trained with tiles) and its
`predictions`, and both runtimes give the same records.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import onnxruntime
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from automl_images.core.hyperparameters import Task
from automl_images.core.storage import Storage

from .export import LoadedModel, load_model, model_folder
from .onnx_export import INFO_FILE, ONNX_FILE, export_info, onnx_model, read_info
from .onnx_graphs import DetectorInput
from .tasks import get_adapter


class OnnxNetwork(torch.nn.Module):
    """An exported graph run by an onnxruntime.InferenceSession, called as the PyTorch model is."""

    def __init__(self, session: Any, info: Mapping[str, Any]):
        super().__init__()
        self.session = session
        self.classifier = Task(info["task"]).is_classification
        self.prepare = None if self.classifier else DetectorInput.from_dict(info["export"]["preprocessing"])
        self.output_names = [o["name"] for o in info["export"]["outputs"]]

    def forward(self, inputs: torch.Tensor | list[torch.Tensor]):
        if self.classifier:
            (logits,) = self.session.run(["logits"], {"images": _numpy(inputs)})
            return torch.from_numpy(logits)
        batch, sizes = self.prepare(inputs)
        outputs = dict(zip(self.output_names, self.session.run(self.output_names, {
            "images": _numpy(batch), "image_sizes": sizes.numpy()})))
        return [self._image(outputs, i, image.shape[-2:]) for i, image in enumerate(inputs)]

    @staticmethod
    def _image(outputs: dict[str, np.ndarray], i: int, size: torch.Size) -> dict[str, torch.Tensor]:
        """Image i's padded rows as torchvision's detectors return them: boxes in its pixels."""
        n = int(outputs["num_detections"][i])
        height, width = size
        boxes = torch.from_numpy(outputs["boxes"][i, :n]) * torch.tensor([width, height, width, height],
                                                                           dtype=torch.float32)
        result = {"boxes": boxes, "labels": torch.from_numpy(outputs["labels"][i, :n]),
                  "scores": torch.from_numpy(outputs["scores"][i, :n])}
        if "masks" in outputs:
            result["masks"] = paste_masks_in_image(torch.from_numpy(outputs["masks"][i, :n])[:, None], boxes,
                                                   (int(height), int(width)))
        return result


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).contiguous().numpy()


class OnnxModel(LoadedModel):
    """LoadedModel whose network is an OnnxNetwork: the same `predict(images, batch_size)` and
    `labels`, the records of the same adapter. `info` is the export's model.json."""

    @classmethod
    def from_bytes(cls, data: bytes, info: dict[str, Any], threads: int | None = None) -> OnnxModel:
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        adapter = get_adapter(Task(info["task"]), {**info["hyperparameters"], "pretrained": 0})
        return cls(OnnxNetwork(session, info).eval(), info, adapter)


def load_onnx_model(source: Storage | str, root: str | None = None, threads: int | None = None) -> OnnxModel:
    """The ONNX model of `source`: an ONNX export folder (model.onnx and its model.json), or a model,
    trial or job folder (or a job id with `root`, see export.model_folder), whose `onnx/` export is
    used when it is the export of this very model; otherwise the model is exported here, in memory,
    and nothing is written. `threads`: ONNX Runtime's intra-op threads (default: its own)."""
    storage = source if isinstance(source, Storage) else Storage(source)
    info = read_info(storage)
    if info is not None and info["export"]["format"] == "onnx":
        return OnnxModel.from_bytes(storage.read_bytes(ONNX_FILE), info, threads)
    folder = model_folder(source, root)
    exported = Storage(folder.url("onnx"))   # where `automl-images export --format onnx` writes by default
    info = read_info(exported)
    if info is not None and _same_model(info, folder.read_json(INFO_FILE)):
        return OnnxModel.from_bytes(exported.read_bytes(ONNX_FILE), info, threads)
    loaded = load_model(folder)
    data, exporter = onnx_model(loaded)
    return OnnxModel.from_bytes(data, export_info(loaded, "onnx", exporter), threads)


def _same_model(exported: Mapping[str, Any], info: Mapping[str, Any] | None) -> bool:
    """Whether an export was made from the model.json `info` (a best/ folder republished with another
    trial's model keeps its old onnx/ folder)."""
    return info is not None and {k: v for k, v in exported.items() if k != "export"} == dict(info)
