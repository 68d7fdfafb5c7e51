"""The validation split of a job without validation data: seeded, stratified by the classes of each
record, computed once — by the controller, when it accepts the job — and written into the job folder
(`layout.Root.job_split`), so that every trial trains and validates on the same images, whatever its
own seed and whenever it runs. A trial reads the file; it never splits again.

    {"training_data": URL, "records": N, "ratio": 0.2, "seed": 7, "validation_lines": [3, 9, ...]}

The file names the training file and its number of records: a trial whose training file has changed
since refuses to guess.
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Any, Callable, Sequence

from .annotations import DataError, Record


def split(records: Sequence[Record], ratio: float, seed: int,
          key: Callable[[Record], Any]) -> tuple[list[Record], list[Record]]:
    """Split off `ratio` of the records for validation, class by class (`key` gives a record's
    stratum), so that every class keeps at least one training record. Seeded: the same records and
    seed always give the same split."""
    by_key: dict[Any, list[Record]] = defaultdict(list)
    for record in records:
        by_key[key(record)].append(record)
    rng = random.Random(seed)
    train: list[Record] = []
    validation: list[Record] = []
    # Sorted keys: dict order would follow the file, and the split must only depend on the seed.
    for stratum in sorted(by_key, key=repr):
        group = list(by_key[stratum])
        rng.shuffle(group)
        n_validation = min(round(len(group) * ratio), len(group) - 1)
        validation.extend(group[:n_validation])
        train.extend(group[n_validation:])
    if not validation:
        # Tiny data where every class rounds down to zero: take one record of the largest class.
        largest = max(by_key.values(), key=len)
        if len(largest) < 2:
            raise DataError(f"{records[0].source}: {len(records)} record(s) are too few to split off "
                            f"a validation set; give validation data or more records")
        moved = next(r for r in train if r in largest)
        train.remove(moved)
        validation.append(moved)
    order = {id(r): i for i, r in enumerate(records)}
    return sorted(train, key=lambda r: order[id(r)]), sorted(validation, key=lambda r: order[id(r)])


def to_json(records: Sequence[Record], validation: Sequence[Record], ratio: float, seed: int) -> dict[str, Any]:
    """The split file's content."""
    return {"training_data": records[0].source, "records": len(records), "ratio": ratio, "seed": seed,
            "validation_lines": sorted(r.line for r in validation)}


def apply(records: Sequence[Record], saved: Any, where: str) -> tuple[list[Record], list[Record]]:
    """The (training, validation) records of a saved split (`where`: the split file, for messages)."""
    lines = saved.get("validation_lines") if isinstance(saved, dict) else None
    if not isinstance(lines, list) or not all(isinstance(n, int) for n in lines):
        raise DataError(f"{where}: not a split file (no list of validation_lines)")
    if saved.get("records") != len(records) or saved.get("training_data") != records[0].source:
        raise DataError(f"{where}: split of {saved.get('training_data')} ({saved.get('records')} records), "
                        f"but the training data is {records[0].source} ({len(records)} records): the file "
                        "changed after the job was accepted")
    chosen = set(lines)
    train = [r for r in records if r.line not in chosen]
    validation = [r for r in records if r.line in chosen]
    if len(validation) != len(chosen):
        raise DataError(f"{where}: names lines that {records[0].source} does not have")
    return train, validation
