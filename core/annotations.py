"""The JSONL annotation files, torch-free: each line read into a `Record` (the image's URL resolved,
`image_details` checked, the label parsed by the task's parser), with every refusal naming the file,
the line and the field. The trainer reads its data through this module and `check-data` checks it
through it, so both apply the same rules.

A line holds (Azure ML AutoML for Images' format):

    {"image_url": "images/cat_01.png", "image_details": {"format": "png", "width": "32px", "height": "32px"},
     "label": "cat"}

The data reference may also be an Azure MLTable folder, whose MLTable file lists the JSONL file
(`mltable.py`).

`image_url` is one of:
- a path relative to the JSONL file's folder: it may not leave that folder, neither by '..' nor
  through a symbolic link (links are resolved before the check),
- an absolute path or an fsspec URL (s3://, gs://, az://, file://, https://; see `addresses.py` for
  which web hosts are allowed; an https URL of an Azure blob is read through adlfs with the machine's
  Azure credentials when they are for its storage account, `storage.azure_blob_url`),
- an Azure datastore reference, `AmlDatastore://<name>/<path>` or `azureml://datastores/<name>/paths/<path>`,
  mapped through the job file's `datastores: {name: root_url}`.

`image_details` is optional; when present its fields are checked (a format name, sizes as 499 or
"499px"); a stated size or format that differs from the image's is a warning, not a failure.

Limits: at most MAX_CLASSES classes (`check_class_count`); class names and line sizes are bounded
where they are parsed (`labels.py`, `jsonl.py`).
"""
from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from . import jsonl, mltable
from .labels import Spellings, spellings
from .problems import Problems
from .storage import azure_blob_url, is_url, join, resolve

# Each class costs a row of every per-epoch metric and an output of the model; 10,000 covers the
# largest public classification sets (ImageNet-21k's winter release has 10,450: use a subset).
MAX_CLASSES = 10_000

# A decompression bomb (a tiny PNG that decodes to gigapixels) must fail as a bad image, not take
# the machine's memory: refused from the header, before decoding, by the trainer and check-data.
MAX_IMAGE_PIXELS = 64_000_000

# Azure datastore references: the v1 form, and the v2 URI (short, or long with the workspace).
_AML_DATASTORE = re.compile(r"^amldatastore://(?P<name>[^/]*)/?(?P<path>.*)$", re.IGNORECASE)
_AZUREML_URI = re.compile(r"^azureml://(?:.*/)?datastores/(?P<name>[^/]+)/paths/(?P<path>.*)$", re.IGNORECASE)

# image_details.format names that PIL reports otherwise.
FORMAT_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "jfif": "jpeg", "mpo": "jpeg", "tif": "tiff"}
_SIZE = re.compile(r"^\s*(\d+)\s*(?:px)?\s*$", re.IGNORECASE)


class DataError(ValueError):
    """Training data the trainer cannot use; the message names the file, the line and the field."""


@dataclass(frozen=True)
class ImageDetails:
    """A line's `image_details`, checked; any field may be absent."""
    format: str | None = None     # lower case, aliases folded: "jpeg", "png", ...
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class Record:
    """One line of a JSONL file."""
    source: str        # the JSONL file
    line: int          # 1-based line number in `source`
    image_url: str     # resolved: an absolute path or a URL
    label: Any         # as parsed by the task's parser
    details: ImageDetails | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def read_jsonl(url: str, parse_label: Callable[[Any], Any], datastores: Mapping[str, str] | None = None,
               spellings_seen: Spellings | None = None) -> list[Record]:
    """Parse a JSONL file. `parse_label` turns a line's `label` into the task's label and raises
    ValueError (its message says what is wrong) when it cannot. `datastores` maps Azure datastore
    names to root URLs; `spellings_seen` is shared by the files of one data set (a class written
    two ways across them is refused too). Blank lines are skipped; every bad line is listed in one
    DataError."""
    problems = Problems(DataError)
    records = read_records(url, parse_label, problems, datastores, spellings_seen)
    problems.raise_if_any()
    if not records:
        raise DataError(f"{url}: no records (the file is empty)")
    return records


def read_records(url: str, parse_label: Callable[[Any], Any], problems: Problems,
                 datastores: Mapping[str, str] | None = None,
                 spellings_seen: Spellings | None = None) -> list[Record]:
    """`read_jsonl`'s records, its problems added to `problems` (a file that cannot be read at all
    raises `problems.error_type`). `url` may name an MLTable folder: its JSONL file is read, and an
    MLTable that cannot be read is a problem of its own file, line and field (core/mltable.py)."""
    spellings_seen = Spellings() if spellings_seen is None else spellings_seen
    records: list[Record] = []
    jsonl_url = mltable.data_file(url, problems)
    if jsonl_url is None:
        return records
    for line in jsonl.read_objects(jsonl_url, problems):
        try:
            record = _record(line, parse_label, datastores or {})
        except _FieldError as exc:
            problems.add(line.source, exc.field, exc.message, line.number)
            continue
        clashes = [m for m in (spellings_seen.add(v, line.where) for v in spellings(line.value["label"])) if m]
        if clashes:
            problems.add(line.source, "label", clashes[0], line.number)
            continue
        records.append(record)
    return records


def check_class_count(classes: Iterable[str], source: str) -> None:
    count = len(set(classes))
    if count > MAX_CLASSES:
        raise DataError(f"{source}: {count} classes, more than the {MAX_CLASSES} allowed")


class _FieldError(Exception):
    """What is wrong with one field of a line (read_records adds where)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _record(line: jsonl.JsonLine, parse_label: Callable[[Any], Any], datastores: Mapping[str, str]) -> Record:
    obj = line.value
    reference = obj.get("image_url")
    if reference is None:
        raise _FieldError("image_url", "missing")
    if not isinstance(reference, str) or not reference.strip():
        raise _FieldError("image_url", f"must be a non-empty string, got {reference!r}"[:200])
    image_url = _image_url(reference.strip(), line.source, datastores)

    details = obj.get("image_details")
    if details is not None:
        details = _parse_details(details)

    if "label" not in obj or obj["label"] is None:
        raise _FieldError("label", "missing")
    try:
        label = parse_label(obj["label"])
    except ValueError as exc:
        raise _FieldError("label", str(exc)) from None
    return Record(line.source, line.number, image_url, label, details)


def _image_url(reference: str, jsonl_url: str, datastores: Mapping[str, str]) -> str:
    """The absolute path or URL that `reference` names."""
    datastore = _AML_DATASTORE.match(reference) or _AZUREML_URI.match(reference)
    if datastore:
        name, path = datastore.group("name"), datastore.group("path")
        if name not in datastores:
            known = f"known: {', '.join(sorted(datastores))}" if datastores else "the job file maps none"
            raise _FieldError("image_url", f"unknown datastore {name!r} in {reference!r} ({known}; "
                                           f"add it to the job file: `datastores: {{{name}: s3://bucket/prefix}}`)")
        inside = _inside(path)
        if inside is None:
            raise _FieldError("image_url", f"{reference!r} leaves the root of datastore {name!r}")
        base = resolve(datastores[name], jsonl_url)
        return _stays_inside(join(base, inside), base, f"the root of datastore {name!r}", reference)
    if is_url(reference) or reference.startswith("/"):
        return azure_blob_url(reference)
    # A relative path stays inside the JSONL's folder: a shared annotation file must not be able to
    # read arbitrary files of the machine that trains on it.
    if _inside(reference) is None:
        raise _FieldError("image_url", f"{reference!r} leaves the folder of the JSONL file (use an "
                                       "absolute path or URL instead)")
    folder = jsonl_url.rsplit("/", 1)[0] if "/" in jsonl_url else "."
    return _stays_inside(resolve(reference, jsonl_url), folder, "the folder of the JSONL file", reference)


def _stays_inside(url: str, folder: str, what: str, reference: str) -> str:
    """`url`, when it is a local path whose real path (symbolic links resolved) is inside `folder`'s."""
    local = _local_path(url)
    if local is None:
        return url
    real, real_folder = os.path.realpath(local), os.path.realpath(_local_path(folder) or folder)
    if os.path.commonpath([real, real_folder]) != real_folder:
        raise _FieldError("image_url", f"{reference!r} is a symbolic link to {real}, outside {what}")
    return url


def _local_path(url: str) -> str | None:
    if url.startswith("file://"):
        return url[len("file://"):]
    return None if is_url(url) else url


def _inside(path: str) -> str | None:
    """`path` normalised, or None when it climbs out of its folder with '..'."""
    normalized = posixpath.normpath(path.replace("\\", "/")).lstrip("/")
    if normalized == ".." or normalized.startswith("../"):
        return None
    return "" if normalized == "." else normalized


def _parse_details(details: Any) -> ImageDetails:
    if not isinstance(details, dict):
        raise _FieldError("image_details", f"must be an object, got {details!r}"[:200])
    fmt = details.get("format")
    if fmt is not None:
        if not isinstance(fmt, str) or not fmt.strip() or len(fmt) > 16:
            raise _FieldError("image_details.format", f"must be a format name such as \"jpg\", got {fmt!r}"[:200])
        fmt = fmt.strip().lower().lstrip(".")
        fmt = FORMAT_ALIASES.get(fmt, fmt)
    sizes = {}
    for name in ("width", "height"):
        value = details.get(name)
        if value is None:
            sizes[name] = None
            continue
        number = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str) and len(value) < 32 and _SIZE.match(value):
            number = int(_SIZE.match(value).group(1))
        if number is None or number <= 0:
            raise _FieldError(f"image_details.{name}", f"must be a positive number of pixels such as 499 "
                                                       f"or \"499px\", got {value!r}"[:200])
        sizes[name] = number
    return ImageDetails(fmt, sizes["width"], sizes["height"])


def details_problem(details: ImageDetails | None, size: tuple[int, int], fmt: str) -> str | None:
    """What `details` gets wrong about an image of `size` (width, height; either orientation, as
    EXIF may rotate it) and PIL format name `fmt`; None when nothing."""
    if details is None:
        return None
    problems = []
    stated = (details.width, details.height)
    if None not in stated and stated != size and stated != size[::-1]:
        problems.append(f"image_details says {stated[0]}x{stated[1]}, the image is {size[0]}x{size[1]}")
    elif details.width is not None and details.height is None and details.width not in size:
        problems.append(f"image_details says width {details.width}, the image is {size[0]}x{size[1]}")
    elif details.height is not None and details.width is None and details.height not in size:
        problems.append(f"image_details says height {details.height}, the image is {size[0]}x{size[1]}")
    fmt = fmt.lower()
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if details.format is not None and fmt and details.format != fmt:
        problems.append(f"image_details says format {details.format!r}, the image is {fmt!r}")
    return "; ".join(problems) or None


def check_known_classes(validation: Iterable[Record], known: set[str],
                        classes_of: Callable[[Any], Iterable[str]]) -> None:
    """Every class of the validation data must occur in the training data: the model has no output
    for a class it never saw."""
    for record in validation:
        for name in classes_of(record.label):
            if name not in known:
                raise DataError(f"{record.where}: field 'label': class {name!r} does not occur in the "
                                f"training data")


def same_file(first: str, second: str) -> bool:
    """Whether two data URLs name one file (local paths compared through their real paths)."""
    a, b = _local_path(first), _local_path(second)
    if a is not None and b is not None:
        return os.path.realpath(a) == os.path.realpath(b)
    return first.rstrip("/") == second.rstrip("/")
