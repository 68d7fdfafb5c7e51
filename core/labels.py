"""What a JSONL `label` is, per task, without torch: the trainer's task adapters, `evaluate` and
`check-data` all parse labels with these, so the rules exist once.

    image-classification   a class name: "can" (an integer is read as a name: class ids are common)
    image-multi-labeling   a list of class names: ["can", "milk_bottle"], or [] when none applies;
                           a string holding a JSON list ("[\"can\"]", as tabular exports of Azure
                           labeled datasets store it) is accepted too
    detection tasks        a list of objects (`detection_labels.py`)

A class name is at most MAX_CLASS_NAME_CHARS characters: a name is copied into every metrics file,
and a 50 MB "name" would make each of them 100 MB.

Spellings: the integer 5, the string "5" and the string " 5 " all name class "5". Each file may use
any of them, but one class written two ways in the data is refused (`Spellings`), with both places:
merging them silently hides a labelling mistake, and guessing which one was meant is worse.
"""
from __future__ import annotations

import json
from functools import partial
from typing import Any, Callable

from .hyperparameters import Task

MAX_CLASS_NAME_CHARS = 256


def class_name(value: Any) -> str:
    """A class name; ValueError saying what is wrong otherwise."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"must be a class name (a string), got {_short(value)}")
    name = str(value).strip()
    if not name:
        raise ValueError("must be a non-empty class name")
    if len(name) > MAX_CLASS_NAME_CHARS:
        raise ValueError(f"a class name of {len(name)} characters is longer than the {MAX_CLASS_NAME_CHARS} "
                         f"allowed: {name[:40]!r}...")
    return name


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def class_list(value: Any) -> tuple[str, ...]:
    """A sorted tuple of distinct class names; ValueError saying what is wrong otherwise."""
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            raise ValueError(f"must be a list of class names for image-multi-labeling, got the string "
                             f"{_short(value)} (write [{json.dumps(text[:40])}] for one label)")
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deep"
            raise ValueError(f"a string label must hold a JSON list of class names: {reason}") from None
    if not isinstance(value, list):
        raise ValueError(f"must be a list of class names for image-multi-labeling, got {_short(value)}")
    names = set()
    for i, item in enumerate(value):
        try:
            names.add(class_name(item))
        except ValueError as exc:
            raise ValueError(f"item {i}: {exc}") from None
    return tuple(sorted(names))


PARSERS: dict[Task, Callable[[Any], Any]] = {Task.CLASSIFICATION: class_name, Task.MULTI_LABEL: class_list}


def parser(task: Task, *, lenient: bool = False) -> Callable[[Any], Any]:
    """The label parser of any task (lenient: detection only, see `detection_labels.py`)."""
    from .detection_labels import parse_detection_label  # it imports class_name from here

    if task in PARSERS:
        return PARSERS[task]
    return partial(parse_detection_label, segmentation=task is Task.INSTANCE_SEGMENTATION, lenient=lenient)


def classes_of(label: Any) -> tuple[str, ...]:
    """The class names a parsed label mentions, of any task."""
    if isinstance(label, str):
        return (label,)
    if isinstance(label, tuple):
        return label
    return label.classes()


def spellings(value: Any) -> list[Any]:
    """The class names of a raw (unparsed) `label` as the file writes them: what `Spellings`
    compares. Values that are not names are left to the parser to refuse."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return []
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        name = item.get("label") if isinstance(item, dict) else item
        if isinstance(name, (str, int)) and not isinstance(name, bool):
            out.append(name)
    return out


class Spellings:
    """The first way each class was written, and where; `add` returns a message when a class is
    written another way (5 and "5", "cat" and " cat")."""

    def __init__(self):
        self._first: dict[str, tuple[Any, str]] = {}

    def add(self, value: Any, where: str) -> str | None:
        name = str(value).strip()
        first = self._first.setdefault(name, (value, where))
        if type(first[0]) is type(value) and first[0] == value:
            return None
        return (f"class {json.dumps(value)} is also written {json.dumps(first[0])} ({first[1]}): both would "
                f"be class {name!r}; write each class one way")
