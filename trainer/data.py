"""Training data: the JSONL annotation files, the train/validation split, and the images.

A JSONL file holds one JSON object per line (Azure ML AutoML for Images' format):

    {"image_url": "images/cat_01.png", "image_details": {"format": "png", "width": 32, "height": 32},
     "label": "cat"}

`image_url` is relative to the JSONL file's folder, or an absolute path, or an fsspec URL
(s3://...). What `label` holds depends on the task; the task adapter parses it (see `tasks/`).

Every image is fetched and decoded once, before training, so that a missing or corrupt image is
reported with its file and line up front instead of crashing epoch 7. Remote images are cached on
local disk, so later epochs read them locally.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import random
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from PIL import Image, ImageOps

from .storage import filesystem, is_url, resolve, with_retries

# A decompression bomb (a tiny PNG that decodes to gigapixels) must fail as a bad image, not take
# the machine's memory. PIL refuses images of more than twice this many pixels.
MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

# Environment variable naming the local folder where remote images are cached (shared by the trials
# of one machine: files are keyed by the URL's hash and written atomically).
IMAGE_CACHE_ENV = "AUTOML_IMAGES_IMAGE_CACHE"

# Fetching is mostly waiting on storage, and PIL releases the GIL while decoding.
FETCH_THREADS = 16

# Bad lines listed in one error message; the rest are counted.
MAX_ERRORS_LISTED = 5


class DataError(ValueError):
    """Training data the trainer cannot use; the message names the file, the line and the field."""


@dataclass(frozen=True)
class Record:
    """One line of a JSONL file."""
    source: str        # the JSONL file
    line: int          # 1-based line number in `source`
    image_url: str     # resolved: an absolute path or a URL
    label: Any         # as parsed by the task adapter

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class SkippedImage:
    """An image that could not be read; the trial goes on without it (up to a share)."""
    where: str
    image_url: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"where": self.where, "image_url": self.image_url, "reason": self.reason}


@dataclass(frozen=True)
class Sample:
    """A record whose image decoded, with the local file to read it from."""
    record: Record
    path: str


# -- annotation files ------------------------------------------------------------------------------

def read_jsonl(url: str, parse_label: Callable[[Any], Any]) -> list[Record]:
    """Parse a JSONL file. `parse_label` turns a line's `label` into the task's label and raises
    ValueError (its message says what is wrong) when it cannot. Blank lines are skipped."""
    fs, path = filesystem(url)
    try:
        raw = with_retries(lambda: fs.cat_file(path))
    except FileNotFoundError:
        raise DataError(f"{url}: file not found") from None
    try:
        text = raw.decode("utf-8-sig")  # a BOM is common in files saved on Windows
    except UnicodeDecodeError as exc:
        raise DataError(f"{url}: not UTF-8 text ({exc})") from None

    records: list[Record] = []
    errors: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(_parse_line(url, number, line, parse_label))
        except DataError as exc:
            errors.append(str(exc))
    if errors:
        more = len(errors) - MAX_ERRORS_LISTED
        listed = "; ".join(errors[:MAX_ERRORS_LISTED])
        raise DataError(listed + (f"; and {more} more bad line(s)" if more > 0 else ""))
    if not records:
        raise DataError(f"{url}: no records (the file is empty)")
    return records


def _parse_line(url: str, number: int, line: str, parse_label: Callable[[Any], Any]) -> Record:
    where = f"{url}:{number}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: a line must be a JSON object, got {type(obj).__name__}")

    reference = obj.get("image_url")
    if reference is None:
        raise DataError(f"{where}: field 'image_url': missing")
    if not isinstance(reference, str) or not reference.strip():
        raise DataError(f"{where}: field 'image_url': must be a non-empty string, got {reference!r}")
    if not (is_url(reference) or reference.startswith("/")):
        # A relative path stays inside the JSONL's folder: a shared annotation file must not be able
        # to read arbitrary files of the machine that trains on it.
        normalized = posixpath.normpath(reference.replace("\\", "/"))
        if normalized == ".." or normalized.startswith("../"):
            raise DataError(f"{where}: field 'image_url': {reference!r} leaves the folder of the "
                            f"JSONL file (use an absolute path or URL instead)")

    details = obj.get("image_details")
    if details is not None and not isinstance(details, dict):
        raise DataError(f"{where}: field 'image_details': must be an object, got {details!r}")

    if "label" not in obj or obj["label"] is None:
        raise DataError(f"{where}: field 'label': missing")
    try:
        label = parse_label(obj["label"])
    except ValueError as exc:
        raise DataError(f"{where}: field 'label': {exc}") from None
    return Record(url, number, resolve(reference, url), label)


def split(records: Sequence[Record], ratio: float, seed: int,
          key: Callable[[Record], Any]) -> tuple[list[Record], list[Record]]:
    """Split off `ratio` of the records for validation, class by class (`key` gives a record's
    stratum), so that every class keeps at least one training record. Seeded: the same records and
    seed always give the same split, which resuming a trial relies on."""
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


def check_known_classes(validation: Iterable[Record], known: set[str],
                        classes_of: Callable[[Any], Iterable[str]]) -> None:
    """Every class of the validation data must occur in the training data: the model has no output
    for a class it never saw."""
    for record in validation:
        for name in classes_of(record.label):
            if name not in known:
                raise DataError(f"{record.where}: field 'label': class {name!r} does not occur in the "
                                f"training data")


# -- images ----------------------------------------------------------------------------------------

def image_cache_dir() -> str:
    return os.environ.get(IMAGE_CACHE_ENV) or os.path.join(tempfile.gettempdir(), "automl-images-cache")


def open_image(path: str) -> Image.Image:
    """Decode an image as the model sees it: EXIF orientation applied, RGB."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")


def fetch_images(records: Sequence[Record], cache_dir: str | None = None,
                 threads: int = FETCH_THREADS) -> tuple[list[Sample], list[SkippedImage]]:
    """Fetch (remote images into the local cache) and decode every record's image once.
    Returns the samples whose image decoded, in record order, and the skipped ones with why."""
    cache = cache_dir or image_cache_dir()

    def fetch(record: Record) -> Sample | SkippedImage:
        try:
            path = _local_copy(record.image_url, cache)
            open_image(path)  # decode fully: a truncated file fails here, not during training
            return Sample(record, path)
        except FileNotFoundError:
            return SkippedImage(record.where, record.image_url, "not found")
        except Image.DecompressionBombError as exc:
            return SkippedImage(record.where, record.image_url, f"too large: {exc}")
        except Exception as exc:  # noqa: BLE001 - any unreadable image is skipped and reported
            return SkippedImage(record.where, record.image_url, f"cannot decode: {type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(fetch, records))
    samples = [r for r in results if isinstance(r, Sample)]
    skipped = [r for r in results if isinstance(r, SkippedImage)]
    return samples, skipped


def _local_copy(url: str, cache: str) -> str:
    """A local file with the bytes of `url`: the path itself for local files, else a cached copy."""
    if not is_url(url) or url.startswith("file://"):
        path = url[len("file://"):] if url.startswith("file://") else url
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        return path
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()
    extension = os.path.splitext(url.rsplit("/", 1)[-1])[1][:8]
    path = os.path.join(cache, digest[:2], digest + extension)
    if os.path.exists(path):
        return path
    fs, remote = filesystem(url)
    data = with_retries(lambda: fs.cat_file(remote))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Another trial on this machine may be caching the same URL: write aside, then rename.
    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(handle, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def check_bad_images(skipped: Sequence[SkippedImage], total: int, max_ratio: float) -> None:
    """Fail when more than `max_ratio` of the images could not be read: training on what is left
    would hide a broken dataset behind a poor model."""
    if total and len(skipped) / total > max_ratio:
        listed = "; ".join(f"{s.where}: {s.image_url}: {s.reason}" for s in skipped[:20])
        more = f"; and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        raise DataError(f"{len(skipped)} of {total} images could not be read "
                        f"({len(skipped) / total:.1%}, more than max_bad_image_ratio={max_ratio:g}): "
                        f"{listed}{more}")


class ImageDataset:
    """(image tensor, target) pairs; each image is decoded from its local file on every access, so
    memory stays flat whatever the dataset's size."""

    def __init__(self, samples: Sequence[Sample], targets: Sequence[Any], transform: Callable):
        if len(samples) != len(targets):
            raise ValueError("samples and targets differ in length")
        self.samples = list(samples)
        self.targets = list(targets)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return self.transform(open_image(self.samples[index].path)), self.targets[index]
