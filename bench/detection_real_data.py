"""Detection quality over time: mAP (VOC and COCO) and time per epoch of short from-scratch CPU trials
on real photos, printed so that a change to the trainer that costs accuracy or speed shows.

    .venv/bin/python bench/detection_real_data.py
    .venv/bin/python bench/detection_real_data.py --fridge-images 128 --fridge-epochs 15 --coco-train 100 \
        --coco-val 100 --coco-epochs 10 --min-size 320 --threads 2

Two trials, each through `run_trial` like any other (decoding, aspect-ratio batches, evaluation,
checkpoints, export):

- fasterrcnn_resnet18_fpn on ../shared/datasets/fridge-detection (128 photos 499×666, 4 classes,
  COCO JSON converted by trainer/convert.py's `from_coco`); the trainer splits off 20% for
  validation (split_ratio, seeded, by class).
- maskrcnn_resnet50_fpn on ../shared/datasets/coco128-segmentation (YOLO polygons converted by
  `from_yolo`, 80 COCO classes): the first --coco-train images of train2017 train, the first
  --coco-val images of val2017 whose classes all occur among those validate (the masks' mAP).

The images stay where they are (the JSONL holds their absolute paths). From scratch (pretrained 0)
in a few CPU minutes the figures are low: what matters is their change between commits on the same
machine with the same arguments (the CPU trainer is deterministic for a given thread count: two runs
give the same mAP). With the defaults, Mask R-CNN's mAP on coco128's 80 classes is 0: that line
tracks that the trial runs and its time per epoch; a mask mAP that moves needs the longer command
above. The defaults take subsets (--fridge-images, --coco-train, --coco-val) and two epochs: about
2.5 minutes on a quiet 2-core machine, 5 to 6 when it is shared; raise them for figures that mean
more. box_score_thresh is 0.05 (torchvision's evaluation setting): an untrained model's
scores are low, and the default 0.3 would leave nothing to rank. Without ../shared each trial is
skipped, saying why.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data import timed_trial, write_spec  # noqa: E402

from automl_images.core.hyperparameters import Task  # noqa: E402
from automl_images.core.storage import Storage  # noqa: E402
from automl_images.trainer import convert  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "datasets")


def fridge_jsonl(dataset: str, folder: str, images: int) -> tuple[str, None]:
    """The first `images` photos of fridge-detection as one JSONL (the trial splits it)."""
    output = os.path.join(folder, "fridge.jsonl")
    conversion = convert.from_coco(os.path.join(dataset, "annotations", "odFridgeObjects_coco.json"),
                                   os.path.join(dataset, "images"), output, Task.OBJECT_DETECTION)
    convert.write_jsonl(conversion.records[:images], output)
    return output, None


def coco128_jsonl(dataset: str, folder: str, train: int, val: int) -> tuple[str, str]:
    """The first `train` images of coco128-segmentation's train2017, and the first `val` of val2017
    whose objects are all of classes those training images have: the trainer refuses validation
    classes it has not trained on, and dropping their objects would count right detections wrong."""
    labels = os.path.join(dataset, "instance_segmentation")
    outputs, known = [], set()
    for split, count in (("train2017", train), ("val2017", val)):
        output = os.path.join(folder, f"coco128-{split}.jsonl")
        conversion = convert.from_yolo(os.path.join(labels, "labels", split), os.path.join(dataset, "images", split),
                                       output, os.path.join(labels, "config.yaml"), Task.INSTANCE_SEGMENTATION)
        records = conversion.records
        if split == "train2017":
            records = records[:count]
            known = {o["label"] for r in records for o in r["label"]}
        else:
            records = [r for r in records if r["label"] and {o["label"] for o in r["label"]} <= known][:count]
        convert.write_jsonl(records, output)
        outputs.append(output)
    return outputs[0], outputs[1]


def run(name: str, task: Task, train: str, val: str | None, folder: str, hp: dict[str, Any]) -> dict[str, Any]:
    trials = Storage(os.path.join(folder, "trials"))
    spec = write_spec(trials, name, train, val, task=task.value, primary_metric="mean_average_precision", **hp)
    seconds, status, metrics = timed_trial(spec, os.path.join(folder, "cache"))
    best = status["metrics"]
    return {"seconds": seconds, "best_epoch": status["best_epoch"], "voc_map": best.get("voc_map"),
            "coco_map": best.get("coco_map"), "coco_map_50": best.get("coco_map_50"),
            "last_voc_map": metrics[-1].get("voc_map"), "last_coco_map": metrics[-1].get("coco_map"),
            "train_s_per_epoch": sum(m["train_seconds"] for m in metrics) / len(metrics),
            "eval_s_per_epoch": sum(m["eval_seconds"] for m in metrics) / len(metrics),
            "train_images": metrics[0]["train_images"], "data_seconds": status["data_seconds"]}


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=SHARED, help="the folder of the shared datasets")
    parser.add_argument("--fridge-images", type=int, default=32, help="fridge photos (of 128), validation included")
    parser.add_argument("--fridge-epochs", type=int, default=2)
    parser.add_argument("--coco-train", type=int, default=10, help="coco128 train2017 images (of 100)")
    parser.add_argument("--coco-val", type=int, default=5, help="coco128 val2017 images (of those eligible)")
    parser.add_argument("--coco-epochs", type=int, default=2)
    parser.add_argument("--min-size", type=int, default=256, help="shorter side fed to the models")
    # One thread: on a loaded machine, two threads' spin-waits for each other cost more than the
    # second thread gives (see bench/trainer_throughput.py).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=("fridge", "coco128"), help="run one of the two trials")
    args = parser.parse_args(argv)
    os.environ["AUTOML_IMAGES_THREADS"] = str(args.threads)
    # Small images: the longer side at most 5/3 of the shorter (fridge photos are 3:4).
    common = {"min_size": args.min_size, "max_size": args.min_size * 5 // 3, "training_batch_size": 2,
              "validation_batch_size": 2, "box_score_thresh": 0.05, "validation_metric_type": "coco_voc",
              # From scratch, a lower rate than the detection default (0.05) and a warm-up epoch: the
              # default diverges in the first steps of an untrained detector.
              "learning_rate": 0.01, "warmup_cosine_lr_warmup_epochs": 1}
    trials = {
        "fridge": ("fridge-detection", "fasterrcnn_resnet18_fpn", Task.OBJECT_DETECTION, args.fridge_epochs,
                   lambda dataset, folder: fridge_jsonl(dataset, folder, args.fridge_images), {"split_ratio": 0.2}),
        "coco128": ("coco128-segmentation", "maskrcnn_resnet50_fpn", Task.INSTANCE_SEGMENTATION, args.coco_epochs,
                    lambda dataset, folder: coco128_jsonl(dataset, folder, args.coco_train, args.coco_val), {}),
    }
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-detection-real-") as folder:
        for name, (dataset_name, model, task, epochs, to_jsonl, extra) in trials.items():
            if args.only and name != args.only:
                continue
            dataset = os.path.join(args.shared, dataset_name)
            if not os.path.isdir(dataset):
                print(f"[detection_real_data] {name}: skipped: {os.path.abspath(dataset)} is absent (the shared "
                      f"datasets sit beside the checkout, not in it)", flush=True)
                continue
            started = time.perf_counter()
            train, val = to_jsonl(dataset, folder)
            hp = {**common, **extra, "model_name": model, "number_of_epochs": epochs}
            results[name] = r = run(name, task, train, val, folder, hp)
            print(f"[detection_real_data] {model} on {dataset_name} from scratch, {epochs} epoch(s) at min_size "
                  f"{args.min_size}, {args.threads} thread(s), {r['train_images']} images trained per epoch: best epoch "
                  f"{r['best_epoch']} voc_map {r['voc_map']:.4f} coco_map {r['coco_map']:.4f} (at IoU 0.5 "
                  f"{r['coco_map_50']:.4f}), last epoch voc_map {r['last_voc_map']:.4f} coco_map "
                  f"{r['last_coco_map']:.4f}; per epoch {r['train_s_per_epoch']:.0f} s training + "
                  f"{r['eval_s_per_epoch']:.0f} s evaluation; data check {r['data_seconds']:.0f} s; "
                  f"{time.perf_counter() - started:.0f} s in all", flush=True)
    return results


if __name__ == "__main__":
    main()
