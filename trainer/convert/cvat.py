"""CVAT's "CVAT for images 1.1" XML into our JSONL.

    <annotations><version>1.1</version><meta>...</meta>
      <image id="0" name="photos/1.jpg" width="640" height="480">
        <box label="can" xtl="10.5" ytl="20" xbr="100" ybr="200" occluded="0" rotation="0"/>
        <polygon label="carton" points="10,20;30,40;50,60"/>
        <tag label="indoor"/>
      </image>
    </annotations>

`<box>` is a box in pixels (a `rotation`, in degrees about its centre, gives its axis-aligned
bounds, with a warning); `<polygon>` a polygon (and its bounds as the box); `<tag>` a class of the
whole image, for image-classification and image-multi-labeling (which also takes the classes of
the shapes). Other shapes (polylines, points, masks, ellipses, cuboids) are left out, with one
warning a kind. An image is `name` below --images, else its file name there; its size is the XML's.
Images without shapes are written with an empty label. Every message names the XML line.
"""
from __future__ import annotations

import os
from collections import Counter
from xml.etree import ElementTree
from xml.parsers import expat

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
    records_of,
    rotated_bounds,
)

TASKS = tuple(Task)
_KINDS = ("box", "polygon", "tag")


def read_xml(path: str) -> tuple[ElementTree.Element, dict[ElementTree.Element, int]]:
    """The XML's root element, and each element's line (ElementTree keeps none: expat, which it
    uses too, tells the line of each start tag)."""
    builder = ElementTree.TreeBuilder()
    parser = expat.ParserCreate()
    lines: dict[ElementTree.Element, int] = {}

    def start(tag: str, attributes: dict[str, str]) -> None:
        lines[builder.start(tag, attributes)] = parser.CurrentLineNumber

    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        with open(path, "rb") as f:
            parser.ParseFile(f)
    except FileNotFoundError:
        raise ConversionError(f"{path}: file not found") from None
    except expat.ExpatError as exc:
        raise ConversionError(f"{path}:{exc.lineno}: invalid XML: {expat.ErrorString(exc.code)}") from None
    return builder.close(), lines


def _image(element: ElementTree.Element, where: str, images: str, problems: Problems) -> ImageEntry | None:
    file_name = element.get("name")
    if not file_name:
        problems.add(where, "name", "missing: the image's path")
        return None
    for candidate in (file_name, os.path.basename(file_name)):
        if os.path.isfile(os.path.join(images, candidate)):
            return find_image(where, os.path.join(images, candidate), problems, element.get("width"),
                              element.get("height"))
    problems.add(where, "name", f"image file not found: {os.path.join(images, file_name)}")
    return None


def _shape(element: ElementTree.Element, where: str, problems: Problems) -> Shape | None:
    label = name(element.get("label"), where, "label", problems)
    if element.tag == "tag":
        return Shape(where, label, None) if label else None
    if element.tag == "box":
        corners = coordinates([element.get(k) for k in ("xtl", "ytl", "xbr", "ybr")], where, "xtl/ytl/xbr/ybr",
                              problems)
        rotation = coordinates([element.get("rotation", 0)], where, "rotation", problems)
        if corners is None or rotation is None or label is None:
            return None
        x0, y0, x1, y1 = corners
        if x0 > x1 or y0 > y1:
            problems.add(where, "xtl/ytl/xbr/ybr", f"inverted box: ({x0:g}, {y0:g}) is not above and left of "
                                                     f"({x1:g}, {y1:g})")
            return None
        box = (x0, y0, x1, y1)
        if rotation[0] % 360:
            box = rotated_bounds([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], ((x0 + x1) / 2, (y0 + y1) / 2), rotation[0])
            problems.warnings.append(f"{where}: a box rotated by {rotation[0]:g} degrees; its axis-aligned bounds "
                                     f"are the box")
        return Shape(where, label, box)
    points = element.get("points") or ""
    pairs = [p.split(",") for p in points.split(";") if p.strip()]
    if len(pairs) < 3 or any(len(p) != 2 for p in pairs):
        problems.add(where, "points", f"must be x,y pairs separated by ';', at least 3, got {points!r}")
        return None
    flat = coordinates([c for p in pairs for c in p], where, "points", problems)
    return Shape(where, label, None, [flat]) if flat is not None and label else None


def from_cvat(path: str, images: str, output: str, task: Task | str = Task.OBJECT_DETECTION) -> Conversion:
    """A "CVAT for images 1.1" XML file as JSONL records, in its image order (see the module docstring)."""
    task = check_task(task, TASKS, "CVAT XML")
    root, lines = read_xml(path)
    if root.tag != "annotations" or root.find("track") is not None:
        raise ConversionError(f"{path}: not \"CVAT for images 1.1\" XML (an <annotations> root with <image> "
                              f"elements{'; <track> is CVAT for video' if root.find('track') is not None else ''})")
    problems = Problems(ConversionError)
    left_out: Counter[str] = Counter()
    converted = []
    for element in root.iter("image"):
        where = f"{path}:{lines[element]}"
        image = _image(element, where, images, problems)
        if image is None:
            continue
        for child in element:
            if child.tag not in _KINDS:
                left_out[child.tag] += 1
                continue
            shape = _shape(child, f"{path}:{lines[child]}", problems)
            if shape is not None:
                image.shapes.append(shape)
        converted.append(image)
    if not converted and not problems.items:
        raise ConversionError(f"{path}: no <image> element in it")
    for kind, count in sorted(left_out.items()):
        problems.warnings.append(f"{path}: {count} <{kind}> element(s) left out (box, polygon and tag are converted)")
    return records_of(converted, task, output, problems)
