"""Training data: the images of the JSONL annotation files, fetched, checked and decoded.

The files are read, and each line checked, by `automl_images.core.annotations` (torch-free: the
controller's `check-data` applies the same rules); the split of a job without validation data is
`automl_images.core.split`'s. The names the trainer uses from them are re-exported here.

Every image is fetched and decoded once, before training, so that a missing, corrupt or oversized
image is reported with its file and line up front instead of crashing epoch 7. Remote images are
fetched in parallel into a local disk cache, so every epoch reads local files; web URLs that point
into a private network are refused unless the job allows them (`core/addresses.py`).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from automl_images.core import addresses
from automl_images.core.annotations import (
    MAX_IMAGE_PIXELS,
    DataError,
    ImageDetails,
    Record,
    check_class_count,
    check_known_classes,
    details_problem,
    read_jsonl,
)
from automl_images.core.seeds import augmentation_seed
from automl_images.core.split import split
from automl_images.core.storage import filesystem, is_url, with_retries

__all__ = ["DataError", "ImageDetails", "Record", "check_class_count", "check_known_classes", "read_jsonl",
           "split", "Sample", "SkippedImage", "fetch_images", "open_image", "image_size", "check_bad_images",
           "ImageDataset", "to_rgb", "FETCH_STATS", "image_cache_dir"]

# Checked from the header before decoding (PIL itself only refuses twice this many pixels, and
# merely warns between the two).
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

# Environment variable naming the local folder where remote images are cached (shared by the trials
# of one machine: files are keyed by the URL's hash and written atomically).
IMAGE_CACHE_ENV = "AUTOML_IMAGES_IMAGE_CACHE"

# Fetching is mostly waiting on storage, and PIL releases the GIL while decoding.
FETCH_THREADS = 16


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
    return details_problem(details, size, fmt)


def fetch_images(records: Sequence[Record], cache_dir: str | None = None, threads: int = FETCH_THREADS,
                 check: bool = True, allow_private: bool = False) -> tuple[list[Sample], list[SkippedImage]]:
    """Fetch (remote images into the local cache, in parallel) and decode every record's image once.
    Returns the samples whose image decoded, in record order, and the skipped ones with why.
    `check=False` only fetches (for a process whose images another has already checked);
    `allow_private`: web URLs may point into private networks (the job's allow_private_image_urls)."""
    cache = cache_dir or image_cache_dir()
    filesystems = _Filesystems()

    def fetch(record: Record) -> Sample | SkippedImage:
        try:
            path = _local_copy(record.image_url, cache, filesystems, allow_private)
            warning = _check_image(path, record.details) if check else None
            return Sample(record, path, warning)
        except FileNotFoundError:
            return SkippedImage(record.where, record.image_url, "not found")
        except addresses.PrivateAddressError as exc:
            return SkippedImage(record.where, record.image_url, f"refused: {exc}")
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


def _local_copy(url: str, cache: str, filesystems: _Filesystems | None = None, allow_private: bool = False) -> str:
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
    web = addresses.is_web(url)
    if web and not allow_private:
        addresses.check_public(url)
    fs, remote = (filesystems or _Filesystems()).get(url)
    # No redirect is followed: the address checked is the address read.
    options = {"allow_redirects": False} if web else {}
    with FETCH_STATS._lock:
        FETCH_STATS.in_flight += 1
        FETCH_STATS.max_in_flight = max(FETCH_STATS.max_in_flight, FETCH_STATS.in_flight)
    try:
        data = with_retries(lambda: fs.cat_file(remote, **options))
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
