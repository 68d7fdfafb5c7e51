"""ONNX Runtime ÷ PyTorch images/s on the CPU, for the exported models (trainer/onnx_export.py) against
the PyTorch models they came from: resnet18 classification and Faster R-CNN, at batch 1 and 8.
Goal: at least 1.0.

    .venv/bin/python bench/onnx_vs_torch.py
    .venv/bin/python bench/onnx_vs_torch.py --detector fasterrcnn_resnet18_fpn --rounds 3 --threads 2

Both sides take the same decoded images and return the same thing: classification, a normalised
batch of 224 px crops -> logits; detection, a list of [0, 1] photos of 499x666 (the fridge photos'
size) -> per image boxes, labels and scores in its pixels. PyTorch is the model's own forward (which
resizes, normalises and pads inside); ONNX Runtime is onnx_runtime.OnnxNetwork (the same resizing
outside the graph, the padded outputs cut back per image), so the ratio includes what the export adds
around the graph. Detectors at min_size 320, max_size 533 (as bench/detection_throughput.py: a CPU
forward of a batch of 8 stays seconds). Untrained weights (pretrained 0: nothing to download) with
box_score_thresh 0.05: the RPN still proposes its 1000 boxes per image, so the work per image is a
trained model's.

The two sides alternate call by call, so the drifting load of a shared machine hits both alike; each
call is timed in CPU time of this process (the figure to read on a loaded machine) and in wall time;
the first call of each side (allocation, ONNX Runtime's first-run setup) is left out. One thread by
default, both sides (torch.set_num_threads, ONNX Runtime's intra_op_num_threads).

Measured 2026-12-06 on the 2-core shared machine (load about 10), torch 2.14.1, ONNX Runtime 1.32,
1 thread, 5 rounds, ONNX ÷ PyTorch in CPU time: resnet18 2.21 at batch 1, 1.64 at batch 8;
fasterrcnn_resnet50_fpn 1.18 at batch 1, 1.27 at batch 8. About 5 minutes.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _data import photo  # noqa: E402

from automl_images.core.hyperparameters import Task, resolve  # noqa: E402
from automl_images.trainer.export import LoadedModel  # noqa: E402
from automl_images.trainer.onnx_export import export_info, onnx_model  # noqa: E402
from automl_images.trainer.onnx_runtime import OnnxModel  # noqa: E402
from automl_images.trainer.tasks import get_adapter  # noqa: E402

GOAL = 1.0
LABELS = ["can", "carton", "milk_bottle", "water_bottle"]
CLASSIFIER = (Task.CLASSIFICATION, {"model_name": "resnet18", "resize_size": 256, "crop_size": 224})


def detector(name: str) -> tuple[Task, dict]:
    return Task.OBJECT_DETECTION, {"model_name": name, "min_size": 320, "max_size": 533, "box_score_thresh": 0.05}


def build(task: Task, hyperparameters: dict, threads: int) -> tuple[LoadedModel, OnnxModel, float]:
    torch.manual_seed(0)
    hyperparameters = resolve(task, {"pretrained": 0, **hyperparameters})
    adapter = get_adapter(task, hyperparameters)
    info = {"task": task.value, "model_name": hyperparameters["model_name"], "labels": LABELS,
            "hyperparameters": hyperparameters, **adapter.model_info}
    loaded = LoadedModel(adapter.build_model(len(LABELS)).eval(), info, adapter)
    started = time.perf_counter()
    data, exporter = onnx_model(loaded)
    seconds = time.perf_counter() - started
    return loaded, OnnxModel.from_bytes(data, export_info(loaded, "onnx", exporter), threads), seconds


def inputs(loaded: LoadedModel, batch: int):
    """The batch both sides take: decoded photos through the adapter's `inputs`, as predict does."""
    rng = np.random.default_rng(batch)
    images = [Image.open(io.BytesIO(photo(rng, 666, 499, (200, 120, 60)))).convert("RGB") for _ in range(batch)]
    return loaded.adapter.inputs(images, loaded.info)


def timed(call) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    call()
    return time.process_time() - cpu, time.perf_counter() - wall


def compare(name: str, loaded: LoadedModel, onnx: OnnxModel, batch: int, rounds: int) -> float:
    x = inputs(loaded, batch)
    sides = {"torch": loaded.model, "onnx": onnx.model}
    times: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    with torch.inference_mode():
        for round_ in range(rounds + 1):
            for side, model in sides.items():
                spent = timed(lambda: model(x))
                if round_:   # the first call of each side sets up
                    times[side].append(spent)
    rate = {side: {kind: batch / statistics.median(t[k] for t in times[side]) for k, kind in enumerate(("cpu", "wall"))}
            for side in sides}
    ratio = rate["onnx"]["cpu"] / rate["torch"]["cpu"]
    print(f"{name:28s} batch {batch}: PyTorch {rate['torch']['cpu']:7.2f} images/s (CPU time; wall "
          f"{rate['torch']['wall']:7.2f}), ONNX Runtime {rate['onnx']['cpu']:7.2f} (wall {rate['onnx']['wall']:7.2f}); "
          f"ONNX ÷ PyTorch {ratio:.2f} (wall {rate['onnx']['wall'] / rate['torch']['wall']:.2f}) "
          f"{'ok' if ratio >= GOAL else 'BELOW GOAL'}", flush=True)
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detector", default="fasterrcnn_resnet50_fpn")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per side, after one set-up call")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds; goal ONNX ÷ PyTorch >= {GOAL}")
    ratios = []
    for task, hyperparameters in (CLASSIFIER, detector(args.detector)):
        loaded, onnx, seconds = build(task, hyperparameters, args.threads)
        print(f"{hyperparameters['model_name']}: exported in {seconds:.1f} s", flush=True)
        for batch in map(int, args.batches.split(",")):
            ratios.append(compare(hyperparameters["model_name"], loaded, onnx, batch, args.rounds))
    return 0 if min(ratios) >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
