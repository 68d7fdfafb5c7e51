"""Object detection and instance segmentation metrics; `mean_average_precision` is the primary one.

    metric_type  mean_average_precision is              also reported
    voc          VOC mAP: per-class AP at IoU 0.5,       per_class AP
                 all-point interpolation, averaged
                 over the classes with objects
    coco         COCO AP@[.50:.95] (faster-coco-eval,    coco_map_50, coco_map_75, coco_map_small/medium/
                 the same figures as pycocotools)        large, coco_mar_1/10/100, coco_mar_small/medium/large
    coco_voc     VOC mAP                                 both of the above

Every metric type also reports, per class and averaged over classes, `precision` and `recall` of the
predictions scoring at least `score_threshold` (IoU 0.5): what the model shows a user at that
threshold. Instance segmentation compares masks (COCO `segm`, run-length encoded), detection boxes.

isCrowd objects are handled as COCO does, in both: a prediction is matched to the best unmatched
ordinary object of its class with IoU >= the threshold; failing that, one that covers a crowd object
(the crowd's IoU is intersection over the prediction's area) is ignored, neither a true nor a false
positive; crowd objects are never counted among the objects to find. VOC matching therefore follows
COCO's (best *unmatched* object) rather than the VOC devkit's (best object, a false positive if
already taken), and has no per-image detection limit. Coordinates are normalised in the labels
(`core/detection_labels.py`) and scaled to pixels here: COCO's small/medium/large are pixel areas.

Both evaluations start from one pass over the images (`_dataset`): boxes in pixels, class indices and,
for segmentation, each mask run-length encoded and, per image, the masks' IoUs, all computed once.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from automl_images.core.detection_labels import DetectionObject

from .metrics import MAX_PER_CLASS

METRIC_TYPES = ("voc", "coco", "coco_voc")
VOC_IOU = 0.5
COCO_STATS = ("coco_map", "coco_map_50", "coco_map_75", "coco_map_small", "coco_map_medium",
              "coco_map_large", "coco_mar_1", "coco_mar_10", "coco_mar_100", "coco_mar_small",
              "coco_mar_medium", "coco_mar_large")
# The VOC matching holds a run of images' IoUs in one padded array (images x predictions x objects),
# of at most this many elements (a few such arrays: tens of MB).
_BATCH_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class ImageResult:
    """One image: its size in pixels, its labelled objects, and the predicted ones (with scores).
    `predicted_masks` (segmentation, optional): a binary HxW array per predicted object, used instead
    of the predictions' polygons (a model's masks)."""
    width: int
    height: int
    truth: Sequence[DetectionObject]
    predicted: Sequence[DetectionObject]
    predicted_masks: Sequence[np.ndarray] | None = None


# -- the objects, computed once for both evaluations ----------------------------------------------

def _mask_module():
    from faster_coco_eval.core import mask  # imported here: the box metrics need none of it
    return mask


def _polygon_rles(objects: Sequence[DetectionObject], image: ImageResult) -> list[dict[str, Any]]:
    """Each object's polygons, scaled to pixels, as one run-length encoded mask (COCO's annToRLE: the
    polygons' masks merged). All the image's polygons are encoded in one call."""
    mask, scale = _mask_module(), (image.width, image.height)
    polygons = [[c * s for c, s in zip(p, itertools.cycle(scale))] for o in objects for p in o.polygons]
    rles = iter(mask.frPyObjects(polygons, image.height, image.width) if polygons else ())
    out = []
    for o in objects:
        parts = [next(rles) for _ in o.polygons]
        out.append(parts[0] if len(parts) == 1 else mask.merge(parts))   # merging one changes nothing
    return out


def _predicted_rles(image: ImageResult) -> list[dict[str, Any]]:
    if image.predicted_masks is None:
        return _polygon_rles(image.predicted, image)
    mask = _mask_module()
    return [mask.encode(np.asfortranarray(np.asarray(m, dtype=np.uint8))) for m in image.predicted_masks]


@dataclass(frozen=True)
class _Objects:
    """The labelled, or the predicted, objects of all the images, one after another in image order."""
    start: np.ndarray                       # image k's objects are [start[k], start[k + 1])
    image: np.ndarray                       # each object's image
    label: np.ndarray                       # index into the sorted class names
    box: np.ndarray                         # COCO's [x, y, width, height] in pixels
    crowd: np.ndarray
    score: np.ndarray                       # 0 where None (and for every labelled object)
    rles: list[dict[str, Any]] | None       # segmentation: each object's mask, run-length encoded


def _objects(images: Sequence[ImageResult], per_image: list[Sequence[DetectionObject]],
             label_index: dict[str, int], rles: list[dict[str, Any]] | None) -> _Objects:
    counts = [len(objects) for objects in per_image]
    flat = [o for objects in per_image for o in objects]
    size = np.repeat(np.array([(im.width, im.height) for im in images], dtype=np.float64).reshape(-1, 2),
                     counts, axis=0)
    corners = np.array([o.box for o in flat], dtype=np.float64).reshape(-1, 4)
    return _Objects(
        start=np.concatenate(([0], np.cumsum(counts, dtype=np.int64))),
        image=np.repeat(np.arange(len(images)), counts),
        label=np.array([label_index[o.label] for o in flat], dtype=np.int64),
        box=np.concatenate((corners[:, :2], corners[:, 2:] - corners[:, :2]), axis=1) * np.tile(size, 2),
        crowd=np.array([o.is_crowd for o in flat], dtype=bool),
        score=np.array([o.score or 0.0 for o in flat], dtype=np.float64),
        rles=rles)


@dataclass(frozen=True)
class _Dataset:
    images: Sequence[ImageResult]
    segmentation: bool
    classes: list[str]
    truth: _Objects
    predicted: _Objects
    mask_ious: list[np.ndarray] | None      # segmentation: per image, its predictions x its objects


def _mask_ious(truth: _Objects, predicted: _Objects) -> list[np.ndarray]:
    """Per image, the IoU of each predicted mask with each labelled one (crowds: as COCO)."""
    iou, crowd, out = _mask_module().iou, truth.crowd.astype(int).tolist(), []
    for k in range(len(truth.start) - 1):
        objects = slice(truth.start[k], truth.start[k + 1])
        d, g = predicted.rles[predicted.start[k]:predicted.start[k + 1]], truth.rles[objects]
        ious = iou(d, g, crowd[objects]) if d and g else []
        out.append(np.asarray(ious, dtype=np.float64).reshape(len(d), len(g)))
    return out


def _dataset(images: Sequence[ImageResult], segmentation: bool) -> _Dataset:
    """Boxes in pixels, class indices and (segmentation) each mask's RLE and the masks' IoUs: computed
    once, here, for both the VOC and the COCO evaluation."""
    classes = sorted({o.label for im in images for o in (*im.truth, *im.predicted)})
    index = {c: k for k, c in enumerate(classes)}
    truth_rles = [r for im in images for r in _polygon_rles(im.truth, im)] if segmentation else None
    predicted_rles = [r for im in images for r in _predicted_rles(im)] if segmentation else None
    truth = _objects(images, [im.truth for im in images], index, truth_rles)
    predicted = _objects(images, [im.predicted for im in images], index, predicted_rles)
    return _Dataset(images, segmentation, classes, truth, predicted,
                    _mask_ious(truth, predicted) if segmentation else None)


# -- VOC -------------------------------------------------------------------------------------------

def average_precision(tp: Sequence[bool], num_objects: int) -> float:
    """All-point interpolated AP of detections sorted by descending score (True: a true positive)."""
    if num_objects == 0:
        return float("nan")
    tp = np.asarray(tp, dtype=np.float64)
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(1.0 - tp)
    recall = tp_cum / num_objects
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]           # the precision envelope
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of every prediction with every object, boxes as x, y, w, h: dt (..., D, 4) and gt (..., G, 4)
    give (..., D, G). For a crowd object (crowd: (..., G)), intersection over the prediction's area (as
    COCO)."""
    dx0, dy0, dw, dh = (dt[..., :, None, k] for k in range(4))
    gx0, gy0, gw, gh = (gt[..., None, :, k] for k in range(4))
    iw = np.clip(np.minimum(dx0 + dw, gx0 + gw) - np.maximum(dx0, gx0), 0, None)
    ih = np.clip(np.minimum(dy0 + dh, gy0 + gh) - np.maximum(dy0, gy0), 0, None)
    inter = iw * ih
    d_area, g_area = dw * dh, gw * gh
    union = np.where(crowd[..., None, :], d_area, d_area + g_area - inter)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _batches(n_dt: np.ndarray, n_gt: np.ndarray) -> Iterator[tuple[int, int, int, int]]:
    """Runs of images [a, b) matched together, with the most predictions and the most objects of one
    of them: their IoUs, padded to those, stay within _BATCH_ELEMENTS (or one image per run)."""
    a, most_dt, most_gt = 0, 0, 0
    for k, (d, g) in enumerate(zip(n_dt.tolist(), n_gt.tolist())):
        if k > a and (k + 1 - a) * max(most_dt, d) * max(most_gt, g) > _BATCH_ELEMENTS:
            yield a, k, most_dt, most_gt
            a, most_dt, most_gt = k, 0, 0
        most_dt, most_gt = max(most_dt, d), max(most_gt, g)
    if len(n_dt):
        yield a, len(n_dt), most_dt, most_gt


def _match(data: _Dataset, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Whether each prediction is a true positive, and whether it is ignored (it covers a crowd). Each
    image's predictions take objects greedily in descending score order, as in the module docstring.
    Predictions of different classes never compete for an object, nor do different images, so all
    the classes of a run of images are matched at once, in arrays indexed (image, the prediction's
    rank in its image, object), padded to the run's largest image."""
    truth, predicted = data.truth, data.predicted
    # by image, then descending score; stable, so ties keep their order (as COCO's mergesort)
    order = np.lexsort((-predicted.score, predicted.image))
    rank = np.arange(len(order)) - predicted.start[predicted.image[order]]
    hit, ignored = np.zeros(len(order), dtype=bool), np.zeros(len(order), dtype=bool)
    for a, b, most_dt, most_gt in _batches(np.diff(predicted.start), np.diff(truth.start)):
        if not most_dt or not most_gt:
            continue                                         # nothing to match: no true positive
        ranked = slice(predicted.start[a], predicted.start[b])
        dts, d_at = order[ranked], (predicted.image[order[ranked]] - a, rank[ranked])
        gts = np.arange(truth.start[a], truth.start[b])
        g_at = (truth.image[gts] - a, gts - truth.start[truth.image[gts]])
        n = b - a
        dt_label, gt_label = np.full((n, most_dt), -1), np.full((n, most_gt), -2)   # padding: no class
        dt_label[d_at], gt_label[g_at] = predicted.label[dts], truth.label[gts]
        crowd = np.zeros((n, most_gt), dtype=bool)
        crowd[g_at] = truth.crowd[gts]
        if data.segmentation:
            ious = np.zeros((n, most_dt, most_gt))
            for k in range(a, b):
                image_ious = data.mask_ious[k]
                ious[k - a, :image_ious.shape[0], :image_ious.shape[1]] = \
                    image_ious[order[predicted.start[k]:predicted.start[k + 1]] - predicted.start[k]]
        else:
            dt_box, gt_box = np.zeros((n, most_dt, 4)), np.zeros((n, most_gt, 4))
            dt_box[d_at], gt_box[g_at] = predicted.box[dts], truth.box[gts]
            ious = _box_iou(dt_box, gt_box, crowd)
        over = (dt_label[:, :, None] == gt_label[:, None, :]) & (ious >= iou_threshold)
        covers_crowd = (over & crowd[:, None, :]).any(axis=2)
        eligible = over & ~crowd[:, None, :]
        taken, matched = np.zeros((n, most_gt), dtype=bool), np.zeros((n, most_dt), dtype=bool)
        rows = np.arange(n)
        for r in range(most_dt):                             # every image's r-th best prediction at once
            free = eligible[:, r] & ~taken
            best = np.argmax(np.where(free, ious[:, r], -1.0), axis=1)   # the first of equals, as COCO
            matched[:, r] = free[rows, best]
            taken[rows[matched[:, r]], best[matched[:, r]]] = True
        hit[dts] = matched[d_at]
        ignored[dts] = ~matched[d_at] & covers_crowd[d_at]
    return hit, ignored


def _voc(data: _Dataset, score_threshold: float, iou_threshold: float) -> dict[str, Any]:
    hit, ignored = _match(data, iou_threshold)
    truth, predicted = data.truth, data.predicted
    num_objects = np.bincount(truth.label[~truth.crowd], minlength=len(data.classes)).tolist()
    # by class, then descending score; stable, so ties keep image order (then each image's own order)
    order = np.lexsort((-predicted.score, predicted.label))
    order = order[~ignored[order]]
    class_start = np.searchsorted(predicted.label[order], np.arange(len(data.classes) + 1))
    per_class: dict[str, dict[str, float | None]] = {}
    for k, cls in enumerate(data.classes):
        if num_objects[k] == 0:
            continue                                         # no object to find: no AP (as VOC)
        ranked = order[class_start[k]:class_start[k + 1]]
        shown = hit[ranked][predicted.score[ranked] >= score_threshold]
        found = int(shown.sum())
        per_class[cls] = {
            "average_precision": average_precision(hit[ranked], num_objects[k]),
            "precision": found / len(shown) if len(shown) else None,
            "recall": found / num_objects[k],
        }
    aps = [c["average_precision"] for c in per_class.values()]
    precisions = [c["precision"] for c in per_class.values() if c["precision"] is not None]
    recalls = [c["recall"] for c in per_class.values()]
    return {
        "voc_map": float(np.mean(aps)) if aps else 0.0,
        "precision": float(np.mean(precisions)) if precisions else 0.0,
        "recall": float(np.mean(recalls)) if recalls else 0.0,
        **_listed(per_class),
    }


def _listed(per_class: dict[str, dict[str, float | None]]) -> dict[str, Any]:
    """`per_class` for at most MAX_PER_CLASS classes, those of lowest AP when there are more (ties:
    class order), and how many were left out: bounded epoch files, as for classification."""
    if len(per_class) <= MAX_PER_CLASS:
        return {"per_class": per_class}
    worst = set(sorted(per_class, key=lambda cls: per_class[cls]["average_precision"])[:MAX_PER_CLASS])
    return {"per_class": {cls: row for cls, row in per_class.items() if cls in worst},
            "per_class_omitted": len(per_class) - MAX_PER_CLASS}


def voc(images: Sequence[ImageResult], *, segmentation: bool = False, score_threshold: float = 0.3,
        iou_threshold: float = VOC_IOU) -> dict[str, Any]:
    """VOC mAP and, per class, AP and precision / recall at `score_threshold`."""
    return _voc(_dataset(images, segmentation), score_threshold, iou_threshold)


# -- COCO ------------------------------------------------------------------------------------------

def _annotations(objects: _Objects, segmentation: bool, predicted: bool) -> list[dict[str, Any]]:
    """The objects as COCO annotations. A prediction's are what COCO's loadRes makes of a result (not a
    crowd; with a mask, the mask's area and bounding box), here from one call over all the masks
    rather than loadRes's one per result."""
    boxes = objects.box
    if segmentation:
        mask = _mask_module()
        areas = np.asarray(mask.area(objects.rles), dtype=np.float64)
        if predicted:
            boxes = np.asarray(mask.toBbox(objects.rles), dtype=np.float64).reshape(-1, 4)
    else:
        areas = boxes[:, 2] * boxes[:, 3]
    annotations = [{"id": k + 1, "image_id": image + 1, "category_id": label + 1, "bbox": box, "area": area,
                    "iscrowd": int(crowd)}
                   for k, (image, label, box, area, crowd) in enumerate(zip(
                       objects.image.tolist(), objects.label.tolist(), boxes.tolist(), areas.tolist(),
                       objects.crowd.tolist()))]
    for annotation, rle in zip(annotations, objects.rles if segmentation else ()):
        annotation["segmentation"] = rle
    if predicted:
        for annotation, score in zip(annotations, objects.score.tolist()):
            annotation["score"] = score
    return annotations


def _coco_inputs(data: _Dataset) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ground truth dataset and the results list, as COCO's tools take them (the results already as
    loadRes completes them)."""
    return ({"images": [{"id": k + 1, "width": im.width, "height": im.height}
                        for k, im in enumerate(data.images)],
             "categories": [{"id": k + 1, "name": c} for k, c in enumerate(data.classes)],
             "annotations": _annotations(data.truth, data.segmentation, predicted=False)},
            _annotations(data.predicted, data.segmentation, predicted=True))


def _coco_mask_ious(data: _Dataset, max_dets: int) -> Callable[[int, int], np.ndarray | list]:
    """COCOeval.computeIoU from the mask IoUs computed once: for an image and class, the IoUs of its
    best `max_dets` predictions (by descending score; stable, as COCO's mergesort) with its objects, or
    [] if it has none of either."""
    truth, predicted, n_classes = data.truth, data.predicted, len(data.classes)
    # each side's objects grouped by image and class (in image order; the predictions by score)
    gts = np.lexsort((truth.label, truth.image))
    dts = np.lexsort((-predicted.score, predicted.label, predicted.image))
    groups = np.arange(len(data.images) * n_classes + 1)
    gt_start = np.searchsorted(truth.image[gts] * n_classes + truth.label[gts], groups)
    dt_start = np.searchsorted(predicted.image[dts] * n_classes + predicted.label[dts], groups)

    def compute_iou(image_id: int, category_id: int) -> np.ndarray | list:
        image = image_id - 1
        group = image * n_classes + category_id - 1
        g = gts[gt_start[group]:gt_start[group + 1]] - truth.start[image]
        d = dts[dt_start[group]:dt_start[group + 1]][:max_dets] - predicted.start[image]
        return data.mask_ious[image][d][:, g] if len(d) and len(g) else []

    return compute_iou


def _coco(data: _Dataset) -> dict[str, float | None]:
    from faster_coco_eval import COCO, COCOeval_faster

    dataset, results = _coco_inputs(data)
    if not results:                                           # no prediction: nothing to rank
        return {name: 0.0 for name in COCO_STATS}
    truth = COCO(dataset)
    # the results are complete annotations already (_coco_inputs): no loadRes
    predicted = COCO({"images": dataset["images"], "categories": dataset["categories"], "annotations": results})
    evaluation = COCOeval_faster(truth, predicted, iouType="segm" if data.segmentation else "bbox",
                                 print_function=lambda *args, **kwargs: None)
    if data.segmentation:
        # The mask IoUs of _dataset are COCO's (the same mask.iou, pair by pair): COCOeval looks them
        # up through its per image and class hook rather than computing them again, so it needs no
        # RLEs decoded of its own, nor worker threads (faster-coco-eval 1.8, pinned; the tests compare
        # with pycocotools). Box IoUs it computes itself: ours need not match its C++ to the last bit.
        evaluation.params.compute_rle = False
        evaluation.computeIoU = _coco_mask_ious(data, max(evaluation.params.maxDets))
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return {name: (None if value < 0 else float(value)) for name, value in zip(COCO_STATS, evaluation.stats)}


def coco(images: Sequence[ImageResult], *, segmentation: bool = False) -> dict[str, float | None]:
    """COCO's twelve summary figures (None where COCO has none: -1, e.g. no large object)."""
    return _coco(_dataset(images, segmentation))


def detection_metrics(images: Sequence[ImageResult], metric_type: str = "voc", *, segmentation: bool = False,
                      score_threshold: float = 0.3, iou_threshold: float = VOC_IOU) -> dict[str, Any]:
    """Every metric of `metric_type` (see the module docstring), with `mean_average_precision`;
    `iou_threshold`: the VOC metrics' (Azure's validation_iou_threshold; COCO's are its own)."""
    if metric_type not in METRIC_TYPES:
        raise ValueError(f"metric type must be one of {', '.join(METRIC_TYPES)}, got {metric_type!r}")
    data = _dataset(images, segmentation)
    out: dict[str, Any] = _voc(data, score_threshold, iou_threshold)
    if metric_type in ("coco", "coco_voc"):
        out.update(_coco(data))
    if metric_type == "coco":
        out.pop("voc_map")
        out["mean_average_precision"] = out["coco_map"] or 0.0
    else:
        out["mean_average_precision"] = out["voc_map"]
    return out
