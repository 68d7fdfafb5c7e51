"""The trainer on a GPU: mixed precision, channels-last, loader workers and torch.compile, against
the bare model on the same GPU. A check to run when a GPU is at hand (CI has none), not part of
run_all.py.

    python3 bench/gpu_check.py [--images 3072] [--out DIR] [--skip-compile]

For resnet18 and mobilenetv2 at 224 px: the bare model's forward + backward + step images/s on
batches already on the GPU (bf16 autocast, NCHW and channels-last), then the trainer's training
images/s (its own figure for epoch 2: decoding JPEGs in loader workers, copying 8-bit batches,
normalising on the GPU), then a trial with `compile: true` (inductor). Works without installing
the project: it imports the trainer from this checkout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def import_from_checkout() -> None:
    """`automl_images.trainer` from this checkout when the project is not installed."""
    try:
        import automl_images.trainer  # noqa: F401
        return
    except ImportError:
        pass
    shim = tempfile.mkdtemp(prefix="automl-images-shim-")
    os.makedirs(os.path.join(shim, "automl_images"))
    for name in ("trainer", "controller"):
        os.symlink(os.path.join(REPO, name), os.path.join(shim, "automl_images", name))
    sys.path.insert(0, shim)


import_from_checkout()
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from automl_images.core.hyperparameters import Task, resolve  # noqa: E402
from automl_images.core.layout import FILES  # noqa: E402
from automl_images.core.storage import Storage  # noqa: E402
from automl_images.trainer import engine, run  # noqa: E402
from automl_images.trainer.tasks import get_adapter  # noqa: E402

BATCH = 128
RESULTS: dict = {}


def write_photos_fast(folder: str, train: int, validation: int) -> tuple[str, str]:
    """Like _data.write_photos, in parallel (16 cores are there to be used)."""
    from _data import CLASSES, photo

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)

    def one(item):
        split, i = item
        rng = np.random.default_rng(i + (0 if split == "train" else 10**6))
        label = CLASSES[i % len(CLASSES)]
        tint = tuple(int(v) for v in np.random.default_rng(CLASSES.index(label)).integers(60, 255, 3))
        name = f"images/{split}_{i:05d}.jpg"
        with open(os.path.join(folder, name), "wb") as f:
            f.write(photo(rng, 320, 240, tint))
        return split, json.dumps({"image_url": name, "label": label})

    return write_jsonl_files(folder, one, [("train", i) for i in range(train)] + [("val", i) for i in range(validation)])


def write_jsonl_files(folder: str, write_image, items: list) -> tuple[str, str]:
    """`write_image(item) -> (split, JSONL line)` run over `items` in threads (JPEG encoding releases
    the GIL); the lines written as train.jsonl and val.jsonl, whose paths are returned."""
    with ThreadPoolExecutor(16) as pool:
        lines = list(pool.map(write_image, items))
    for split in ("train", "val"):
        with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
            f.write("\n".join(line for s, line in lines if s == split) + "\n")
    return os.path.join(folder, "train.jsonl"), os.path.join(folder, "val.jsonl")


def bare(model_name: str, channels_last: bool, steps: int = 30) -> float:
    device = torch.device("cuda")
    hp = resolve(Task.CLASSIFICATION, {"model_name": model_name})
    adapter = get_adapter(Task.CLASSIFICATION, {**hp, "pretrained": 0})
    model = adapter.build_model(4).to(device)
    model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    loss_fn = adapter.loss([1] * 4, 1).to(device)
    optimizer = engine.build_optimizer(model.parameters(), hp)
    x = torch.randn(BATCH, 3, 224, 224, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (BATCH,), device=device)
    return steps * BATCH / timed_steps(model, loss_fn, optimizer, [(x, y)], steps)


def timed_steps(model, loss_fn, optimizer, batches: list, steps: int, warmup: int = 10) -> float:
    """Seconds of `steps` bf16 forward + backward + step on `batches` (in turn, already on the GPU),
    after `warmup` untimed ones (cuDNN's kernel search, the allocator)."""
    model.train()
    for i in range(steps + warmup):
        if i == warmup:
            torch.cuda.synchronize()
            started = time.perf_counter()
        inputs, targets = batches[i % len(batches)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model, inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def trial(folder: str, name: str, train: str, val: str, model_name: str, epochs: int, compile_model: bool = False):
    hp = {"model_name": model_name, "pretrained": 0, "number_of_epochs": epochs, "training_batch_size": BATCH,
          "validation_batch_size": BATCH, "early_stopping": 0, "warmup_cosine_lr_warmup_epochs": 0}
    return run_spec(folder, name, {"task": "image-classification", "primary_metric": "accuracy",
                                   "training_data": train, "validation_data": val,
                                   "hyperparameters": resolve(Task.CLASSIFICATION, hp),
                                   "compile": compile_model})


def run_spec(folder: str, name: str, spec: dict):
    """Trial `name` of `spec` (task, data, hyperparameters) run here: (status, metrics per epoch, seconds)."""
    root = Storage(os.path.join(folder, "trials"))
    root.write_json(f"{name}/{FILES.spec}", {"job_id": "gpu", "trial_id": name, "output": root.url(name),
                                             "seed": 0, **spec})
    started = time.perf_counter()
    status = run.run_trial(root.url(f"{name}/{FILES.spec}"))
    seconds = time.perf_counter() - started
    trial_store = Storage(root.url(name))
    metrics = [trial_store.read_json(FILES.metrics(h["epoch"])) for h in status.get("history", [])]
    return status, metrics, seconds


def section(name: str, function) -> None:
    started = time.perf_counter()
    try:
        RESULTS[name] = function()
    except Exception:  # noqa: BLE001 - report and go on with the next check
        RESULTS[name] = {"error": traceback.format_exc()}
    print(f"== {name} ({time.perf_counter() - started:.0f} s): {json.dumps(RESULTS[name], default=str)[:2000]}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=3072)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs, "
          f"bf16 {torch.cuda.is_bf16_supported()}", flush=True)
    torch.backends.cudnn.benchmark = True
    folder = tempfile.mkdtemp(prefix="gpu-check-")
    os.environ["AUTOML_IMAGES_IMAGE_CACHE"] = os.path.join(folder, "cache")
    section("data", lambda: dict(zip(("train", "val"), write_photos_fast(folder, args.images, 256), strict=True)))
    train, val = RESULTS["data"]["train"], RESULTS["data"]["val"]
    for model_name in ("resnet18", "mobilenetv2"):
        section(f"bare {model_name}", lambda m=model_name: {"nchw": bare(m, False), "channels_last": bare(m, True)})

        def run_trainer(model_name=model_name):
            status, metrics, seconds = trial(folder, f"t-{model_name}", train, val, model_name, 3)
            return {"status": status["status"], "error": status.get("error"), "device": status.get("device"),
                    "images_per_second": [round(m["images_per_second"], 1) for m in metrics],
                    "train_seconds": [round(m["train_seconds"], 2) for m in metrics],
                    "eval_seconds": [round(m["eval_seconds"], 2) for m in metrics],
                    "accuracy": [m["accuracy"] for m in metrics], "wall_s": round(seconds, 1),
                    "loader_workers": engine.loader_workers(torch.device("cuda"), args.images, BATCH),
                    "checkpoint_wait_s": status.get("checkpoint_wait_s")}
        section(f"trainer {model_name}", run_trainer)
        bare_best = max(RESULTS[f"bare {model_name}"].get("channels_last", 0), RESULTS[f"bare {model_name}"].get("nchw", 0))
        trainer_ips = RESULTS[f"trainer {model_name}"].get("images_per_second", [0])[-1]
        RESULTS[f"ratio {model_name}"] = trainer_ips / bare_best if bare_best else None
        print(f"== ratio {model_name}: trainer epoch 3 {trainer_ips:.0f} img/s / bare {bare_best:.0f} img/s = "
              f"{RESULTS[f'ratio {model_name}'] or 0:.3f}", flush=True)
    if not args.skip_compile:
        def run_compiled():
            status, metrics, seconds = trial(folder, "t-compiled", train, val, "resnet18", 3, compile_model=True)
            return {"status": status["status"], "error": status.get("error"), "compiled": status.get("compiled"),
                    "images_per_second": [round(m["images_per_second"], 1) for m in metrics],
                    "train_seconds": [round(m["train_seconds"], 2) for m in metrics], "wall_s": round(seconds, 1)}
        section("trainer resnet18 compile", run_compiled)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(RESULTS, f, indent=2, default=str)


if __name__ == "__main__":
    main()
