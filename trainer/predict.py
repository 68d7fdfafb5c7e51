"""Batch scoring: `automl-images predict`, a model's predictions for many images as JSONL.

    automl-images predict s3://bucket/jobs/j/best photos/a.jpg photos/b.jpg --out predictions.jsonl
    automl-images predict j --root s3://bucket --jsonl val.jsonl --out predictions.jsonl
    automl-images predict s3://bucket/jobs/j/trials/t0003 --prefix s3://bucket/new/ --out new.jsonl

MODEL is a model folder, a trial folder, a job folder (its best model) or, with --root, a job id.
Each output line is the training JSONL schema plus scores (see export.py), after the image's
`image_url`: as given on the command line, as written in --jsonl (so `automl-images evaluate
--labels FILE --predictions OUT` matches them line for line), or the URL found under --prefix.
The output is a label file as it stands.

Images that cannot be read (missing, not an image, more pixels than allowed) are listed on stderr
and skipped. OUT is written once, atomically, at the end, and never replaces an existing file
unless --overwrite. Exit codes: 0 predictions written; 1 no image could be read, storage failed, or
interrupted (nothing written); 2 invalid input (no model there, a bad --jsonl line, OUT exists).
"""
from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

from PIL import Image

from automl_images.core import jsonl
from automl_images.core.problems import Problems
from automl_images.core.storage import Storage, filesystem, is_url, resolve, with_retries

from . import export
from .weights import WeightsError

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
RUNTIMES = ("torch", "onnx")
DEFAULT_BATCH_SIZE = 16
# What --prefix takes for an image (PIL opens more, but these are what image folders hold).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FETCH_THREADS = 8          # images fetched and decoded in parallel: bucket reads are latency-bound
MAX_LISTED = 20            # skipped images named on stderr; the rest are counted


class PredictError(ValueError):
    """Input that cannot be scored; the message names the file, line and field where there is one."""


class Runtime(Protocol):
    """What predict and serve need of a loaded model: export.LoadedModel, or the ONNX runtime's."""

    info: dict[str, Any]        # model.json: task, labels, decode_size, ...

    @property
    def labels(self) -> list[str]: ...
    def predict(self, images: Sequence[Any], batch_size: int = ...) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class ImageRef:
    image_url: str      # what the output line says
    location: str       # where the bytes are: a path or URL


@dataclass(frozen=True)
class Skipped:
    image_url: str
    reason: str


def load_runtime(model: str, runtime: str = "torch", root: str | None = None) -> Runtime:
    """The model of `model` (see export.model_folder) for `runtime`. PredictError when there is none,
    or the ONNX runtime is not there."""
    if runtime not in RUNTIMES:
        raise PredictError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "torch":
        load = export.load_model
    else:
        try:
            from .onnx_runtime import load_onnx_model as load
        except ImportError as exc:
            raise PredictError(f"--runtime onnx: ONNX Runtime is not installed ({exc}): pip install "
                               "'automl-images[export]', or use --runtime torch") from None
    try:
        return load(model, root)
    except (FileNotFoundError, WeightsError) as exc:  # WeightsError: a model.pt that is not safe weights
        raise PredictError(str(exc)) from None


def image_refs(images: Sequence[str] = (), jsonl_url: str | None = None, prefix: str | None = None) -> list[ImageRef]:
    """The images to score, from exactly one of: paths/URLs, a JSONL file's image_url lines, or
    every image file under a prefix."""
    if sum(bool(x) for x in (images, jsonl_url, prefix)) != 1:
        raise PredictError("give the images as arguments, or --jsonl FILE, or --prefix URL (exactly one)")
    if images:
        return [ImageRef(image, image) for image in images]
    if jsonl_url:
        return _jsonl_refs(jsonl_url)
    storage = Storage(prefix)
    found = [ImageRef(storage.url(key), storage.url(key)) for key in storage.walk("")
             if key.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise PredictError(f"{prefix}: no image files ({', '.join(IMAGE_EXTENSIONS)}) under this prefix")
    return found


def _jsonl_refs(url: str) -> list[ImageRef]:
    problems = Problems(PredictError)
    refs = [ImageRef(line.value["image_url"], resolve(line.value["image_url"].strip(), url))
            for line in jsonl.image_url_lines(url, problems)]
    problems.raise_if_any()
    if not refs:
        raise PredictError(f"{url}: no records (the file is empty)")
    return refs


def _decode(ref: ImageRef, decode_size: int | None) -> Image.Image | Skipped:
    try:
        fs, path = filesystem(ref.location)
        return export.decode_image(with_retries(lambda: fs.cat_file(path)), decode_size)
    except FileNotFoundError:
        return Skipped(ref.image_url, "not found")
    except Image.DecompressionBombError as exc:
        return Skipped(ref.image_url, f"too large: {exc}")
    except Exception as exc:  # noqa: BLE001 - any unreadable image is listed and skipped
        return Skipped(ref.image_url, f"cannot decode: {type(exc).__name__}: {exc}")


def predict_images(model: Runtime, refs: Sequence[ImageRef], batch_size: int = DEFAULT_BATCH_SIZE,
                   progress: bool = True) -> tuple[list[dict[str, Any]], list[Skipped]]:
    """One output line per readable image, in order, and the images skipped with why. Images are
    fetched and decoded a batch at a time (in threads), so memory holds one batch of pixels."""
    if batch_size < 1:
        raise PredictError(f"--batch-size must be at least 1, got {batch_size}")
    decode_size = model.info.get("decode_size")
    lines: list[dict[str, Any]] = []
    skipped: list[Skipped] = []
    with ThreadPoolExecutor(FETCH_THREADS) as pool, _progress(len(refs), progress) as bar:
        for start in range(0, len(refs), batch_size):
            batch = refs[start:start + batch_size]
            decoded = list(pool.map(lambda ref: _decode(ref, decode_size), batch))
            readable = [(ref, image) for ref, image in zip(batch, decoded) if isinstance(image, Image.Image)]
            skipped += [image for image in decoded if isinstance(image, Skipped)]
            if readable:
                records = model.predict([image for _, image in readable], batch_size)
                lines += [{"image_url": ref.image_url, **record} for (ref, _), record in zip(readable, records)]
            bar.update(len(batch))
    return lines, skipped


class _Counter:
    """A progress line on stderr where tqdm is not installed."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled

    def update(self, n: int) -> None:
        self.done += n
        if self.enabled:
            print(f"\rpredicted {self.done}/{self.total} images", end="", file=sys.stderr, flush=True)

    def __enter__(self) -> "_Counter":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled and self.done:
            print(file=sys.stderr)


def _progress(total: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:
        return _Counter(total, enabled and sys.stderr.isatty())
    # disable=None: off when stderr is not a terminal (logs, CI), as a counter would be noise there.
    return tqdm(total=total, unit="img", file=sys.stderr, disable=None if enabled else True)


def _output(out: str) -> tuple[Storage, str]:
    """The storage of OUT's folder and OUT's name in it."""
    folder, name = out.rsplit("/", 1) if is_url(out) else os.path.split(os.path.abspath(out))
    return Storage(folder), name


def write_predictions(lines: Sequence[dict[str, Any]], out: str, overwrite: bool = False) -> None:
    """The lines as JSONL, written atomically; an existing file is kept unless `overwrite`."""
    storage, name = _output(out)
    data = "".join(json.dumps(line) + "\n" for line in lines).encode("utf-8")
    if overwrite:
        storage.write_bytes(name, data)
    elif not storage.create_exclusive(name, data):
        raise PredictError(f"{out}: already exists (pass --overwrite to replace it)")


def _listed(skipped: Sequence[Skipped]) -> Iterator[str]:
    for item in skipped[:MAX_LISTED]:
        yield f"  {item.image_url}: {item.reason}"
    if len(skipped) > MAX_LISTED:
        yield f"  ... and {len(skipped) - MAX_LISTED} more"


def run_cli(model: str, images: Sequence[str], jsonl_url: str | None, prefix: str | None, out: str,
            runtime: str = "torch", batch_size: int = DEFAULT_BATCH_SIZE, root: str | None = None,
            overwrite: bool = False) -> int:
    """`automl-images predict`: writes OUT; skipped images and a summary on stderr."""
    try:
        storage, name = _output(out)
        if not overwrite and storage.exists(name):  # before the work; checked again when writing
            raise PredictError(f"{out}: already exists (pass --overwrite to replace it)")
        refs = image_refs(images, jsonl_url, prefix)
        loaded = load_runtime(model, runtime, root)
        lines, skipped = predict_images(loaded, refs, batch_size)
        if skipped:
            print(f"skipped {len(skipped)} of {len(refs)} images that could not be read:", file=sys.stderr)
            print("\n".join(_listed(skipped)), file=sys.stderr)
        if not lines:
            print("automl-images predict: no image could be read; nothing written", file=sys.stderr)
            return EXIT_FAILED
        write_predictions(lines, out, overwrite)
    except PredictError as exc:
        print(f"automl-images predict: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:  # storage unreachable, permissions: not the input's fault
        print(f"automl-images predict: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\nautoml-images predict: interrupted; nothing written", file=sys.stderr)
        return EXIT_FAILED
    print(f"{len(lines)} predictions written to {out}", file=sys.stderr)
    return EXIT_OK
