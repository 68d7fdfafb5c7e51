"""Training data: the JSONL annotation files, the train/validation split, and the images.

A JSONL file holds one JSON object per line (Azure ML AutoML for Images' format):

    {"image_url": "images/cat_01.png", "image_details": {"format": "png", "width": "32px", "height": "32px"},
     "label": "cat"}

`image_url` is one of:
- a path relative to the JSONL file's folder (it may not leave that folder),
- an absolute path or an fsspec URL (s3://, gs://, file://, https://),
- an Azure datastore reference, `AmlDatastore://<name>/<path>` or `azureml://datastores/<name>/paths/<path>`,
  mapped through the job file's `datastores: {name: root_url}`.

`image_details` is optional; when present its fields are checked (a format name, sizes as 499 or
"499px"), and a stated size or format that differs from the image's is a warning in the trial's
status, not a failure. What `label` holds depends on the task; the task adapter parses it.

Every image is fetched and decoded once, before training, so that a missing, corrupt or oversized
image is reported with its file and line up front instead of crashing epoch 7. Remote images are
fetched in parallel into a local disk cache, so every epoch reads local files.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import random
import re
import tempfile
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from automl_images.core import jsonl
from automl_images.core.problems import Problems
from automl_images.core.seeds import augmentation_seed
from automl_images.core.storage import filesystem, is_url, join, resolve, with_retries

# A decompression bomb (a tiny PNG that decodes to gigapixels) must fail as a bad image, not take
# the machine's memory. Checked from the header before decoding (PIL itself only refuses twice
# this many pixels, and merely warns between the two).
MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

# Environment variable naming the local folder where remote images are cached (shared by the trials
# of one machine: files are keyed by the URL's hash and written atomically).
IMAGE_CACHE_ENV = "AUTOML_IMAGES_IMAGE_CACHE"

# Fetching is mostly waiting on storage, and PIL releases the GIL while decoding.
FETCH_THREADS = 16


# Azure datastore references: the v1 form, and the v2 URI (short, or long with the workspace).
_AML_DATASTORE = re.compile(r"^amldatastore://(?P<name>[^/]*)/?(?P<path>.*)$", re.IGNORECASE)
_AZUREML_URI = re.compile(r"^azureml://(?:.*/)?datastores/(?P<name>[^/]+)/paths/(?P<path>.*)$", re.IGNORECASE)

# image_details.format names that PIL reports otherwise.
_FORMAT_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "jfif": "jpeg", "mpo": "jpeg", "tif": "tiff"}
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
    label: Any         # as parsed by the task adapter
    details: ImageDetails | None = None

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
    """A record whose image decoded, with the local file to read it from, and what its
    `image_details` got wrong, if anything."""
    record: Record
    path: str
    warning: str | None = None


# -- annotation files ------------------------------------------------------------------------------

def read_jsonl(url: str, parse_label: Callable[[Any], Any],
               datastores: Mapping[str, str] | None = None) -> list[Record]:
    """Parse a JSONL file. `parse_label` turns a line's `label` into the task's label and raises
    ValueError (its message says what is wrong) when it cannot. `datastores` maps Azure datastore
    names to root URLs. Blank lines are skipped; every bad line is listed in one DataError."""
    problems = Problems(DataError)
    records: list[Record] = []
    for line in jsonl.read_objects(url, problems):
        try:
            records.append(_record(line, parse_label, datastores or {}))
        except _FieldError as exc:
            problems.add(line.where, exc.field, exc.message)
    problems.raise_if_any()
    if not records:
        raise DataError(f"{url}: no records (the file is empty)")
    return records


class _FieldError(Exception):
    """What is wrong with one field of a line (read_jsonl adds where)."""

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
        raise _FieldError("image_url", f"must be a non-empty string, got {reference!r}")
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
        return join(resolve(datastores[name], jsonl_url), inside)
    if is_url(reference) or reference.startswith("/"):
        return reference
    # A relative path stays inside the JSONL's folder: a shared annotation file must not be able to
    # read arbitrary files of the machine that trains on it.
    if _inside(reference) is None:
        raise _FieldError("image_url", f"{reference!r} leaves the folder of the JSONL file (use an "
                                       "absolute path or URL instead)")
    return resolve(reference, jsonl_url)


def _inside(path: str) -> str | None:
    """`path` normalised, or None when it climbs out of its folder with '..'."""
    normalized = posixpath.normpath(path.replace("\\", "/")).lstrip("/")
    if normalized == ".." or normalized.startswith("../"):
        return None
    return "" if normalized == "." else normalized


def _parse_details(details: Any) -> ImageDetails:
    if not isinstance(details, dict):
        raise _FieldError("image_details", f"must be an object, got {details!r}")
    fmt = details.get("format")
    if fmt is not None:
        if not isinstance(fmt, str) or not fmt.strip():
            raise _FieldError("image_details.format", f"must be a format name such as \"jpg\", got {fmt!r}")
        fmt = fmt.strip().lower().lstrip(".")
        fmt = _FORMAT_ALIASES.get(fmt, fmt)
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
        elif isinstance(value, str) and _SIZE.match(value):
            number = int(_SIZE.match(value).group(1))
        if number is None or number <= 0:
            raise _FieldError(f"image_details.{name}", f"must be a positive number of pixels such as 499 "
                                                       f"or \"499px\", got {value!r}")
        sizes[name] = number
    return ImageDetails(fmt, sizes["width"], sizes["height"])


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

@dataclass
class FetchStats:
    """Process-wide counters of image fetching (for the log, benchmarks and tests)."""
    downloaded: int = 0        # remote objects read (GET requests that succeeded)
    downloaded_bytes: int = 0
    cache_hits: int = 0        # remote images found in the local cache
    in_flight: int = 0
    max_in_flight: int = 0     # the most downloads under way at once
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"downloaded": self.downloaded, "downloaded_bytes": self.downloaded_bytes,
                    "cache_hits": self.cache_hits, "max_in_flight": self.max_in_flight}


FETCH_STATS = FetchStats()


def image_cache_dir() -> str:
    return os.environ.get(IMAGE_CACHE_ENV) or os.path.join(tempfile.gettempdir(), "automl-images-cache")


def to_rgb(image: Image.Image) -> Image.Image:
    """An image as the model sees it: EXIF orientation applied, 8-bit RGB. Greyscale, palette and
    CMYK images are converted; 16- and 32-bit greyscale is scaled to 8 bits (PIL's own conversion
    clips it to white); transparent pixels are composited over white, as a viewer shows them."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and pixels.max(initial=0) > 255):
            pixels = pixels / 257.0             # 0..65535 onto 0..255
        elif image.mode == "F" and pixels.max(initial=0) <= 1.0:
            pixels = pixels * 255.0             # floats in 0..1
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_pixels(image: Image.Image) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        raise Image.DecompressionBombError(
            f"{image.width}x{image.height} = {image.width * image.height} pixels, more than the "
            f"{limit} allowed (a decompression bomb, or an image far larger than training needs)")


def open_image(path: str | IO[bytes], min_size: int | None = None) -> Image.Image:
    """Decode an image as the model sees it (see `to_rgb`). With `min_size`, a JPEG is decoded at
    the smallest scale (1/2, 1/4, 1/8) that keeps both sides at least `min_size`: the training
    transform resizes it to that anyway, and decoding a photo at 1/4 scale is several times faster."""
    with Image.open(path) as image:
        _check_pixels(image)
        if min_size and image.format == "JPEG":
            image.draft(None, (min_size, min_size))
        return to_rgb(image)


def image_size(path: str, min_size: int | None = None) -> tuple[int, int]:
    """(width, height) of `open_image(path, min_size)`, from the file's header alone: the JPEG
    draft scale is chosen without decoding, and EXIF rotations swap the sides."""
    with Image.open(path) as image:
        if min_size and image.format == "JPEG":
            image.draft(None, (min_size, min_size))
        width, height = image.size
        # Orientations 5 to 8 are rotations by 90 or 270 degrees.
        return (height, width) if image.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (width, height)


def _check_image(path: str, details: ImageDetails | None) -> str | None:
    """Decode the image fully (at the smallest JPEG scale: every byte is still decoded, so a
    truncated file fails); returns what `details` got wrong, if anything."""
    with Image.open(path) as image:
        _check_pixels(image)
        size, fmt = image.size, (image.format or "").lower()
        if image.format == "JPEG":
            image.draft(None, (1, 1))
        to_rgb(image)
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
    fmt = _FORMAT_ALIASES.get(fmt, fmt)
    if details.format is not None and fmt and details.format != fmt:
        problems.append(f"image_details says format {details.format!r}, the image is {fmt!r}")
    return "; ".join(problems) or None


def fetch_images(records: Sequence[Record], cache_dir: str | None = None,
                 threads: int = FETCH_THREADS, check: bool = True) -> tuple[list[Sample], list[SkippedImage]]:
    """Fetch (remote images into the local cache, in parallel) and decode every record's image once.
    Returns the samples whose image decoded, in record order, and the skipped ones with why.
    `check=False` only fetches (for a process whose images another has already checked)."""
    cache = cache_dir or image_cache_dir()
    filesystems = _Filesystems()

    def fetch(record: Record) -> Sample | SkippedImage:
        try:
            path = _local_copy(record.image_url, cache, filesystems)
            warning = _check_image(path, record.details) if check else None
            return Sample(record, path, warning)
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


class _Filesystems:
    """One fsspec filesystem per protocol for a whole fetch: creating one per image would open a
    new connection pool per image."""

    def __init__(self):
        self._by_protocol: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, url: str) -> tuple[Any, str]:
        protocol = url.split("://", 1)[0]
        with self._lock:
            fs = self._by_protocol.get(protocol)
            if fs is None:
                fs, path = filesystem(url)
                self._by_protocol[protocol] = fs
                return fs, path
        return fs, fs._strip_protocol(url)


def _local_copy(url: str, cache: str, filesystems: _Filesystems | None = None) -> str:
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
        with FETCH_STATS._lock:
            FETCH_STATS.cache_hits += 1
        return path
    fs, remote = (filesystems or _Filesystems()).get(url)
    with FETCH_STATS._lock:
        FETCH_STATS.in_flight += 1
        FETCH_STATS.max_in_flight = max(FETCH_STATS.max_in_flight, FETCH_STATS.in_flight)
    try:
        data = with_retries(lambda: fs.cat_file(remote))
    finally:
        with FETCH_STATS._lock:
            FETCH_STATS.in_flight -= 1
    with FETCH_STATS._lock:
        FETCH_STATS.downloaded += 1
        FETCH_STATS.downloaded_bytes += len(data)
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
    memory stays flat whatever the dataset's size.

    Indexed by (epoch, index) (see engine.EpochSampler), the random transform is seeded from
    (seed, epoch, index): an image gets the same augmentation in a resumed epoch, in any loader
    worker, in any process. The global RNG is left as it was (the model's dropout draws from it)."""

    # Per index, the group a training batch is drawn from (engine.EpochBatchSampler); None: any.
    group_ids: list[int] | None = None

    def __init__(self, samples: Sequence[Sample], targets: Sequence[Any], transform: Callable,
                 seed: int = 0, min_size: int | None = None):
        if len(samples) != len(targets):
            raise ValueError("samples and targets differ in length")
        self.samples = list(samples)
        self.targets = list(targets)
        self.transform = transform
        self.seed = seed
        self.min_size = min_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]):
        if isinstance(key, tuple):
            epoch, index = key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(augmentation_seed(self.seed, epoch, index))
                return self._item(index)
        return self._item(key)

    def _item(self, index: int):
        return self.transform(open_image(self.samples[index].path, self.min_size)), self.targets[index]
