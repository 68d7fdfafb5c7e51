"""The trainer's overhead in detection training on the CPU: its training images/s (engine.train_one_epoch
over the trainer's own loader) divided by the bare model's forward + backward + optimizer step
images/s on the same batches already in memory. Goal: at least 0.95.

    .venv/bin/python bench/detection_throughput.py
    .venv/bin/python bench/detection_throughput.py --models fasterrcnn_resnet18_fpn --steps 10 --threads 2

Real photos: fasterrcnn_resnet18_fpn trains on ../shared/datasets/fridge-detection (COCO JSON,
499×666 JPEGs), maskrcnn_resnet50_fpn on ../shared/datasets/coco128-segmentation's train2017 (YOLO
polygons, JPEGs of 333–640 px: fridge-detection has no masks), both converted to our JSONL by
trainer/convert.py. Without ../shared the script says so and measures nothing. Both models at
min_size 320, max_size 533, batch 2, from scratch (pretrained 0), SGD at learning rate 0.005.

The trainer's side is everything train_one_epoch does per step: drawing the batch from the
aspect-ratio batch sampler, decoding each JPEG from its file, the v2 transforms (boxes, masks
rasterised from the polygons, the horizontal flip), collate, the crowd filter of the loss, the
forward, backward, optimizer and schedule steps, and the finite-loss check. The bare side is the
model's own `sum(model(images, targets).values())`, backward and step on the same batches, decoded,
transformed and stripped to plain tensors beforehand, with a second copy of the model built from the
same seed. The detectors sample anchors and proposals at random: each bare step starts from the
global RNG state its trainer step started from, so both copies see the same numbers and do the same
work (the script prints how far their summed losses differ: 0 when they did).

Interleaved step by step in this thread: after each of the trainer's steps its `on_step` hook runs
one bare step on the same batch, so the machine's load, which drifts over minutes on a shared
machine, hits both sides alike. Each side's steps are timed in CPU time of this process (the figure
to read on a loaded machine) and in wall time. The first step of each side is left out: it
allocates the buffers every later step reuses. One thread by default: with several, the threads'
spin-waits for each other grow with the machine's load.

Steps of the same batch still differ by up to 15% in CPU time between the two sides on the 2-core
machine this was written on (shared with other work: a busy sibling core stretches CPU time too),
so a few steps give the ratio to about ±5%; --steps 20 narrows it. The line also gives the loader's
own CPU time per batch (decoding, transforms, masks, collate), timed alone while the batches are
prepared: the bulk of what the trainer adds, free of that noise. About 3 minutes with the defaults.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import torch

from automl_images.core.hyperparameters import Task
from automl_images.core import hyperparameters
from automl_images.trainer import convert, data, engine
from automl_images.trainer.tasks import get_adapter

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "datasets")
# Small for a detector (the default is 600): a CPU step of 2 images stays a few seconds. The fridge
# photos (499×666) become 320×427.
MIN_SIZE, MAX_SIZE = 320, 533
GOAL = 0.95


def fridge_records(dataset: str, folder: str) -> tuple[Task, str]:
    """fridge-detection's COCO JSON as a detection JSONL; (task, JSONL path)."""
    output = os.path.join(folder, "fridge.jsonl")
    conversion = convert.from_coco(os.path.join(dataset, "annotations", "odFridgeObjects_coco.json"),
                                   os.path.join(dataset, "images"), output, Task.OBJECT_DETECTION)
    convert.write_jsonl(conversion.records, output)
    return Task.OBJECT_DETECTION, output


def coco128_records(dataset: str, folder: str) -> tuple[Task, str]:
    """coco128-segmentation's train2017 YOLO polygons as a segmentation JSONL; (task, JSONL path)."""
    output = os.path.join(folder, "coco128-train.jsonl")
    labels = os.path.join(dataset, "instance_segmentation")
    conversion = convert.from_yolo(os.path.join(labels, "labels", "train2017"),
                                   os.path.join(dataset, "images", "train2017"), output,
                                   os.path.join(labels, "config.yaml"), Task.INSTANCE_SEGMENTATION)
    convert.write_jsonl(conversion.records, output)
    return Task.INSTANCE_SEGMENTATION, output


# model -> (dataset folder, its converter)
MODELS = {"fasterrcnn_resnet18_fpn": ("fridge-detection", fridge_records),
          "maskrcnn_resnet50_fpn": ("coco128-segmentation", coco128_records)}


def bare_targets(target: dict[str, Any]) -> dict[str, torch.Tensor]:
    """What the model itself takes: boxes, labels (and masks) as plain tensors."""
    return {k: torch.as_tensor(target[k]).as_subclass(torch.Tensor).clone()
            for k in ("boxes", "labels", "masks") if k in target}


def measure(model_name: str, steps: int, batch: int, shared: str, folder: str) -> dict[str, Any]:
    dataset_name, to_jsonl = MODELS[model_name]
    task, jsonl = to_jsonl(os.path.join(shared, dataset_name), folder)
    hp = hyperparameters.resolve(task, {
        "model_name": model_name, "pretrained": 0, "training_batch_size": batch, "min_size": MIN_SIZE,
        "max_size": MAX_SIZE, "number_of_epochs": 1, "warmup_cosine_lr_warmup_epochs": 0,
        # The detection default (0.05) drives an untrained Mask R-CNN's loss to NaN within 3 steps.
        "learning_rate": 0.005})
    adapter = get_adapter(task, hp)
    # One step more than measured: each side's first step is a warm-up. Images with objects only, so
    # that every step trains every head.
    records = [r for r in data.read_jsonl(jsonl, adapter.parse_label) if r.label.objects][:(steps + 1) * batch]
    samples, skipped = data.fetch_images(records, cache_dir=os.path.join(folder, "cache"))
    assert not skipped, skipped
    labels = sorted({name for s in samples for name in adapter.classes_of(s.record.label)})
    class_index = {name: i for i, name in enumerate(labels)}
    targets = [adapter.encode(s.record.label, class_index) for s in samples]

    def loader():
        dataset = adapter.dataset(samples, targets, train=True, seed=0)
        made = engine.make_loader(dataset, batch, train=True, device=torch.device("cpu"), collate_fn=adapter.collate,
                                  group_ids=dataset.group_ids)
        made.batch_sampler.set_epoch(1)
        return made

    # The same batches as the trainer's loader draws them (the order and the flips depend only on
    # the seed, the epoch and the index), decoded and transformed now. Timed: the loader's own cost,
    # the bulk of what the trainer adds, without the noise of the model's steps around it.
    loader_cpu = time.process_time()
    batches = [(images, [bare_targets(t) for t in batch_targets]) for images, batch_targets in loader()]
    loader_cpu = (time.process_time() - loader_cpu) / len(batches)

    def build():
        engine.seed_everything(0)
        model = engine.prepare_model(adapter.build_model(len(labels)), torch.device("cpu"))
        optimizer = engine.build_optimizer(model.parameters(), hp)
        return model, optimizer, engine.build_lr_scheduler(optimizer, hp, len(batches), 1)

    trainer_model, trainer_optimizer, trainer_scheduler = build()
    bare_model, bare_optimizer, bare_scheduler = build()
    bare_model.train()
    loss_fn = adapter.loss([1] * len(labels), len(samples))
    # (wall, CPU) when each trainer step ends and when each bare step ends.
    trainer_ends: list[tuple[float, float]] = []
    bare_ends: list[tuple[float, float]] = []
    bare_loss_sum = [0.0]

    trainer_rng: list[torch.Tensor] = []

    def bare_step(step: int, steps_total: int) -> None:
        trainer_ends.append((time.perf_counter(), time.process_time()))
        images, batch_targets = batches[step - 1]
        # The detectors sample anchors and proposals with the global RNG: the bare step draws what
        # the trainer's step drew (the same work), then the trainer's sequence goes on untouched.
        after = torch.get_rng_state()
        torch.set_rng_state(trainer_rng[step - 1])
        loss = sum(bare_model(images, batch_targets).values())
        bare_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        bare_optimizer.step()
        bare_scheduler.step()
        bare_loss_sum[0] += float(loss.detach()) * len(images)
        torch.set_rng_state(after)
        bare_ends.append((time.perf_counter(), time.process_time()))

    class Recording:
        """The trainer's loader, passed through; notes the RNG state each step starts from and
        checks that the batch is the one the bare step will take."""
        def __init__(self, loader):
            self.loader = loader

        def __len__(self) -> int:
            return len(self.loader)

        def __iter__(self):
            for k, (images, batch_targets) in enumerate(self.loader):
                assert [i.shape for i in images] == [i.shape for i in batches[k][0]], k
                trainer_rng.append(torch.get_rng_state())
                yield images, batch_targets

    started = (time.perf_counter(), time.process_time())
    context = engine.EpochContext(trainer_model, loss_fn, trainer_optimizer, trainer_scheduler, torch.device("cpu"),
                                  prepare=adapter.batch_transform(torch.device("cpu")), on_step=bare_step)
    stats = engine.train_one_epoch(context, Recording(loader()))
    assert stats["train_steps"] == len(batches) == len(bare_ends), (stats["train_steps"], len(batches))
    # A trainer step runs from the end of the previous bare step (its loader then draws the next
    # batch) to the start of the next bare step. Step 1 (index 0) is each side's warm-up.
    starts = [started] + bare_ends[:-1]
    trainer = [(end[0] - start[0], end[1] - start[1]) for start, end in zip(starts, trainer_ends)][1:]
    bare = [(end[0] - start[0], end[1] - start[1]) for start, end in zip(trainer_ends, bare_ends)][1:]
    images = sum(len(b[0]) for b in batches[1:])
    return {"dataset": dataset_name, "images": images, "steps": len(batches) - 1,
            "trainer_cpu": images / sum(t[1] for t in trainer), "bare_cpu": images / sum(b[1] for b in bare),
            "trainer_wall": images / sum(t[0] for t in trainer), "bare_wall": images / sum(b[0] for b in bare),
            "ratio_cpu": sum(b[1] for b in bare) / sum(t[1] for t in trainer),
            "ratio_wall": sum(b[0] for b in bare) / sum(t[0] for t in trainer),
            "trainer_steps_cpu": [round(t[1], 2) for t in trainer], "bare_steps_cpu": [round(b[1], 2) for b in bare],
            "loader_cpu_per_batch": loader_cpu,
            "loader_share": loader_cpu * len(bare) / sum(b[1] for b in bare),
            "loss_difference": abs(stats["train_loss_sum"] - bare_loss_sum[0]) / max(1e-12, abs(bare_loss_sum[0]))}


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=6, help="measured steps per model (each side; plus one warm-up)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shared", default=SHARED, help="the folder of the shared datasets")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    engine.configure_kernels(torch.device("cpu"))     # the trainer's kernel settings, for both sides
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-detection-throughput-") as folder:
        for model_name in args.models.split(","):
            dataset = os.path.join(args.shared, MODELS[model_name][0])
            if not os.path.isdir(dataset):
                print(f"[detection_throughput] {model_name}: skipped: {os.path.abspath(dataset)} is absent (the "
                      f"shared datasets sit beside the checkout, not in it)", flush=True)
                continue
            results[model_name] = r = measure(model_name, args.steps, args.batch, args.shared, folder)
            print(f"[detection_throughput] {model_name} at min_size {MIN_SIZE} (max {MAX_SIZE}), batch {args.batch}, "
                  f"{args.threads} thread(s), {r['dataset']}, {r['steps']} steps ({r['images']} images) after a "
                  f"warm-up step, interleaved: per CPU-second trainer {r['trainer_cpu']:.3f} img, bare "
                  f"{r['bare_cpu']:.3f}: ratio {r['ratio_cpu']:.3f} (goal >= {GOAL}); per wall-second trainer "
                  f"{r['trainer_wall']:.3f}, bare {r['bare_wall']:.3f}, ratio {r['ratio_wall']:.3f}; CPU s per step "
                  f"trainer {r['trainer_steps_cpu']}, bare {r['bare_steps_cpu']}; the loader alone "
                  f"{1000 * r['loader_cpu_per_batch']:.0f} CPU-ms per batch ({100 * r['loader_share']:.1f}% of a "
                  f"bare step); losses differ by "
                  f"{r['loss_difference']:.1e} (relative)", flush=True)
    return results


if __name__ == "__main__":
    main()
