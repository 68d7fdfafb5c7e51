"""COCO figures computed by pycocotools itself on data written out by hand, independently of
trainer/detection_metrics.py: what its figures are checked against (tests) and timed against
(bench/map_eval_time.py)."""
from __future__ import annotations


def pycocotools_stats(images, segmentation):
    """The same data written out by hand, evaluated by pycocotools itself."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = sorted({o.label for im in images for o in (*im.truth, *im.predicted)})
    dataset = {"images": [], "annotations": [], "categories": [{"id": 10 + i, "name": n} for i, n in enumerate(names)]}
    results = []

    def xywh(box, w, h):
        return [box[0] * w, box[1] * h, (box[2] - box[0]) * w, (box[3] - box[1]) * h]

    def polys(obj, w, h):
        return [[c * (w if i % 2 == 0 else h) for i, c in enumerate(p)] for p in obj.polygons]

    for image_id, im in enumerate(images, start=100):
        dataset["images"].append({"id": image_id, "width": im.width, "height": im.height})
        for obj in im.truth:
            ann = {"id": len(dataset["annotations"]) + 1, "image_id": image_id, "iscrowd": int(obj.is_crowd),
                   "category_id": 10 + names.index(obj.label), "bbox": xywh(obj.box, im.width, im.height)}
            ann["area"] = ann["bbox"][2] * ann["bbox"][3]
            if segmentation:
                ann["segmentation"] = polys(obj, im.width, im.height)
                rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], im.height, im.width))
                ann["area"] = float(mask_utils.area(rle))
            dataset["annotations"].append(ann)
        for obj in im.predicted:
            res = {"image_id": image_id, "category_id": 10 + names.index(obj.label), "score": obj.score}
            if segmentation:
                res["segmentation"] = mask_utils.merge(mask_utils.frPyObjects(polys(obj, im.width, im.height),
                                                                              im.height, im.width))
            else:
                res["bbox"] = xywh(obj.box, im.width, im.height)
            results.append(res)
    truth = COCO()
    truth.dataset = dataset
    truth.createIndex()
    evaluation = COCOeval(truth, truth.loadRes(results), "segm" if segmentation else "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return list(evaluation.stats)
