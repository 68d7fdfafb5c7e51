"""How long our COCO mAP evaluation takes against pycocotools alone, on the same detections.

    .venv/bin/python bench/map_eval_time.py              # 500 images, bbox and segm, 3 repeats (median shown)
    .venv/bin/python bench/map_eval_time.py --images 100 --repeats 1 --no-segm

500 images of 5 labelled objects (5 classes) and 20 detections each, seeded: jittered copies of the
objects (some with another class) and random boxes. "Ours" is `detection_metrics(images, "coco")`
end to end, as `automl-images evaluate` and the trainer call it: the VOC pass it always makes, the
conversion to pixels, and faster-coco-eval. "pycocotools" is the same data written as COCO dicts by
hand, COCO objects built, and COCOeval's evaluate, accumulate and summarize. Both must give the same
twelve figures (within 1e-6). Goal: ours at most 0.2 times pycocotools' time. segm runs on small
images (masks of at most 64 x 48 px), where pycocotools stays under a minute.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from automl_images.core.detection_labels import DetectionObject
from automl_images.trainer.detection_metrics import COCO_STATS, ImageResult, detection_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from coco_reference import pycocotools_stats  # noqa: E402

CLASSES = ("can", "carton", "milk_bottle", "water_bottle", "jar")
OBJECTS, DETECTIONS = 5, 20
BBOX_SIZE, SEGM_SIZE = (640, 480), (64, 48)
GOAL = 0.2
TOLERANCE = 1e-6


def _box(rng: random.Random) -> tuple[float, float, float, float]:
    x0, y0 = rng.uniform(0, 0.8), rng.uniform(0, 0.8)
    return x0, y0, min(1.0, x0 + rng.uniform(0.05, 0.4)), min(1.0, y0 + rng.uniform(0.05, 0.4))


def _pentagon(box: tuple[float, float, float, float]) -> tuple[float, ...]:
    x0, y0, x1, y1 = box    # inside the box, touching its four sides
    return (x0, y0, x1, y0, x1, (y0 + y1) / 2, (x0 + x1) / 2, y1, x0, (y0 + y1) / 2)


def synthetic(n_images: int, size: tuple[int, int], segmentation: bool, seed: int = 0) -> list[ImageResult]:
    rng = random.Random(seed)
    images = []
    for _ in range(n_images):
        truth = []
        for _ in range(OBJECTS):
            box = _box(rng)
            truth.append(DetectionObject(rng.choice(CLASSES), box, polygons=(_pentagon(box),) if segmentation else ()))
        predicted = []
        for k in range(DETECTIONS):
            if k < 2 * OBJECTS:            # two guesses at each object, some of another class
                obj = truth[k % OBJECTS]
                jitter = [min(1.0, max(0.0, v + rng.uniform(-0.04, 0.04))) for v in obj.box]
                box = (jitter[0], jitter[1], max(jitter[2], jitter[0] + 0.01), max(jitter[3], jitter[1] + 0.01))
                label = obj.label if rng.random() < 0.8 else rng.choice(CLASSES)
            else:
                box, label = _box(rng), rng.choice(CLASSES)
            box = tuple(min(1.0, v) for v in box)
            predicted.append(DetectionObject(label, box, polygons=(_pentagon(box),) if segmentation else (),
                                             score=round(rng.random(), 3)))
        images.append(ImageResult(*size, truth, predicted))
    return images


def ours(images: Sequence[ImageResult], segmentation: bool) -> list[float]:
    result = detection_metrics(images, "coco", segmentation=segmentation)
    return [-1.0 if result[name] is None else result[name] for name in COCO_STATS]


def pycocotools_alone(images: Sequence[ImageResult], segmentation: bool) -> list[float]:
    """The same data as COCO dicts in pixels, evaluated by pycocotools itself (the tests' reference)."""
    with contextlib.redirect_stdout(io.StringIO()):       # pycocotools prints its progress and summary
        return [float(v) for v in pycocotools_stats(images, segmentation)]


def timed(run: Callable[[], list[float]], repeats: int) -> tuple[float, list[float]]:
    """(median seconds, the stats of the last run)."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        stats = run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), stats


def measure(kind: str, images: Sequence[ImageResult], repeats: int) -> bool:
    segmentation = kind == "segm"
    ours_s, ours_stats = timed(lambda: ours(images, segmentation), repeats)
    reference_s, reference_stats = timed(lambda: pycocotools_alone(images, segmentation), repeats)
    difference = max(abs(a - b) for a, b in zip(ours_stats, reference_stats))
    ratio = ours_s / reference_s
    agree = difference <= TOLERANCE
    width, height = images[0].width, images[0].height
    print(f"[map_eval_time] {kind}, {len(images)} images of {width}x{height} px, {OBJECTS} objects and "
          f"{DETECTIONS} detections each: ours {ours_s:.2f} s, pycocotools {reference_s:.2f} s (medians of "
          f"{repeats}); ratio {ratio:.3f} (goal <= {GOAL}); the 12 stats differ by at most {difference:.1e} "
          f"({'agree' if agree else 'DISAGREE'}: tolerance {TOLERANCE:.0e}); mAP {ours_stats[0]:.4f}", flush=True)
    return agree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-segm", action="store_true", help="boxes only")
    args = parser.parse_args(argv)
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        print("[map_eval_time] pycocotools is not installed: pip install 'automl-images[dev]'", flush=True)
        return 1
    agree = measure("bbox", synthetic(args.images, BBOX_SIZE, segmentation=False), args.repeats)
    if not args.no_segm:
        agree &= measure("segm", synthetic(args.images, SEGM_SIZE, segmentation=True), args.repeats)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
