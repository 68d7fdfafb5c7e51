"""The final model: `model/model.pt` (the best epoch's state dict) and `model/model.json` (what it
takes to rebuild and feed it: task, architecture, ordered class names, preprocessing).

`model.json` is written last, so a folder that has it holds a complete model.

    from automl_images.trainer import export
    print(export.predict("s3://bucket/jobs/j/trials/t/model", ["cat.jpg"]))

Predictions are records of the training JSONL schema plus scores (each task adapter's
`predictions`), which `automl-images evaluate` reads and training takes as labels:

    {"label": "can", "scores": {"can": 0.9, "milk_bottle": 0.1}}                  classification
    {"label": ["can"], "scores": {"can": 0.8, "milk_bottle": 0.3}}                multi-label
    {"label": [{"label": "can", "topX": 0.1, "topY": 0.2, "bottomX": 0.5,
                "bottomY": 0.9, "score": 0.87, "polygon": [[0.1, 0.2, ...]]}]}    detection (+ polygon: segmentation)
"""
from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image

from automl_images.core.hyperparameters import Task
from automl_images.core.layout import FILES, JOB_ID, Root
from automl_images.core.storage import Storage, filesystem, with_retries

from . import data
from .tasks import TaskAdapter, get_adapter
from .weights import safe_load

FORMAT_VERSION = 2   # 2: the trial's hyperparameters and decode_size
_WEIGHTS = FILES.model_weights.rsplit("/", 1)[-1]   # model.pt
_INFO = FILES.model_info.rsplit("/", 1)[-1]         # model.json
# A job folder's copy of its best model ("best"), as the layout names it.
_BEST = posixpath.relpath(Root("").best("j"), Root("").job_key("j"))


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
        """Predictions for images given as paths/URLs, encoded bytes or PIL images, in order: one
        record each, in the schema above (without image_url)."""
        adapter = self.adapter
        model = adapter.inference_model(self.model)
        out: list[dict[str, Any]] = []
        for start in range(0, len(images), batch_size):
            decoded = [decode_image(image, self.info.get("decode_size")) for image in images[start:start + batch_size]]
            outputs = model(adapter.inputs(decoded, self.info))
            out.extend(adapter.predictions(outputs, self.labels, self.info,
                                           [(image.height, image.width) for image in decoded]))
        return out


def decode_image(image: str | bytes | Image.Image, min_size: int | None = None) -> Image.Image:
    """Decoded as the trainer decodes (data.open_image): the same JPEG scale (`min_size`: model.json's
    decode_size), EXIF orientation, 16-bit and transparency handling, and the same refusal of
    decompression bombs."""
    if isinstance(image, str):
        fs, path = filesystem(image)
        image = with_retries(lambda: fs.cat_file(path))
    if isinstance(image, bytes):
        return data.open_image(io.BytesIO(image), min_size)
    return data.to_rgb(image)


def model_folder(source: Storage | str, root: str | None = None) -> Storage:
    """The folder that holds model.json: `source` itself (a model folder), its model/ (a trial
    folder) or its best/ (a job folder: the job's best model); with `root`, `source` may also be a
    job id. FileNotFoundError saying where it looked when none holds a model."""
    storage = source if isinstance(source, Storage) else Storage(source)
    candidates = [storage, Storage(storage.url(FILES.model_dir)), Storage(storage.url(_BEST))]
    if root and isinstance(source, str) and JOB_ID.fullmatch(source):
        candidates.append(Storage(Storage(root).url(Root(root).best(source))))
    for candidate in candidates:
        if candidate.exists(_INFO):
            return candidate
    raise FileNotFoundError(f"no exported model at {storage.root}: give a model folder (with {_INFO}), a trial "
                            f"folder, a job folder whose best model is published (a finished job), or a job id "
                            f"with --root" + (f" (looked in {candidates[-1].root} too)" if len(candidates) > 3 else ""))


def load_model(source: Storage | str, root: str | None = None) -> LoadedModel:
    """Rebuild the exported model (on the CPU, in eval mode) from a model, trial or job folder, or a
    job id with `root` (see model_folder)."""
    storage = model_folder(source, root)
    info = storage.read_json(_INFO)
    # The weights come from model.pt: nothing pretrained to fetch.
    adapter = get_adapter(Task(info["task"]), {**info["hyperparameters"], "pretrained": 0})
    model = adapter.build_model(len(info["labels"]))
    weights = safe_load(storage.read_bytes(_WEIGHTS), storage.url(_WEIGHTS))
    model.load_state_dict(weights)
    model.eval()
    return LoadedModel(model, info, adapter)


def predict(model_dir: Storage | str, images: Sequence[str | bytes | Image.Image]) -> list[dict[str, Any]]:
    return load_model(model_dir).predict(images)
