"""The best epoch's predictions on the first validation images, beside their ground truth: what the
job's report (controller/report.py) draws for the best trial. run.py writes it to the trial
folder (`FILES.best_predictions`) each time the best epoch changes.

    {"epoch": 3, "task": "image-object-detection", "labels": [...],
     "images": [{"image_url": ..., "width": 640, "height": 480, "thumbnail": "<base64 JPEG>",
                 "label": <the validation JSONL's label>, "prediction": <adapter.predictions' record>}]}

`label` is in the training JSONL schema and `prediction` in the adapter's prediction schema (the
same schema plus scores), so the report reads one schema for both. The file is bounded: at most
`MAX_IMAGES` images and `MAX_OBJECTS` predicted objects each, each image with a JPEG thumbnail of at
most `THUMBNAIL_SIZE` pixels a side (a few KB), so that the controller never reads the images
themselves (large, and wherever the data lives). The thumbnails are made once per attempt; the images
are decoded again at each write (not kept: full-size detection images would take gigabytes).
"""
from __future__ import annotations

import base64
import io
from typing import Any, Mapping, Sequence

import torch

from automl_images.core.detection_labels import DetectionLabel

from . import data, engine
from .tasks import TaskAdapter

MAX_IMAGES = 48       # a report shows a grid of a few dozen; more would only grow the file
THUMBNAIL_SIZE = 160  # pixels, the longer side: boxes and masks stay legible
MAX_OBJECTS = 100     # detections kept per image, the highest scores (a model may be set to give more)
BATCH_SIZE = 8


def jsonl_label(label: Any) -> Any:
    """A parsed label back in the training JSONL schema."""
    if isinstance(label, DetectionLabel):
        out = []
        for o in label.objects:
            line = {"label": o.label, "topX": o.box[0], "topY": o.box[1], "bottomX": o.box[2], "bottomY": o.box[3],
                    "isCrowd": int(o.is_crowd)}
            if o.polygons:
                line["polygon"] = [list(p) for p in o.polygons]
            out.append(line)
        return out
    return list(label) if isinstance(label, tuple) else label


class BestPredictions:
    """Writes `FILES.best_predictions` for one attempt of a trial (rank 0 only)."""

    def __init__(self, adapter: TaskAdapter, info: Mapping[str, Any], samples: Sequence[data.Sample],
                 device: torch.device):
        self.adapter = adapter
        self.info = info     # model.json's fields: labels, preprocessing, decode_size, threshold...
        self.samples = list(samples[:MAX_IMAGES])
        self.device = device
        self._thumbnails: list[str] | None = None

    @torch.inference_mode()
    def build(self, epoch: int, model: torch.nn.Module) -> dict[str, Any]:
        """The file's content for the model of `epoch` (left in eval mode: training sets its own)."""
        model.eval()
        inference = self.adapter.inference_model(model)
        labels = list(self.info["labels"])
        images: list[dict[str, Any]] = []
        for start in range(0, len(self.samples), BATCH_SIZE):
            batch = self.samples[start:start + BATCH_SIZE]
            decoded = [data.open_image(s.path, self.info.get("decode_size")) for s in batch]
            outputs = inference(engine.to_device(self.adapter.inputs(decoded, self.info), self.device))
            predictions = self.adapter.predictions(outputs, labels, self.info, [(i.height, i.width) for i in decoded])
            for sample, image, prediction in zip(batch, decoded, predictions):
                images.append({"image_url": sample.record.image_url, "width": image.width, "height": image.height,
                               "label": jsonl_label(sample.record.label), "prediction": _bounded(prediction)})
        for image, thumbnail in zip(images, self.thumbnails()):
            image["thumbnail"] = thumbnail
        return {"epoch": epoch, "task": self.info["task"], "labels": labels, "images": images}

    def thumbnails(self) -> list[str]:
        if self._thumbnails is None:
            self._thumbnails = [_thumbnail(data.open_image(s.path)) for s in self.samples]
        return self._thumbnails


def _bounded(prediction: dict[str, Any]) -> dict[str, Any]:
    """A detection's objects cut to the MAX_OBJECTS highest scores (other tasks: as they are)."""
    objects = prediction.get("label")
    if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
        return prediction
    return {**prediction, "label": sorted(objects, key=lambda o: -o.get("score", 0.0))[:MAX_OBJECTS]}


def _thumbnail(image) -> str:
    image = image.copy()
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
