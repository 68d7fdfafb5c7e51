"""Reading JSONL files (labelled images, predictions): every non-blank line as a JSON object, with
its file and line number, so that every message about it can say where it is.

A file that cannot be read at all (missing, not UTF-8) raises the caller's error type; a line that
is not a JSON object becomes a problem of the caller's collector, and reading goes on, so that one
error lists every bad line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .problems import Problems
from .storage import filesystem, with_retries


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
        where = f"{url}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add(where, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(value, dict):
            problems.add(where, None, f"a line must be a JSON object, got {type(value).__name__}")
            continue
        lines.append(JsonLine(url, number, value))
    return lines
