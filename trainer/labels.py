"""What a JSONL `label` is, per classification task, without torch: the task adapters parse labels
with these, and so does `evaluate.py` (which then starts in a second, not five).

    image-classification   a class name: "can" (an integer is read as a name: class ids are common)
    image-multi-labeling   a list of class names: ["can", "milk_bottle"], or [] when none applies;
                           a string holding a JSON list ("[\"can\"]", as tabular exports of Azure
                           labeled datasets store it) is accepted too
"""
from __future__ import annotations

import json
from typing import Any, Callable

from automl_images.core.hyperparameters import Task


def class_name(value: Any) -> str:
    """A class name; ValueError saying what is wrong otherwise."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"must be a class name (a string), got {value!r}")
    name = str(value).strip()
    if not name:
        raise ValueError("must be a non-empty class name")
    return name


def class_list(value: Any) -> tuple[str, ...]:
    """A sorted tuple of distinct class names; ValueError saying what is wrong otherwise."""
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            raise ValueError(f"must be a list of class names for image-multi-labeling, got the string "
                             f"{value!r} (write [{json.dumps(text)}] for one label)")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"a string label must hold a JSON list of class names: {exc.msg}") from None
    if not isinstance(value, list):
        raise ValueError(f"must be a list of class names for image-multi-labeling, got {value!r}")
    names = set()
    for i, item in enumerate(value):
        try:
            names.add(class_name(item))
        except ValueError as exc:
            raise ValueError(f"item {i}: {exc}") from None
    return tuple(sorted(names))


PARSERS: dict[Task, Callable[[Any], Any]] = {Task.CLASSIFICATION: class_name, Task.MULTI_LABEL: class_list}
