"""Model quality over time: accuracy of a short from-scratch CPU run on the real fridgeObjects
thumbnails (../shared/datasets/fridge-multiclass: 134 JPEGs, 113×150, 4 classes), printed so that
a change to the trainer that costs accuracy shows.

    .venv/bin/python bench/fridge_accuracy.py
    .venv/bin/python bench/fridge_accuracy.py --epochs 30 --model mobilenetv2

The images stay where they are: `to_jsonl` (this file's converter) writes an Azure-style JSONL of
absolute paths into a temporary folder, the class being the file name's prefix (`can_1.jpg`). The
trainer splits off 20% for validation (stratified, seeded), trains from scratch (pretrained 0) and
reports its best validation accuracy. Same seed, same machine, same thread count: the same figure
(the CPU trainer is deterministic); compare figures across commits, not across machines.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data import timed_trial, write_spec  # noqa: E402

from automl_images.core.storage import Storage  # noqa: E402

DATASET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "datasets",
                       "fridge-multiclass")


def to_jsonl(images_dir: str, jsonl_path: str) -> dict[str, int]:
    """One JSONL line per `<class>_<n>.jpg` of `images_dir` (absolute image paths); returns the
    number of images per class."""
    counts: dict[str, int] = {}
    with open(jsonl_path, "w", encoding="utf-8") as out:
        for name in sorted(os.listdir(images_dir)):
            stem, extension = os.path.splitext(name)
            if extension.lower() not in (".jpg", ".jpeg", ".png") or "_" not in stem:
                continue
            label = stem.rsplit("_", 1)[0]
            counts[label] = counts.get(label, 0) + 1
            out.write(json.dumps({"image_url": os.path.join(os.path.abspath(images_dir), name),
                                  "label": label}) + "\n")
    return counts


def main(argv: list[str] | None = None) -> dict[str, float] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=DATASET)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--size", type=int, default=96, help="crop size (resize: 8/7 of it)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    images_dir = os.path.join(args.dataset, "images")
    if not os.path.isdir(images_dir):
        print(f"[fridge_accuracy] skipped: {images_dir} is absent (the shared datasets sit beside the "
              f"checkout)", flush=True)
        return None
    os.environ["AUTOML_IMAGES_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-fridge-") as folder:
        jsonl = os.path.join(folder, "fridge.jsonl")
        counts = to_jsonl(images_dir, jsonl)
        trials = Storage(os.path.join(folder, "trials"))
        hp = {"model_name": args.model, "number_of_epochs": args.epochs, "training_batch_size": 16,
              "validation_batch_size": 32, "learning_rate": 0.01, "split_ratio": 0.2,
              "warmup_cosine_lr_warmup_epochs": 2, "resize_size": args.size * 8 // 7, "crop_size": args.size}
        started = time.perf_counter()
        _, status, metrics = timed_trial(write_spec(trials, "fridge", jsonl, None, **hp),
                                         os.path.join(folder, "cache"))
        seconds = time.perf_counter() - started
    best, last = status["metrics"], metrics[-1]
    print(f"[fridge_accuracy] {args.model} from scratch, {args.epochs} epochs at {args.size} px, "
          f"{args.threads} thread(s), {sum(counts.values())} images ({', '.join(f'{k} {v}' for k, v in counts.items())}), "
          f"{best['samples']} validated: best accuracy {best['accuracy']:.3f} (epoch {status['best_epoch']}), "
          f"last {last['accuracy']:.3f}, log loss {best['log_loss']:.3f}; {seconds:.0f} s", flush=True)
    return {"accuracy": best["accuracy"], "last_accuracy": last["accuracy"], "seconds": seconds}


if __name__ == "__main__":
    main()
