"""One contract, every backend: the storage operations behave the same on a folder and on S3; and
which bucket errors are worth retrying."""
from __future__ import annotations

import errno
import json
import subprocess
import sys
import threading
import urllib.request

import pytest

from automl_images.core.storage import InvalidJSON, Storage, describe, is_transient, outage, resolve, with_retries


def test_read_write_list_delete(exclusive_root_url):
    storage = Storage(exclusive_root_url)
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


def test_create_exclusive_has_one_winner(exclusive_root_url):
    storage = Storage(exclusive_root_url)
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


def test_gcs_conditional_create_sends_the_precondition(gcs_endpoint):
    """The emulator refuses an upload with `ifGenerationMatch=0` onto an existing object only
    because tests/gcs_server.py adds that rule: its counters show what the requests carried."""
    from conftest import make_gcs_bucket

    def counts() -> dict:
        with urllib.request.urlopen(f"{gcs_endpoint}/preconditions", timeout=10) as response:
            return json.loads(response.read())

    storage = Storage(f"gs://{make_gcs_bucket(gcs_endpoint)}/automl")
    before = counts()
    assert storage.create_exclusive("a/spec.json", b"first")
    assert not storage.create_exclusive("a/spec.json", b"second")
    storage.write_bytes("a/other.json", b"x")  # a plain write carries no precondition
    after = counts()
    assert (after["sent"] - before["sent"], after["refused"] - before["refused"]) == (2, 1)
    assert storage.read_bytes("a/spec.json") == b"first"


def test_a_torn_object_is_invalid_json_naming_it(root_url):
    storage = Storage(root_url)
    storage.write_bytes("jobs/a/state.json", b'{"status": "runn')
    storage.write_bytes("jobs/a/deep.json", b"[" * 100_000)
    storage.write_bytes("jobs/a/latin.json", b'{"x": "\xe9"}')  # Latin-1, not UTF-8
    for key in ("jobs/a/state.json", "jobs/a/deep.json", "jobs/a/latin.json"):
        with pytest.raises(InvalidJSON, match=f"{storage.url(key)}: not valid JSON"):
            storage.read_json(key)
    assert storage.read_json("jobs/a/absent.json", default={}) == {}


class FullDisk:
    """`open` whose files fail their write as on a full disk."""

    def __init__(self, real_open):
        self.real_open = real_open

    def __call__(self, path, mode="r", *args, **kwargs):
        f = self.real_open(path, mode, *args, **kwargs)
        if "w" in mode:
            def write(data):
                raise OSError(errno.ENOSPC, "No space left on device", path)
            f.write = write
        return f


def test_a_failed_local_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    import builtins

    storage = Storage(str(tmp_path / "root"))
    storage.write_json("jobs/a/state.json", {"status": "running"})
    monkeypatch.setattr(builtins, "open", FullDisk(builtins.open))
    for write in (lambda: storage.write_json("jobs/a/state.json", {"status": "completed"}),
                  lambda: storage.create_exclusive("jobs/a/lease-00000001.json", b"{}")):
        with pytest.raises(OSError) as failed:
            write()
        assert outage(failed.value) == "the disk is full"
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "root/jobs/a").iterdir()) == ["state.json"]
    assert storage.read_json("jobs/a/state.json") == {"status": "running"}  # the old object, whole


def test_outages_are_told_apart_from_bugs():
    from s3fs.errors import translate_boto_error

    assert outage(OSError(errno.EROFS, "Read-only file system")) == "the root is read-only"
    assert outage(PermissionError(errno.EACCES, "Permission denied")) == "permission denied"
    assert outage(translate_boto_error(client_error("AccessDenied", 403))) == "permission denied"
    assert outage(translate_boto_error(client_error("NoSuchBucket", 404))) == "the bucket does not exist"
    assert outage(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")) == "the bucket is not answering"
    for bug in (FileNotFoundError("jobs/a/x.json"), KeyError("status"), ValueError("x")):
        assert outage(bug) is None
    line = describe(OSError(errno.ENOSPC, "No space left on device"))
    assert line == "the disk is full (OSError: [Errno 28] No space left on device)"


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


def test_every_epoch_timestamp_written_has_its_iso_8601_form_beside_it():
    from automl_images.core.storage import json_bytes

    written = json.loads(json_bytes({"accepted_at": 1765017783.25, "status": "running", "count_at": "n/a",
                                     "flag_at": True, "history": [{"launched_at": 0}], "launch": {"ended_at": 60}}))
    assert written["accepted_at_iso"] == "2025-12-06T10:43:03.250+00:00" and written["accepted_at"] == 1765017783.25
    assert written["history"][0]["launched_at_iso"] == "1970-01-01T00:00:00.000+00:00"
    assert written["launch"]["ended_at_iso"] == "1970-01-01T00:01:00.000+00:00"
    assert "count_at_iso" not in written and "flag_at_iso" not in written  # not seconds
    assert json_bytes(written) == json_bytes(written)  # the same bytes for the same value, read back or not
