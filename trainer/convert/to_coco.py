"""Our JSONL out into COCO JSON, so that labels made or fixed here can leave.

    automl-images convert jsonl train.jsonl --images images --output instances.json \\
        --task image-instance-segmentation

The JSONL is read as the trainer reads it (`core/annotations.py`): what it refuses is refused
here, every bad line listed. Each line becomes an image (`id` 1, 2, ... in line order; `file_name`
relative to --images, which defaults to the JSONL's folder, when the image lies below it, else its
absolute path or URL; `width`, `height` from the image's header, or from `image_details` for an
image that is not a local file). Each object becomes an annotation: `bbox` [x, y, width, height]
in pixels, `iscrowd` from isCrowd, `segmentation` its polygons in pixels
(image-instance-segmentation; [] for image-object-detection) and `area` (the polygons' pixels as
COCO counts them, through faster-coco-eval, else the box's). Categories are the class names in
name order, `id` 1, 2, ... Coordinates are written to a millionth of a pixel, so that JSONL -> COCO
-> JSONL gives back the same numbers.
"""
from __future__ import annotations

import os
from typing import Any

from automl_images.core.annotations import ImageDetails, read_records
from automl_images.core.detection_labels import DetectionObject
from automl_images.core.hyperparameters import Task
from automl_images.core.labels import parser
from automl_images.core.problems import Problems
from automl_images.core.storage import is_url

from .conversion import ConversionError, check_task, find_image, image_url

TASKS = (Task.OBJECT_DETECTION, Task.INSTANCE_SEGMENTATION)
PIXEL_DECIMALS = 6


def _pixels(value: float, size: int) -> float:
    return round(value * size, PIXEL_DECIMALS)


def _annotation(obj: DetectionObject, width: int, height: int) -> dict[str, Any]:
    x0, y0, x1, y1 = (_pixels(v, width if i % 2 == 0 else height) for i, v in enumerate(obj.box))
    polygons = [[_pixels(v, width if i % 2 == 0 else height) for i, v in enumerate(p)] for p in obj.polygons]
    area = round((x1 - x0) * (y1 - y0), PIXEL_DECIMALS)
    if polygons:
        from faster_coco_eval.core import mask

        area = float(mask.area(mask.merge(mask.frPyObjects(polygons, height, width))))
    return {"bbox": [x0, y0, round(x1 - x0, PIXEL_DECIMALS), round(y1 - y0, PIXEL_DECIMALS)], "area": area,
            "iscrowd": int(obj.is_crowd), "segmentation": polygons}


def to_coco(path: str, task: Task | str = Task.OBJECT_DETECTION, images: str | None = None) -> dict[str, Any]:
    """The COCO object of a JSONL file of `task` (see the module docstring); ConversionError listing
    every bad line."""
    task = check_task(task, TASKS, "JSONL to COCO JSON")
    images = os.path.abspath(images) if images else os.path.dirname(os.path.abspath(path))
    problems = Problems(ConversionError)
    records = read_records(path, parser(task), problems)
    coco_images: list[dict[str, Any]] = []
    objects: list[tuple[int, DetectionObject, int, int]] = []
    for record in records:
        if is_url(record.image_url):
            file_name, details = record.image_url, record.details or ImageDetails()
            size = (details.width, details.height) if details.width and details.height else None
            if size is None:
                problems.add(record.where, "image_details", "the width and height of an image that is not a "
                                                            "local file must be given, in pixels")
        else:
            image = find_image(record.where, record.image_url, problems)
            file_name, size = image_url(record.image_url, images), (image.width, image.height) if image else None
        if size is None:
            continue
        image_id = len(coco_images) + 1
        coco_images.append({"id": image_id, "file_name": file_name, "width": size[0], "height": size[1]})
        objects += [(image_id, obj, *size) for obj in record.label.objects]
    problems.raise_if_any()
    if not coco_images:
        raise ConversionError(f"{path}: no records (the file is empty)")
    category_ids = {label: i for i, label in enumerate(sorted({obj.label for _, obj, _, _ in objects}), start=1)}
    annotations = [{"id": i, "image_id": image_id, "category_id": category_ids[obj.label],
                    **_annotation(obj, width, height)}
                   for i, (image_id, obj, width, height) in enumerate(objects, start=1)]
    return {"images": coco_images, "annotations": annotations,
            "categories": [{"id": i, "name": label, "supercategory": ""} for label, i in category_ids.items()]}
