"""Pascal VOC XML into our JSONL.

A folder of .xml files, one per image (`filename`, `size`, `object` with `name`, `bndbox`,
`difficult`). The size comes from the XML, else from the image. `difficult` 1 becomes isCrowd 1:
VOC's evaluation ignores difficult objects (they are not counted among the objects to find, and a
detection of one is neither right nor wrong), which is what our evaluation does with isCrowd
objects; training leaves both out of the losses. VOC boxes have no polygons, so VOC does not
convert to image-instance-segmentation.
"""
from __future__ import annotations

import os
from xml.etree import ElementTree

from automl_images.core.detection_labels import number
from automl_images.core.hyperparameters import Task
from automl_images.core.problems import Problems

from .conversion import (
    IMAGE_EXTENSIONS,
    Conversion,
    ConversionError,
    ImageEntry,
    Shape,
    check_task,
    find_image,
    name,
    positive_int,
    records_of,
)

TASKS = (Task.OBJECT_DETECTION, Task.MULTI_LABEL)


def _voc_text(element: ElementTree.Element, path: str) -> str | None:
    found = element.find(path)
    return found.text.strip() if found is not None and found.text and found.text.strip() else None


def _voc_image(xml_path: str, root: ElementTree.Element, images: str, problems: Problems) -> ImageEntry | None:
    """The image an XML file labels: its `filename` below `images`, else the XML's name with an
    image extension (VOC files copied between tools often keep a stale `filename`)."""
    stem = os.path.splitext(os.path.basename(xml_path))[0]
    filename = _voc_text(root, "filename")
    candidates = ([filename] if filename else []) + [stem + ext for ext in IMAGE_EXTENSIONS]
    for candidate in candidates:
        if os.path.isfile(os.path.join(images, candidate)):
            width, height = _voc_text(root, "size/width"), _voc_text(root, "size/height")
            # Some tools write a size of 0 when they did not know it: the image has the real one.
            if positive_int(width) is None or positive_int(height) is None:
                width = height = None
            return find_image(xml_path, os.path.join(images, candidate), problems, width, height)
    problems.add(xml_path, "filename", f"image file not found: {os.path.join(images, filename or stem + '.*')}")
    return None


def _voc_object(element: ElementTree.Element, where: str, problems: Problems) -> Shape | None:
    label = name(_voc_text(element, "name"), where, "name", problems)
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
    if label is None:
        return None
    x0, y0, x1, y1 = corners
    if x0 > x1 or y0 > y1:
        problems.add(where, "bndbox", f"inverted box: xmin {x0:g} > xmax {x1:g}" if x0 > x1
                       else f"inverted box: ymin {y0:g} > ymax {y1:g}")
        return None
    # VOC's pixel coordinates are 1-based and inclusive: (xmin - 1, xmax) is the box in the 0-based,
    # half-open coordinates of COCO and ours.
    return Shape(where, label, (x0 - 1, y0 - 1, x1, y1), is_crowd=difficult == "1")


def from_voc(annotations: str, images: str, output: str, task: Task | str = Task.OBJECT_DETECTION) -> Conversion:
    """A folder of Pascal VOC XML files as JSONL records, in file name order (see the module docstring)."""
    task = check_task(task, TASKS, "Pascal VOC XML (boxes, not polygons)")
    if not os.path.isdir(annotations):
        raise ConversionError(f"{annotations}: not a folder of Pascal VOC .xml files")
    files = sorted(p for p in os.listdir(annotations) if p.lower().endswith(".xml"))
    if not files:
        raise ConversionError(f"{annotations}: no .xml file in it")
    problems = Problems(ConversionError)
    converted = []
    for file_name in files:
        xml_path = os.path.join(annotations, file_name)
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
    return records_of(converted, task, output, problems)
