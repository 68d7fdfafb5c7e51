"""Images per CPU-second delivered to the model at 224 px by today's loader (each image decoded from
its JPEG every epoch) and by the prepared images (trainer/prepared.py: decoded once, read back as
raw pixels), on the fridge photos of ../shared/datasets (the 134 thumbnails 113×150 of
fridge-multiclass, the 128 photos 499×666 of fridge-detection), with each training preset's
augmentation; and their ratio. A second line per preset: the prepared images with the augmentation
done per batch (trainer/batch_augment.py, the trainer's default on CUDA), here on the CPU, and its
loader alone (what the CPU does when a GPU augments).

    nice .venv/bin/python bench/prepared_dataset.py [--epochs 3] [--repeats 3]

"Delivered" is a training epoch of the trainer's own loader (engine.make_loader, no worker processes,
batches of 16) with each batch normalised as the fit loop does (adapter.batch_transform), in CPU time
of this process on one torch thread; for the batch path, each batch augmented and normalised by
batch_augment.BatchAugment. Direct, prepared and batch alternate, `repeats` times each (medians:
the machine's load drifts). The ceiling is the read rate of the prepared files alone
(data.open_image on each). The one-time preparation (hashing and decoding every image) is printed
beside, in CPU seconds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from automl_images.core.annotations import Record
from automl_images.trainer import batch_augment, data, engine, prepared, presets

DATASETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "datasets")
FOLDERS = {"thumbnails 113x150": "fridge-multiclass/images", "photos 499x666": "fridge-detection/images"}
BATCH = 16
RESIZE, CROP = 256, 224


def fridge_samples(folder: str) -> tuple[list[data.Sample], list[int]]:
    """Every JPEG in `folder`, all of one class (the loader does not look at labels)."""
    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(".jpg"))
    samples = [data.Sample(Record("fridge", i + 1, path, "fridge"), path) for i, path in enumerate(paths)]
    return samples, [0] * len(paths)


def training_dataset(samples: list[data.Sample], targets: list[int], preset: str,
                     batch: bool = False) -> data.ImageDataset:
    """The trainer's training dataset (as ClassificationAdapter.dataset makes it) with `preset`;
    `batch`: for batch augmentation (8-bit squares and their augmentation parameters)."""
    p = presets.Preprocessing(resize_size=RESIZE, crop_size=CROP, train_preset=preset)
    transform = batch_augment.sample_transform(p) if batch else presets.train_transform(p, normalize=False)
    return data.ImageDataset(samples, targets, transform, min_size=presets.decode_size(p, train=True))


def delivered(dataset: data.ImageDataset, epochs: int, preset: str, on_device: bool = True) -> float:
    """Images per CPU-second over `epochs` training epochs, normalised batches included (and
    augmented ones, for a batch augmentation dataset); `on_device=False`: the loader alone, what the
    CPU does when a GPU augments and normalises."""
    augment = batch_augment.BatchAugment(presets.Preprocessing(RESIZE, CROP, preset))  # normalises tensors only
    loader = engine.make_loader(dataset, BATCH, train=True, device=torch.device("cpu"), workers=0,
                                collate_fn=batch_augment.collate)
    images, started = 0, time.process_time()
    for epoch in range(1, epochs + 1):
        loader.batch_sampler.set_epoch(epoch)
        for inputs, targets in loader:
            if on_device:
                augment(inputs)
            images += len(targets)
    return images / (time.process_time() - started)


def read_rate(files: list[str], decode_size: int, rounds: int = 5) -> float:
    """Prepared images read per CPU-second (the decoder's own path: data.open_image)."""
    started = time.process_time()
    for _ in range(rounds):
        for path in files:
            data.open_image(path, decode_size)
    return rounds * len(files) / (time.process_time() - started)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=DATASETS, help="../shared/datasets")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-prepared-") as root:
        for images_name, folder in FOLDERS.items():
            folder = os.path.join(args.datasets, folder)
            if not os.path.isdir(folder):
                print(f"[prepared_dataset] skipped {images_name}: no {folder} (see ../shared/datasets/README.md)")
                continue
            samples, targets = fridge_samples(folder)
            for preset in presets.TRAIN_PRESETS:
                results[f"{images_name} {preset}"] = measure(samples, targets, preset, root, args, images_name)
    return results


def measure(samples: list[data.Sample], targets: list[int], preset: str, root: str, args: argparse.Namespace,
            images_name: str) -> dict[str, float]:
    direct = training_dataset(samples, targets, preset)
    started = time.process_time()
    images = prepared.prepare([s.path for s in samples], direct.min_size, root)
    prepare_cpu = time.process_time() - started
    ready = training_dataset(images.substitute(samples), targets, preset)
    batched = training_dataset(images.substitute(samples), targets, preset, batch=True)
    runs: dict[str, list[float]] = {"direct": [], "prepared": [], "batch": [], "batch_loader": []}
    for _ in range(args.repeats):   # alternating: the load drifts over minutes
        runs["direct"].append(delivered(direct, args.epochs, preset))
        runs["prepared"].append(delivered(ready, args.epochs, preset))
        runs["batch"].append(delivered(batched, args.epochs, preset))
        runs["batch_loader"].append(delivered(batched, args.epochs, preset, on_device=False))
    r = {name: statistics.median(values) for name, values in runs.items()}
    r["ratio"] = r["prepared"] / r["direct"]
    r["batch_ratio"] = r["batch"] / r["direct"]
    r["ceiling"] = read_rate(list(images.files.values()), direct.min_size)
    r["prepare_cpu_seconds"] = prepare_cpu
    print(f"[prepared_dataset] {len(samples)} {images_name}, preset {preset}, at {CROP} px (decode size "
          f"{direct.min_size}), 1 thread: per CPU-second today's loader {r['direct']:.0f} img (runs "
          f"{[round(v) for v in runs['direct']]}), prepared {r['prepared']:.0f} (runs "
          f"{[round(v) for v in runs['prepared']]}): ratio {r['ratio']:.2f}; reading the prepared files alone "
          f"{r['ceiling']:.0f}; preparing them once took {prepare_cpu:.2f} CPU-s", flush=True)
    print(f"[prepared_dataset] {len(samples)} {images_name}, preset {preset}, at {CROP} px, 1 thread: per "
          f"CPU-second prepared with batch augmentation on the CPU {r['batch']:.0f} img (runs "
          f"{[round(v) for v in runs['batch']]}): {r['batch_ratio']:.2f}x today's loader, "
          f"{r['batch'] / r['prepared']:.2f}x prepared with per-image augmentation; its loader alone (the CPU's "
          f"share on a GPU) {r['batch_loader']:.0f} img, {r['batch_loader'] / r['direct']:.2f}x today's loader",
          flush=True)
    return r


if __name__ == "__main__":
    main()
