"""`automl-images serve MODEL --port N`: an HTTP endpoint for a model, answering as Azure's does.

    automl-images serve s3://bucket/jobs/j/best --port 8080 [--host 0.0.0.0]
    curl -X POST --data-binary @can.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8080/predict
    curl -X POST -H 'Content-Type: application/json' http://127.0.0.1:8080/predict \\
         -d '{"input_data": {"columns": ["image"], "data": ["<base64 of an image>", "https://host/b.jpg"]}}'

POST /predict takes one image's bytes (Content-Type image/* or application/octet-stream), or JSON in
Azure's request schema whose `data` items are base64 images or http(s) image URLs. The answer is a
JSON list, one item per image, in Azure's scoring schema:

    classification, multi-label:  {"probs": [0.1, 0.9], "labels": ["can", "milk_bottle"]}
    detection:                    {"boxes": [{"box": {"topX": 0.1, "topY": 0.2, "bottomX": 0.5,
                                   "bottomY": 0.9}, "label": "can", "score": 0.87}]}
    segmentation:                 the same, each box with "polygon": [[x1, y1, x2, y2, ...], ...]

(normalised coordinates, as in the training JSONL). GET /health answers 200 once the model is
loaded (SkyServe's readiness probe), with the batches run so far.

Bad requests get a 4xx whose `detail` says what is wrong and, for JSON, which item: 400 not an
image, bad base64, bad JSON, a URL outside http(s) or to a private, loopback or link-local address
(refused unless --allow-private-urls: the server would fetch from inside its own network); 413 a
body or image over the limits; 415 another content type; 503 when the queue is full (retry). A
failing model call answers 500 for the requests in that batch; the server goes on.

Dynamic batching: each image joins one queue; one worker takes up to `max_batch_size` images, waiting
at most `max_wait_s` after the first for more, runs the model once in a thread (torch uses every
core for one batch), and hands each request its results. Under load the queue fills while the model
runs, so batches grow with the load without any wait.

FastAPI on uvicorn, not LitServe: both are well kept and already among SkyPilot's dependencies; the
request checks (content types, body and pixel limits, Azure's schema, URL rules) are plain code in
one handler; and the batching is one small asyncio queue in front of the model we already load, in
this process. LitServe would add a dependency, run the model in inference worker processes behind
its API process (each image and result crossing a process boundary, a copy of the weights per
worker), and leave those checks to us all the same.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import re
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Sequence

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from PIL import Image

from automl_images.core import addresses
from automl_images.core.detection_labels import BOX_FIELDS
from automl_images.core.hyperparameters import Task

from . import export
from .predict import PredictError, Runtime, load_runtime

MiB = 1024 * 1024
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_size: int = 16         # images run together; more gain little on a CPU, fill a GPU's memory
    max_wait_s: float = 0.005        # a lone request waits this long for company
    max_body_bytes: int = 20 * MiB   # a request body, and an image fetched from a URL
    max_pixels: int = 40_000_000     # an image's width x height (a 40 MP photo); more is refused unread
    max_images_per_request: int = 64
    max_queued_images: int = 1024    # beyond this the server answers 503: a client retries elsewhere
    allow_private_urls: bool = False
    url_timeout_s: float = 10.0


class Batcher:
    """Requests' images in one queue, run by one worker in batches (see the module's docstring)."""

    def __init__(self, predict: Callable[[list[Image.Image]], list[dict[str, Any]]], max_batch_size: int,
                 max_wait_s: float):
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue: asyncio.Queue[tuple[Image.Image, asyncio.Future]] = asyncio.Queue()
        self.batches = 0
        self.images = 0
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def submit(self, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        for image, future in zip(images, futures):
            self.queue.put_nowait((image, future))
        return list(await asyncio.gather(*futures))

    async def _next_batch(self) -> list[tuple[Image.Image, asyncio.Future]]:
        batch = [await self.queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            # A request that went away (client disconnected) cancelled its futures: skip its images.
            batch = [(image, future) for image, future in batch if not future.done()]
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(self.predict, [image for image, _ in batch])
            except Exception as exc:  # noqa: BLE001 - the batch's requests get a 500; the server goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(batch)
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)


def azure_record(record: dict[str, Any], task: Task, labels: Sequence[str]) -> dict[str, Any]:
    """One image's prediction (the training schema plus scores, see export.py) in Azure's scoring
    schema."""
    if task.is_classification:
        return {"probs": [record["scores"][name] for name in labels], "labels": list(labels)}
    return {"boxes": [{"box": {name: obj[name] for name in BOX_FIELDS}, "label": obj["label"], "score": obj["score"],
                       **({"polygon": obj["polygon"]} if "polygon" in obj else {})}
                      for obj in record["label"]]}


def _error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to be over `limit`: from Content-Length
    before reading, else while reading."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _error(413, f"the body is {int(declared)} bytes, more than the {limit} allowed")
    return await _bounded(request.stream(), limit, "the body")


async def _bounded(chunks: AsyncIterator[bytes], limit: int, what: str) -> bytes:
    """The bytes of `chunks`, refused (413) as soon as they are more than `limit`."""
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _error(413, f"{what} is more than the {limit} bytes allowed")
        parts.append(chunk)
    return b"".join(parts)


def _json_items(body: bytes, config: ServeConfig) -> list[str]:
    """The `data` strings of Azure's request schema."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _error(400, f"the body is not valid JSON: {exc}") from None
    schema = 'expected {"input_data": {"columns": ["image"], "data": [base64 image or http(s) URL, ...]}}'
    inputs = request.get("input_data") if isinstance(request, dict) else None
    if not isinstance(inputs, dict):
        raise _error(400, f"field 'input_data': missing or not an object; {schema}")
    if inputs.get("columns", ["image"]) != ["image"]:
        raise _error(400, f"field 'input_data.columns': must be [\"image\"], got {inputs.get('columns')!r}")
    items = inputs.get("data")
    if not isinstance(items, list) or not items:
        raise _error(400, f"field 'input_data.data': must be a non-empty list; {schema}")
    if len(items) > config.max_images_per_request:
        raise _error(413, f"field 'input_data.data': {len(items)} images, more than the "
                          f"{config.max_images_per_request} allowed in one request")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise _error(400, f"field 'input_data.data[{i}]': must be a base64 image or an http(s) URL string, "
                              f"got {type(item).__name__}")
    return items


class _Server:
    """The endpoint's state: the model, its batcher, the limits and an HTTP client for URLs."""

    def __init__(self, runtime: Runtime, config: ServeConfig):
        self.runtime = runtime
        self.config = config
        self.task = Task(runtime.info["task"])
        self.labels = runtime.labels
        self.decode_size = runtime.info.get("decode_size")
        self.batcher = Batcher(lambda images: runtime.predict(images, len(images)), config.max_batch_size,
                               config.max_wait_s)
        self.client: httpx.AsyncClient | None = None

    def decode(self, raw: bytes, where: str) -> Image.Image:
        """The image of `raw`, its pixels counted from the header before anything is decoded."""
        try:
            with Image.open(io.BytesIO(raw)) as header:
                width, height = header.size
        except Image.DecompressionBombError as exc:
            raise _error(413, f"{where}: too many pixels: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - whatever PIL says of bytes that are not an image
            raise _error(400, f"{where}: not an image ({type(exc).__name__}: {exc})") from None
        if width * height > self.config.max_pixels:
            raise _error(413, f"{where}: {width}x{height} = {width * height} pixels, more than the "
                              f"{self.config.max_pixels} allowed")
        try:
            return export.decode_image(raw, self.decode_size)
        except Exception as exc:  # noqa: BLE001 - a truncated or corrupt image
            raise _error(400, f"{where}: not a readable image ({type(exc).__name__}: {exc})") from None

    async def fetch(self, url: str, where: str) -> bytes:
        scheme = _SCHEME.match(url).group(1).lower()
        if scheme not in ("http", "https"):
            raise _error(400, f"{where}: {scheme}:// URLs are not fetched; only http and https")
        if not self.config.allow_private_urls:
            try:
                await asyncio.to_thread(addresses.check_public, url)
            except addresses.PrivateAddressError:
                raise _error(400, f"{where}: {url} is on a private, loopback or link-local address: refused "
                                  "(the server fetches from such addresses only with --allow-private-urls)") from None
            except OSError as exc:
                raise _error(400, f"{where}: {exc}") from None
        limit = self.config.max_body_bytes
        try:
            # No redirects: a public URL must not lead the server to a private one.
            async with self.client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise _error(400, f"{where}: {url} answered HTTP {response.status_code}")
                return await _bounded(response.aiter_bytes(), limit, f"{where}: {url}")
        except httpx.HTTPError as exc:
            raise _error(400, f"{where}: {url} could not be fetched ({type(exc).__name__}: {exc})") from None

    async def image(self, item: str, where: str) -> Image.Image:
        if _SCHEME.match(item):
            raw = await self.fetch(item, where)
        else:
            try:
                raw = base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError):
                raise _error(400, f"{where}: neither base64 nor an http(s) URL") from None
        return await asyncio.to_thread(self.decode, raw, where)

    async def predict(self, request: Request) -> list[dict[str, Any]]:
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type.startswith("image/") or content_type == "application/octet-stream":
            body = await _read_body(request, self.config.max_body_bytes)
            images = [await asyncio.to_thread(self.decode, body, "the body")]
        elif content_type == "application/json":
            items = _json_items(await _read_body(request, self.config.max_body_bytes), self.config)
            images = list(await asyncio.gather(*(self.image(item, f"field 'input_data.data[{i}]'")
                                                 for i, item in enumerate(items))))
        else:
            raise _error(415, f"Content-Type {content_type or '(none)'!r} is not accepted: send an image "
                              "(image/jpeg, image/png, ... or application/octet-stream) or application/json "
                              "in Azure's request schema")
        if self.batcher.queue.qsize() + len(images) > self.config.max_queued_images:
            raise HTTPException(503, f"{self.batcher.queue.qsize()} images are waiting: retry shortly",
                                headers={"Retry-After": "1"})
        try:
            records = await self.batcher.submit(images)
        except Exception as exc:  # noqa: BLE001 - the model failed on this batch: say so, keep serving
            raise _error(500, f"the model failed: {type(exc).__name__}: {exc}") from None
        return [azure_record(record, self.task, self.labels) for record in records]

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "task": self.task.value, "labels": self.labels, "batches": self.batcher.batches,
                "images": self.batcher.images, "max_batch_size": self.config.max_batch_size}


def build_app(runtime: Runtime, config: ServeConfig) -> FastAPI:
    server = _Server(runtime, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.batcher.start()
        async with httpx.AsyncClient(follow_redirects=False, timeout=config.url_timeout_s) as client:
            server.client = client
            yield
        await server.batcher.stop()

    app = FastAPI(title="automl-images", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        return JSONResponse(await server.predict(request))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return server.health()

    return app


def run_cli(model: str, config: ServeConfig, runtime: str = "torch", root: str | None = None) -> int:
    """`automl-images serve`: loads the model, then serves until interrupted."""
    if config.max_batch_size < 1:
        print(f"automl-images serve: --max-batch-size must be at least 1, got {config.max_batch_size}",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        loaded = load_runtime(model, runtime, root)
    except PredictError as exc:
        print(f"automl-images serve: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while loading: stopped, not a crash
        return 0
    print(f"serving {Task(loaded.info['task']).value} model {model} (loaded in {time.monotonic() - started:.1f} s) "
          f"on http://{config.host}:{config.port}: POST /predict, GET /health", file=sys.stderr, flush=True)
    # uvicorn shuts down gracefully on SIGINT (then returns) and SIGTERM (then re-raises it, as
    # SkyServe and other process managers expect). ws="none": no websocket routes.
    uvicorn.run(build_app(loaded, config), host=config.host, port=config.port, log_level="warning", ws="none")
    return 0
