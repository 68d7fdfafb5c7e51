"""A tiny labelled image set written through `Storage` (so onto a local folder or a bucket), and
trial specs that train on it: what the trainer's subprocess tests share."""
from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
from PIL import Image

from automl_images.core import hyperparameters as hyperparameters_registry
from automl_images.core.hyperparameters import Task
from automl_images.core.layout import FILES
from automl_images.core.storage import Storage, join

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
CLI = os.path.join(os.path.dirname(sys.executable), "automl-images")
# Figures of a metrics file that measure time, not learning: they differ between any two runs.
TIMING_FIELDS = ("time", "train_seconds", "train_cpu_seconds", "images_per_second", "eval_seconds",
                 "eval_cpu_seconds")


def write_dataset(root: Storage, prefix: str = "data", per_class: int = 16, validation_per_class: int = 6,
                  size: int = 16, seed: int = 0) -> tuple[str, str]:
    """Noisy coloured squares, one colour per class, as PNG; returns the URLs of train.jsonl and
    val.jsonl (image paths relative to them)."""
    rng = np.random.default_rng(seed)
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for label, color in COLORS.items():
        for i in range(per_class + validation_per_class):
            pixels = np.clip(np.array(color) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            name = _write_png(root, prefix, f"images/{label}_{i}.png", pixels)
            lines["train" if i < per_class else "val"].append(json.dumps({"image_url": name, "label": label}))
    return _write_splits(root, prefix, lines)


def _write_png(root: Storage, prefix: str, name: str, pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    root.write_bytes(join(prefix, name), buffer.getvalue())
    return name


def _write_splits(root: Storage, prefix: str, lines: dict[str, list[str]]) -> tuple[str, str]:
    for split, content in lines.items():
        root.write_text(join(prefix, f"{split}.jsonl"), "\n".join(content) + "\n")
    return root.url(join(prefix, "train.jsonl")), root.url(join(prefix, "val.jsonl"))


CLASSIFICATION_HP = {"model_name": "resnet18", "pretrained": 0, "number_of_epochs": 3, "training_batch_size": 4,
                     "validation_batch_size": 8, "learning_rate": 0.005, "resize_size": 16, "crop_size": 16,
                     "warmup_cosine_lr_warmup_epochs": 0, "early_stopping": 0}
# Faster R-CNN at 64 px: two steps take seconds on a CPU.
DETECTION_HP = {"model_name": "fasterrcnn_resnet18_fpn", "pretrained": 0, "number_of_epochs": 2,
                "training_batch_size": 2, "validation_batch_size": 2, "learning_rate": 0.005, "min_size": 64,
                "max_size": 96, "box_score_thresh": 0.05, "warmup_cosine_lr_warmup_epochs": 0, "early_stopping": 0}
PRIMARY_METRICS = {"image-classification": "accuracy", "image-object-detection": "mean_average_precision",
                   "image-instance-segmentation": "mean_average_precision"}


def write_spec(root: Storage, trial: str, train: str, val: str | None, seed: int = 3,
               task: str = "image-classification", spec_fields: dict | None = None, **hyperparameters) -> str:
    """The spec of trial folder `trial` below `root`; returns its URL."""
    defaults = CLASSIFICATION_HP if task == "image-classification" else DETECTION_HP
    spec = {"job_id": "job", "trial_id": trial, "task": task, "primary_metric": PRIMARY_METRICS[task],
            "training_data": train, "validation_data": val,
            "hyperparameters": hyperparameters_registry.resolve(Task(task), {**defaults, **hyperparameters}),
            "output": root.url(trial), "seed": seed, **(spec_fields or {})}
    root.write_json(join(trial, FILES.spec), spec)
    return root.url(join(trial, FILES.spec))


def learning_figures(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_FIELDS}


def write_detection_dataset(root: Storage, prefix: str = "detection", train: int = 6, validation: int = 2,
                            sizes: tuple[tuple[int, int], ...] = ((64, 48), (48, 64)),
                            seed: int = 0) -> tuple[str, str]:
    """Grey images (sizes taken in turn) with one or two coloured rectangles, labelled as the
    reference's detection JSONL with boxes and polygons (one file serves detection and
    segmentation); returns the URLs of train.jsonl and val.jsonl."""
    rng = np.random.default_rng(seed)
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for i in range(train + validation):
        width, height = sizes[i % len(sizes)]
        pixels = np.full((height, width, 3), 128, dtype=np.uint8)
        objects = []
        for _ in range(int(rng.integers(1, 3))):
            label = str(rng.choice(sorted(COLORS)))
            w, h = int(rng.integers(12, width // 2)), int(rng.integers(12, height // 2))
            x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            pixels[y0:y0 + h, x0:x0 + w] = COLORS[label]
            box = (x0 / width, y0 / height, (x0 + w) / width, (y0 + h) / height)
            objects.append({"label": label, "topX": box[0], "topY": box[1], "bottomX": box[2], "bottomY": box[3],
                            "isCrowd": 0, "polygon": [[box[0], box[1], box[2], box[1], box[2], box[3], box[0], box[3]]]})
        name = _write_png(root, prefix, f"images/{i}.png", pixels)
        lines["train" if i < train else "val"].append(json.dumps({"image_url": name, "label": objects}))
    return _write_splits(root, prefix, lines)
