"""Detection trials on a GPU: the trainer's training images/s (bf16 autocast, loader workers decoding
JPEGs, aspect-ratio batches) against the bare model's forward + backward + step on the same batches
already on the GPU, and the validation pass's time, for Faster R-CNN, Mask R-CNN and yolov5. A check
to run when a GPU is at hand (CI has none), not part of run_all.py.

    python3 bench/gpu_detection_check.py [--images 512] [--out DIR]

Synthetic photos-like data: grey JPEGs of 640x480 and 480x640 with coloured rectangles. Works without
installing the project (see gpu_check.py).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_check import (  # noqa: E402  (which makes the checkout importable)
    RESULTS,
    run_spec,
    section,
    timed_steps,
    write_jsonl_files,
)

from automl_images.core.hyperparameters import Task, resolve  # noqa: E402
from automl_images.trainer import data, engine  # noqa: E402
from automl_images.trainer.tasks import get_adapter  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
# (task, model, batch, settings): the reference's sizes (min_size 600, img_size 640), batches that
# fill an H100 far less than its memory allows but show the loop's overhead.
MODELS = (
    ("image-object-detection", "fasterrcnn_resnet50_fpn", 8, {}),
    ("image-instance-segmentation", "maskrcnn_resnet50_fpn", 4, {}),
    ("image-object-detection", "yolov5", 16, {"model_size": "medium", "img_size": 640}),
)


def write_images(folder: str, count: int) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    plans = []
    for i in range(count):
        width, height = (640, 480) if i % 2 else (480, 640)
        objects = []
        for _ in range(int(rng.integers(1, 5))):
            w, h = int(rng.integers(40, width // 2)), int(rng.integers(40, height // 2))
            x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            objects.append((str(rng.choice(sorted(COLOURS))), x0, y0, w, h))
        plans.append((i, width, height, objects))

    def one(plan) -> tuple[str, str]:
        i, width, height, objects = plan
        pixels = np.full((height, width, 3), 128, dtype=np.uint8)
        label = []
        for name, x0, y0, w, h in objects:
            pixels[y0:y0 + h, x0:x0 + w] = COLOURS[name]
            box = [x0 / width, y0 / height, (x0 + w) / width, (y0 + h) / height]
            label.append({"label": name, "topX": box[0], "topY": box[1], "bottomX": box[2], "bottomY": box[3],
                          "polygon": [[box[0], box[1], box[2], box[1], box[2], box[3], box[0], box[3]]]})
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        with open(os.path.join(folder, f"{i}.jpg"), "wb") as f:
            f.write(buffer.getvalue())
        return ("val" if i % 8 == 0 else "train"), json.dumps({"image_url": f"{i}.jpg", "label": label})

    return write_jsonl_files(folder, one, plans)


def hyperparameters(task: str, model_name: str, batch: int, settings: dict, epochs: int = 2) -> dict:
    # From scratch (no weights can be downloaded there): Faster R-CNN ResNet-50 at 600 px diverged at
    # learning_rate 0.01 without warmup on an H100; one epoch of warmup and 0.005 train.
    return {"model_name": model_name, "pretrained": 0, "number_of_epochs": epochs, "training_batch_size": batch,
            "validation_batch_size": batch, "early_stopping": 0, "warmup_cosine_lr_warmup_epochs": 1,
            "learning_rate": 0.005, **settings}


def bare(task: str, model_name: str, batch: int, settings: dict, train: str, steps: int = 20) -> float:
    """Images/s of forward + backward + step on batches the trainer's loader made, already on the GPU."""
    device = torch.device("cuda")
    hp = resolve(Task(task), hyperparameters(task, model_name, batch, settings))
    adapter = get_adapter(Task(task), hp)
    records = data.read_jsonl(train, adapter.parse_label)
    samples, _ = data.fetch_images(records[:batch * 4])
    labels = sorted({c for r in records for c in adapter.classes_of(r.label)})
    index = {c: i for i, c in enumerate(labels)}
    dataset = adapter.dataset(samples, [adapter.encode(s.record.label, index) for s in samples], train=True)
    loader = engine.make_loader(dataset, batch, train=True, device=torch.device("cpu"), collate_fn=adapter.collate,
                                group_ids=dataset.group_ids)
    loader.batch_sampler.set_epoch(1)
    batches = [engine.to_device(b, device) for b in loader]
    model = adapter.build_model(len(labels)).to(device)
    loss_fn = adapter.loss([1] * len(labels), len(samples))
    optimizer = engine.build_optimizer(model.parameters(), hp)
    return steps * batch / timed_steps(model, loss_fn, optimizer, batches, steps, warmup=5)


def trial(folder: str, task: str, model_name: str, batch: int, settings: dict, train: str, val: str) -> dict:
    status, metrics, seconds = run_spec(folder, model_name, {
        "task": task, "primary_metric": "mean_average_precision", "training_data": train, "validation_data": val,
        "hyperparameters": resolve(Task(task), hyperparameters(task, model_name, batch, settings))})
    return {"status": status["status"], "error": status.get("error"), "device": status.get("device"),
            "images_per_second": [round(m["images_per_second"], 1) for m in metrics],
            "eval_seconds": [round(m["eval_seconds"], 2) for m in metrics],
            "mean_average_precision": [m["mean_average_precision"] for m in metrics], "wall_s": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1536)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs", flush=True)
    folder = tempfile.mkdtemp(prefix="gpu-detection-")
    os.environ["AUTOML_IMAGES_IMAGE_CACHE"] = os.path.join(folder, "cache")
    section("data", lambda: dict(zip(("train", "val"), write_images(folder, args.images), strict=True)))
    train, val = RESULTS["data"]["train"], RESULTS["data"]["val"]
    for task, model_name, batch, settings in MODELS:
        section(f"bare {model_name}", lambda t=task, m=model_name, b=batch, s=settings: {
            "images_per_second": round(bare(t, m, b, s, train), 1)})
        section(f"trainer {model_name}", lambda t=task, m=model_name, b=batch, s=settings:
                trial(folder, t, m, b, s, train, val))
        bare_rate = RESULTS[f"bare {model_name}"].get("images_per_second") or 0
        trainer_rate = (RESULTS[f"trainer {model_name}"].get("images_per_second") or [0])[-1]
        print(f"== ratio {model_name}: trainer epoch 2 {trainer_rate:.0f} img/s / bare {bare_rate:.0f} img/s = "
              f"{trainer_rate / bare_rate if bare_rate else 0:.3f}", flush=True)
    with open(os.path.join(args.out, "gpu_detection_check.json"), "w") as f:
        json.dump(RESULTS, f, indent=2, default=str)


if __name__ == "__main__":
    main()
