"""Prepared images: each image of a trial's data decoded once, at the size its datasets decode it,
and kept on the machine's local disk for every later epoch and every later trial of the job there.

A sweep decodes the same images in every epoch of every trial; prepared, it decodes them once. On one
CPU thread the training loader delivered 214 fridge photos (499×666) a second at 224 px decoding
them, 310 reading them prepared (bench/prepared_dataset.py); what is left is the resize and crop.

Each prepared image is the exact output of `data.open_image(path, decode_size)` (EXIF rotation
applied, 8-bit RGB, JPEG decoded at the reduced scale the trainer already uses), stored as a binary
PPM file: a header of about 15 bytes and the raw pixels. The datasets read it with the same `open_image`,
which copies the pixels out (PPM is not a JPEG, so no reduced decode applies): the tensors are those
of the direct path to the pixel, and detection boxes and masks, kept in normalised coordinates and
made from the image's size, stay aligned. One file per image rather than shards, so that every
dataset (classification, detection, tiles) reads them through `Sample.path` unchanged. Per thread,
a 150×113 image is read from its PPM file in ~35 µs against ~13 µs from a memmap (384×512: 210 µs
against 90 µs), both small beside the resize that follows (~440 µs from 150×113 to 256 px).

Layout, in `<image cache>-prepared/` on the local disk, beside data.image_cache_dir():

    <key>.lock                    fcntl lock of the one process preparing <key>; the others wait for it
    <key>/images/<sha256>.ppm     the image whose file has that sha256, decoded; written aside and
                                  renamed into place: a file in place is whole
    <key>/index.json              written last, atomically: each source file's sha256, its prepared
                                  file, size in pixels and in bytes, and sha256; its presence says
                                  every image is in place

`key` hashes the format, the decode size, the decoder (PIL, or the batched one) and the sha256 of
each input file's bytes, not its path: a changed image, a new image or another decode size is
another key, prepared anew, and the same images fetched to other paths on another machine are the
same key. A process killed while preparing leaves no index.json; the next one takes the lock, keeps
the images already written whose size (and, where an older index lists it, hash) is right, and writes
the rest. An index whose files do not have its sizes is not used. Turned off with
AUTOML_IMAGES_PREPARED=0 or the job's `prepared_images: off`; skipped (with a log line) when the
decoded images would take more than half the free space of the disk.

A copy in the bucket (the job's `prepared_images: bucket`: `jobs/<id>/prepared/<key>/`, the same
files): the first trial that prepares a set on its machine uploads it, images first and index.json
last, so that an index in the bucket says the copy is whole; a trial on another machine that finds
no local set fetches the copy instead of decoding (each file checked against the index's sha256,
written aside and renamed; a file already here and whole is kept, so a killed fetch resumes), and
decodes itself whatever does not check out. Two machines starting together both decode (neither
waits on another machine, which a spot preemption may take away at any moment) and both upload the
same bytes. A copy is not the default: decoded pixels are 6× the bytes of the fridge photos' JPEGs
(11× for the thumbnails), and a machine with 16 cores decodes a photo in ~0.1 ms of wall time, about
what fetching its pixels takes at the 1.25 GB/s of a 10 Gb/s link; it pays where decoding is slow
(large photos, few cores, slow formats). The copy is an optimisation: a store that fails while
fetching or uploading it is logged and the trial goes on from its own set.

Where there is a GPU, JPEGs are decoded on it in batches (`decode_jpegs`: torchvision's batched
`decode_jpeg`, nvJPEG), then resized to the size PIL's reduced-scale decode gives, which the GPU
decoder does not do; PIL decodes what it leaves (other formats, CMYK, EXIF-rotated photos, a batch
that fails).
AUTOML_IMAGES_DECODE_DEVICE picks the decoder: "pil", or a torch device for the batched decoder
("cpu" runs the same code on the CPU, as the tests do); by default "cuda" when there is one, else
PIL. At full scale the pixels are PIL's (torchvision's CPU decoder is the same libjpeg-turbo); at a
reduced scale a full decode resized differs from PIL's scaled IDCT: on 64 fridge photos (499×666)
at 1/2 and 1/4 scale by 2.5 and 3.7 levels of 255 on average, under 50 for 99.9% of the values, up
to 96 on single edge pixels (measured on the CPU; nvJPEG's own rounding is not measured here).
The training transforms resize these images again; a set prepared on a GPU is read by the trials
of that machine, or of machines that prepare on a GPU too (the decoder is part of the key).
(torchvision 0.29 deprecates its image decoders in favour of TorchCodec's,
a dependency the project does not have yet: moving there is left for when it does.)
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as F

from automl_images.core.layout import PREPARED_INDEX
from automl_images.core.storage import Storage, describe, join

from . import data

log = logging.getLogger(__package__)

PREPARED_ENV = "AUTOML_IMAGES_PREPARED"   # "0": every epoch decodes the original files
FORMAT = 2                                # bump when what a prepared file holds changes
MAX_DISK_SHARE = 0.5                      # of the disk's free space, at most, for one prepared set
DECODE_DEVICE_ENV = "AUTOML_IMAGES_DECODE_DEVICE"   # "pil", or a torch device: see decode_device
# JPEGs per batched decode: full-size pixels of 32 photos of 12 MP are 1.2 GB of GPU memory.
DECODE_BATCH = 32
INDEX = PREPARED_INDEX


def enabled() -> bool:
    return os.environ.get(PREPARED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def prepared_root() -> str:
    """Beside the image cache (whose folder holds fetched files only): `<image cache>-prepared`."""
    return os.path.normpath(data.image_cache_dir()) + "-prepared"


@dataclasses.dataclass(frozen=True)
class PreparedImages:
    """A complete prepared set: where each source image's decoded copy is."""
    folder: str
    files: dict[str, str]   # source path -> prepared file
    decoded: int            # images this process decoded to prepare it (0: it was there)
    fetched: int = 0        # images this process fetched from the bucket's copy

    def substitute(self, samples: Sequence[data.Sample]) -> list[data.Sample]:
        """`samples`, each reading its prepared copy instead of its source file."""
        return [dataclasses.replace(s, path=self.files[s.path]) for s in samples]

    def verify(self) -> bool:
        """Every file has the size and sha256 the index lists (reads every byte)."""
        entries = _read_index(self.folder)
        return entries is not None and all(
            _file_sha256(os.path.join(self.folder, e["file"])) == e["sha256"] for e in entries)


def source_digests(paths: Sequence[str]) -> dict[str, str]:
    """The sha256 of each file's bytes, by path."""
    with ThreadPoolExecutor(max_workers=_threads()) as pool:   # hashlib releases the GIL
        return dict(zip(paths, pool.map(_file_sha256, paths)))


def prepare(paths: Sequence[str], decode_size: int | None, root: str | None = None,
            digests: dict[str, str] | None = None, copy: Storage | None = None) -> PreparedImages | None:
    """The images at `paths` (local files), decoded as `data.open_image(path, decode_size)` and
    prepared under `root` (default: prepared_root()); found there when some process prepared them
    before, else fetched from the bucket's `copy` (a prefix holding one folder per key) when it has
    them, else prepared here, under the key's lock, and uploaded to `copy`. `digests`:
    source_digests(paths), when known. None when they would not fit on the disk or cannot be
    written there (the caller decodes the originals)."""
    paths = sorted(set(paths))
    digests = digests or source_digests(paths)
    root = root or prepared_root()
    decoder = "pil" if decode_device() is None else "batched"
    contents = "".join(f"{d}\n" for d in sorted({digests[p] for p in paths}))
    key = hashlib.sha256(f"{FORMAT}\n{decode_size}\n{decoder}\n{contents}".encode()).hexdigest()[:32]
    folder = os.path.join(root, key)
    try:
        found = _open(folder, paths, digests)
        if found is None:
            os.makedirs(root, exist_ok=True)
            with _locked(folder + ".lock"):
                found = _open(folder, paths, digests)   # prepared by the process that held the lock
                if found is None:
                    if not _fits(paths, decode_size, root, folder):
                        return None
                    fetched = _fetch(copy, key, folder, set(digests.values())) if copy is not None else 0
                    decoded = _build(folder, paths, digests, decode_size)
                    log.info("prepared %d images at decode size %s in %s (%d decoded here, %d fetched from %s)",
                             len(paths), decode_size, folder, decoded, fetched, copy.url(key) if copy else "-")
                    found = PreparedImages(folder, _files(folder, paths, digests), decoded, fetched)
    except OSError as exc:   # a full disk, say: training can go on from the originals
        log.warning("images not prepared in %s: %s; every epoch decodes them", folder, exc)
        return None
    if copy is not None:
        _upload(copy, key, folder)
    return found


class JobImages:
    """The prepared images of one trial's samples, at each decode size its datasets ask for (the
    inputs' hashes are computed once for all of them). `copy`: the bucket prefix of the job's
    copy, None for none."""

    def __init__(self, samples: Sequence[data.Sample], root: str | None = None, copy: Storage | None = None):
        self.paths = sorted({s.path for s in samples})
        self.root = root
        self.copy = copy
        self._digests: dict[str, str] | None = None
        self._by_size: dict[int | None, PreparedImages | None] = {}

    def attach(self, dataset: data.ImageDataset) -> None:
        """Points `dataset` at the prepared copies of its images (decoded at its `min_size`); leaves
        it reading the originals where they cannot be prepared."""
        size = dataset.min_size
        if size not in self._by_size:
            if self._digests is None:
                self._digests = source_digests(self.paths)
            self._by_size[size] = prepare(self.paths, size, self.root, self._digests, self.copy)
        prepared = self._by_size[size]
        if prepared is not None:
            dataset.samples = prepared.substitute(dataset.samples)


# -- the bucket's copy -----------------------------------------------------------------------------

def _fetch(copy: Storage, key: str, folder: str, wanted: set[str]) -> int:
    """Fetches the bucket's copy of `key` into `folder`, the images whose sources have the sha256s
    `wanted` (called under the key's lock, before `_build`, which keeps what is whole and decodes
    the rest); returns how many files it fetched. Nothing when the bucket has no complete copy."""
    try:
        index = copy.read_json(join(key, INDEX))
    except Exception as exc:   # noqa: BLE001 - any store's error: the copy is an optimisation
        log.warning("the bucket's copy of the prepared images %s cannot be read (%s); decoding here",
                    copy.url(key), describe(exc))
        return 0
    entries = _index_entries(index)
    if entries is None:
        if index is not None:
            log.warning("the bucket's copy %s has a damaged index; decoding here", copy.url(join(key, INDEX)))
        return 0
    images = os.path.join(folder, "images")
    os.makedirs(images, exist_ok=True)

    def fetch(entry: dict[str, Any]) -> int:
        target = os.path.join(folder, entry["file"])
        if _whole(target, entry["sha256"]) is not None:
            return 0   # fetched (or decoded) before this process was killed
        handle, tmp = tempfile.mkstemp(dir=images, prefix=".tmp-")
        os.close(handle)
        try:
            copy.download_file(join(key, entry["file"]), tmp)
            if _file_sha256(tmp) != entry["sha256"]:
                log.warning("the bucket's copy of %s does not match its index; decoding it here",
                            copy.url(join(key, entry["file"])))
                return 0
            os.replace(tmp, target)
            return 1
        except Exception as exc:   # noqa: BLE001 - as above
            log.warning("%s not fetched (%s); decoding it here", copy.url(join(key, entry["file"])), describe(exc))
            return 0
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    with ThreadPoolExecutor(max_workers=_threads()) as pool:
        return sum(pool.map(fetch, [e for e in entries if e["source_sha256"] in wanted]))


def _upload(copy: Storage, key: str, folder: str) -> None:
    """Uploads the local set `folder` as the bucket's copy of `key`, unless the bucket has it: the
    files it lacks (one listing; an object in a bucket is whole once it is there), then the index."""
    try:
        if copy.exists(join(key, INDEX)):
            return
        there = set(copy.walk(key))
        entries = _read_index(folder) or []
        missing = [e["file"] for e in entries if e["file"] not in there]
        with ThreadPoolExecutor(max_workers=_threads()) as pool:
            list(pool.map(lambda name: copy.upload_file(os.path.join(folder, name), join(key, name)), missing))
        copy.upload_file(os.path.join(folder, INDEX), join(key, INDEX))
    except Exception as exc:   # noqa: BLE001 - any store's error: the copy is an optimisation
        log.warning("prepared images not copied to %s (%s); trials on other machines will decode them",
                    copy.url(key), describe(exc))
        return
    log.info("prepared images copied to %s (%d of %d files uploaded)", copy.url(key), len(missing), len(entries))


# -- on disk ---------------------------------------------------------------------------------------

def _fits(paths: Sequence[str], decode_size: int | None, root: str, folder: str) -> bool:
    """Whether the decoded images take at most MAX_DISK_SHARE of the free space (from the headers)."""
    needed = sum(w * h * 3 + 32 for w, h in (data.image_size(p, decode_size) for p in paths))
    free = shutil.disk_usage(root).free + _bytes_in(folder)
    if needed > MAX_DISK_SHARE * free:
        log.warning("images not prepared: decoded at %s px they take %.1f GB, more than %.0f%% of the %.1f GB "
                    "free under %s; every epoch decodes them", decode_size, needed / 1e9, 100 * MAX_DISK_SHARE,
                    free / 1e9, root)
        return False
    return True


def _threads() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cores))


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()   # hashlib.file_digest is Python 3.11's; we support 3.10
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _image_file(source_sha256: str) -> str:
    return f"images/{source_sha256}.ppm"


def _files(folder: str, paths: Sequence[str], digests: dict[str, str]) -> dict[str, str]:
    return {path: os.path.join(folder, _image_file(digests[path])) for path in paths}


def _contents(paths: Sequence[str], digests: dict[str, str]) -> list[tuple[str, str]]:
    """(source sha256, prepared file) of each distinct image, in the index's order."""
    return [(d, _image_file(d)) for d in sorted({digests[p] for p in paths})]


def _bytes_in(folder: str) -> int:
    """What a previous, interrupted preparation already wrote (it counts as free space)."""
    images = os.path.join(folder, "images")
    return sum(e.stat().st_size for e in os.scandir(images)) if os.path.isdir(images) else 0


def _read_index(folder: str) -> list[dict[str, Any]] | None:
    try:
        with open(os.path.join(folder, INDEX), encoding="utf-8") as f:
            return _index_entries(json.load(f))
    except (OSError, ValueError):
        return None


def _index_entries(index: Any) -> list[dict[str, Any]] | None:
    """The image entries of an index (local or the bucket's), None unless it has this format's shape
    (a file name from another index is one of ours, never a path elsewhere)."""
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("images"), list):
        return None
    entries = index["images"]
    fields = {"source_sha256": str, "file": str, "bytes": int, "sha256": str}
    if not all(isinstance(e, dict) and all(isinstance(e.get(k), t) for k, t in fields.items()) for e in entries):
        return None
    if not all(e["file"] == _image_file(e["source_sha256"]) and e["source_sha256"].isalnum() for e in entries):
        return None
    return entries


def _open(folder: str, paths: Sequence[str], digests: dict[str, str]) -> PreparedImages | None:
    """The set in `folder` when its index lists the images at `paths` and every file has its
    listed size."""
    entries = _read_index(folder)
    if entries is None:
        return None
    if [(e["source_sha256"], e["file"]) for e in entries] != _contents(paths, digests):
        log.warning("prepared images in %s: the index lists other images; preparing again", folder)
        return None
    for entry in entries:
        try:
            size = os.stat(os.path.join(folder, entry["file"])).st_size
        except OSError:
            size = -1
        if size != entry["bytes"]:
            log.warning("prepared image %s/%s: %d bytes, the index says %d; preparing again",
                        folder, entry["file"], size, entry["bytes"])
            return None
    return PreparedImages(folder, _files(folder, paths, digests), 0)


def _ppm_size(header: bytes) -> tuple[int, int, int] | None:
    """(width, height, header length) of a binary PPM as PIL writes it ("P6\\n<w> <h>\\n255\\n")."""
    parts = header.split(b"\n", 3)
    if len(parts) < 4 or parts[0] != b"P6" or parts[2] != b"255":
        return None
    try:
        width, height = (int(v) for v in parts[1].split())
    except ValueError:
        return None
    return width, height, len(parts[0]) + len(parts[1]) + len(parts[2]) + 3


def _whole(path: str, expected_sha256: str | None) -> dict[str, Any] | None:
    """The index entry of a prepared file already in place, when it is whole: its length is what its
    header says (and its hash what an older index says); None otherwise."""
    try:
        with open(path, "rb") as f:
            size, length = _ppm_size(f.read(64)), os.fstat(f.fileno()).st_size
        if size is None or length != size[2] + size[0] * size[1] * 3:
            return None
        digest = _file_sha256(path)   # in blocks: an image may be hundreds of megabytes
    except OSError:
        return None
    if expected_sha256 is not None and digest != expected_sha256:
        return None
    return {"width": size[0], "height": size[1], "bytes": length, "sha256": digest}


def _write(path: str, source: str, decode_size: int | None, image: Image.Image | None = None) -> dict[str, Any]:
    """Writes `image` (when not given: `source` decoded by PIL) as the prepared file `path`."""
    if image is None:
        image = data.open_image(source, decode_size)
    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as f:
            image.save(f, format="PPM")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    entry = _whole(path, None)
    if entry is None:
        raise OSError(f"{path}: the prepared image did not read back whole")
    return entry


def decode_device() -> torch.device | None:
    """Where `decode_jpegs` runs (AUTOML_IMAGES_DECODE_DEVICE, else CUDA when there is one); None:
    PIL decodes every image."""
    value = os.environ.get(DECODE_DEVICE_ENV, "").strip().lower()
    if value == "pil" or (not value and not torch.cuda.is_available()):
        return None
    try:
        return torch.device(value or "cuda")
    except RuntimeError:
        raise ValueError(f"{DECODE_DEVICE_ENV} must be 'pil' or a torch device, got {value!r}") from None


def decode_jpegs(sources: Sequence[str], decode_size: int | None,
                 device: torch.device | str) -> list[Image.Image | None]:
    """`data.open_image(source, decode_size)` of each source, for RGB and greyscale JPEGs without an
    EXIF rotation, by torchvision's batched decoder on `device`, resized to the reduced-scale size
    PIL would decode; None for the others and for all of them when the batch fails to decode: PIL
    decodes those. (On CUDA the decoder ignores `apply_exif_orientation`: rotated photos are left
    to PIL on every device, so that the CPU runs what CUDA runs.)"""
    out: list[Image.Image | None] = [None] * len(sources)
    chosen, jpegs, sizes = [], [], []
    for n, source in enumerate(sources):
        try:
            with Image.open(source) as image:
                if image.format != "JPEG" or image.mode not in ("RGB", "L") or \
                        image.width * image.height > data.MAX_IMAGE_PIXELS or image.getexif().get(0x0112, 1) != 1:
                    continue
            sizes.append(data.image_size(source, decode_size))
            jpegs.append(read_file(source))
            chosen.append(n)
        except OSError:
            continue   # PIL reports it
    if not jpegs:
        return out
    try:
        decoded = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:   # a file nvJPEG refuses, or no memory for the batch
        log.warning("batched JPEG decoding on %s failed (%s); PIL decodes these %d images", device, exc, len(jpegs))
        return out
    for n, pixels, (width, height) in zip(chosen, decoded, sizes, strict=True):
        if tuple(pixels.shape[-2:]) != (height, width):
            pixels = F.resize(pixels, [height, width], antialias=True)
        out[n] = Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())
    return out


def _build(folder: str, paths: Sequence[str], digests: dict[str, str], decode_size: int | None) -> int:
    """Writes the images not already whole in `folder`, then the index; returns how many it decoded.
    Called under the key's lock."""
    images = os.path.join(folder, "images")
    os.makedirs(images, exist_ok=True)
    for entry in [*os.scandir(images), *os.scandir(folder)]:   # left by a process killed while writing
        if entry.name.startswith(".tmp-"):
            os.unlink(entry.path)
    older = {e["file"]: e["sha256"] for e in _read_index(folder) or []}
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(folder, INDEX))  # a stale index must not outlive what it lists
    contents = _contents(paths, digests)
    source = {digests[p]: p for p in reversed(paths)}   # one file of each content: the first by path

    def whole(n: int) -> dict[str, Any] | None:
        name = contents[n][1]
        return _whole(os.path.join(folder, name), older.get(name))

    def write(n: int, image: Image.Image | None) -> dict[str, Any]:
        digest, name = contents[n]
        return _write(os.path.join(folder, name), source[digest], decode_size, image)

    device = decode_device()
    with ThreadPoolExecutor(max_workers=_threads()) as pool:   # PIL releases the GIL while decoding
        found = list(pool.map(whole, range(len(contents))))
        missing = [n for n, entry in enumerate(found) if entry is None]
        # In batches on the device, written as each batch is decoded (memory stays bounded); by PIL
        # in the pool's threads otherwise, and for what the device did not decode.
        step = DECODE_BATCH if device is not None else max(1, len(missing))
        for start in range(0, len(missing), step):
            chunk = missing[start:start + step]
            decoded = decode_jpegs([source[contents[n][0]] for n in chunk], decode_size, device) \
                if device is not None else [None] * len(chunk)
            for n, entry in zip(chunk, pool.map(write, chunk, decoded)):
                found[n] = entry
    entries = [{"source_sha256": digest, "file": name, **entry} for (digest, name), entry in zip(contents, found)]
    index = {"format": FORMAT, "decode_size": decode_size, "images": entries}
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        json.dump(index, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(folder, INDEX))
    return len(missing)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive fcntl lock on `path`, released when this process ends however it ends (the
    file itself is never removed: removing it would let two processes hold two different locks)."""
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to prepare the images (%s)", path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
