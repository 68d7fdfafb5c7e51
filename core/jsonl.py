"""Reading JSONL files (labelled images, predictions): every non-blank line as a JSON object, with
its file and line number, so that every message about it can say where it is.

A file that cannot be read at all (missing, not UTF-8) raises the caller's error type; a line that
is not a JSON object becomes a problem of the caller's collector, and reading goes on, so that one
error lists every bad line. So does a line longer than MAX_LINE_CHARS or nested deeper than
MAX_DEPTH: no labelled image needs either, and both would make parsing it, and every file that copies
it, cost without bound.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .problems import Problems
from .storage import filesystem, with_retries

MAX_LINE_CHARS = 16_000_000   # an instance-segmentation line of thousands of polygon points is well under
MAX_DEPTH = 16                # a line, its label list, an object, its polygon list, a polygon: 5


@dataclass(frozen=True)
class JsonLine:
    source: str               # the file's URL or path
    number: int               # 1-based line number
    value: dict[str, Any]     # the line's JSON object

    @property
    def where(self) -> str:
        return f"{self.source}:{self.number}"


def read_text(url: str, error_type: type[Exception]) -> str:
    fs, path = filesystem(url)
    try:
        raw = with_retries(lambda: fs.cat_file(path))
    except FileNotFoundError:
        raise error_type(f"{url}: file not found") from None
    try:
        return raw.decode("utf-8-sig")  # a BOM is common in files saved on Windows
    except UnicodeDecodeError as exc:
        raise error_type(f"{url}: not UTF-8 text ({exc})") from None


def read_objects(url: str, problems: Problems) -> list[JsonLine]:
    """Every non-blank line of the file that holds a JSON object; the other lines are added to
    `problems` (whose error type is raised for a file that cannot be read)."""
    lines = []
    for number, line in enumerate(read_text(url, problems.error_type).splitlines(), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            problems.add(url, None, f"a line of {len(line)} characters is longer than the {MAX_LINE_CHARS} allowed",
                         number)
            continue
        too_deep = f"JSON nested more than {MAX_DEPTH} levels deep"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add(url, None, f"invalid JSON: {exc.msg} (column {exc.colno})", number)
            continue
        except RecursionError:  # deeper than Python's parser goes
            problems.add(url, None, too_deep, number)
            continue
        if depth(value) > MAX_DEPTH:
            problems.add(url, None, too_deep, number)
            continue
        if not isinstance(value, dict):
            problems.add(url, None, f"a line must be a JSON object, got {type(value).__name__}", number)
            continue
        lines.append(JsonLine(url, number, value))
    return lines


def image_url_lines(url: str, problems: Problems) -> list[JsonLine]:
    """The lines of the file that are JSON objects with a non-empty string `image_url` (labels,
    predictions, images to score); each other line is a problem naming its file, line and field."""
    lines = []
    for line in read_objects(url, problems):
        reference = line.value.get("image_url")
        if not isinstance(reference, str) or not reference.strip():
            problems.add(line.where, "image_url", "missing" if reference is None
                         else f"must be a non-empty string, got {reference!r}")
            continue
        lines.append(line)
    return lines


def depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:  # deeper than that is refused anyway: no need to walk it all
            stack.extend((child, level + 1) for child in children)
    return deepest
