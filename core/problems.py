"""The problems of a user's input file, collected so that one error names every one of them (file,
line or id, field, what is wrong) instead of stopping at the first; and warnings about what was
changed on the way (a box clipped to its image)."""
from __future__ import annotations

MAX_LISTED = 20   # problems listed in one error; the rest are counted


class Problems:
    def __init__(self, error_type: type[Exception]):
        self.error_type = error_type
        self.items: list[str] = []
        self.warnings: list[str] = []

    def add(self, where: str, field: str | None, message: str) -> None:
        self.items.append(f"{where}: field '{field}': {message}" if field else f"{where}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            more = len(self.items) - MAX_LISTED
            listed = "\n".join(self.items[:MAX_LISTED])
            raise self.error_type(listed + (f"\nand {more} more problem(s)" if more > 0 else ""))
