"""What every importer shares: the objects read from a source (`Shape`, on an `ImageEntry`, in
pixels), turned into our JSONL records, normalised, by `records_of`; and the images' sizes and
`image_url`s."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from PIL import Image

from automl_images.core.detection_labels import number
from automl_images.core.hyperparameters import Task
from automl_images.core.labels import class_name
from automl_images.core.problems import Problems

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CLIP_TOLERANCE_PX = 1.0    # how far outside the image a coordinate may lie before clipping it is worth a warning
DECIMALS = 6               # of normalised coordinates: a hundredth of a pixel of a 10,000 px image


class ConversionError(ValueError):
    """Input that cannot be converted; each line of the message names the file, the line or
    annotation, and the field."""


@dataclass(frozen=True)
class Conversion:
    """The JSONL records (one per image) and what was changed on the way."""
    records: list[dict[str, Any]]
    warnings: list[str]

    def count_objects(self) -> int:
        """Objects (detection), class names (multi-label) or images (classification) over all records."""
        return sum(1 if isinstance(record["label"], str) else len(record["label"]) for record in self.records)


@dataclass
class Shape:
    """One object, or one image-level class (no box, no polygon), as the source gives it, in pixels."""
    where: str                                       # file and line or annotation id, for messages
    label: str
    box: tuple[float, float, float, float] | None    # x0, y0, x1, y1; None: the polygons' bounds
    polygons: list[list[float]] = field(default_factory=list)   # flat x, y lists
    is_crowd: bool = False

    @property
    def is_image_class(self) -> bool:
        """A class of the whole image (a tag, a choice): classification tasks read it, detection skips it."""
        return self.box is None and not self.polygons


@dataclass
class ImageEntry:
    path: str          # absolute
    width: int
    height: int
    where: str = ""    # where the source names the image, for messages about the image as a whole
    shapes: list[Shape] = field(default_factory=list)


def check_task(task: Task | str, allowed: tuple[Task, ...], source: str) -> Task:
    """`task` as a Task, one that `source` (a format's name) converts to; ConversionError otherwise."""
    try:
        task = Task(task)
    except ValueError:
        raise ConversionError(f"unknown task {task!r}; one of {', '.join(t.value for t in Task)}") from None
    if task not in allowed:
        raise ConversionError(f"{source} converts to {', '.join(t.value for t in allowed)}, not {task.value}")
    return task


def read_json(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8-sig"))
    except FileNotFoundError:
        raise ConversionError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ConversionError(f"{path}: not UTF-8 text ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path}: invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise ConversionError(f"{path}: invalid JSON: nested too deeply") from None


def name(value: Any, where: str, field_name: str, problems: Problems) -> str | None:
    """The class name `value`, or None with the problem added."""
    try:
        return class_name(value)
    except ValueError as exc:
        problems.add(where, field_name, str(exc))
        return None


def coordinates(values: Iterable[Any], where: str, field_name: str, problems: Problems) -> list[float] | None:
    """Finite numbers, or None with the problem added."""
    try:
        out = [number(v) for v in values]
    except ValueError as exc:
        problems.add(where, field_name, str(exc))
        return None
    if not all(math.isfinite(v) for v in out):
        problems.add(where, field_name, "must be finite numbers")
        return None
    return out


def rotated_bounds(corners: list[tuple[float, float]], center: tuple[float, float],
                   degrees: float) -> tuple[float, float, float, float]:
    """The axis-aligned bounds of `corners` turned by `degrees` clockwise on screen (y down) about `center`."""
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    cx, cy = center
    turned = [(cx + (x - cx) * cos - (y - cy) * sin, cy + (x - cx) * sin + (y - cy) * cos) for x, y in corners]
    xs, ys = [x for x, _ in turned], [y for _, y in turned]
    return min(xs), min(ys), max(xs), max(ys)


# -- images ----------------------------------------------------------------------------------------

def positive_int(value: Any) -> int | None:
    try:
        size = number(value)
    except ValueError:
        return None
    return int(size) if size.is_integer() and size > 0 else None


def find_image(where: str, path: str, problems: Problems, width: Any = None, height: Any = None) -> ImageEntry | None:
    """The image at `path` with its size: the stated one when both are given, else its header's
    (PIL's open reads no pixels)."""
    if not os.path.isfile(path):
        problems.add(where, None, f"image file not found: {path}")
        return None
    stated = (positive_int(width), positive_int(height))
    for field_name, value, size in (("width", width, stated[0]), ("height", height, stated[1])):
        if value is not None and size is None:
            problems.add(where, field_name, f"must be a positive number of pixels, got {value!r}")
            return None
    if None not in stated:
        return ImageEntry(os.path.abspath(path), *stated, where=where)
    try:
        with Image.open(path) as image:
            return ImageEntry(os.path.abspath(path), *image.size, where=where)
    except Exception as exc:  # any unreadable image is a problem of the input, listed with the others
        problems.add(where, None, f"image {path} could not be read for its size ({type(exc).__name__}: {exc})")
        return None


def image_url(path: str, output_folder: str) -> str:
    """`path` relative to the output's folder when it lies inside it, else absolute."""
    try:
        relative = os.path.relpath(path, output_folder)
    except ValueError:                                   # another drive (Windows)
        return path
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return path
    return relative.replace(os.sep, "/")


# -- shapes to label objects -----------------------------------------------------------------------

def _clip(where: str, what: str, xs: list[float], ys: list[float], image: ImageEntry,
          problems: Problems) -> tuple[list[float], list[float]]:
    overshoot = max(-min(xs), -min(ys), max(xs) - image.width, max(ys) - image.height)
    if overshoot > CLIP_TOLERANCE_PX:
        problems.warnings.append(f"{where}: {what} lies outside the {image.width}x{image.height} image by "
                                 f"{overshoot:.1f} px; clipped to it")
    return ([min(float(image.width), max(0.0, x)) for x in xs],
            [min(float(image.height), max(0.0, y)) for y in ys])


def _label_object(shape: Shape, image: ImageEntry, segmentation: bool, problems: Problems) -> dict[str, Any] | None:
    """The JSONL object of a shape (a box, polygons or both), normalised; None when it is dropped
    (or an error)."""
    polygons = []
    for i, polygon in enumerate(shape.polygons):
        xs, ys = _clip(shape.where, f"polygon {i}", polygon[0::2], polygon[1::2], image, problems)
        flat = [round(c, DECIMALS) for x, y in zip(xs, ys) for c in (x / image.width, y / image.height)]
        polygons.append(flat)
    if shape.box is not None:
        x0, y0, x1, y1 = shape.box
        (x0, x1), (y0, y1) = _clip(shape.where, "the box", [x0, x1], [y0, y1], image, problems)
    else:
        xs = [x * image.width for p in polygons for x in p[0::2]]
        ys = [y * image.height for p in polygons for y in p[1::2]]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    box = [round(x0 / image.width, DECIMALS), round(y0 / image.height, DECIMALS),
           round(x1 / image.width, DECIMALS), round(y1 / image.height, DECIMALS)]
    if box[0] >= box[2] or box[1] >= box[3]:
        problems.warnings.append(f"{shape.where}: no area left inside the image; dropped")
        return None
    obj: dict[str, Any] = {"label": shape.label, "topX": box[0], "topY": box[1], "bottomX": box[2],
                           "bottomY": box[3], "isCrowd": int(shape.is_crowd)}
    if segmentation:
        if not polygons:
            problems.add(shape.where, None, "no polygon: every object of image-instance-segmentation needs "
                                              "one (convert with --task image-object-detection for boxes only)")
            return None
        obj["polygon"] = polygons
    return obj


def _label(image: ImageEntry, task: Task, problems: Problems) -> Any:
    names = sorted({shape.label for shape in image.shapes})
    if task is Task.MULTI_LABEL:
        return names
    if task is Task.CLASSIFICATION:
        if len(names) != 1:
            problems.add(image.where or image.path, None, f"image-classification needs one class for each image, "
                                                            f"got {len(names)}: {', '.join(names) or 'none'}")
        return names[0] if names else None
    objects = [_label_object(shape, image, task is Task.INSTANCE_SEGMENTATION, problems)
               for shape in image.shapes if not shape.is_image_class]
    return [obj for obj in objects if obj is not None]


def records_of(images: Iterable[ImageEntry], task: Task, output: str, problems: Problems) -> Conversion:
    """The JSONL records of the images, in their order; ConversionError listing every problem.
    For image-classification an image has exactly one class; for image-multi-labeling its label is
    the set of its shapes' classes (objects' and the image's own)."""
    output_folder = os.path.dirname(os.path.abspath(output))
    records = []
    for image in images:
        extension = os.path.splitext(image.path)[1].lower().lstrip(".")
        records.append({"image_url": image_url(image.path, output_folder),
                        "image_details": {"format": extension, "width": image.width, "height": image.height},
                        "label": _label(image, task, problems)})
    problems.raise_if_any()
    return Conversion(records, problems.warnings)
