"""Label Studio's JSON export into our JSONL.

The export (Export > JSON, not JSON-MIN) is a list of tasks: `data` names the image, `annotations`
hold the labels, each with a `result` list of regions and choices:

- `rectanglelabels`: `value` x, y, width, height in percent of the image, and `rotation` (degrees,
  about the top-left corner): a box; a rotated one becomes its axis-aligned bounds, with a warning.
- `polygonlabels`: `value.points`, [[x, y], ...] in percent: a polygon (and its bounds as the box).
- `choices`: `value.choices`, classes of the whole image, for image-classification and
  image-multi-labeling (which also takes the classes of the regions).
Other result types (keypoints, brushes, text) are left out, with one warning a type.

The image is `data.image` (else the only value of `data`): a path or URL such as
`/data/upload/3/8f2c1e3a-photo.jpg`, `/data/local-files/?d=photos/photo.jpg` or
`s3://bucket/photos/photo.jpg`. It is looked for below --images as the local-files path (`d=`),
then as the URL's path, then by its file name, then by its file name without the 8-character
prefix Label Studio gives uploads. The size is `original_width` / `original_height` of the results,
else the image's header. A task whose annotations were all cancelled, or that has none, is left
out with a warning; of several annotations the first is read, with a warning.
"""
from __future__ import annotations

import os
import posixpath
import re
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from automl_images.core.hyperparameters import Task
from automl_images.core.problems import Problems

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
    rotated_bounds,
)

TASKS = tuple(Task)
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
_KINDS = ("rectanglelabels", "polygonlabels", "choices")


def _image_candidates(reference: str) -> list[str]:
    """Paths, relative to --images, where the image of a `data.image` reference may be."""
    parts = urlsplit(reference)
    found = parse_qs(parts.query).get("d", [])
    path = unquote(parts.path).lstrip("/")
    base = posixpath.basename(path)
    found += [path, base, _UPLOAD_PREFIX.sub("", base)]
    return [p for i, p in enumerate(found) if p and p not in found[:i]]


def _reference(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    value = data.get("image")
    if value is None and len(data) == 1:
        value = next(iter(data.values()))
    return value if isinstance(value, str) and value.strip() else None


def _image(task: dict[str, Any], where: str, images: str, results: list[Any], problems: Problems) -> ImageEntry | None:
    reference = _reference(task.get("data"))
    if reference is None:
        problems.add(where, "data.image", f"must be the image's path or URL, got {task.get('data')!r}")
        return None
    candidates = _image_candidates(reference)
    for candidate in candidates:
        path = os.path.join(images, candidate)
        if os.path.isfile(path):
            sized = next((r for r in results if isinstance(r, dict) and "original_width" in r), {})
            return find_image(where, path, problems, sized.get("original_width"), sized.get("original_height"))
    problems.add(where, "data.image", f"no file for {reference!r} below {images} (looked for "
                                      f"{', '.join(candidates)})")
    return None


def _labels(value: dict[str, Any], kind: str, where: str, problems: Problems) -> list[str]:
    names = value.get(kind)
    if not isinstance(names, list) or not names:
        problems.add(where, f"value.{kind}", f"must be a non-empty list of class names, got {names!r}")
        return []
    found = [name(n, where, f"value.{kind}", problems) for n in names]
    return [n for n in found if n is not None]


def _shapes(result: dict[str, Any], where: str, image: ImageEntry, problems: Problems) -> list[Shape]:
    kind, value = result.get("type"), result.get("value")
    if not isinstance(value, dict):
        problems.add(where, "value", f"must be an object, got {value!r}")
        return []
    labels = _labels(value, kind, where, problems)
    if kind == "choices":
        return [Shape(where, label, None) for label in labels]
    sx, sy = image.width / 100, image.height / 100
    if kind == "rectanglelabels":
        found = coordinates([value.get(k) for k in ("x", "y", "width", "height")], where, "value", problems)
        rotation = coordinates([value.get("rotation", 0)], where, "value.rotation", problems)
        if found is None or rotation is None:
            return []
        x, y, w, h = found[0] * sx, found[1] * sy, found[2] * sx, found[3] * sy
        if w < 0 or h < 0:
            problems.add(where, "value", f"width and height must not be negative, got {found[2]:g}, {found[3]:g}")
            return []
        box = (x, y, x + w, y + h)
        if rotation[0] % 360:
            box = rotated_bounds([(x, y), (x + w, y), (x + w, y + h), (x, y + h)], (x, y), rotation[0])
            problems.warnings.append(f"{where}: a rectangle rotated by {rotation[0]:g} degrees; its axis-aligned "
                                     f"bounds are the box")
        return [Shape(where, label, box) for label in labels]
    points = value.get("points")
    if not isinstance(points, list) or len(points) < 3 or not all(isinstance(p, list) and len(p) == 2 for p in points):
        problems.add(where, "value.points", f"must be [[x, y], ...] of at least 3 points, got {points!r}")
        return []
    flat = coordinates([c for p in points for c in p], where, "value.points", problems)
    if flat is None:
        return []
    pixels = [c * (sx if i % 2 == 0 else sy) for i, c in enumerate(flat)]
    return [Shape(where, label, None, [pixels]) for label in labels]


def from_label_studio(path: str, images: str, output: str, task: Task | str = Task.OBJECT_DETECTION) -> Conversion:
    """A Label Studio JSON export as JSONL records, in task order (see the module docstring)."""
    task = check_task(task, TASKS, "Label Studio JSON")
    tasks = read_json(path)
    if not isinstance(tasks, list):
        raise ConversionError(f"{path}: must be Label Studio's JSON export, a list of tasks, got "
                              f"{type(tasks).__name__} (export as JSON, not JSON-MIN or COCO)")
    problems = Problems(ConversionError)
    left_out: Counter[str] = Counter()
    converted = []
    for i, item in enumerate(tasks):
        if not isinstance(item, dict):
            problems.add(f"{path}: task #{i}", None, f"must be an object, got {type(item).__name__}")
            continue
        where = f"{path}: task {item.get('id', f'#{i}')}"
        annotations = item.get("annotations")
        if not isinstance(annotations, list):
            problems.add(where, "annotations", f"must be a list (export as JSON, not JSON-MIN), got "
                                               f"{type(annotations).__name__}")
            continue
        kept = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
        if not kept:
            problems.warnings.append(f"{where}: not labelled (no annotation, or all cancelled); left out")
            continue
        if len(kept) > 1:
            problems.warnings.append(f"{where}: {len(kept)} annotations; the first (id {kept[0].get('id')}) is read")
        results = kept[0].get("result")
        where = f"{where}: annotation {kept[0].get('id', 0)}"
        if not isinstance(results, list):
            problems.add(where, "result", f"must be a list, got {type(results).__name__}")
            continue
        image = _image(item, where, images, results, problems)
        if image is None:
            continue
        for j, result in enumerate(results):
            kind = result.get("type") if isinstance(result, dict) else None
            if kind not in _KINDS:
                left_out[str(kind)] += 1
                continue
            image.shapes += _shapes(result, f"{where}: result {j}", image, problems)
        converted.append(image)
    for kind, count in sorted(left_out.items()):
        problems.warnings.append(f"{path}: {count} result(s) of type {kind!r} left out (rectanglelabels, "
                                 f"polygonlabels and choices are converted)")
    return records_of(converted, task, output, problems)
