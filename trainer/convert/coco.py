"""COCO JSON into our JSONL.

`images` (`id`, a number or a string; `file_name`, relative to --images; `width`, `height`, else
read from the image), `categories` (`id`, `name`), `annotations` (`image_id`, `category_id`, `bbox`
[x, y, width, height] in pixels, `iscrowd`, `segmentation`). Images without annotations are written
with an empty label.

Segmentations are polygons (lists of x, y pixels) or run-length encoded masks (RLE: `{"size": [h,
w], "counts": ...}`, compressed, a string, or uncompressed, a list of numbers). For
image-instance-segmentation an RLE mask is decoded by faster-coco-eval (already the trainer's COCO
metrics; it checks the counts against the size) and traced into polygons by `trainer/masks.py`'s
`mask_polygons`, the tracer the trainer already uses for predicted masks: it follows the pixel
edges, so the polygons cover exactly the mask's pixels (OpenCV's findContours would trace pixel
centres, half a pixel inside, and add a 60 MB dependency). Each region becomes one polygon; holes
are filled (a JSONL polygon list is a union). Crowd masks are traced the same way and stay isCrowd
1. For image-object-detection an RLE object keeps its `bbox` (or the mask's bounds when it has none).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from automl_images.core.annotations import MAX_IMAGE_PIXELS
from automl_images.core.detection_labels import boolean
from automl_images.core.hyperparameters import Task
from automl_images.core.problems import Problems

from ..masks import mask_polygons
from .conversion import (
    Conversion,
    ConversionError,
    ImageEntry,
    Shape,
    check_task,
    coordinates,
    find_image,
    name,
    read_json,
    records_of,
)

TASKS = (Task.OBJECT_DETECTION, Task.INSTANCE_SEGMENTATION, Task.MULTI_LABEL)
# The tracer follows each pixel edge of the outlines in Python, about 4 s for this many: far more
# than an object's (the whole frame of a 4000 x 3000 px photo has 14,000 edges), while a speckled
# mask of a large image would have tens of millions.
MAX_TRACED_EDGES = 250_000


def _list(data: dict[str, Any], key: str, path: str, required: bool = True) -> list[dict[str, Any]]:
    value = data.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ConversionError(f"{path}: field '{key}': must be a list of objects"
                              + (", missing" if value is None else f", got {type(value).__name__}"))
    return value


def _rle(value: dict[str, Any], image: ImageEntry, where: str, problems: Problems) -> dict[str, Any] | None:
    """The compressed RLE of a `segmentation` object, checked against the image's size."""
    size, counts = value.get("size"), value.get("counts")
    if size != [image.height, image.width]:
        problems.add(where, "segmentation.size", f"must be the image's [height, width], [{image.height}, "
                                                   f"{image.width}], got {size!r}")
        return None
    if image.width * image.height > MAX_IMAGE_PIXELS:
        # A mask is decoded whole, a byte a pixel; the trainer refuses larger images anyway.
        problems.add(where, "segmentation", f"a mask of {image.width}x{image.height} pixels is larger than "
                                              f"the {MAX_IMAGE_PIXELS} the trainer accepts")
        return None
    if isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        from faster_coco_eval.core import mask

        try:
            return mask.frPyObjects(value, image.height, image.width)
        except (ValueError, RuntimeError, TypeError) as exc:
            problems.add(where, "segmentation.counts", f"not a run-length encoding of the mask: {exc}")
            return None
    if not isinstance(counts, str):
        problems.add(where, "segmentation.counts", f"must be a string (compressed) or a list of non-negative "
                                                     f"integers (uncompressed), got {type(counts).__name__}")
        return None
    return {"size": size, "counts": counts}


def _traced(rle: dict[str, Any], image: ImageEntry, where: str, problems: Problems) -> list[list[float]] | None:
    """The mask's regions as polygons in pixels; None when it does not decode."""
    from faster_coco_eval.core import mask

    try:
        pixels = mask.decode(rle)
    except (ValueError, RuntimeError, TypeError) as exc:
        problems.add(where, "segmentation.counts", f"not a run-length encoding of the mask: {exc}")
        return None
    padded = np.pad(pixels, 1)
    edges = np.count_nonzero(np.diff(padded, axis=0)) + np.count_nonzero(np.diff(padded, axis=1))
    if edges > MAX_TRACED_EDGES:
        problems.add(where, "segmentation", f"a mask whose outlines have {edges} pixel edges, more than the "
                                              f"{MAX_TRACED_EDGES} traced (noise, not an object)")
        return None
    return [[v * (image.width if i % 2 == 0 else image.height) for i, v in enumerate(polygon)]
            for polygon in mask_polygons(pixels, image.width, image.height)]


def _mask_bounds(rle: dict[str, Any]) -> tuple[float, float, float, float] | None:
    from faster_coco_eval.core import mask

    x, y, w, h = (float(v) for v in mask.toBbox(rle))
    return (x, y, x + w, y + h) if w > 0 and h > 0 else None


def _polygons(value: Any, where: str, problems: Problems) -> list[list[float]] | None:
    """The polygons, in pixels, of a `segmentation` list; None: an error."""
    if not isinstance(value, list) or not all(isinstance(p, list) for p in value):
        problems.add(where, "segmentation", f"must be a list of polygons or a run-length encoding, got "
                                              f"{type(value).__name__}")
        return None
    polygons = []
    for i, polygon in enumerate(value):
        coords = coordinates(polygon, where, f"segmentation[{i}]", problems)
        if coords is None:
            return None
        if len(coords) % 2 or len(coords) < 6:
            problems.add(where, f"segmentation[{i}]", f"must be x, y pairs of at least 3 points, got "
                                                        f"{len(coords)} number(s)")
            return None
        polygons.append(coords)
    return polygons


def _box(value: Any, where: str, problems: Problems) -> tuple[float, float, float, float] | None:
    if not isinstance(value, list) or len(value) != 4:
        problems.add(where, "bbox", f"must be [x, y, width, height] in pixels, got {value!r}")
        return None
    values = coordinates(value, where, "bbox", problems)
    if values is None:
        return None
    x, y, w, h = values
    if w < 0 or h < 0:
        problems.add(where, "bbox", f"width and height must not be negative, got {value!r}")
        return None
    return x, y, x + w, y + h


def _categories(data: dict[str, Any], annotations: str, problems: Problems) -> dict[str, str]:
    """Category id -> name."""
    categories: dict[str, str] = {}
    for i, category in enumerate(_list(data, "categories", annotations)):
        where = f"{annotations}: category {category.get('id', f'#{i}')}"
        category_name = name(category.get("name"), where, "name", problems)
        if category.get("id") is None:
            problems.add(where, "id", "missing")
        elif category_name is not None:
            categories[str(category["id"])] = category_name
    return categories


def _images(data: dict[str, Any], annotations: str, images: str,
            problems: Problems) -> tuple[dict[str, ImageEntry], set[str]]:
    """The images found, by id, and every image id listed (found or not)."""
    by_id: dict[str, ImageEntry] = {}
    listed: set[str] = set()
    for i, entry in enumerate(_list(data, "images", annotations)):
        where = f"{annotations}: image {entry.get('id', f'#{i}')}"
        file_name = entry.get("file_name")
        if entry.get("id") is None:
            problems.add(where, "id", "missing")
            continue
        if str(entry["id"]) in listed:
            problems.add(where, "id", "used by another image too")
            continue
        listed.add(str(entry["id"]))
        if not isinstance(file_name, str) or not file_name.strip():
            problems.add(where, "file_name", f"must be the image's path below {images}, got {file_name!r}")
            continue
        image = find_image(f"{where} ({file_name})", os.path.join(images, file_name), problems,
                           entry.get("width"), entry.get("height"))
        if image is not None:
            by_id[str(entry["id"])] = image
    return by_id, listed


def _shape(annotation: dict[str, Any], where: str, category: str, image: ImageEntry, task: Task,
           problems: Problems) -> Shape | None:
    try:
        is_crowd = boolean(annotation.get("iscrowd", 0))
    except ValueError as exc:
        problems.add(where, "iscrowd", str(exc))
        return None
    if task is Task.MULTI_LABEL:
        return Shape(where, category, None, is_crowd=is_crowd)
    box = None
    if annotation.get("bbox") is not None:
        box = _box(annotation["bbox"], where, problems)
        if box is None:
            return None
    # The segmentation is read where it is needed: for the output's polygons, or the missing box.
    segmentation = annotation.get("segmentation")
    outlined = task is Task.INSTANCE_SEGMENTATION or box is None
    polygons: list[list[float]] | None = []
    if outlined and isinstance(segmentation, dict):
        rle = _rle(segmentation, image, where, problems)
        if rle is None:
            return None
        box = box or _mask_bounds(rle)
        if task is Task.INSTANCE_SEGMENTATION:
            polygons = _traced(rle, image, where, problems)
            if polygons is None:
                return None
        if box is None or (task is Task.INSTANCE_SEGMENTATION and not polygons):
            problems.warnings.append(f"{where}: an empty mask; dropped")
            return None
    elif outlined and segmentation not in (None, []):
        polygons = _polygons(segmentation, where, problems)
        if polygons is None:
            return None
    if box is None and not polygons:
        problems.add(where, "bbox", "missing (and no segmentation to take it from)")
        return None
    return Shape(where, category, box, polygons, is_crowd)


def from_coco(annotations: str, images: str, output: str, task: Task | str = Task.OBJECT_DETECTION) -> Conversion:
    """A COCO JSON file's images and annotations as JSONL records (see the module docstring)."""
    task = check_task(task, TASKS, "COCO JSON")
    data = read_json(annotations)
    if not isinstance(data, dict):
        raise ConversionError(f"{annotations}: must be a COCO object with images, annotations and categories")
    problems = Problems(ConversionError)
    categories = _categories(data, annotations, problems)
    by_id, listed = _images(data, annotations, images, problems)
    for i, annotation in enumerate(_list(data, "annotations", annotations, required=False)):
        where = f"{annotations}: annotation {annotation.get('id', f'#{i}')}"
        image = by_id.get(str(annotation.get("image_id")))
        category = categories.get(str(annotation.get("category_id")))
        if image is None:
            if str(annotation.get("image_id")) not in listed:
                problems.add(where, "image_id", f"no image has id {annotation.get('image_id')!r}")
            continue                                     # else its image's problem is listed already
        if category is None:
            known = ", ".join(f"{k} {v}" for k, v in categories.items())
            problems.add(where, "category_id", f"unknown category {annotation.get('category_id')!r} "
                                                 f"(categories: {known})")
            continue
        shape = _shape(annotation, where, category, image, task, problems)
        if shape is not None:
            image.shapes.append(shape)
    return records_of(by_id.values(), task, output, problems)
