"""Build bench/digits_table.json: real learning curves of our trainer on scikit-learn's handwritten
digits (the demo's data set), one run per point of a small hyperparameter grid, so that samplers
and early-termination policies can be compared on real curves in seconds (bench/sampler_quality.py).

    nice -n 10 .venv/bin/python bench/build_digits_table.py --workers 6   # about 10 minutes of CPU in all
    nice -n 10 .venv/bin/python bench/build_digits_table.py --epochs 2 --models resnet18 --out /tmp/t.json

The grid: two models from scratch × six learning rates (log-spaced) × two optimizers, each
trained for EPOCHS epochs on the 8×8 scans as they are, with the validation accuracy recorded
after every epoch (a run that diverges fails, as a trial would: its curve ends there and its
status says so). Each run goes through the trainer's own `run_trial` on one torch thread, exactly
as a trial of a job would (warmup-cosine schedule, seed 0), in its own process and folder. Runs
already in the output file are kept, so an interrupted build continues where it stopped.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

OUT = Path(__file__).resolve().parent / "digits_table.json"
EPOCHS = 6
MODELS = ("resnet18", "mobilenetv2")
LEARNING_RATES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
OPTIMIZERS = ("sgd", "adamw")
BATCH_SIZE = 128
# Fixed for every run: 8 px inputs keep an epoch near a second of one core; no warmup, so the
# first epochs already tell the learning rates apart (what early termination judges).
FIXED = {"pretrained": 0, "training_batch_size": BATCH_SIZE, "validation_batch_size": 256, "resize_size": 10,
         "crop_size": 8, "warmup_cosine_lr_warmup_epochs": 0, "early_stopping": 0}


def run(storage, data: tuple[str, str], name: str, params: dict, epochs: int) -> dict:
    """One trial through the trainer; returns its per-epoch validation accuracy and its time."""
    from automl_images.core import hyperparameters as hps
    from automl_images.core.hyperparameters import Task
    from automl_images.core.layout import FILES
    from automl_images.core.storage import join
    from automl_images.trainer.run import run_trial

    task = Task("image-classification")
    spec = {"job_id": "table", "trial_id": name, "task": task.value, "primary_metric": "accuracy",
            "training_data": data[0], "validation_data": data[1],
            "hyperparameters": hps.resolve(task, {**FIXED, **params, "number_of_epochs": epochs}),
            "output": storage.url(name), "seed": 0}
    storage.write_json(join(name, FILES.spec), spec)
    started = time.perf_counter()
    status = run_trial(storage.url(join(name, FILES.spec)))["status"]
    curve = []
    for epoch in range(1, epochs + 1):  # a run that diverged fails: its curve stops there
        key = join(name, FILES.metrics(epoch))
        if not storage.exists(key):
            break
        curve.append(round(storage.read_json(key)["accuracy"], 5))
    return {"params": params, "status": status, "accuracy": curve,
            "seconds": round(time.perf_counter() - started, 1)}


def run_in_folder(params: dict, epochs: int) -> dict:
    """`run` in a fresh folder with its own copy of the digits (one worker process's job)."""
    import torch

    from automl_images.controller.demo import write_digits
    from automl_images.core.storage import Storage

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        storage = Storage(folder)
        write_digits(storage, "digits")
        return run(storage, (storage.url("digits/train.jsonl"), storage.url("digits/val.jsonl")), "run", params, epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (each on one thread)")
    args = parser.parse_args()
    os.environ.setdefault("AUTOML_IMAGES_HEARTBEAT_S", "3600")
    table = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    table.update(data="scikit-learn digits (the demo's 80/20 split), 8x8 scans at 8 px", metric="accuracy",
                 epochs=args.epochs, fixed=FIXED)
    grid = [{"model_name": model, "learning_rate": lr, "optimizer": optimizer}
            for model, lr, optimizer in itertools.product(args.models, LEARNING_RATES, OPTIMIZERS)]
    order = {json.dumps(params, sort_keys=True): i for i, params in enumerate(grid)}
    table["runs"] = [r for r in table["runs"] if json.dumps(r["params"], sort_keys=True) in order]
    done = {json.dumps(r["params"], sort_keys=True) for r in table["runs"]}
    todo = [params for params in grid if json.dumps(params, sort_keys=True) not in done]
    with ProcessPoolExecutor(args.workers) as pool:
        for future in as_completed([pool.submit(run_in_folder, params, args.epochs) for params in todo]):
            result = future.result()
            runs = table["runs"] + [result]
            table["runs"] = sorted(runs, key=lambda r: order[json.dumps(r["params"], sort_keys=True)])
            args.out.write_text(json.dumps(table, separators=(",", ":")) + "\n")
            print(f"{result['params']}: {result['status']} {result['accuracy']} ({result['seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
