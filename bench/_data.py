"""What the benchmarks share: photo-like JPEG sets written as Azure JSONL, trial specs, and timing
one trial in this process."""
from __future__ import annotations

import io
import json
import os
import time
from typing import Any

import numpy as np
from PIL import Image

from automl_images.core.hyperparameters import Task, resolve
from automl_images.core.layout import FILES
from automl_images.core.storage import Storage, join
from automl_images.trainer import run

CLASSES = ("can", "carton", "milk_bottle", "water_bottle")


def photo(rng: np.random.Generator, width: int, height: int, tint: tuple[int, int, int]) -> bytes:
    """A JPEG with a photo's statistics (smooth shading, texture, an object): it decodes and
    compresses like a photo, unlike white noise or a flat colour."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    shade = 0.5 + 0.5 * np.sin(x / rng.uniform(20, 60) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(20, 60))
    pixels = shade[..., None] * np.array(tint, np.float32)[None, None] + rng.normal(0, 12, (height, width, 3))
    cx, cy, r = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height, rng.uniform(0.15, 0.3) * height
    pixels[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_photos(root: Storage, prefix: str, train: int, validation: int, width: int = 320, height: int = 240,
                 seed: int = 0) -> tuple[str, str]:
    """`train` + `validation` photos over CLASSES below `prefix`; returns the two JSONL URLs."""
    rng = np.random.default_rng(seed)
    tints = {c: tuple(int(v) for v in rng.integers(60, 255, 3)) for c in CLASSES}
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for split, count in (("train", train), ("val", validation)):
        for i in range(count):
            label = CLASSES[i % len(CLASSES)]
            name = f"images/{split}_{i:05d}.jpg"
            root.write_bytes(join(prefix, name), photo(rng, width, height, tints[label]))
            lines[split].append(json.dumps({"image_url": name, "label": label}))
    for split, content in lines.items():
        root.write_text(join(prefix, f"{split}.jsonl"), "\n".join(content) + "\n")
    return root.url(join(prefix, "train.jsonl")), root.url(join(prefix, "val.jsonl"))


def write_spec(root: Storage, trial: str, train: str, val: str | None, seed: int = 0,
               task: str = "image-classification", primary_metric: str = "accuracy", **hyperparameters: Any) -> str:
    hp = {"pretrained": 0, "early_stopping": 0, "warmup_cosine_lr_warmup_epochs": 0, **hyperparameters}
    root.write_json(join(trial, FILES.spec), {
        "job_id": "bench", "trial_id": trial, "task": task, "primary_metric": primary_metric,
        "training_data": train, "validation_data": val, "hyperparameters": resolve(Task(task), hp),
        "output": root.url(trial),
        "seed": seed})
    return root.url(join(trial, FILES.spec))


def timed_trial(spec_url: str, cache_dir: str) -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
    """Run a trial in this process with its own image cache: (wall seconds, status, every epoch's metrics)."""
    os.environ["AUTOML_IMAGES_IMAGE_CACHE"] = cache_dir
    started = time.perf_counter()
    status = run.run_trial(spec_url)
    seconds = time.perf_counter() - started
    if status["status"] != "completed":
        raise RuntimeError(f"the trial did not complete: {status.get('error')}")
    trial = Storage(spec_url.rsplit("/", 1)[0])
    metrics = [trial.read_json(FILES.metrics(h["epoch"])) for h in status["history"]]
    return seconds, status, metrics
