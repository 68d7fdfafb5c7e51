"""Build a table of real learning curves of our trainer (bench/<data>_table.json), one run per point
of a small hyperparameter grid, so that samplers and early-termination policies can be compared on
real curves in seconds (bench/sampler_quality.py).

    nice -n 10 .venv/bin/python bench/build_table.py digits --workers 2   # about 10 minutes of CPU in all
    nice -n 10 .venv/bin/python bench/build_table.py fridge --workers 2   # 48 runs, 18 minutes of run time in all
    nice -n 10 .venv/bin/python bench/build_table.py digits --epochs 2 --models resnet18 --out /tmp/t.json

The data sets:
- digits: scikit-learn's handwritten digits (the demo's data set, its 80/20 split), the 8×8 scans
  as they are; two models × six learning rates × two optimizers.
- fridge: the fridgeObjects thumbnails (../shared/datasets/fridge-multiclass, 134 JPEGs of 4
  classes; the trainer's stratified 20% split) at 32 px; two models × six learning rates × two
  optimizers × two batch sizes. A harder table: 26 validation images, from scratch, so the best
  configurations are few and far apart.

Every run trains from scratch, with the validation accuracy recorded after every epoch (a run that
diverges fails, as a trial would: its curve ends there and its status says so). Each run goes
through the trainer's own `run_trial` on one torch thread, exactly as a trial of a job would
(warmup-cosine schedule without warmup, seed 0), in its own process and folder. Runs already in the
output file are kept, so an interrupted build continues where it stopped.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Grid:
    description: str
    epochs: int
    grid: dict[str, tuple]  # hyperparameter -> the values tried, in the order runs are listed
    fixed: dict  # the same for every run


# No warmup, so the first epochs already tell the learning rates apart (what early termination judges).
_FIXED = {"pretrained": 0, "warmup_cosine_lr_warmup_epochs": 0, "early_stopping": 0}
_LEARNING_RATES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
GRIDS = {
    # 8 px inputs keep an epoch near a second of one core
    "digits": Grid("scikit-learn digits (the demo's 80/20 split), 8x8 scans at 8 px", 6,
                   {"model_name": ("resnet18", "mobilenetv2"), "learning_rate": _LEARNING_RATES,
                    "optimizer": ("sgd", "adamw")},
                   {**_FIXED, "training_batch_size": 128, "validation_batch_size": 256, "resize_size": 10,
                    "crop_size": 8}),
    "fridge": Grid("fridgeObjects thumbnails (134 JPEGs, 4 classes; the trainer's stratified 20% split, "
                   "26 images) at 32 px", 12,
                   {"model_name": ("resnet18", "mobilenetv2"), "learning_rate": _LEARNING_RATES,
                    "optimizer": ("sgd", "adamw"), "training_batch_size": (8, 32)},
                   {**_FIXED, "validation_batch_size": 64, "resize_size": 36, "crop_size": 32,
                    "split_ratio": 0.2}),
}


def write_data(name: str, folder: str) -> tuple[str, str | None]:
    """The data set `name` as JSONL in `folder`: (training URL, validation URL or None for a split)."""
    from automl_images.core.storage import Storage

    storage = Storage(folder)
    if name == "digits":
        from automl_images.controller.demo import write_digits

        write_digits(storage, "digits")
        return storage.url("digits/train.jsonl"), storage.url("digits/val.jsonl")
    sys.path.insert(0, str(HERE))
    from fridge_accuracy import DATASET, to_jsonl

    to_jsonl(os.path.join(DATASET, "images"), os.path.join(folder, "fridge.jsonl"))
    return storage.url("fridge.jsonl"), None


def run(data: str, params: dict, epochs: int) -> dict:
    """One trial through the trainer, in a fresh folder on one thread: its per-epoch validation
    accuracy, its status and its time."""
    import torch

    from automl_images.core import hyperparameters as hps
    from automl_images.core.hyperparameters import Task
    from automl_images.core.layout import FILES
    from automl_images.core.storage import Storage, join
    from automl_images.trainer.run import run_trial

    torch.set_num_threads(1)
    task = Task("image-classification")
    with tempfile.TemporaryDirectory() as folder:
        training, validation = write_data(data, folder)
        storage = Storage(folder)
        spec = {"job_id": "table", "trial_id": "run", "task": task.value, "primary_metric": "accuracy",
                "training_data": training, "validation_data": validation,
                "hyperparameters": hps.resolve(task, {**GRIDS[data].fixed, **params, "number_of_epochs": epochs}),
                "output": storage.url("run"), "seed": 0}
        storage.write_json(join("run", FILES.spec), spec)
        started = time.perf_counter()
        status = run_trial(storage.url(join("run", FILES.spec)))["status"]
        curve = []
        for epoch in range(1, epochs + 1):  # a run that diverged fails: its curve stops there
            key = join("run", FILES.metrics(epoch))
            if not storage.exists(key):
                break
            curve.append(round(storage.read_json(key)["accuracy"], 5))
    return {"params": params, "status": status, "accuracy": curve, "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", choices=list(GRIDS))
    parser.add_argument("--out", type=Path, help="default: bench/<data>_table.json")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (each on one thread)")
    args = parser.parse_args()
    grid = GRIDS[args.data]
    out = args.out or HERE / f"{args.data}_table.json"
    epochs = args.epochs or grid.epochs
    values = {**grid.grid, **({"model_name": tuple(args.models)} if args.models else {})}
    os.environ.setdefault("AUTOML_IMAGES_HEARTBEAT_S", "3600")
    table = json.loads(out.read_text()) if out.exists() else {"runs": []}
    table.update(data=grid.description, metric="accuracy", epochs=epochs, fixed=grid.fixed)
    points = [dict(zip(values, combination)) for combination in itertools.product(*values.values())]
    order = {json.dumps(params, sort_keys=True): i for i, params in enumerate(points)}
    table["runs"] = [r for r in table["runs"] if json.dumps(r["params"], sort_keys=True) in order]
    done = {json.dumps(r["params"], sort_keys=True) for r in table["runs"]}
    todo = [params for params in points if json.dumps(params, sort_keys=True) not in done]
    with ProcessPoolExecutor(args.workers) as pool:
        for future in as_completed([pool.submit(run, args.data, params, epochs) for params in todo]):
            result = future.result()
            runs = table["runs"] + [result]
            table["runs"] = sorted(runs, key=lambda r: order[json.dumps(r["params"], sort_keys=True)])
            out.write_text(json.dumps(table, separators=(",", ":")) + "\n")
            print(f"{result['params']}: {result['status']} {result['accuracy']} ({result['seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
