"""Writing what a conversion made: JSONL records or a COCO JSON file, never over an existing file
unless told; and `--split`, training and validation files split as the trainer splits."""
from __future__ import annotations

import json
import os
from typing import Any

from automl_images.core.annotations import DataError, Record
from automl_images.core.hyperparameters import Task
from automl_images.core.labels import classes_of, parser
from automl_images.core.split import split
from automl_images.core.storage import Storage

from .conversion import ConversionError


def jsonl_text(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def write_files(texts: dict[str, str], overwrite: bool = False) -> None:
    """Each text into its file, atomically; unless `overwrite`, no file is written when any exists."""
    if not overwrite:
        taken = [path for path in texts if os.path.exists(path)]
        if taken:
            raise ConversionError(f"{', '.join(taken)}: already exists (pass --overwrite to replace it)")
    for path, text in texts.items():
        folder, name = os.path.split(os.path.abspath(path))
        storage = Storage(folder)
        if overwrite:
            storage.write_text(name, text)
        elif not storage.create_exclusive(name, text.encode("utf-8")):   # made since the check above
            raise ConversionError(f"{path}: already exists (pass --overwrite to replace it)")


def write_jsonl(records: list[dict[str, Any]], output: str, overwrite: bool = False) -> None:
    """The records as a JSONL file, written atomically; an existing file is kept unless `overwrite`."""
    write_files({output: jsonl_text(records)}, overwrite)


def validation_path(output: str) -> str:
    """The validation file beside the training file OUTPUT: train.jsonl -> train_validation.jsonl."""
    stem, extension = os.path.splitext(output)
    return f"{stem}_validation{extension or '.jsonl'}"


def split_records(records: list[dict[str, Any]], task: Task, ratio: float, seed: int,
                  source: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training, validation) records, `ratio` of them for validation, split as a job without
    validation data is split (`core/split.py`: seeded; stratified by each image's set of classes,
    every class kept in training)."""
    if not 0 < ratio < 1:
        raise ConversionError(f"--split {ratio:g}: the share of the images for validation must be between 0 and 1")
    parse = parser(task)
    wrapped = [Record(source, line, record["image_url"], parse(record["label"]))
               for line, record in enumerate(records, start=1)]
    try:
        train, validation = split(wrapped, ratio, seed, key=lambda r: classes_of(r.label))
    except DataError as exc:
        raise ConversionError(str(exc)) from None
    return [records[r.line - 1] for r in train], [records[r.line - 1] for r in validation]
