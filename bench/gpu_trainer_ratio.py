"""The trainer ÷ bare-model ratio on a GPU, with and without the prepared images (trainer/prepared.py)
and, for the classifiers, the augmentation on the GPU (trainer/batch_augment.py): resnet18 and
resnet50 at 224 px, Faster R-CNN R-50 (min_size 600). Goal: at least 0.9 for all three. A check to
run when a GPU is at hand (CI has none), not part of run_all.py.

    python3 bench/gpu_trainer_ratio.py [--images 3072] [--detection-images 512] [--out DIR]

Bare: forward + backward + step under bf16 autocast on batches already on the GPU (classifiers:
random 224-px batches in channels-last, the trainer's memory format on a GPU; Faster R-CNN: batches
the trainer's loader made), after warm-up steps. Trainer: a whole trial in this process (loader
workers, 8-bit batches copied and normalised on the GPU, bf16 autocast, channels-last), its own
training images/s of the last epoch; once with AUTOML_IMAGES_PREPARED=0 (every epoch decodes the
JPEGs: 320×240 photos for the classifiers, 640×480 for the detector) and once prepared (the images
decoded once, before the first epoch, read back as raw pixels). The classifiers' "direct" and
"prepared" trials augment per image on the CPU (AUTOML_IMAGES_BATCH_AUGMENT=0, the trainer before
batch augmentation); "prepared+batch" augments whole batches on the GPU, the trainer's default on
CUDA. Works without installing the project
(see gpu_check.py). Writes gpu_trainer_ratio.json under --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from gpu_check import RESULTS, bare, section, trial, write_photos_fast  # noqa: E402  (the checkout importable)
from gpu_detection_check import bare as detection_bare  # noqa: E402
from gpu_detection_check import trial as detection_trial  # noqa: E402
from gpu_detection_check import write_images  # noqa: E402

from automl_images.trainer import batch_augment, prepared  # noqa: E402

CLASSIFIERS = ("resnet18", "resnet50")
DETECTOR = ("image-object-detection", "fasterrcnn_resnet50_fpn", 8, {})
EPOCHS = 3


# The classifiers' trials: (prepared images, augmentation on the GPU) of each variant.
CLASSIFIER_VARIANTS = {"direct": (False, False), "prepared": (True, False), "prepared+batch": (True, True)}


def with_prepared(on: bool, function, batch: bool | None = None):
    """`function()` with the prepared images turned on or off, and with the batch augmentation
    turned on or off (None: the trainer's default)."""
    settings = {prepared.PREPARED_ENV: "1" if on else "0"}
    if batch is not None:
        settings[batch_augment.BATCH_AUGMENT_ENV] = "1" if batch else "0"
    os.environ.update(settings)
    try:
        return function()
    finally:
        for name in settings:
            os.environ.pop(name, None)


def classifier_trial(folder: str, model_name: str, train: str, val: str, variant: str) -> dict:
    name = f"{model_name}-{variant.replace('+', '-')}"
    on, batch = CLASSIFIER_VARIANTS[variant]
    status, metrics, seconds = with_prepared(on, lambda: trial(folder, name, train, val, model_name, EPOCHS), batch)
    return {"status": status["status"], "error": status.get("error"),
            "images_per_second": [round(m["images_per_second"], 1) for m in metrics], "wall_s": round(seconds, 1)}


def ratio_line(name: str, bare_rate: float, variants=("direct", "prepared")) -> None:
    for variant in variants:
        rate = (RESULTS.get(f"trainer {name} {variant}", {}).get("images_per_second") or [0])[-1]
        RESULTS[f"ratio {name} {variant}"] = rate / bare_rate if bare_rate else None
        print(f"== ratio {name} {variant}: trainer last epoch {rate:.0f} img/s / bare {bare_rate:.0f} img/s = "
              f"{rate / bare_rate if bare_rate else 0:.3f} (goal >= 0.9)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=3072, help="classification training images")
    parser.add_argument("--detection-images", type=int, default=512)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs", flush=True)
    torch.backends.cudnn.benchmark = True
    folder = tempfile.mkdtemp(prefix="gpu-ratio-")
    os.environ["AUTOML_IMAGES_IMAGE_CACHE"] = os.path.join(folder, "cache")
    section("data", lambda: dict(zip(("train", "val"), write_photos_fast(folder, args.images, 256), strict=True)))
    train, val = RESULTS["data"]["train"], RESULTS["data"]["val"]
    for model_name in CLASSIFIERS:
        section(f"bare {model_name}", lambda m=model_name: {"images_per_second": round(bare(m, True), 1)})
        for variant in CLASSIFIER_VARIANTS:
            section(f"trainer {model_name} {variant}",
                    lambda m=model_name, v=variant: classifier_trial(folder, m, train, val, v))
        ratio_line(model_name, RESULTS[f"bare {model_name}"].get("images_per_second") or 0, tuple(CLASSIFIER_VARIANTS))

    task, model_name, batch, settings = DETECTOR
    detection = os.path.join(folder, "detection")
    os.makedirs(detection)
    section("detection data", lambda: dict(zip(("train", "val"), write_images(detection, args.detection_images),
                                               strict=True)))
    dtrain, dval = RESULTS["detection data"]["train"], RESULTS["detection data"]["val"]
    section(f"bare {model_name}", lambda: {"images_per_second": round(detection_bare(task, model_name, batch, settings,
                                                                                        dtrain), 1)})
    for on in (False, True):
        # One folder per variant: detection_trial names the trial after the model.
        variant_folder = os.path.join(detection, "prepared" if on else "direct")
        section(f"trainer {model_name} {'prepared' if on else 'direct'}", lambda on=on, f=variant_folder: with_prepared(
            on, lambda: detection_trial(f, task, model_name, batch, settings, dtrain, dval)))
    ratio_line(model_name, RESULTS[f"bare {model_name}"].get("images_per_second") or 0)
    with open(os.path.join(args.out, "gpu_trainer_ratio.json"), "w") as f:
        json.dump(RESULTS, f, indent=2, default=str)


if __name__ == "__main__":
    main()
