"""Tiny image sets that a network learns in a few steps: coloured squares, one colour per class."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 220)}


def square(colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> bytes:
    pixels = rng.integers(0, 40, size=(size, size, 3)).astype(np.uint8)
    low, high = size // 4, 3 * size // 4
    pixels[low:high, low:high] = colour
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_squares(folder: Path, per_class: int = 8, size: int = 16, seed: int = 0,
                  validation_per_class: int = 3) -> tuple[Path, Path]:
    """`folder/train.jsonl`, `folder/val.jsonl` and their PNG files; returns the two JSONL paths."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    splits = {"train": [], "val": []}
    for label, colour in COLOURS.items():
        for i in range(per_class + validation_per_class):
            name = f"images/{label}_{i}.png"
            (folder / name).write_bytes(square(colour, size, rng))
            split = "train" if i < per_class else "val"
            splits[split].append({"image_url": name, "label": label})
    for split, records in splits.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder / "train.jsonl", folder / "val.jsonl"


JOB = """\
task: image-classification
training_data: {train}
validation_data: {val}
sampling: {sampling}
limits:
  max_trials: {max_trials}
  max_concurrent_trials: {concurrent}
search_space:
  - model_name: {models}
    learning_rate: uniform(0.01, 0.05)
arguments:
  pretrained: 0
  number_of_epochs: {epochs}
  training_batch_size: 8
  validation_batch_size: 16
  resize_size: {size}
  crop_size: {size}
  warmup_cosine_lr_warmup_epochs: 0
  early_stopping: 0
"""


def write_job(folder: Path, max_trials: int = 2, concurrent: int = 2, epochs: int = 2, size: int = 16,
              models: str = "choice(resnet18, mobilenetv2)", sampling: str = "random",
              train: str = "train.jsonl", val: str = "val.jsonl", name: str = "job.yaml") -> Path:
    path = folder / name
    path.write_text(JOB.format(max_trials=max_trials, concurrent=concurrent, epochs=epochs, size=size,
                               models=models, sampling=sampling, train=train, val=val))
    return path
