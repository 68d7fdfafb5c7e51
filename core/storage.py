"""Object storage through fsspec: a local folder, file://, s3://, gs:// (and anything fsspec opens).

Every byte the product keeps goes through `Storage`, so the trainer, the controller and the CLI see
the same bucket the same way. Writes are atomic: a reader sees the old object or the new one, never
half of one (S3 and GCS PUTs are atomic; a local write goes to a temporary name and is renamed).
`create_exclusive` is the one conditional write: S3's `If-None-Match: *`, or a hard link on a local
folder, both of which fail when the key already exists.
"""
from __future__ import annotations

import asyncio
import errno
import json
import os
import posixpath
import re
import sys
import time
import uuid
from typing import Any, Callable, Iterable, Iterator, TypeVar

import fsspec

T = TypeVar("T")

# Errors worth retrying: the bucket or the network hiccupped, the request itself was fine. The
# error codes and HTTP statuses are those botocore's standard retry mode retries (throttling and
# transient errors, botocore/retries/standard.py), with S3's InternalError and ServiceUnavailable.
_TRANSIENT_CODES = frozenset({
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "InternalError", "ServiceUnavailable",
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException", "RequestThrottled",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "TransactionInProgressException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "LimitExceededException", "SlowDown", "EC2ThrottledException",
})
_TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
# Connection failures that the OS reports by number only (resets and refusals arrive typed, as
# ConnectionError; a timeout as TimeoutError).
_TRANSIENT_ERRNOS = frozenset({errno.ENETDOWN, errno.ENETUNREACH, errno.ENETRESET, errno.EHOSTUNREACH,
                               errno.EHOSTDOWN})
# The one untyped case: fsspec backends that turn the server's answer into a bare OSError, keeping
# only its message (s3fs does so for codes it does not map, though it chains the ClientError, which
# `_typed_transient` reads first; other backends do not chain it). The message then carries the
# S3 error code in parentheses or the HTTP status.
_TRANSIENT_MESSAGE = re.compile(r"\((?:%s)\)|\b(?:%s)\b" % ("|".join(sorted(_TRANSIENT_CODES)),
                                                             "|".join(map(str, sorted(_TRANSIENT_STATUSES)))))


def is_transient(exc: BaseException) -> bool:
    """Whether `exc`, raised by a bucket call, is worth retrying: by its type or by the type of an
    error it was raised from (`__cause__`: s3fs chains the botocore ClientError); by its message
    only for a bare OSError."""
    for error in _causes(exc):
        if isinstance(error, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError)):
            return False
        if _typed_transient(error):
            return True
    return type(exc) is OSError and bool(_TRANSIENT_MESSAGE.search(str(exc)))


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, the error it was raised from, that one's, and so on."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__


def _typed_transient(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError)):  # one type from Python 3.11 on
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    # botocore and aiohttp come with s3fs; a bucket on a folder runs without them. An error of
    # theirs can only exist once they are imported, so they are looked up, never imported here.
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        if isinstance(exc, botocore.ClientError):
            response = exc.response or {}
            return (response.get("Error", {}).get("Code") in _TRANSIENT_CODES or
                    response.get("ResponseMetadata", {}).get("HTTPStatusCode") in _TRANSIENT_STATUSES)
        # ConnectionError: EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError;
        # HTTPClientError: ReadTimeoutError, ConnectionClosedError, a response cut short.
        if isinstance(exc, (botocore.ConnectionError, botocore.HTTPClientError)):
            return True
    aiohttp = sys.modules.get("aiohttp")
    # ClientConnectionError: refused, reset, disconnected or timed out; ClientPayloadError: a body
    # cut short.
    return aiohttp is not None and isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))


def with_retries(call: Callable[[], T], attempts: int = 5, first_delay_s: float = 0.2) -> T:
    """Run `call`, retrying transient bucket errors with exponential backoff."""
    delay = first_delay_s
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - filtered by is_transient
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def json_bytes(value: Any) -> bytes:
    """How every JSON object the product keeps is written: indented, keys sorted, one trailing
    newline (readable by a person, and the same bytes for the same value)."""
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")


def is_url(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    """Join key parts onto a URL or path with forward slashes."""
    out = base.rstrip("/")
    for part in parts:
        out = out + "/" + part.strip("/")
    return out


def resolve(reference: str, relative_to: str) -> str:
    """Resolve `reference` (a URL, an absolute path or a relative path) against the folder of
    `relative_to` (a URL or a path), the way a browser resolves links."""
    if is_url(reference) or reference.startswith("/"):
        return reference
    base = relative_to.rsplit("/", 1)[0] if "/" in relative_to else "."
    if is_url(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, reference))}"
    return os.path.normpath(os.path.join(os.path.abspath(base), reference))


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `url` and the path inside it.

    S3 listings are never cached: other processes (trials, other controllers) write the same bucket.
    The endpoint and addressing style come from the standard AWS variables and config file, so an
    S3-compatible store (R2, MinIO, moto) needs no code here.
    """
    protocol = url.split("://", 1)[0] if is_url(url) else "file"
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        options = {"skip_instance_cache": True, "use_listings_cache": False}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
    elif protocol in ("gs", "gcs"):
        options = {"skip_instance_cache": True, "use_listings_cache": False}
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


class Storage:
    """A root URL and the few operations the product needs on keys below it."""

    def __init__(self, root: str):
        root = root.rstrip("/") or "/"
        if not is_url(root):
            root = os.path.abspath(root)
        elif root.startswith("file://"):
            root = root[len("file://"):]
        self.root = root
        self.fs, self._base = filesystem(root)
        self.is_local = self.fs.protocol in ("file", ("file", "local")) or "file" in self.fs.protocol

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    def url(self, key: str = "") -> str:
        return join(self.root, key) if key else self.root

    def _path(self, key: str) -> str:
        return join(self._base, key) if key else self._base

    # -- reads ---------------------------------------------------------------------------------
    def read_bytes(self, key: str) -> bytes:
        return with_retries(lambda: self.fs.cat_file(self._path(key)))

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def read_json(self, key: str, default: Any = None) -> Any:
        try:
            return json.loads(self.read_bytes(key))
        except FileNotFoundError:
            return default

    def exists(self, key: str) -> bool:
        return with_retries(lambda: self.fs.exists(self._path(key)))

    def list(self, prefix: str) -> list[str]:
        """Names directly below `prefix` (files and folders), sorted; empty when absent."""
        path = self._path(prefix)
        try:
            entries = with_retries(lambda: self.fs.ls(path, detail=False))
        except FileNotFoundError:
            return []
        names = {posixpath.basename(e.rstrip("/")) for e in entries}
        names.discard("")
        return sorted(n for n in names if not n.startswith(".tmp-"))

    # -- writes --------------------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if self.is_local:
            os.replace(_local_temp_file(path, data), path)
        else:
            with_retries(lambda: self.fs.pipe_file(path, data))

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, json_bytes(value))

    def upload_file(self, local_path: str, key: str) -> None:
        with open(local_path, "rb") as f:
            self.write_bytes(key, f.read())

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write `key` only if it does not exist yet. True when this call created it."""
        path = self._path(key)
        if self.is_local:
            tmp = _local_temp_file(path, data)
            try:
                os.link(tmp, path)  # fails atomically when `path` exists
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        if self.fs.protocol in ("s3", ("s3", "s3a")) or "s3" in self.fs.protocol:
            return _s3_create_exclusive(self.fs, path, data)
        # Stores without a conditional PUT through fsspec (GCS through gcsfs): check, then write.
        if self.exists(key):
            return False
        self.write_bytes(key, data)
        return True

    def delete(self, key: str) -> None:
        try:
            with_retries(lambda: self.fs.rm_file(self._path(key)))
        except FileNotFoundError:
            pass

    def copy_tree(self, src_prefix: str, dst_prefix: str) -> list[str]:
        """Copy every file below `src_prefix` to `dst_prefix`; returns the copied relative keys."""
        copied = []
        for rel in self.walk(src_prefix):
            self.write_bytes(join(dst_prefix, rel), self.read_bytes(join(src_prefix, rel)))
            copied.append(rel)
        return copied

    def walk(self, prefix: str) -> list[str]:
        """Keys of every file below `prefix`, relative to it."""
        base = self._path(prefix).rstrip("/")
        try:
            found: Iterable[str] = with_retries(lambda: self.fs.find(base))
        except FileNotFoundError:
            return []
        rels = []
        for path in found:
            rel = path[len(base):].lstrip("/") if path.startswith(base) else ""
            if rel and not posixpath.basename(rel).startswith(".tmp-"):
                rels.append(rel)
        return sorted(rels)


def _local_temp_file(path: str, data: bytes) -> str:
    """`data` written and synced to a temporary file beside `path` (same folder, so a rename or a
    link onto `path` is atomic); returns its name."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _s3_create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """S3 conditional create (`If-None-Match: *`): 412 when the key exists. Through boto3 because
    s3fs does not expose the header."""
    import boto3
    import botocore.exceptions

    bucket, _, key = path.partition("/")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client = boto3.client("s3", endpoint_url=endpoint) if endpoint else boto3.client("s3")
    try:
        with_retries(lambda: client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*"))
        return True
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise
