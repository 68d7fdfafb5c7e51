"""YOLO txt labels into our JSONL.

A folder of .txt files (searched recursively), one per image, with the same relative path below
--images and an image extension. Lines are `class cx cy w h` (a box) or `class x1 y1 x2 y2 ...` (a
polygon of 3 points or more), normalised; a polygon gives its bounding box for
image-object-detection. Class names come from `--names`: a YAML file with `names:` (a list, or a
{id: name} mapping) or a text file of one name per line. The image size comes from its header.
Images without a label file are not included.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from automl_images.core.detection_labels import number
from automl_images.core.hyperparameters import Task
from automl_images.core.labels import class_name
from automl_images.core.problems import Problems

from .conversion import (
    IMAGE_EXTENSIONS,
    Conversion,
    ConversionError,
    ImageEntry,
    Shape,
    check_task,
    find_image,
    records_of,
)

TASKS = (Task.OBJECT_DETECTION, Task.INSTANCE_SEGMENTATION, Task.MULTI_LABEL)


def read_names(path: str) -> dict[int, str]:
    """Class names by id: a YAML file's `names:` (a list, or an {id: name} mapping), or a text file
    of one name per line (Darknet's .names, classes.txt)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConversionError(f"{path}: names file not found") from None
    except UnicodeDecodeError as exc:
        raise ConversionError(f"{path}: not UTF-8 text ({exc})") from None
    if path.lower().endswith((".yaml", ".yml")):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConversionError(f"{path}: invalid YAML: {exc}") from None
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, list):
            names = dict(enumerate(names))
        if not isinstance(names, dict) or not names:
            raise ConversionError(f"{path}: field 'names': must be a list of class names or an {{id: name}} "
                                  f"mapping, got {names!r}")
        entries = list(names.items())
    else:
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        entries = list(enumerate(lines))
    out: dict[int, str] = {}
    for key, value in entries:
        where = f"{path}: names[{key}]" if path.lower().endswith((".yaml", ".yml")) else f"{path}:{key + 1}"
        if isinstance(key, bool) or not isinstance(key, int):
            raise ConversionError(f"{where}: a class id must be an integer, got {key!r}")
        try:
            out[key] = class_name(value)
        except ValueError as exc:
            raise ConversionError(f"{where}: {exc}") from None
    return out


def _yolo_image(label_path: str, labels: str, images: str, problems: Problems) -> ImageEntry | None:
    """The image of a label file: the same path below `images`, with an image extension."""
    stem = os.path.splitext(os.path.relpath(label_path, labels))[0]
    for extension in IMAGE_EXTENSIONS:
        for candidate in (stem + extension, stem + extension.upper()):
            if os.path.isfile(os.path.join(images, candidate)):
                return find_image(label_path, os.path.join(images, candidate), problems)
    problems.add(label_path, None, f"image file not found: {os.path.join(images, stem)}"
                                     f"{{{','.join(IMAGE_EXTENSIONS)}}}")
    return None


def _yolo_shape(where: str, line: str, names: dict[int, str], image: ImageEntry, problems: Problems) -> Shape | None:
    fields = line.split()
    try:
        class_id = number(fields[0])
    except ValueError as exc:
        problems.add(where, "class", str(exc))
        return None
    if not class_id.is_integer() or int(class_id) not in names:
        problems.add(where, "class", f"unknown class id {fields[0]!r} (the names file has "
                                       f"{min(names)}..{max(names)})")
        return None
    try:
        values = [number(v) for v in fields[1:]]
    except ValueError as exc:
        problems.add(where, "coordinates", str(exc))
        return None
    name = names[int(class_id)]
    if len(values) == 4:
        cx, cy, w, h = values
        if w < 0 or h < 0:
            problems.add(where, "coordinates", f"width and height must not be negative, got {w:g}, {h:g}")
            return None
        box = ((cx - w / 2) * image.width, (cy - h / 2) * image.height,
               (cx + w / 2) * image.width, (cy + h / 2) * image.height)
        return Shape(where, name, box)
    if len(values) % 2 or len(values) < 6:
        problems.add(where, "coordinates", f"must be `cx cy w h` (a box) or x, y pairs of at least 3 points "
                                             f"(a polygon), got {len(values)} number(s)")
        return None
    pixels = [v * (image.width if i % 2 == 0 else image.height) for i, v in enumerate(values)]
    return Shape(where, name, None, [pixels])


def from_yolo(labels: str, images: str, output: str, names: str,
              task: Task | str = Task.OBJECT_DETECTION) -> Conversion:
    """A folder of YOLO .txt label files as JSONL records, in path order (see the module docstring);
    `names` is the YAML or text file of class names."""
    task = check_task(task, TASKS, "YOLO txt")
    class_names = read_names(names)
    if not os.path.isdir(labels):
        raise ConversionError(f"{labels}: not a folder of YOLO .txt label files")
    names_file = os.path.abspath(names)
    files = sorted(str(p) for p in Path(labels).rglob("*.txt") if os.path.abspath(p) != names_file)
    if not files:
        raise ConversionError(f"{labels}: no .txt label file in it")
    problems = Problems(ConversionError)
    converted = []
    for label_path in files:
        image = _yolo_image(label_path, labels, images, problems)
        if image is None:
            continue
        with open(label_path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
        for line_number, line in enumerate(lines, start=1):
            if line.strip():
                shape = _yolo_shape(f"{label_path}:{line_number}", line, class_names, image, problems)
                if shape is not None:
                    image.shapes.append(shape)
        converted.append(image)
    return records_of(converted, task, output, problems)
