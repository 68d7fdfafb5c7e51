"""What a JSONL `label` is for image-object-detection and image-instance-segmentation, without torch.

A label is a list of objects, as Azure ML writes them; coordinates are normalised to [0, 1]
(fractions of the image's width and height), (topX, topY) the top-left corner:

    {"image_url": "images/1.jpg",
     "label": [{"label": "can", "topX": 0.1, "topY": 0.2, "bottomX": 0.5, "bottomY": 0.9,
                "isCrowd": 0}]}

- The older single-object form (`label` one object, not a list) is read as a list of one.
- Numbers and booleans written as strings ("0.25", "1", "true") are read as numbers and booleans;
  `isCrowd` is optional (false).
- image-instance-segmentation objects also have `polygon`: a list of polygons, each a flat list of
  normalised x, y pairs ([x1, y1, x2, y2, ...], at least 3 points). The box may then be left out:
  it is the polygons' bounding box.
- Refused, with the object's index and field: boxes outside [0, 1], inverted or empty boxes,
  polygons of fewer than 3 points or with coordinates outside [0, 1]. `lenient=True` instead clips
  coordinates to [0, 1], swaps inverted corners, drops empty boxes and short polygons (and an object
  left with no polygon), and says what it did in `DetectionLabel.notes`.
- `isCrowd` objects are kept in the label, flagged: training leaves them out of the losses
  (`training_objects`), evaluation treats them as COCO does (a match to one is neither a true nor a
  false positive, and they are not counted among the objects to find).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, TypeVar

from .hyperparameters import Task
from .labels import class_name

BOX_FIELDS = ("topX", "topY", "bottomX", "bottomY")
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}


@dataclass(frozen=True)
class DetectionObject:
    label: str
    box: tuple[float, float, float, float]            # normalised (x0, y0, x1, y1), x0 < x1, y0 < y1
    is_crowd: bool = False
    polygons: tuple[tuple[float, ...], ...] = ()        # normalised flat x, y lists (segmentation)
    score: float | None = None                          # predictions only


@dataclass(frozen=True)
class DetectionLabel:
    objects: tuple[DetectionObject, ...]
    notes: tuple[str, ...] = field(default=(), compare=False)   # what lenient parsing changed

    def training_objects(self) -> tuple[DetectionObject, ...]:
        """The objects that count in the training losses: all but isCrowd ones."""
        return tuple(o for o in self.objects if not o.is_crowd)

    def classes(self) -> tuple[str, ...]:
        return tuple(sorted({o.label for o in self.objects}))


def number(value: Any) -> float:
    """A finite number, or a string holding one; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return value


def boolean(value: Any) -> bool:
    """true/false, 1/0, or those written as strings; ValueError otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(f"must be true or false (or 1 or 0), got {value!r}")


def _in_unit(name: str, value: float, lenient: bool, notes: list[str]) -> float:
    if 0.0 <= value <= 1.0:
        return value
    if not lenient:
        raise ValueError(f"field '{name}': {value!r} is outside [0, 1] (coordinates are fractions of the "
                         f"image's width and height)")
    clipped = min(1.0, max(0.0, value))
    notes.append(f"'{name}' {value!r} clipped to {clipped!r}")
    return clipped


def _box(obj: dict[str, Any], lenient: bool, notes: list[str]) -> tuple[float, float, float, float]:
    values = []
    for name in BOX_FIELDS:
        if obj.get(name) is None:
            raise ValueError(f"field '{name}': missing")
        try:
            values.append(_in_unit(name, number(obj[name]), lenient, notes))
        except ValueError as exc:
            message = str(exc)
            raise ValueError(message if message.startswith("field") else f"field '{name}': {message}") from None
    x0, y0, x1, y1 = values
    if x0 > x1 or y0 > y1:
        if not lenient:
            which = "topX > bottomX" if x0 > x1 else "topY > bottomY"
            raise ValueError(f"inverted box ({which}): (topX, topY) is the top-left corner")
        notes.append("inverted corners swapped")
        x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    if x0 == x1 or y0 == y1:
        raise _Empty("empty box (zero width or height)")
    return x0, y0, x1, y1


class _Empty(ValueError):
    """An object with nothing left in it: refused, or dropped when lenient."""


def _polygons(value: Any, lenient: bool, notes: list[str]) -> tuple[tuple[float, ...], ...]:
    if value is None:
        raise ValueError("field 'polygon': missing (image-instance-segmentation objects need one)")
    if not isinstance(value, list) or not value:
        raise ValueError(f"field 'polygon': must be a non-empty list of polygons, got {value!r}")
    if all(not isinstance(v, list) for v in value):
        value = [value]        # one flat polygon, not wrapped in a list
    out = []
    for i, polygon in enumerate(value):
        name = f"polygon[{i}]"
        if not isinstance(polygon, list):
            raise ValueError(f"field '{name}': must be a flat list of x, y numbers, got {polygon!r}")
        if len(polygon) % 2:
            raise ValueError(f"field '{name}': has an odd number of coordinates ({len(polygon)}): "
                             f"it must be x, y pairs")
        coords = []
        for j, v in enumerate(polygon):
            try:
                coords.append(_in_unit(f"{name}[{j}]", number(v), lenient, notes))
            except ValueError as exc:
                message = str(exc)
                raise ValueError(message if message.startswith("field")
                                 else f"field '{name}[{j}]': {message}") from None
        if len(coords) < 6:
            if not lenient:
                raise ValueError(f"field '{name}': has {len(coords) // 2} point(s); a polygon needs at least 3")
            notes.append(f"'{name}' of {len(coords) // 2} point(s) dropped")
            continue
        out.append(tuple(coords))
    if not out:
        raise _Empty("no polygon of 3 points or more")
    return tuple(out)


def _polygons_box(polygons: tuple[tuple[float, ...], ...]) -> tuple[float, float, float, float]:
    xs = [x for p in polygons for x in p[0::2]]
    ys = [y for p in polygons for y in p[1::2]]
    if min(xs) == max(xs) or min(ys) == max(ys):
        raise _Empty("the polygons enclose no area")
    return min(xs), min(ys), max(xs), max(ys)


T = TypeVar("T")


def _field(obj: dict[str, Any], name: str, parse: Callable[[Any], T]) -> T:
    """`parse(obj[name])`, its ValueError naming the field."""
    try:
        return parse(obj[name])
    except ValueError as exc:
        raise ValueError(f"field {name!r}: {exc}") from None


def detection_object(obj: Any, *, segmentation: bool = False, lenient: bool = False,
                     scored: bool = False, notes: list[str] | None = None) -> DetectionObject:
    """One object of a label; ValueError naming the field otherwise (`_Empty` for an object with no
    area left). `scored`: a prediction, with a `score` in [0, 1]."""
    notes = [] if notes is None else notes
    if not isinstance(obj, dict):
        raise ValueError(f"must be an object with label, topX, topY, bottomX, bottomY, got {obj!r}")
    if obj.get("label") is None:
        raise ValueError("field 'label': missing")
    name = _field(obj, "label", class_name)
    is_crowd = _field(obj, "isCrowd", boolean) if obj.get("isCrowd") is not None else False
    score = None
    if scored:
        if obj.get("score") is None:
            raise ValueError("field 'score': missing (a prediction's confidence, in [0, 1])")
        score = _field(obj, "score", number)
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"field 'score': {score!r} is outside [0, 1]")
    polygons: tuple[tuple[float, ...], ...] = ()
    if segmentation:
        polygons = _polygons(obj.get("polygon"), lenient, notes)
        has_box = any(obj.get(f) is not None for f in BOX_FIELDS)
        box = _box(obj, lenient, notes) if has_box else _polygons_box(polygons)
    else:
        box = _box(obj, lenient, notes)
    return DetectionObject(name, box, is_crowd, polygons, score)


def parse_detection_label(value: Any, *, segmentation: bool = False, lenient: bool = False,
                          scored: bool = False) -> DetectionLabel:
    """A line's `label`: a list of objects (or one object, the older form); [] is an image with no
    object. ValueError saying which object and field is wrong otherwise."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"must be a list of objects with label, topX, topY, bottomX, bottomY, got {value!r}")
    objects, notes = [], []
    for i, item in enumerate(value):
        mine: list[str] = []
        try:
            objects.append(detection_object(item, segmentation=segmentation, lenient=lenient,
                                            scored=scored, notes=mine))
        except _Empty as exc:
            if not lenient:
                raise ValueError(f"object {i}: {exc}") from None
            mine.append(f"dropped: {exc}")
        except ValueError as exc:
            raise ValueError(f"object {i}: {exc}") from None
        notes.extend(f"object {i}: {note}" for note in mine)
    return DetectionLabel(tuple(objects), tuple(notes))


def parser(task: Task, *, lenient: bool = False, scored: bool = False) -> Callable[[Any], DetectionLabel]:
    """The label parser of a detection task, as `annotations.read_jsonl` takes it."""
    if task not in (Task.OBJECT_DETECTION, Task.INSTANCE_SEGMENTATION):
        raise ValueError(f"{task.value} is not a detection task")
    return partial(parse_detection_label, segmentation=task is Task.INSTANCE_SEGMENTATION,
                   lenient=lenient, scored=scored)
