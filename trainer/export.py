"""The final model: `model/model.pt` (the best epoch's state dict) and `model/model.json` (what it
takes to rebuild and feed it: task, architecture, ordered class names, preprocessing).

`model.json` is written last, so a folder that has it holds a complete model.

    from automl_images.trainer import export
    print(export.predict("s3://bucket/jobs/j/trials/t/model", ["cat.jpg"]))
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image

from automl_images.core.hyperparameters import Task
from automl_images.core.layout import FILES
from automl_images.core.storage import Storage, filesystem, with_retries

from . import data
from .tasks import TaskAdapter, get_adapter

FORMAT_VERSION = 2   # 2: the trial's hyperparameters and decode_size
_WEIGHTS = FILES.model_weights.rsplit("/", 1)[-1]   # model.pt
_INFO = FILES.model_info.rsplit("/", 1)[-1]         # model.json


def export_model(storage: Storage, weights: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Write the model into the trial folder `storage`. `info` holds task, model_name, labels,
    hyperparameters, decode_size, primary_metric, best_metric and epoch, and the task's own fields
    (classification: preprocessing; multi-label: threshold)."""
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    storage.write_bytes(FILES.model_weights, buffer.getvalue())
    storage.write_json(FILES.model_info, {"format_version": FORMAT_VERSION,
                                          "num_classes": len(info["labels"]), **info})


@dataclass
class LoadedModel:
    model: torch.nn.Module
    info: dict[str, Any]
    adapter: TaskAdapter   # built from model.json's hyperparameters

    @property
    def labels(self) -> list[str]:
        return list(self.info["labels"])

    @torch.inference_mode()
    def predict(self, images: Sequence[str | bytes | Image.Image], batch_size: int = 32) -> list[dict[str, Any]]:
        """Predictions for images given as paths/URLs, encoded bytes or PIL images, in order."""
        adapter = self.adapter
        model = adapter.inference_model(self.model)
        out: list[dict[str, Any]] = []
        for start in range(0, len(images), batch_size):
            decoded = [_as_rgb(image, self.info.get("decode_size")) for image in images[start:start + batch_size]]
            outputs = model(adapter.inputs(decoded, self.info))
            out.extend(adapter.predictions(outputs, self.labels, self.info,
                                           [(image.height, image.width) for image in decoded]))
        return out


def _as_rgb(image: str | bytes | Image.Image, min_size: int | None = None) -> Image.Image:
    """Decoded as the trainer decodes (data.open_image): the same JPEG scale, EXIF orientation,
    16-bit and transparency handling, and the same refusal of decompression bombs."""
    if isinstance(image, str):
        fs, path = filesystem(image)
        image = with_retries(lambda: fs.cat_file(path))
    if isinstance(image, bytes):
        return data.open_image(io.BytesIO(image), min_size)
    return data.to_rgb(image)


def load_model(source: Storage | str) -> LoadedModel:
    """Rebuild the exported model (on the CPU, in eval mode) from a model folder, or from a trial
    folder that holds one."""
    storage = source if isinstance(source, Storage) else Storage(source)
    if not storage.exists(_INFO) and storage.exists(FILES.model_info):
        storage = Storage(storage.url(FILES.model_dir))
    info = storage.read_json(_INFO)
    if info is None:
        raise FileNotFoundError(f"{storage.url(_INFO)}: no exported model here")
    # The weights come from model.pt: nothing pretrained to fetch.
    adapter = get_adapter(Task(info["task"]), {**info["hyperparameters"], "pretrained": 0})
    model = adapter.build_model(len(info["labels"]))
    weights = torch.load(io.BytesIO(storage.read_bytes(_WEIGHTS)), map_location="cpu", weights_only=True)
    model.load_state_dict(weights)
    model.eval()
    return LoadedModel(model, info, adapter)


def predict(model_dir: Storage | str, images: Sequence[str | bytes | Image.Image]) -> list[dict[str, Any]]:
    return load_model(model_dir).predict(images)
