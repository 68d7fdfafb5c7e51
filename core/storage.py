"""Object storage through fsspec: a local folder, file://, s3://, gs:// (and anything fsspec opens).

Every byte the product keeps goes through `Storage`, so the trainer, the controller and the CLI see
the same bucket the same way. Writes are atomic: a reader sees the old object or the new one, never
half of one (S3 and GCS PUTs are atomic; a local write goes to a temporary name and is renamed).
`create_exclusive` is the one conditional write: S3's `If-None-Match: *`, or a hard link on a local
folder, both of which fail when the key already exists.
"""
from __future__ import annotations

import json
import os
import posixpath
import time
import uuid
from typing import Any, Callable, Iterable, TypeVar

import fsspec

T = TypeVar("T")

# Errors worth retrying: the bucket or the network hiccupped, the request itself was fine.
_TRANSIENT_MARKERS = ("SlowDown", "Throttl", "RequestTimeout", "InternalError", "ServiceUnavailable",
                      "503", "500", "502", "504", "Connection", "timed out", "Timeout")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(exc).__name__} {exc}"
    return any(marker in text for marker in _TRANSIENT_MARKERS)


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
        self.write_bytes(key, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8"))

    def upload_file(self, local_path: str, key: str) -> None:
        with open(local_path, "rb") as f:
            self.write_bytes(key, f.read())

    def download_file(self, key: str, local_path: str) -> None:
        data = self.read_bytes(key)
        os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
        tmp = f"{local_path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, local_path)

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
