"""Detection metrics (`trainer/detection_metrics.py`): VOC against an independent computation written
here, COCO against pycocotools run directly on the same data (bbox and segm, crowds included)."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from coco_reference import pycocotools_stats

from automl_images.controller import cli
from automl_images.core.detection_labels import DetectionObject
from automl_images.trainer.detection_metrics import ImageResult, coco, detection_metrics, voc

CLASSES = ("can", "carton", "milk")


def _box(rng, min_side=0.05):
    x0, y0 = rng.uniform(0, 0.8), rng.uniform(0, 0.8)
    return (x0, y0, min(1.0, x0 + rng.uniform(min_side, 0.5)), min(1.0, y0 + rng.uniform(min_side, 0.5)))


def _polygon(box):
    x0, y0, x1, y1 = box    # a pentagon inside the box, touching its four sides
    return ((x0, y0), (x1, y0), (x1, (y0 + y1) / 2), ((x0 + x1) / 2, y1), (x0, (y0 + y1) / 2))


def _flat(points):
    return tuple(c for p in points for c in p)


def synthetic(seed=0, n_images=12, segmentation=False):
    """Images with objects of three classes (some crowds), and predictions: jittered copies of most
    objects (some with the wrong class), plus random false positives."""
    rng = random.Random(seed)
    images = []
    for _ in range(n_images):
        width, height = rng.choice([(64, 48), (640, 480), (300, 500)])
        truth, predicted = [], []
        for _ in range(rng.randint(0, 5)):
            box = _box(rng)
            polygons = (_flat(_polygon(box)),) if segmentation else ()
            truth.append(DetectionObject(rng.choice(CLASSES), box, rng.random() < 0.15, polygons))
        for obj in truth:
            if rng.random() < 0.8:
                j = lambda v: min(1.0, max(0.0, v + rng.uniform(-0.04, 0.04)))
                x0, y0, x1, y1 = obj.box
                box = (j(x0), j(y0), max(j(x1), j(x0) + 0.01), max(j(y1), j(y0) + 0.01))
                box = tuple(min(1.0, v) for v in box)
                label = obj.label if rng.random() < 0.85 else rng.choice(CLASSES)
                predicted.append(DetectionObject(label, box, polygons=(_flat(_polygon(box)),) if segmentation else (),
                                                 score=round(rng.random(), 2)))
        for _ in range(rng.randint(0, 3)):
            box = _box(rng)
            predicted.append(DetectionObject(rng.choice(CLASSES), box, polygons=(_flat(_polygon(box)),)
                                             if segmentation else (), score=round(rng.random(), 2)))
        images.append(ImageResult(width, height, truth, predicted))
    return images


# -- VOC: an independent computation ---------------------------------------------------------------

def _iou(a, b, crowd):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    union = area_a if crowd else area_a + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _pixels(box, w, h):
    return (box[0] * w, box[1] * h, box[2] * w, box[3] * h)


def reference_voc(images, score_threshold):
    """Greedy matching in plain loops, and AP as the mean over objects of the best precision at or
    after each true positive's rank: the area under the all-point interpolated curve."""
    result = {}
    for cls in CLASSES:
        detections, n_objects = [], 0
        for k, im in enumerate(images):
            n_objects += sum(1 for o in im.truth if o.label == cls and not o.is_crowd)
            for o in im.predicted:
                if o.label == cls:
                    detections.append((o.score, k, o))
        if n_objects == 0:
            continue
        # per image, in descending score order (stable), as COCO matches
        outcome = {}
        for k, im in enumerate(images):
            mine = sorted([d for d in detections if d[1] == k], key=lambda d: -d[0])
            taken = set()
            for d in mine:
                best, best_iou = None, 0.5
                for g, o in enumerate(im.truth):
                    if o.label != cls or o.is_crowd or g in taken:
                        continue
                    iou = _iou(_pixels(d[2].box, im.width, im.height), _pixels(o.box, im.width, im.height), False)
                    if iou >= best_iou and (best is None or iou > best_iou):
                        best, best_iou = g, iou
                if best is not None:
                    taken.add(best)
                    outcome[id(d[2])] = True
                elif any(o.label == cls and o.is_crowd and _iou(_pixels(d[2].box, im.width, im.height),
                                                                   _pixels(o.box, im.width, im.height), True) >= 0.5
                         for o in im.truth):
                    outcome[id(d[2])] = None
                else:
                    outcome[id(d[2])] = False
        ranked = [d for d in sorted(detections, key=lambda d: -d[0]) if outcome[id(d[2])] is not None]
        hits = [outcome[id(d[2])] for d in ranked]
        precisions = [sum(hits[:i + 1]) / (i + 1) for i in range(len(hits))]
        ap = sum(max(precisions[i:]) for i in range(len(hits)) if hits[i]) / n_objects
        shown = [outcome[id(d[2])] for d in ranked if d[0] >= score_threshold]
        result[cls] = (ap, sum(shown) / len(shown) if shown else None, sum(shown) / n_objects)
    return result


@pytest.mark.parametrize("seed", range(5))
def test_voc_equals_an_independent_computation(seed):
    images = synthetic(seed)
    ours = voc(images, score_threshold=0.4)
    expected = reference_voc(images, 0.4)
    assert set(ours["per_class"]) == set(expected)
    for cls, (ap, precision, recall) in expected.items():
        got = ours["per_class"][cls]
        assert got["average_precision"] == pytest.approx(ap, abs=1e-9)
        assert got["recall"] == pytest.approx(recall, abs=1e-9)
        assert (got["precision"] is None) == (precision is None)
        if precision is not None:
            assert got["precision"] == pytest.approx(precision, abs=1e-9)
    assert ours["voc_map"] == pytest.approx(np.mean([v[0] for v in expected.values()]), abs=1e-9)


@pytest.mark.parametrize("batch_elements", [1, 40])
def test_voc_the_same_whatever_the_batches(monkeypatch, batch_elements):
    """Images are matched in runs (one padded array each): any split gives the same figures."""
    from automl_images.trainer import detection_metrics
    images = synthetic(7, n_images=20) + synthetic(8, n_images=5, segmentation=True)
    whole = voc(images), voc(images[20:], segmentation=True)
    monkeypatch.setattr(detection_metrics, "_BATCH_ELEMENTS", batch_elements)
    assert (voc(images), voc(images[20:], segmentation=True)) == whole


def test_voc_by_hand():
    gt = [DetectionObject("a", (0.0, 0.0, 0.5, 0.5)), DetectionObject("a", (0.5, 0.5, 1.0, 1.0)),
          DetectionObject("a", (0.0, 0.5, 0.5, 1.0), is_crowd=True)]
    dt = [DetectionObject("a", (0.0, 0.0, 0.5, 0.5), score=0.9),       # TP
          DetectionObject("a", (0.0, 0.0, 0.5, 0.5), score=0.8),       # duplicate: FP
          DetectionObject("a", (0.1, 0.6, 0.4, 0.9), score=0.7),       # inside the crowd: ignored
          DetectionObject("a", (0.5, 0.5, 1.0, 1.0), score=0.2)]       # TP, below the threshold
    out = detection_metrics([ImageResult(100, 100, gt, dt)], "voc", score_threshold=0.3)
    # ranks: TP (p=1, r=.5), FP, TP (p=2/3, r=1) -> AP = .5 * 1 + .5 * 2/3
    assert out["mean_average_precision"] == pytest.approx(0.5 + 1 / 3)
    assert out["per_class"]["a"]["precision"] == pytest.approx(0.5)      # 0.9 TP, 0.8 FP
    assert out["per_class"]["a"]["recall"] == pytest.approx(0.5)
    empty = detection_metrics([ImageResult(10, 10, gt, [])], "coco_voc")
    assert empty["mean_average_precision"] == 0.0 and empty["coco_map"] == 0.0


def test_unknown_metric_type():
    with pytest.raises(ValueError, match="voc, coco, coco_voc"):
        detection_metrics([], "map")


# -- COCO: pycocotools on the same data ------------------------------------------------------------

@pytest.mark.parametrize("segmentation", [False, True], ids=["bbox", "segm"])
@pytest.mark.parametrize("seed", range(3))
def test_coco_equals_pycocotools(seed, segmentation, capsys):
    images = synthetic(seed, n_images=15, segmentation=segmentation)
    ours = coco(images, segmentation=segmentation)
    expected = pycocotools_stats(images, segmentation)
    for (name, value), reference in zip(ours.items(), expected):
        assert (-1.0 if value is None else value) == pytest.approx(reference, abs=1e-6), name


@pytest.mark.parametrize("segmentation", [False, True], ids=["bbox", "segm"])
def test_coco_equals_pycocotools_past_100_predictions(segmentation, capsys):
    """More than COCO's 100 predictions per image and class: only the best 100 count."""
    rng = random.Random(3)
    images = []
    for _ in range(3):
        truth = [DetectionObject("can", box, rng.random() < 0.1, (_flat(_polygon(box)),) if segmentation else ())
                 for box in (_box(rng) for _ in range(12))]
        predicted = [DetectionObject("can", box, polygons=(_flat(_polygon(box)),) if segmentation else (),
                                     score=round(rng.random(), 2)) for box in (_box(rng) for _ in range(130))]
        images.append(ImageResult(80, 60, truth, predicted))
    ours = coco(images, segmentation=segmentation)
    for (name, value), reference in zip(ours.items(), pycocotools_stats(images, segmentation)):
        assert (-1.0 if value is None else value) == pytest.approx(reference, abs=1e-6), name


def test_objects_of_several_polygons(capsys):
    """An object's polygons are one mask (merged), labelled or predicted, as COCO's annToRLE."""
    def split(obj, k):
        x0, y0, x1, y1 = obj.box        # the bottom left corner, which _polygon leaves out
        corner = (x0, y1, x0, y1 - (y1 - y0) / 4, x0 + (x1 - x0) / 4, y1)
        return DetectionObject(obj.label, obj.box, obj.is_crowd, obj.polygons + (corner,) * (k % 2), obj.score)
    images = [ImageResult(im.width, im.height, [split(o, k) for k, o in enumerate(im.truth)],
                          [split(o, k + 1) for k, o in enumerate(im.predicted)])
              for im in synthetic(5, n_images=15, segmentation=True)]
    for (name, value), reference in zip(coco(images, segmentation=True).items(), pycocotools_stats(images, True)):
        assert (-1.0 if value is None else value) == pytest.approx(reference, abs=1e-6), name


def test_coco_voc_reports_both_and_voc_is_primary():
    images = synthetic(1)
    both = detection_metrics(images, "coco_voc")
    only_coco = detection_metrics(images, "coco")
    assert both["mean_average_precision"] == both["voc_map"]
    assert only_coco["mean_average_precision"] == only_coco["coco_map"] == both["coco_map"]
    assert "voc_map" not in only_coco and "per_class" in only_coco
    assert math.isfinite(both["coco_map_50"])


def test_segmentation_masks_from_the_model():
    """A model's binary masks score the same as the polygons they were drawn from."""
    from faster_coco_eval.core import mask as mask_utils
    images = synthetic(2, n_images=6, segmentation=True)
    with_masks = []
    for im in images:
        masks = []
        for obj in im.predicted:
            poly = [[c * (im.width if i % 2 == 0 else im.height) for i, c in enumerate(p)] for p in obj.polygons]
            masks.append(mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, im.height, im.width))))
        with_masks.append(ImageResult(im.width, im.height, im.truth, im.predicted, masks))
    assert coco(with_masks, segmentation=True) == coco(images, segmentation=True)
    assert voc(with_masks, segmentation=True) == voc(images, segmentation=True)


# -- automl-images evaluate ------------------------------------------------------------------------

def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _line(obj, scored):
    out = {"label": obj.label, "topX": obj.box[0], "topY": obj.box[1], "bottomX": obj.box[2],
           "bottomY": obj.box[3]}
    if scored:
        out["score"] = obj.score
    else:
        out["isCrowd"] = "true" if obj.is_crowd else "false"      # as the reference writes it
    if obj.polygons:
        out["polygon"] = [list(p) for p in obj.polygons]
    return out


@pytest.mark.parametrize("segmentation", [False, True], ids=["od", "is"])
def test_cli_evaluates_detection_files(tmp_path, capsys, segmentation):
    images = synthetic(4, n_images=8, segmentation=segmentation)
    labels = _write(tmp_path / "labels.jsonl", [
        {"image_url": f"i/{k}.png", "image_details": {"width": f"{im.width}px", "height": im.height},
         "label": [_line(o, False) for o in im.truth]} for k, im in enumerate(images)])
    predictions = _write(tmp_path / "predictions.jsonl", [
        {"image_url": f"i/{k}.png", "label": [_line(o, True) for o in im.predicted]}
        for k, im in reversed(list(enumerate(images)))])
    task = "image-instance-segmentation" if segmentation else "image-object-detection"
    code = cli.main(["evaluate", "--task", task, "--labels", labels, "--predictions", predictions,
                     "--metric-type", "coco_voc"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    expected = detection_metrics(images, "coco_voc", segmentation=segmentation)
    assert out["mean_average_precision"] == pytest.approx(expected["mean_average_precision"], abs=1e-9)
    assert out["coco_map"] == pytest.approx(expected["coco_map"], abs=1e-9)
    assert out["metric_type"] == "coco_voc" and out["task"] == task


def test_cli_detection_problems_and_image_size_from_the_file(tmp_path, capsys):
    from PIL import Image
    (tmp_path / "i").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "i" / "a.png")
    box = {"label": "can", "topX": 0.1, "topY": 0.1, "bottomX": 0.5, "bottomY": 0.5}
    labels = _write(tmp_path / "labels.jsonl", [{"image_url": "i/a.png", "label": [box]},
                                                {"image_url": "i/b.png", "label": [box]}])
    predictions = _write(tmp_path / "p.jsonl", [{"image_url": "i/a.png", "label": [{**box, "score": 0.9}]},
                                                {"image_url": "i/b.png", "label": [box]}])
    code = cli.main(["evaluate", "--task", "image-object-detection", "--labels", labels,
                     "--predictions", predictions, "--metric-type", "coco"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{labels}:2: field 'image_details': no width and height" in err       # b.png does not exist
    assert f"{predictions}:2: field 'label': object 0: field 'score': missing" in err
    # voc needs no size; a.png's size is read from the file for coco
    predictions = _write(tmp_path / "p.jsonl", [{"image_url": "i/a.png", "label": [{**box, "score": 0.9}]},
                                                {"image_url": "i/b.png", "label": []}])
    assert cli.main(["evaluate", "--task", "image-object-detection", "--labels", labels,
                     "--predictions", predictions]) == 0
    assert json.loads(capsys.readouterr().out)["mean_average_precision"] == pytest.approx(0.5)
    labels = _write(tmp_path / "labels.jsonl", [{"image_url": "i/a.png", "label": [box]}])
    predictions = _write(tmp_path / "p.jsonl", [{"image_url": "i/a.png", "label": [{**box, "score": 0.9}]}])
    assert cli.main(["evaluate", "--task", "image-object-detection", "--labels", labels,
                     "--predictions", predictions, "--metric-type", "coco"]) == 0
    assert json.loads(capsys.readouterr().out)["coco_map"] == pytest.approx(1.0)
    assert cli.main(["evaluate", "--task", "image-object-detection", "--labels", labels,
                     "--predictions", predictions, "--metric-type", "none"]) == 2


def test_per_class_detail_is_capped_at_the_classes_of_lowest_ap():
    """10,000 classes: the epoch's metrics file lists the MAX_PER_CLASS classes of lowest AP (where to
    look) and counts the others; mAP is still over every class."""
    from automl_images.core.storage import json_bytes
    from automl_images.trainer.metrics import MAX_PER_CLASS

    k = 10_000
    box = (0.1, 0.1, 0.5, 0.5)
    images = [ImageResult(64, 64, [DetectionObject(f"c{i:05d}", box)],
                          [DetectionObject(f"c{i:05d}", box, score=0.9)] if i % 4 else [])  # every 4th missed
              for i in range(k)]
    out = detection_metrics(images, "voc")
    assert out["mean_average_precision"] == pytest.approx(0.75)
    assert len(out["per_class"]) == MAX_PER_CLASS and out["per_class_omitted"] == k - MAX_PER_CLASS
    assert list(out["per_class"]) == [f"c{i:05d}" for i in range(0, 4 * MAX_PER_CLASS, 4)]  # AP 0, class order
    assert len(json_bytes(out)) < 100_000
