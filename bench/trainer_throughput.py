"""The trainer's overhead on the CPU: its training images/s over whole epochs, divided by the bare
model's forward + backward + optimizer step images/s on the same batches already in memory.
Goal: at least 0.95.

    .venv/bin/python bench/trainer_throughput.py
    .venv/bin/python bench/trainer_throughput.py --models resnet18 --images 64 --epochs 2 --threads 2

The trainer's figure is everything `run_trial` spends except the one-time check of the images and
the validation passes: the training images ÷ (trial time − data check − evaluation). It includes
decoding and augmenting every image every epoch (JPEG photos, 320×240, resized to 256 and cropped to
224), building the model, writing the checkpoint and status after every epoch (in the background
thread: its CPU time counts), and exporting the model. The bare figure times only the forward,
`loss.backward()` and `optimizer.step()` over the same batches, decoded and normalised beforehand,
with the same model, optimizer, schedule, threads and memory format.

A third figure isolates the training loop from the machine's drifting load: the trainer's
engine.train_one_epoch over its own loader, with one bare step on the same batch run after each of
its steps (by its `on_step` hook), each side timed in CPU time; it leaves out the per-trial and
per-epoch work outside the loop (model building, checkpoints, status, export).

The end-to-end figures are measured in this process, alternating: bare, trainer, bare, trainer, ..., bare (the figures
are medians), in wall time and in CPU time of this process (every thread). The CPU-time ratio is the
one to read on a shared machine: other programs' load stretches wall time by the minute, while the
CPU time a given piece of work takes moves less (on the 2-core machine this was written on, shared
with other work, identical runs still differed by up to 20%: the runs' spread is printed). One
thread by default for the same reason: with several, the threads' spin-waits for each other grow
with the machine's load.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data import timed_trial, write_photos, write_spec  # noqa: E402

from automl_images.core.storage import Storage  # noqa: E402
from automl_images.core import hyperparameters  # noqa: E402
from automl_images.trainer import data, engine  # noqa: E402
from automl_images.trainer.tasks import get_adapter  # noqa: E402

BATCH = 16
CROP, RESIZE = 224, 256


def bare_run(model_name: str, hp: dict, batches: list[tuple[torch.Tensor, torch.Tensor]],
             labels: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the bare loop over `batches`."""
    adapter = get_adapter(hyperparameters.Task.CLASSIFICATION, {**hp, "model_name": model_name, "pretrained": 0})
    engine.seed_everything(0)
    model = engine.prepare_model(adapter.build_model(labels), torch.device("cpu"))
    loss_fn = adapter.loss([1] * labels, 1)
    optimizer = engine.build_optimizer(model.parameters(), hp)
    scheduler = engine.build_lr_scheduler(optimizer, hp, len(batches), 1)
    model.train()
    started, cpu_started = time.perf_counter(), time.process_time()
    for inputs, targets in batches:
        loss = loss_fn(model, inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - started, time.process_time() - cpu_started


def training_loader(train_url: str, hp: dict):
    """The trainer's training loader over the JSONL's images, and the adapter."""
    adapter = get_adapter(hyperparameters.Task.CLASSIFICATION, hp)
    records = data.read_jsonl(train_url, adapter.parse_label)
    samples, _ = data.fetch_images(records)
    names = sorted({r.label for r in records})
    dataset = adapter.dataset(samples, [names.index(s.record.label) for s in samples], train=True)
    return adapter, engine.make_loader(dataset, BATCH, train=True, device=torch.device("cpu"),
                                       collate_fn=adapter.collate)


def in_memory_batches(train_url: str, hp: dict, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`steps` batches as the trainer's first epochs draw them, decoded and normalised now."""
    adapter, loader = training_loader(train_url, hp)
    normalize = adapter.batch_transform(torch.device("cpu"))
    batches, epoch = [], 1
    while len(batches) < steps:
        loader.batch_sampler.set_epoch(epoch)
        for inputs, targets in loader:
            batches.append((normalize(inputs), targets))
        epoch += 1
    return batches[:steps]


def interleaved(model_name: str, hp: dict, train_url: str, batches: list, labels: int) -> tuple[float, float]:
    """The trainer's training loop (engine.train_one_epoch over the trainer's loader: decoding,
    augmenting, normalising, stepping) and the bare loop, alternating step by step in this thread:
    after each of the trainer's steps, its `on_step` hook runs one bare step on the same batch,
    already in memory, with a second copy of the model. Load drifting over minutes hits both alike.
    Returns (trainer, bare) images per CPU-second."""
    adapter, loader = training_loader(train_url, hp)
    untrained = get_adapter(hyperparameters.Task.CLASSIFICATION, {**hp, "model_name": model_name, "pretrained": 0})

    def build():
        engine.seed_everything(0)
        model = engine.prepare_model(untrained.build_model(labels), torch.device("cpu"))
        optimizer = engine.build_optimizer(model.parameters(), hp)
        return model, optimizer, engine.build_lr_scheduler(optimizer, hp, len(batches), 1)

    loss_fn = adapter.loss([1] * labels, 1)
    trainer_model, trainer_optimizer, trainer_scheduler = build()
    bare_model, bare_optimizer, bare_scheduler = build()
    bare_model.train()
    bare_cpu = [0.0]
    position = [0]

    def bare_step(step: int, steps: int) -> None:
        started = time.process_time()
        inputs, targets = batches[position[0] % len(batches)]
        position[0] += 1
        loss = loss_fn(bare_model, inputs, targets)
        bare_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        bare_optimizer.step()
        bare_scheduler.step()
        bare_cpu[0] += time.process_time() - started

    trained, loop_cpu = 0, 0.0
    for epoch in range(1, 1 + max(1, len(batches) // len(loader))):
        loader.batch_sampler.set_epoch(epoch)
        context = engine.EpochContext(trainer_model, loss_fn, trainer_optimizer, trainer_scheduler, torch.device("cpu"),
                                      prepare=adapter.batch_transform(torch.device("cpu")), on_step=bare_step)
        stats = engine.train_one_epoch(context, loader)
        trained += stats["train_images"]
        loop_cpu += stats["train_cpu_seconds"]
    bare_images = sum(len(t) for _, t in batches[:position[0]])
    return trained / (loop_cpu - bare_cpu[0]), bare_images / bare_cpu[0]


def measure(model_name: str, images: int, epochs: int, repeats: int, folder: str) -> dict[str, float]:
    root = Storage(os.path.join(folder, model_name))
    train, val = write_photos(root, "data", train=images, validation=8)
    hp_values = {"model_name": model_name, "number_of_epochs": epochs, "training_batch_size": BATCH,
                 "validation_batch_size": BATCH, "resize_size": RESIZE, "crop_size": CROP}
    hp = hyperparameters.resolve(hyperparameters.Task.CLASSIFICATION, hp_values)
    steps = epochs * (images // BATCH)
    batches = in_memory_batches(train, hp, steps)
    labels = len({t for _, ts in batches for t in ts.tolist()})
    trained = sum(len(t) for _, t in batches)

    # bare, trainer, bare, trainer, ..., bare: the machine's load drifts over minutes.
    bare = [bare_run(model_name, hp, batches, labels)]
    trainer = []
    for repeat in range(repeats):
        cpu_started = time.process_time()
        seconds, status, metrics = timed_trial(write_spec(root, f"trial-{repeat}", train, val, **hp_values),
                                               os.path.join(folder, "cache-" + model_name))
        cpu_seconds = time.process_time() - cpu_started
        assert sum(m["train_images"] for m in metrics) == trained
        trainer.append((seconds - status["data_seconds"] - sum(m["eval_seconds"] for m in metrics),
                        cpu_seconds - status["data_cpu_seconds"] - sum(m["eval_cpu_seconds"] for m in metrics),
                        trained / sum(m["train_cpu_seconds"] for m in metrics), status.get("checkpoint_wait_s", 0.0)))
        bare.append(bare_run(model_name, hp, batches, labels))

    loop, loop_bare = interleaved(model_name, hp, train, batches, labels)
    median = statistics.median
    return {"images": trained, "interleaved_loop": loop, "interleaved_bare": loop_bare,
            "ratio_interleaved": loop / loop_bare,
            "trainer_wall": trained / median([t[0] for t in trainer]), "trainer_cpu": trained / median([t[1] for t in trainer]),
            "bare_wall": trained / median([b[0] for b in bare]), "bare_cpu": trained / median([b[1] for b in bare]),
            "ratio_wall": median([b[0] for b in bare]) / median([t[0] for t in trainer]),
            "ratio_cpu": median([b[1] for b in bare]) / median([t[1] for t in trainer]),
            "bare_cpu_runs": [round(trained / b[1], 2) for b in bare],
            "trainer_cpu_runs": [round(trained / t[1], 2) for t in trainer],
            "loop_cpu": median([t[2] for t in trainer]), "checkpoint_wait_s": max(t[3] for t in trainer)}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2")
    parser.add_argument("--images", type=int, default=64, help="training images (an epoch)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="trainer runs, each between two bare runs")
    args = parser.parse_args(argv)
    os.environ["AUTOML_IMAGES_THREADS"] = str(args.threads)  # the trainer's threads
    torch.set_num_threads(args.threads)                         # the bare loop's
    engine.configure_kernels(torch.device("cpu"))              # and the trainer's kernel settings
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as folder:
        for model_name in args.models.split(","):
            results[model_name] = r = measure(model_name, args.images, args.epochs, args.repeats, folder)
            print(f"[trainer_throughput] {model_name} at {CROP} px, {args.threads} thread(s), {r['images']} "
                  f"training images: per CPU-second trainer {r['trainer_cpu']:.2f} img (runs "
                  f"{r['trainer_cpu_runs']}; its training loop {r['loop_cpu']:.2f}), bare {r['bare_cpu']:.2f} "
                  f"(runs {r['bare_cpu_runs']}): ratio {r['ratio_cpu']:.3f} (goal >= 0.95); per wall-second "
                  f"trainer {r['trainer_wall']:.2f}, bare "
                  f"{r['bare_wall']:.2f}, ratio {r['ratio_wall']:.3f}; waited at most {r['checkpoint_wait_s']:.2f} s "
                  f"for a checkpoint. Training loops interleaved step by step: trainer {r['interleaved_loop']:.2f}, "
                  f"bare {r['interleaved_bare']:.2f} img per CPU-second, ratio {r['ratio_interleaved']:.3f}",
                  flush=True)
    return results


if __name__ == "__main__":
    main()
