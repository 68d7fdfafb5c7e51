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
(`detection_labels.py`) and scaled to pixels here: COCO's small/medium/large are pixel areas.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .detection_labels import DetectionObject

METRIC_TYPES = ("voc", "coco", "coco_voc")
VOC_IOU = 0.5
COCO_STATS = ("coco_map", "coco_map_50", "coco_map_75", "coco_map_small", "coco_map_medium",
              "coco_map_large", "coco_mar_1", "coco_mar_10", "coco_mar_100", "coco_mar_small",
              "coco_mar_medium", "coco_mar_large")


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


# -- shapes ----------------------------------------------------------------------------------------

def _pixel_box(obj: DetectionObject, image: ImageResult) -> list[float]:
    """COCO's [x, y, width, height] in pixels."""
    x0, y0, x1, y1 = obj.box
    return [x0 * image.width, y0 * image.height, (x1 - x0) * image.width, (y1 - y0) * image.height]


def _pixel_polygons(obj: DetectionObject, image: ImageResult) -> list[list[float]]:
    scale = np.array([image.width, image.height], dtype=np.float64)
    return [list((np.asarray(p, dtype=np.float64).reshape(-1, 2) * scale).ravel()) for p in obj.polygons]


def _mask_module():
    from faster_coco_eval.core import mask   # imported here: the box metrics need none of it
    return mask


def _rle(obj: DetectionObject, image: ImageResult) -> dict[str, Any]:
    mask = _mask_module()
    rles = mask.frPyObjects(_pixel_polygons(obj, image), image.height, image.width)
    return mask.merge(rles)


def _predicted_rles(image: ImageResult) -> list[dict[str, Any]]:
    if image.predicted_masks is None:
        return [_rle(p, image) for p in image.predicted]
    mask = _mask_module()
    return [mask.encode(np.asfortranarray(np.asarray(m, dtype=np.uint8))) for m in image.predicted_masks]


def _box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of every prediction (rows) with every object (columns), boxes as x, y, w, h; for a crowd
    object, intersection over the prediction's area (as COCO)."""
    if not len(dt) or not len(gt):
        return np.zeros((len(dt), len(gt)))
    dx0, dy0, dx1, dy1 = dt[:, 0:1], dt[:, 1:2], dt[:, 0:1] + dt[:, 2:3], dt[:, 1:2] + dt[:, 3:4]
    gx0, gy0, gx1, gy1 = gt[:, 0], gt[:, 1], gt[:, 0] + gt[:, 2], gt[:, 1] + gt[:, 3]
    iw = np.clip(np.minimum(dx1, gx1) - np.maximum(dx0, gx0), 0, None)
    ih = np.clip(np.minimum(dy1, gy1) - np.maximum(dy0, gy0), 0, None)
    inter = iw * ih
    d_area, g_area = dt[:, 2:3] * dt[:, 3:4], gt[:, 2] * gt[:, 3]
    union = np.where(crowd[None, :], d_area, d_area + g_area - inter)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


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


def _match_image(image: ImageResult, cls: str, segmentation: bool, iou_threshold: float,
                 rles: tuple[list, list] | None) -> tuple[list[tuple[float, bool]], int]:
    """(score, true positive) of the class's predictions in one image that are not ignored, and how
    many ordinary objects of the class the image has."""
    gt_idx = [i for i, o in enumerate(image.truth) if o.label == cls]
    dt_idx = [i for i, o in enumerate(image.predicted) if o.label == cls]
    crowd = np.array([image.truth[i].is_crowd for i in gt_idx], dtype=bool)
    num_objects = int((~crowd).sum())
    if not dt_idx:
        return [], num_objects
    if segmentation:
        gt_rles, dt_rles = rles
        g = [gt_rles[i] for i in gt_idx]
        d = [dt_rles[i] for i in dt_idx]
        ious = np.asarray(_mask_module().iou(d, g, [int(c) for c in crowd])).reshape(len(d), len(g)) \
            if g else np.zeros((len(d), 0))
    else:
        g = np.array([_pixel_box(image.truth[i], image) for i in gt_idx]).reshape(-1, 4)
        d = np.array([_pixel_box(image.predicted[i], image) for i in dt_idx]).reshape(-1, 4)
        ious = _box_iou(d, g, crowd)
    scores = np.array([image.predicted[i].score or 0.0 for i in dt_idx])
    taken = np.zeros(len(gt_idx), dtype=bool)
    out = []
    for row in np.argsort(-scores, kind="mergesort"):
        candidates = np.where(~crowd & ~taken & (ious[row] >= iou_threshold))[0]
        if len(candidates):
            best = candidates[np.argmax(ious[row, candidates])]
            taken[best] = True
            out.append((float(scores[row]), True))
        elif np.any(crowd & (ious[row] >= iou_threshold)):
            continue                                         # covers a crowd: ignored
        else:
            out.append((float(scores[row]), False))
    return out, num_objects


def voc(images: Sequence[ImageResult], *, segmentation: bool = False, score_threshold: float = 0.3,
        iou_threshold: float = VOC_IOU) -> dict[str, Any]:
    """VOC mAP and, per class, AP and precision / recall at `score_threshold`."""
    rles = [([_rle(o, im) for o in im.truth], _predicted_rles(im)) if segmentation else None for im in images]
    classes = sorted({o.label for im in images for o in (*im.truth, *im.predicted)})
    per_class: dict[str, dict[str, float | None]] = {}
    for cls in classes:
        matches, num_objects = [], 0
        for image, image_rles in zip(images, rles):
            m, n = _match_image(image, cls, segmentation, iou_threshold, image_rles)
            matches.extend(m)
            num_objects += n
        if num_objects == 0:
            continue                                         # no object to find: no AP (as VOC)
        matches.sort(key=lambda m: -m[0])                    # stable: ties keep image order
        tp = [hit for _, hit in matches]
        shown = [hit for score, hit in matches if score >= score_threshold]
        per_class[cls] = {
            "average_precision": average_precision(tp, num_objects),
            "precision": (sum(shown) / len(shown)) if shown else None,
            "recall": sum(shown) / num_objects,
        }
    aps = [c["average_precision"] for c in per_class.values()]
    precisions = [c["precision"] for c in per_class.values() if c["precision"] is not None]
    recalls = [c["recall"] for c in per_class.values()]
    return {
        "voc_map": float(np.mean(aps)) if aps else 0.0,
        "precision": float(np.mean(precisions)) if precisions else 0.0,
        "recall": float(np.mean(recalls)) if recalls else 0.0,
        "per_class": per_class,
    }


# -- COCO ------------------------------------------------------------------------------------------

def coco_inputs(images: Sequence[ImageResult], segmentation: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ground truth dataset and the results list, as COCO's tools take them."""
    classes = sorted({o.label for im in images for o in (*im.truth, *im.predicted)})
    category = {c: k + 1 for k, c in enumerate(classes)}
    dataset: dict[str, Any] = {"images": [], "annotations": [],
                               "categories": [{"id": k, "name": c} for c, k in category.items()]}
    results = []
    for image_id, image in enumerate(images, start=1):
        dataset["images"].append({"id": image_id, "width": image.width, "height": image.height})
        for obj in image.truth:
            box = _pixel_box(obj, image)
            annotation = {"id": len(dataset["annotations"]) + 1, "image_id": image_id,
                          "category_id": category[obj.label], "bbox": box,
                          "area": box[2] * box[3], "iscrowd": int(obj.is_crowd)}
            if segmentation:
                annotation["segmentation"] = _pixel_polygons(obj, image)
                annotation["area"] = float(_mask_module().area(_rle(obj, image)))
            dataset["annotations"].append(annotation)
        rles = _predicted_rles(image) if segmentation else None
        for k, obj in enumerate(image.predicted):
            result = {"image_id": image_id, "category_id": category[obj.label], "score": float(obj.score or 0.0)}
            if segmentation:
                rle = dict(rles[k])
                if isinstance(rle["counts"], bytes):
                    rle["counts"] = rle["counts"].decode("ascii")
                result["segmentation"] = rle
            else:
                result["bbox"] = _pixel_box(obj, image)
            results.append(result)
    return dataset, results


def coco(images: Sequence[ImageResult], *, segmentation: bool = False) -> dict[str, float | None]:
    """COCO's twelve summary figures (None where COCO has none: -1, e.g. no large object)."""
    from faster_coco_eval import COCO, COCOeval_faster

    dataset, results = coco_inputs(images, segmentation)
    if not results:                                           # COCO's loadRes refuses an empty list
        return {name: 0.0 for name in COCO_STATS}
    truth = COCO(dataset)
    predicted = truth.loadRes(results)
    evaluation = COCOeval_faster(truth, predicted, iouType="segm" if segmentation else "bbox",
                                 print_function=lambda *args, **kwargs: None)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return {name: (None if value < 0 else float(value)) for name, value in zip(COCO_STATS, evaluation.stats)}


def detection_metrics(images: Sequence[ImageResult], metric_type: str = "voc", *, segmentation: bool = False,
                      score_threshold: float = 0.3) -> dict[str, Any]:
    """Every metric of `metric_type` (see the module docstring), with `mean_average_precision`."""
    if metric_type not in METRIC_TYPES:
        raise ValueError(f"metric type must be one of {', '.join(METRIC_TYPES)}, got {metric_type!r}")
    out: dict[str, Any] = dict(voc(images, segmentation=segmentation, score_threshold=score_threshold))
    if metric_type in ("coco", "coco_voc"):
        out.update(coco(images, segmentation=segmentation))
    if metric_type == "coco":
        out.pop("voc_map")
        out["mean_average_precision"] = out["coco_map"] or 0.0
    else:
        out["mean_average_precision"] = out["voc_map"]
    return out
