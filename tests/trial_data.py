"""A tiny labelled image set written through `Storage` (so onto a local folder or a bucket), and
trial specs that train on it: what the trainer's subprocess tests share."""
from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
from PIL import Image

from automl_images.trainer.report import FILES
from automl_images.trainer.storage import Storage, join

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
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            name = f"images/{label}_{i}.png"
            root.write_bytes(join(prefix, name), buffer.getvalue())
            lines["train" if i < per_class else "val"].append(json.dumps({"image_url": name, "label": label}))
    for split, content in lines.items():
        root.write_text(join(prefix, f"{split}.jsonl"), "\n".join(content) + "\n")
    return root.url(join(prefix, "train.jsonl")), root.url(join(prefix, "val.jsonl"))


def write_spec(root: Storage, trial: str, train: str, val: str | None, seed: int = 3, **hyperparameters) -> str:
    """The spec of trial folder `trial` below `root`; returns its URL."""
    hp = {"model_name": "resnet18", "pretrained": 0, "number_of_epochs": 3, "training_batch_size": 4,
          "validation_batch_size": 8, "learning_rate": 0.005, "resize_size": 16, "crop_size": 16,
          "warmup_cosine_lr_warmup_epochs": 0, "early_stopping": 0, **hyperparameters}
    spec = {"job_id": "job", "trial_id": trial, "task": "image-classification", "primary_metric": "accuracy",
            "training_data": train, "validation_data": val, "hyperparameters": hp,
            "output": root.url(trial), "seed": seed}
    root.write_json(join(trial, FILES.spec), spec)
    return root.url(join(trial, FILES.spec))


def learning_figures(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_FIELDS}
