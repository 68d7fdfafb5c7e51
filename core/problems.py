"""The problems of a user's input file — a job file, a data file, a file to convert — collected so
that one error names every one of them instead of stopping at the first, each the same way:

    <file>[:<line>]: field '<field>': <what is wrong>

(the field a dotted path in a job file, a JSON field of a data line; no field when the problem is
the line or the file itself); and warnings about what was changed on the way (a box clipped to its
image).
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_LISTED = 20   # problems listed in one error; the rest are counted


@dataclass(frozen=True)
class Problem:
    source: str               # the file (its URL or path), or "file:line" where the caller has joined them
    field: str                # "" when the problem is the file or line itself
    message: str
    line: int | None = None   # 1-based

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: field '{self.field}': {self.message}" if self.field else f"{where}: {self.message}"


def render(problems: list[Problem]) -> str:
    """The problems one a line, the first MAX_LISTED of them, and how many more there are."""
    more = len(problems) - MAX_LISTED
    listed = "\n".join(str(p) for p in problems[:MAX_LISTED])
    return listed + (f"\nand {more} more problem(s)" if more > 0 else "")


class Problems:
    """A collector that raises `error_type` with every problem once the input has been read."""

    def __init__(self, error_type: type[Exception]):
        self.error_type = error_type
        self.items: list[Problem] = []
        self.warnings: list[str] = []

    def add(self, where: str, field: str | None, message: str, line: int | None = None) -> None:
        self.items.append(Problem(where, field or "", message, line))

    def raise_if_any(self) -> None:
        if self.items:
            raise self.error_type(render(self.items))
