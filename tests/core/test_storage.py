"""One contract, every backend: the storage operations behave the same on a folder and on S3; and
which bucket errors are worth retrying."""
from __future__ import annotations

import errno
import subprocess
import sys
import threading

import pytest

from automl_images.core.storage import Storage, is_transient, resolve, with_retries


def test_read_write_list_delete(root_url):
    storage = Storage(root_url)
    assert storage.read_json("a/state.json") is None
    storage.write_json("a/state.json", {"x": 1})
    storage.write_bytes("a/b/c.bin", b"\x00\x01")
    assert storage.read_json("a/state.json") == {"x": 1}
    assert storage.read_bytes("a/b/c.bin") == b"\x00\x01"
    assert storage.list("a") == ["b", "state.json"]
    assert storage.list("missing") == []
    assert storage.walk("a") == ["b/c.bin", "state.json"]
    storage.delete("a/state.json")
    storage.delete("a/state.json")  # deleting twice is fine
    assert not storage.exists("a/state.json")


def test_create_exclusive_has_one_winner(root_url):
    storage = Storage(root_url)
    winners = []

    def attempt(i: int) -> None:
        if storage.create_exclusive("lease.json", f"{i}".encode()):
            winners.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert storage.read_bytes("lease.json") == str(winners[0]).encode()


def test_copy_tree(root_url):
    storage = Storage(root_url)
    storage.write_bytes("src/model/model.pt", b"weights")
    storage.write_json("src/model/model.json", {"labels": ["a"]})
    assert storage.copy_tree("src/model", "best") == ["model.json", "model.pt"]
    assert storage.read_bytes("best/model.pt") == b"weights"


def test_resolve_relative_references():
    assert resolve("data/train.jsonl", "s3://b/inbox/job.yaml") == "s3://b/inbox/data/train.jsonl"
    assert resolve("../x.jsonl", "s3://b/inbox/job.yaml") == "s3://b/x.jsonl"
    assert resolve("gs://other/x.jsonl", "/tmp/job.yaml") == "gs://other/x.jsonl"
    assert resolve("x.jsonl", "/tmp/jobs/job.yaml") == "/tmp/jobs/x.jsonl"


# ------------------------------------------------------------------------------------------------
# Which errors are retried: by type (the botocore error s3fs chains, connection and timeout
# errors), by message only for a bare OSError


def client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "..."}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


def test_client_errors_by_code_and_status():
    for code, status in [("SlowDown", 503), ("Throttling", 400), ("RequestTimeout", 400), ("InternalError", 500),
                         ("ServiceUnavailable", 503), ("Anything", 502)]:
        assert is_transient(client_error(code, status)), code
    for code, status in [("NoSuchKey", 404), ("AccessDenied", 403), ("InvalidArgument", 400), ("NotImplemented", 501)]:
        assert not is_transient(client_error(code, status)), code


def test_errors_s3fs_translates_keep_their_cause():
    from s3fs.errors import translate_boto_error

    assert is_transient(translate_boto_error(client_error("SlowDown", 503)))          # OSError(EIO), chained
    assert is_transient(translate_boto_error(client_error("InternalError", 500)))     # OSError(EREMOTEIO)
    assert is_transient(translate_boto_error(client_error("RequestTimeout", 400)))    # TimeoutError
    assert not is_transient(translate_boto_error(client_error("NoSuchKey", 404)))     # FileNotFoundError
    assert not is_transient(translate_boto_error(client_error("AccessDenied", 403)))  # PermissionError


def test_connection_errors_by_type():
    import aiohttp
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

    for exc in [EndpointConnectionError(endpoint_url="http://s3"), ConnectTimeoutError(endpoint_url="http://s3"),
                ReadTimeoutError(endpoint_url="http://s3"), aiohttp.ServerDisconnectedError(),
                aiohttp.ClientConnectionError("reset"), ConnectionResetError(errno.ECONNRESET, "reset"),
                OSError(errno.ENETUNREACH, "Network is unreachable"), TimeoutError()]:
        assert is_transient(exc), repr(exc)


def test_messages_count_only_on_a_bare_os_error():
    assert is_transient(OSError("An error occurred (SlowDown) when calling the PutObject operation"))
    assert is_transient(OSError("503 Service Unavailable"))
    assert not is_transient(OSError("400 Bad Request: Connection header malformed"))
    assert not is_transient(FileNotFoundError("503 Service Unavailable"))
    assert not is_transient(ValueError("An error occurred (SlowDown)"))  # not a bucket error: a bug
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError:
            raise KeyError("status")  # a bug while handling a transient error is still a bug
    except KeyError as bug:
        assert not is_transient(bug)


def test_with_retries_retries_only_transient_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "done"

    assert with_retries(flaky, first_delay_s=0) == "done" and len(calls) == 3
    with pytest.raises(FileNotFoundError):
        with_retries(lambda: calls.append(1) or open("/nonexistent/x"), first_delay_s=0)
    assert len(calls) == 4  # tried once


def test_storage_imports_without_botocore_or_aiohttp():
    code = ("import sys; sys.modules.update(botocore=None, aiohttp=None, s3fs=None); "
            "from automl_images.core.storage import Storage, is_transient; "
            "assert is_transient(ConnectionResetError()) and not is_transient(KeyError())")
    subprocess.run([sys.executable, "-c", code], check=True)
