"""A CSV of images and their labels into our JSONL (image-multi-labeling, or image-classification).

    image,labels
    1.jpg,can milk_bottle
    2.jpg,carton
    3.jpg,

The first row is a header naming the columns: `image` (or `filename`, as Azure's fridge samples
name it) holds the image's path relative to --images; `labels` (or `label`) holds its class names,
separated by --label-delimiter (a space by default: runs of spaces separate one name from the next; use
`;` or `|` when names have spaces). Other columns are left out. An empty labels cell is an image
with no class (image-multi-labeling). An image on several rows gets the classes of all of them (a
"long" CSV of one row per image and class); for image-classification it must have one class in all.
Fields may be quoted as the csv module reads them (Excel's dialect); every message names the line.
"""
from __future__ import annotations

import csv
import io
import os

from automl_images.core.hyperparameters import Task
from automl_images.core.problems import Problems

from .conversion import Conversion, ConversionError, ImageEntry, Shape, check_task, find_image, name, records_of

TASKS = (Task.MULTI_LABEL, Task.CLASSIFICATION)
IMAGE_COLUMNS = ("image", "filename")
LABEL_COLUMNS = ("labels", "label")


def _column(header: list[str], names: tuple[str, ...], path: str) -> int:
    folded = [cell.strip().lower() for cell in header]
    for column in names:
        if column in folded:
            return folded.index(column)
    raise ConversionError(f"{path}:1: the header names no `{names[0]}` column (nor `{'`, `'.join(names[1:])}`); "
                          f"got {header!r}. The first row must name the columns.")


def _split(cell: str, delimiter: str) -> list[str]:
    parts = cell.split() if delimiter == " " else cell.split(delimiter)
    return [part.strip() for part in parts if part.strip()]


def from_csv(path: str, images: str, output: str, task: Task | str = Task.MULTI_LABEL,
             label_delimiter: str = " ") -> Conversion:
    """A CSV file's images and labels as JSONL records, in the order of their first row (see the
    module docstring)."""
    task = check_task(task, TASKS, "a CSV of images and labels")
    if len(label_delimiter) != 1 or label_delimiter in ",\"\r\n":
        raise ConversionError(f"--label-delimiter {label_delimiter!r}: must be one character other than a comma, "
                              f"a quote or a line break")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConversionError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ConversionError(f"{path}: not UTF-8 text ({exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise ConversionError(f"{path}: empty (the first row must name the `image` and `labels` columns)")
        image_column = _column(header, IMAGE_COLUMNS, path)
        label_column = _column(header, LABEL_COLUMNS, path)
        problems = Problems(ConversionError)
        by_path: dict[str, ImageEntry] = {}
        line = reader.line_num + 1
        for row in reader:
            where, line = f"{path}:{line}", reader.line_num + 1    # a quoted field may span lines
            if not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(image_column, label_column):
                problems.add(where, None, f"{len(row)} field(s); the header has {len(header)}")
                continue
            file_name = row[image_column].strip()
            if not file_name:
                problems.add(where, header[image_column].strip(), "missing: the image's path below --images")
                continue
            image_path = os.path.abspath(os.path.join(images, file_name))
            if image_path not in by_path:
                image = find_image(where, image_path, problems)
                if image is None:
                    continue
                by_path[image_path] = image
            for label in _split(row[label_column], label_delimiter):
                class_name = name(label, where, header[label_column].strip(), problems)
                if class_name is not None:
                    by_path[image_path].shapes.append(Shape(where, class_name, None))
    except csv.Error as exc:
        raise ConversionError(f"{path}:{reader.line_num}: not CSV: {exc}") from None
    if not by_path and not problems.items:
        raise ConversionError(f"{path}: no image rows below the header")
    return records_of(by_path.values(), task, output, problems)
