"""Labels in the formats users bring, written as our JSONL: `automl-images convert`.

    automl-images convert coco instances.json --images images --output train.jsonl
    automl-images convert voc annotations --images images --output train.jsonl
    automl-images convert yolo labels/train --images images/train --names data.yaml --output train.jsonl \\
        --task image-instance-segmentation
    automl-images convert coco instances.json --images images --output multi.jsonl --task image-multi-labeling

`from_coco`, `from_voc` and `from_yolo` read one format and return a `Conversion`: the JSONL records
and warnings saying what was changed on the way; `write_jsonl` writes the records. Images are never
copied or moved: `image_url` is the image's path relative to the output file's folder when the image
lies inside it (our JSONL reader refuses relative paths that climb out of their folder), else its
absolute path. `image_details` holds the format (the file's extension, as Azure writes it) and the
size in pixels.

- COCO JSON: `images` (`id`, a number or a string; `file_name`, relative to --images; `width`,
  `height`, else read from the image), `categories` (`id`, `name`), `annotations` (`image_id`,
  `category_id`, `bbox` [x, y, width, height] in pixels, `iscrowd`, `segmentation`). Polygon
  segmentations become `polygon`. Run-length encoded ones (COCO writes crowd regions so) are not
  traced into polygons: for image-object-detection the object keeps its box, isCrowd 1, no polygon;
  for image-instance-segmentation, where every object needs a polygon, the box's rectangle is its
  polygon (a crowd region only makes evaluation ignore the predictions on it; the box ignores a
  little more than the mask would), and the run-length encoded mask of an object that is not a
  crowd is refused (training on its box would teach rectangles). Images without annotations are
  written with an empty label.
- Pascal VOC XML: a folder of .xml files, one per image (`filename`, `size`, `object` with `name`,
  `bndbox`, `difficult`). The size comes from the XML, else from the image. `difficult` 1 becomes
  isCrowd 1: VOC's evaluation ignores difficult objects (they are not counted among the objects to
  find, and a detection of one is neither right nor wrong), which is what our evaluation does with
  isCrowd objects; training leaves both out of the losses. VOC boxes have no polygons, so VOC does
  not convert to image-instance-segmentation.
- YOLO txt: a folder of .txt files (searched recursively), one per image, with the same relative
  path below --images and an image extension. Lines are `class cx cy w h` (a box) or `class x1 y1
  x2 y2 ...` (a polygon of 3 points or more), normalised; a polygon gives its bounding box for
  image-object-detection. Class names come from `--names`: a YAML file with `names:` (a list, or a
  {id: name} mapping) or a text file of one name per line. The image size comes from its header.
  Images without a label file are not included.
- image-multi-labeling, from any of the three: each image's label is the set of its objects' classes
  (crowd and difficult objects included: the class is in the image).

Bad input (an unknown category or class id, a missing image, a malformed field) is a
`ConversionError` listing each problem with its file, its line or annotation id, and the field.
A box or polygon outside the image by more than a pixel is clipped to it, with a warning (by a pixel
or less it is clipped silently: rounding of pixel coordinates); an object left with no area is
dropped, with a warning.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from xml.etree import ElementTree

import yaml
from PIL import Image

from automl_images.core.hyperparameters import Task
from automl_images.core.problems import MAX_LISTED, Problems
from automl_images.core.storage import Storage

from .detection_labels import boolean, number
from .labels import class_name

FORMATS = ("coco", "voc", "yolo")
CONVERTED_TASKS = (Task.OBJECT_DETECTION, Task.INSTANCE_SEGMENTATION, Task.MULTI_LABEL)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CLIP_TOLERANCE_PX = 1.0    # how far outside the image a coordinate may lie before clipping it is worth a warning
DECIMALS = 6               # of normalised coordinates: a hundredth of a pixel of a 10,000 px image
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


class ConversionError(ValueError):
    """Input that cannot be converted; each line of the message names the file, the line or
    annotation, and the field."""


@dataclass(frozen=True)
class Conversion:
    """The JSONL records (one per image) and what was changed on the way."""
    records: list[dict[str, Any]]
    warnings: list[str]

    def count_objects(self) -> int:
        """Objects (detection) or class names (multi-label) over all records."""
        return sum(len(record["label"]) for record in self.records)


@dataclass
class _Shape:
    """One object as the source gives it, in pixels."""
    where: str                                       # file and line or annotation id, for messages
    label: str
    box: tuple[float, float, float, float] | None    # x0, y0, x1, y1; None: the polygons' bounds
    polygons: list[list[float]] = field(default_factory=list)   # flat x, y lists
    is_crowd: bool = False


@dataclass
class _Image:
    path: str          # absolute
    width: int
    height: int
    shapes: list[_Shape] = field(default_factory=list)


# -- images ----------------------------------------------------------------------------------------

def _positive_int(value: Any) -> int | None:
    try:
        size = number(value)
    except ValueError:
        return None
    return int(size) if size.is_integer() and size > 0 else None


def _find_image(where: str, path: str, problems: Problems, width: Any = None, height: Any = None) -> _Image | None:
    """The image at `path` with its size: the stated one when both are given, else its header's
    (PIL's open reads no pixels)."""
    if not os.path.isfile(path):
        problems.add(where, None, f"image file not found: {path}")
        return None
    stated = (_positive_int(width), _positive_int(height))
    for name, value, size in (("width", width, stated[0]), ("height", height, stated[1])):
        if value is not None and size is None:
            problems.add(where, name, f"must be a positive number of pixels, got {value!r}")
            return None
    if None not in stated:
        return _Image(os.path.abspath(path), *stated)
    try:
        with Image.open(path) as image:
            return _Image(os.path.abspath(path), *image.size)
    except Exception as exc:  # any unreadable image is a problem of the input, listed with the others
        problems.add(where, None, f"image {path} could not be read for its size ({type(exc).__name__}: {exc})")
        return None


def _image_url(path: str, output_folder: str) -> str:
    """`path` relative to the output's folder when it lies inside it, else absolute."""
    try:
        relative = os.path.relpath(path, output_folder)
    except ValueError:                                   # another drive (Windows)
        return path
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return path
    return relative.replace(os.sep, "/")


# -- shapes to label objects -----------------------------------------------------------------------

def _clip(where: str, what: str, xs: list[float], ys: list[float], image: _Image,
          problems: Problems) -> tuple[list[float], list[float]]:
    overshoot = max(-min(xs), -min(ys), max(xs) - image.width, max(ys) - image.height)
    if overshoot > CLIP_TOLERANCE_PX:
        problems.warnings.append(f"{where}: {what} lies outside the {image.width}x{image.height} image by "
                                 f"{overshoot:.1f} px; clipped to it")
    return ([min(float(image.width), max(0.0, x)) for x in xs],
            [min(float(image.height), max(0.0, y)) for y in ys])


def _label_object(shape: _Shape, image: _Image, segmentation: bool, problems: Problems) -> dict[str, Any] | None:
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


def _convert(images: Iterable[_Image], task: Task, output: str, problems: Problems) -> Conversion:
    """The JSONL records of the images, in their order; ConversionError listing every problem."""
    output_folder = os.path.dirname(os.path.abspath(output))
    records = []
    for image in images:
        if task is Task.MULTI_LABEL:
            label: list[Any] = sorted({shape.label for shape in image.shapes})
        else:
            objects = [_label_object(shape, image, task is Task.INSTANCE_SEGMENTATION, problems)
                       for shape in image.shapes]
            label = [obj for obj in objects if obj is not None]
        extension = os.path.splitext(image.path)[1].lower().lstrip(".")
        records.append({"image_url": _image_url(image.path, output_folder),
                        "image_details": {"format": extension, "width": image.width, "height": image.height},
                        "label": label})
    problems.raise_if_any()
    return Conversion(records, problems.warnings)


def _task(task: Task | str) -> Task:
    try:
        task = Task(task)
    except ValueError:
        raise ConversionError(f"unknown task {task!r}; one of {', '.join(t.value for t in CONVERTED_TASKS)}") from None
    if task not in CONVERTED_TASKS:
        raise ConversionError(f"labels convert to {', '.join(t.value for t in CONVERTED_TASKS)}, not {task.value}")
    return task


def _name(value: Any, where: str, field_name: str, problems: Problems) -> str | None:
    try:
        return class_name(value)
    except ValueError as exc:
        problems.add(where, field_name, str(exc))
        return None


# -- COCO ------------------------------------------------------------------------------------------

def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8-sig"))
    except FileNotFoundError:
        raise ConversionError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ConversionError(f"{path}: not UTF-8 text ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path}: invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None


def _coco_list(data: dict[str, Any], key: str, path: str, required: bool = True) -> list[dict[str, Any]]:
    value = data.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ConversionError(f"{path}: field '{key}': must be a list of objects"
                              + (", missing" if value is None else f", got {type(value).__name__}"))
    return value


def _coco_polygons(value: Any, where: str, problems: Problems) -> tuple[list[list[float]], bool] | None:
    """(polygons in pixels, run-length encoded?) of an annotation's `segmentation`; None: an error."""
    if value is None or value == []:
        return [], False
    if isinstance(value, dict):                         # RLE: {"size": [h, w], "counts": ...}
        return [], True
    if not isinstance(value, list) or not all(isinstance(p, list) for p in value):
        problems.add(where, "segmentation", f"must be a list of polygons or a run-length encoding, got "
                                              f"{type(value).__name__}")
        return None
    polygons = []
    for i, polygon in enumerate(value):
        try:
            coords = [number(c) for c in polygon]
        except ValueError as exc:
            problems.add(where, f"segmentation[{i}]", str(exc))
            return None
        if len(coords) % 2 or len(coords) < 6:
            problems.add(where, f"segmentation[{i}]", f"must be x, y pairs of at least 3 points, got "
                                                        f"{len(coords)} number(s)")
            return None
        polygons.append(coords)
    return polygons, False


def _coco_box(value: Any, where: str, problems: Problems) -> tuple[float, float, float, float] | None:
    if not isinstance(value, list) or len(value) != 4:
        problems.add(where, "bbox", f"must be [x, y, width, height] in pixels, got {value!r}")
        return None
    try:
        x, y, w, h = (number(v) for v in value)
    except ValueError as exc:
        problems.add(where, "bbox", str(exc))
        return None
    if w < 0 or h < 0:
        problems.add(where, "bbox", f"width and height must not be negative, got {value!r}")
        return None
    return x, y, x + w, y + h


def _coco_categories(data: dict[str, Any], annotations: str, problems: Problems) -> dict[str, str]:
    """Category id -> name."""
    categories: dict[str, str] = {}
    for i, category in enumerate(_coco_list(data, "categories", annotations)):
        where = f"{annotations}: category {category.get('id', f'#{i}')}"
        name = _name(category.get("name"), where, "name", problems)
        if category.get("id") is None:
            problems.add(where, "id", "missing")
        elif name is not None:
            categories[str(category["id"])] = name
    return categories


def _coco_images(data: dict[str, Any], annotations: str, images: str,
                 problems: Problems) -> tuple[dict[str, _Image], set[str]]:
    """The images found, by id, and every image id listed (found or not)."""
    by_id: dict[str, _Image] = {}
    listed: set[str] = set()
    for i, entry in enumerate(_coco_list(data, "images", annotations)):
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
        image = _find_image(f"{where} ({file_name})", os.path.join(images, file_name), problems,
                            entry.get("width"), entry.get("height"))
        if image is not None:
            by_id[str(entry["id"])] = image
    return by_id, listed


def from_coco(annotations: str, images: str, output: str, task: Task | str = Task.OBJECT_DETECTION) -> Conversion:
    """A COCO JSON file's images and annotations as JSONL records (see the module docstring)."""
    task = _task(task)
    data = _read_json(annotations)
    if not isinstance(data, dict):
        raise ConversionError(f"{annotations}: must be a COCO object with images, annotations and categories")
    problems = Problems(ConversionError)
    categories = _coco_categories(data, annotations, problems)
    by_id, listed = _coco_images(data, annotations, images, problems)
    segmentation = task is Task.INSTANCE_SEGMENTATION
    for i, annotation in enumerate(_coco_list(data, "annotations", annotations, required=False)):
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
        try:
            is_crowd = boolean(annotation.get("iscrowd", 0))
        except ValueError as exc:
            problems.add(where, "iscrowd", str(exc))
            continue
        if task is Task.MULTI_LABEL:
            image.shapes.append(_Shape(where, category, None, is_crowd=is_crowd))
            continue
        # The polygons are read where they are needed: the output's, or the box's when it is missing.
        has_box = annotation.get("bbox") is not None
        segmented = _coco_polygons(annotation.get("segmentation"), where, problems) \
            if segmentation or not has_box else ([], False)
        if segmented is None:
            continue
        polygons, encoded = segmented
        box = _coco_box(annotation["bbox"], where, problems) if has_box else None
        if box is None and not polygons:
            if not has_box:
                problems.add(where, "bbox", "missing (and no segmentation polygon to take it from)")
            continue
        if segmentation and encoded:
            if not is_crowd:
                problems.add(where, "segmentation", "a run-length encoded mask of an object that is not a "
                                                      "crowd: masks are not traced into polygons")
                continue
            if box is not None:
                x0, y0, x1, y1 = box
                polygons = [[x0, y0, x1, y0, x1, y1, x0, y1]]   # see the module docstring
        image.shapes.append(_Shape(where, category, box, polygons, is_crowd))
    return _convert(by_id.values(), task, output, problems)


# -- Pascal VOC ------------------------------------------------------------------------------------

def _voc_text(element: ElementTree.Element, path: str) -> str | None:
    found = element.find(path)
    return found.text.strip() if found is not None and found.text and found.text.strip() else None


def _voc_image(xml_path: str, root: ElementTree.Element, images: str, problems: Problems) -> _Image | None:
    """The image an XML file labels: its `filename` below `images`, else the XML's name with an
    image extension (VOC files copied between tools often keep a stale `filename`)."""
    stem = os.path.splitext(os.path.basename(xml_path))[0]
    filename = _voc_text(root, "filename")
    candidates = ([filename] if filename else []) + [stem + ext for ext in IMAGE_EXTENSIONS]
    for candidate in candidates:
        if os.path.isfile(os.path.join(images, candidate)):
            width, height = _voc_text(root, "size/width"), _voc_text(root, "size/height")
            # Some tools write a size of 0 when they did not know it: the image has the real one.
            if _positive_int(width) is None or _positive_int(height) is None:
                width = height = None
            return _find_image(xml_path, os.path.join(images, candidate), problems, width, height)
    problems.add(xml_path, "filename", f"image file not found: {os.path.join(images, filename or stem + '.*')}")
    return None


def _voc_object(element: ElementTree.Element, where: str, problems: Problems) -> _Shape | None:
    name = _name(_voc_text(element, "name"), where, "name", problems)
    corners = []
    for corner in ("xmin", "ymin", "xmax", "ymax"):
        text = _voc_text(element, f"bndbox/{corner}")
        if text is None:
            problems.add(where, f"bndbox/{corner}", "missing")
            return None
        try:
            corners.append(number(text))
        except ValueError as exc:
            problems.add(where, f"bndbox/{corner}", str(exc))
            return None
    difficult = _voc_text(element, "difficult") or "0"
    if difficult not in ("0", "1"):
        problems.add(where, "difficult", f"must be 0 or 1, got {difficult!r}")
        return None
    if name is None:
        return None
    x0, y0, x1, y1 = corners
    if x0 > x1 or y0 > y1:
        problems.add(where, "bndbox", f"inverted box: xmin {x0:g} > xmax {x1:g}" if x0 > x1
                       else f"inverted box: ymin {y0:g} > ymax {y1:g}")
        return None
    # VOC's pixel coordinates are 1-based and inclusive: (xmin - 1, xmax) is the box in the 0-based,
    # half-open coordinates of COCO and ours.
    return _Shape(where, name, (x0 - 1, y0 - 1, x1, y1), is_crowd=difficult == "1")


def from_voc(annotations: str, images: str, output: str, task: Task | str = Task.OBJECT_DETECTION) -> Conversion:
    """A folder of Pascal VOC XML files as JSONL records, in file name order (see the module docstring)."""
    task = _task(task)
    if task is Task.INSTANCE_SEGMENTATION:
        raise ConversionError("Pascal VOC XML has boxes, not polygons: convert it for image-object-detection "
                              "or image-multi-labeling")
    if not os.path.isdir(annotations):
        raise ConversionError(f"{annotations}: not a folder of Pascal VOC .xml files")
    files = sorted(p for p in os.listdir(annotations) if p.lower().endswith(".xml"))
    if not files:
        raise ConversionError(f"{annotations}: no .xml file in it")
    problems = Problems(ConversionError)
    converted = []
    for name in files:
        xml_path = os.path.join(annotations, name)
        try:
            root = ElementTree.parse(xml_path).getroot()
        except ElementTree.ParseError as exc:
            problems.add(xml_path, None, f"invalid XML: {exc}")
            continue
        image = _voc_image(xml_path, root, images, problems)
        if image is None:
            continue
        for i, element in enumerate(root.findall("object")):
            shape = _voc_object(element, f"{xml_path}: object {i}", problems)
            if shape is not None:
                image.shapes.append(shape)
        converted.append(image)
    return _convert(converted, task, output, problems)


# -- YOLO ------------------------------------------------------------------------------------------

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


def _yolo_image(label_path: str, labels: str, images: str, problems: Problems) -> _Image | None:
    """The image of a label file: the same path below `images`, with an image extension."""
    stem = os.path.splitext(os.path.relpath(label_path, labels))[0]
    for extension in IMAGE_EXTENSIONS:
        for candidate in (stem + extension, stem + extension.upper()):
            if os.path.isfile(os.path.join(images, candidate)):
                return _find_image(label_path, os.path.join(images, candidate), problems)
    problems.add(label_path, None, f"image file not found: {os.path.join(images, stem)}"
                                     f"{{{','.join(IMAGE_EXTENSIONS)}}}")
    return None


def _yolo_shape(where: str, line: str, names: dict[int, str], image: _Image, problems: Problems) -> _Shape | None:
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
        return _Shape(where, name, box)
    if len(values) % 2 or len(values) < 6:
        problems.add(where, "coordinates", f"must be `cx cy w h` (a box) or x, y pairs of at least 3 points "
                                             f"(a polygon), got {len(values)} number(s)")
        return None
    pixels = [v * (image.width if i % 2 == 0 else image.height) for i, v in enumerate(values)]
    return _Shape(where, name, None, [pixels])


def from_yolo(labels: str, images: str, output: str, names: str,
              task: Task | str = Task.OBJECT_DETECTION) -> Conversion:
    """A folder of YOLO .txt label files as JSONL records, in path order (see the module docstring);
    `names` is the YAML or text file of class names."""
    task = _task(task)
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
    return _convert(converted, task, output, problems)


# -- output ----------------------------------------------------------------------------------------

def write_jsonl(records: list[dict[str, Any]], output: str, overwrite: bool = False) -> None:
    """The records as a JSONL file, written atomically; an existing file is kept unless `overwrite`."""
    folder, name = os.path.split(os.path.abspath(output))
    text = "".join(json.dumps(record) + "\n" for record in records)
    storage = Storage(folder)
    if overwrite:
        storage.write_text(name, text)
    elif not storage.create_exclusive(name, text.encode("utf-8")):
        raise ConversionError(f"{output}: already exists (pass --overwrite to replace it)")


def convert(source_format: str, source: str, images: str, output: str, task: Task | str = Task.OBJECT_DETECTION,
            names: str | None = None) -> Conversion:
    """The records of `source` in `source_format` (coco, voc or yolo)."""
    if source_format not in FORMATS:
        raise ConversionError(f"unknown format {source_format!r}; one of {', '.join(FORMATS)}")
    if (names is not None) != (source_format == "yolo"):
        raise ConversionError("YOLO labels need --names (the YAML or text file of class names)"
                              if source_format == "yolo" else f"{source_format} files name their classes: "
                                                              f"--names is for yolo only")
    if not os.path.isdir(images):
        raise ConversionError(f"--images {images}: not a folder")
    if source_format == "coco":
        return from_coco(source, images, output, task)
    if source_format == "voc":
        return from_voc(source, images, output, task)
    return from_yolo(source, images, output, names, task)


def run_cli(source_format: str, source: str, images: str, output: str, task: str, names: str | None,
            overwrite: bool) -> int:
    """`automl-images convert`: writes OUTPUT, prints the warnings and a summary; exit 2 with the
    problems on stderr."""
    try:
        conversion = convert(source_format, source, images, output, task, names)
        write_jsonl(conversion.records, output, overwrite)
    except ConversionError as exc:
        print(f"automl-images convert: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:  # permissions, a full disk: not the input's fault
        print(f"automl-images convert: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for warning in conversion.warnings[:MAX_LISTED]:
        print(f"warning: {warning}", file=sys.stderr)
    more = len(conversion.warnings) - MAX_LISTED
    if more > 0:
        print(f"warning: and {more} more", file=sys.stderr)
    what = "class names" if Task(task) is Task.MULTI_LABEL else "objects"
    print(f"{output}: {len(conversion.records)} images, {conversion.count_objects()} {what} ({task}); "
          f"{len(conversion.warnings)} warning(s)")
    return EXIT_OK
