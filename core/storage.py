"""Object storage through fsspec: a local folder, file://, s3://, gs://, az:// (Azure Blob Storage,
through adlfs; abfs:// and abfss:// too) and anything fsspec opens.

Every byte the product keeps goes through `Storage`, so the trainer, the controller and the CLI see
the same bucket the same way. Writes are atomic: a reader sees the old object or the new one, never
half of one (S3 and GCS PUTs are atomic; a local write goes to a temporary name and is renamed).
`create_exclusive` is the one conditional write: S3's and Azure Blob Storage's `If-None-Match: *`, GCS's
`ifGenerationMatch=0`, or a hard link on a local folder, each of which fails when the key already exists.

A stored JSON object that is not JSON (cut short by a tool that does not write atomically, a
damaged disk) raises `InvalidJSON`, which each reader handles as the protocol allows; `outage`
tells the infrastructure's failures (bucket down or gone, disk full, read-only, no permission)
from bugs.
"""
from __future__ import annotations

import asyncio
import datetime
import errno
import json
import os
import posixpath
import re
import sys
import time
import urllib.parse
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
# Azure Blob Storage's, as azure-core's retry policy retries them (408 timeout, 429 throttled).
_AZURE_TRANSIENT_STATUSES = _TRANSIENT_STATUSES | {408, 429}
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
    azure = sys.modules.get("azure.core.exceptions")  # adlfs's (azure-storage-blob) errors, when they are loaded
    if azure is not None:
        # ServiceRequestError: the request never reached the service; ServiceResponseError: its answer was lost.
        if isinstance(exc, (azure.ServiceRequestError, azure.ServiceResponseError)):
            return True
        if isinstance(exc, azure.HttpResponseError):
            return exc.status_code in _AZURE_TRANSIENT_STATUSES
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


# Local-disk and permission failures that no retry within a call mends, but that are the
# infrastructure's, not a bug: the pass that met them fails, and the next one tries again.
_OUTAGE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                  errno.EROFS: "the root is read-only", errno.EACCES: "permission denied",
                  errno.EPERM: "permission denied"}
# S3 error codes of a bucket that is gone or that these credentials may not use.
_BUCKET_CODES = {"NoSuchBucket": "the bucket does not exist", "AccessDenied": "permission denied",
                 "AllAccessDisabled": "permission denied", "InvalidAccessKeyId": "permission denied",
                 "SignatureDoesNotMatch": "permission denied"}
# Azure Blob Storage's error codes of a container that is gone or that these credentials may not use.
_AZURE_CODES = {"ContainerNotFound": "the bucket does not exist", "ContainerBeingDeleted": "the bucket does not exist",
                "AuthenticationFailed": "permission denied", "AuthorizationFailure": "permission denied",
                "AuthorizationPermissionMismatch": "permission denied",
                "InsufficientAccountPermissions": "permission denied"}


def outage(exc: BaseException) -> str | None:
    """What is down when `exc` is the infrastructure's fault (the bucket not answering after the
    retries, a full or read-only disk, no permission, the bucket gone), in a few words; None
    when it is not (a missing key, a bug)."""
    if is_transient(exc):
        return "the bucket is not answering"
    for error in _causes(exc):
        if isinstance(error, RootMissing):
            return "the root is gone"
        if isinstance(error, OSError) and error.errno in _OUTAGE_ERRNOS:
            return _OUTAGE_ERRNOS[error.errno]
        if isinstance(error, PermissionError):
            return "permission denied"
        botocore = sys.modules.get("botocore.exceptions")
        if botocore is not None and isinstance(error, botocore.ClientError):
            code = (error.response or {}).get("Error", {}).get("Code")
            if code in _BUCKET_CODES:
                return _BUCKET_CODES[code]
        if botocore is not None and isinstance(error, (botocore.NoCredentialsError, botocore.PartialCredentialsError)):
            return ("no credentials for the bucket (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                    "or an instance role)")
        google_auth = sys.modules.get("google.auth.exceptions")
        if google_auth is not None and isinstance(error, google_auth.DefaultCredentialsError):
            return "no credentials for the bucket (GOOGLE_APPLICATION_CREDENTIALS, or gcloud auth application-default login)"
        azure = sys.modules.get("azure.core.exceptions")
        if azure is not None and isinstance(error, azure.ClientAuthenticationError):
            return ("no credentials for the container, or they were refused (AZURE_STORAGE_CONNECTION_STRING, or "
                    "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN)")
        if azure is not None and isinstance(error, azure.HttpResponseError) and error.error_code in _AZURE_CODES:
            return _AZURE_CODES[str(error.error_code)]
    return None


def describe(exc: BaseException) -> str:
    """One line about a failed bucket call: what is down, then the error's own first line."""
    detail = (str(exc).strip().splitlines() or [""])[0][:300]
    what = outage(exc)
    return f"{what} ({type(exc).__name__}: {detail})" if what else f"{type(exc).__name__}: {detail}"


class RootMissing(FileNotFoundError):
    """A root whose bucket (or, for a folder, the folder itself) does not exist: every listing of
    it is empty, so a reader that knows the root had jobs tells an outage from an idle root."""

    def __init__(self, root: str, bucket: bool):
        super().__init__(errno.ENOENT, f"{'its bucket' if bucket else 'the folder'} does not exist", root)


class InvalidJSON(ValueError):
    """A stored object that should hold JSON and does not: cut short (a torn write by a tool that
    does not write atomically, a disk that lost its tail), damaged, or not UTF-8."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: not valid JSON ({reason})")
        self.url = url


def json_bytes(value: Any) -> bytes:
    """How every JSON object the product keeps is written: indented, keys sorted, one trailing
    newline (readable by a person, and the same bytes for the same value). Every `<name>_at` in epoch
    seconds, in any object of it, gets `<name>_at_iso` beside it: the same moment in ISO 8601 (UTC),
    for people; code reads the seconds."""
    return (json.dumps(_with_iso_times(value), indent=2, sort_keys=True) + "\n").encode("utf-8")


def _with_iso_times(value: Any) -> Any:
    if isinstance(value, dict):
        out = {key: _with_iso_times(item) for key, item in value.items()}
        out.update({f"{key}_iso": iso_time(at) for key, at in value.items() if isinstance(key, str)
                    and key.endswith("_at") and isinstance(at, (int, float)) and not isinstance(at, bool)})
        return out
    if isinstance(value, (list, tuple)):
        return [_with_iso_times(item) for item in value]
    return value


def iso_time(seconds: float) -> str | None:
    """`2026-12-06T10:43:03.250+00:00` for epoch seconds; None for a moment no calendar has."""
    try:
        return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return None


# An https URL of a blob: https://<account>.blob.core.windows.net/<container>/<blob>
_AZURE_BLOB_HTTPS = re.compile(r"^https://(?P<account>[a-z0-9]{3,24})\.blob\.core\.windows\.net/"
                               r"(?P<container>[a-z0-9-]{3,63})/(?P<blob>[^?#]+)$", re.IGNORECASE)


def azure_blob_url(url: str) -> str:
    """`url` as adlfs reads it when it is an https URL of a blob in the storage account that this
    machine has Azure credentials for (AZURE_STORAGE_CONNECTION_STRING's or AZURE_STORAGE_ACCOUNT_NAME's):
    `abfs://<container>@<account>.blob.core.windows.net/<blob>`, read with those credentials, so a
    private container's images can be named as Azure's tools name them. Any other URL as it is: a
    public blob of another account is read over HTTPS, as any web image."""
    match = _AZURE_BLOB_HTTPS.match(url)
    if match is None or match["account"].lower() != _azure_account():
        return url
    blob = urllib.parse.unquote(match["blob"])  # a web URL's %20 is the blob name's space
    return f"abfs://{match['container']}@{match['account']}.blob.core.windows.net/{blob}"


def _azure_account() -> str | None:
    """The storage account of this machine's Azure credentials (adlfs's variables), lower case."""
    name = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
    if not name:
        settings = dict(part.split("=", 1) for part in os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "").split(";")
                        if "=" in part)
        name = settings.get("AccountName")
    return name.lower() if name else None


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
    elif protocol in ("gs", "gcs", "az", "abfs", "abfss"):
        # Azure: adlfs takes its account and credentials from the AZURE_STORAGE_* variables
        # (AZURE_STORAGE_CONNECTION_STRING, or _ACCOUNT_NAME with _ACCOUNT_KEY, _SAS_TOKEN, ...).
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

    @property
    def has_bucket(self) -> bool:
        """Whether the root lives in an S3 or GCS bucket or an Azure container (which a controller
        cannot create)."""
        return _is_protocol(self.fs, "s3") or _is_protocol(self.fs, "gs") or _is_protocol(self.fs, "abfs")

    def root_exists(self) -> bool:
        """Whether the root's bucket exists; for other roots, the root's folder."""
        base = self._base.split("/", 1)[0] if self.has_bucket else self._base
        return with_retries(lambda: self.fs.exists(base))

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
        """The object as JSON; `default` when it is absent; InvalidJSON when it is not JSON."""
        try:
            data = self.read_bytes(key)
        except FileNotFoundError:
            return default
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; nesting
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise InvalidJSON(self.url(key), f"{reason}, {len(data)} bytes") from None

    def exists(self, key: str) -> bool:
        return with_retries(lambda: self.fs.exists(self._path(key)))

    def size(self, key: str) -> int | None:
        """The bytes of `key`; None when it does not exist."""
        try:
            return int(with_retries(lambda: self.fs.size(self._path(key))))
        except FileNotFoundError:
            return None

    def modified(self, key: str) -> float | None:
        """When the object was last written (seconds since the epoch); None when it is absent."""
        try:
            return with_retries(lambda: self.fs.modified(self._path(key))).timestamp()
        except FileNotFoundError:
            return None

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
            tmp = _local_temp_file(path, data)
            try:
                os.replace(tmp, path)
            except BaseException:
                _remove(tmp)
                raise
        else:
            with_retries(lambda: self.fs.pipe_file(path, data))

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, json_bytes(value))

    def download_file(self, key: str, local_path: str) -> None:
        """The object `key` into the local file `local_path`, streamed (not held in memory)."""
        with_retries(lambda: self.fs.get_file(self._path(key), local_path))

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
                _remove(tmp)
        if _is_protocol(self.fs, "s3"):
            return _s3_create_exclusive(self.fs, path, data)
        if _is_protocol(self.fs, "gs") or _is_protocol(self.fs, "abfs"):
            # gcsfs sends GCS's precondition `ifGenerationMatch=0` for mode="create", and raises
            # FileExistsError on its 412 Precondition Failed. adlfs uploads with overwrite=False,
            # which azure-storage-blob sends as `If-None-Match: *`, and raises FileExistsError on
            # the 409 BlobAlreadyExists that follows.
            try:
                with_retries(lambda: self.fs.pipe_file(path, data, mode="create"))
                return True
            except FileExistsError:
                return False
        # Other fsspec stores (memory://, test doubles) have no conditional write: check, then
        # write, which is exclusive only with one writer.
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


def _is_protocol(fs: fsspec.AbstractFileSystem, name: str) -> bool:
    """Whether `fs` speaks `name` (fsspec gives one protocol, or a tuple of its aliases)."""
    return name == fs.protocol or (isinstance(fs.protocol, tuple) and name in fs.protocol)


def _local_temp_file(path: str, data: bytes) -> str:
    """`data` written and synced to a temporary file beside `path` (same folder, so a rename or a
    link onto `path` is atomic); returns its name."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # a full disk, a kill: no temporary file is left behind
        _remove(tmp)
        raise
    return tmp


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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
