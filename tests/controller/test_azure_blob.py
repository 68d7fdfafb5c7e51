"""Azure Blob Storage through adlfs, on Azurite (the emulator, tests/conftest.py's azure_endpoint): a root's
operations and its conditional create (`If-None-Match: *`), data and images on az:// and as https blob
URLs, an MLTable folder in a container; and how Azure's errors are told apart (transient, outage)."""
from __future__ import annotations

import threading

import pytest
from conftest import AZURITE_ACCOUNT, make_container, mltable_folder, upload_folder
from synthetic import write_squares

from automl_images.core.datacheck import DataFiles, check
from automl_images.core.hyperparameters import Task
from automl_images.core.storage import Storage, azure_blob_url, is_transient, outage


def test_a_root_in_a_container_reads_writes_lists_and_creates_exclusively(azure_endpoint):
    container = make_container(azure_endpoint)
    storage = Storage(f"az://{container}/automl")
    assert storage.has_bucket and storage.root_exists()
    assert not Storage(f"az://{container}-gone/automl").root_exists()
    storage.write_json("jobs/a/state.json", {"status": "running"})
    storage.write_bytes("jobs/a/trials/t0000/status.json", b"{}")
    assert storage.read_json("jobs/a/state.json") == {"status": "running"}
    assert storage.read_json("jobs/a/missing.json", "absent") == "absent"
    assert storage.list("jobs/a") == ["state.json", "trials"]
    assert storage.walk("jobs") == ["a/state.json", "a/trials/t0000/status.json"]
    assert storage.size("jobs/a/trials/t0000/status.json") == 2 and storage.modified("jobs/a/state.json") > 0
    storage.delete("jobs/a/state.json")
    storage.delete("jobs/a/state.json")  # deleting what is gone is no error
    assert not storage.exists("jobs/a/state.json")
    # abfs:// names the same container
    assert Storage(f"abfs://{container}/automl").read_bytes("jobs/a/trials/t0000/status.json") == b"{}"


def test_of_racing_conditional_creates_one_wins_and_the_blob_keeps_its_bytes(azure_endpoint):
    storage = Storage(f"az://{make_container(azure_endpoint)}/automl")
    won: list[int] = []

    def create(i: int) -> None:
        if storage.create_exclusive("lease.json", f"{i}".encode()):
            won.append(i)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and storage.read_bytes("lease.json") == f"{won[0]}".encode()
    assert not storage.create_exclusive("lease.json", b"again")


def test_data_images_and_an_mltable_folder_in_a_container_are_checked_and_fetched(azure_endpoint, tmp_path,
                                                                                    trial_process):
    """Relative image URLs resolve inside the container; https URLs of the machine's storage account
    are read through adlfs with its credentials (Azurite's dev account here), by check-data and by a trial."""
    from automl_images.trainer import data

    container = make_container(azure_endpoint)
    storage = Storage(f"az://{container}/data")
    train = upload_folder(mltable_folder(tmp_path / "train-mltable"), storage, "train-mltable")
    write_squares(tmp_path / "squares", per_class=2, validation_per_class=1, seed=3)
    upload_folder(tmp_path / "squares", storage, "squares")
    lines = [line.replace('"images/', f'"https://{AZURITE_ACCOUNT}.blob.core.windows.net/{container}/data/squares/images/')
             for line in (tmp_path / "squares" / "val.jsonl").read_text().splitlines()]
    storage.write_text("val.jsonl", "\n".join(lines) + "\n")
    report = check(DataFiles(Task.CLASSIFICATION, train, storage.url("val.jsonl")))
    assert report.ok, report.render()
    assert report.summary["images"] == 12 and report.summary["width"]["min"] == 16  # every header was read
    assert report.validation[0].image_url == \
        f"abfs://{container}@{AZURITE_ACCOUNT}.blob.core.windows.net/data/squares/images/red_2.png"
    samples, skipped = data.fetch_images(report.training + report.validation)
    assert not skipped and len(samples) == 12


def test_https_blob_urls_of_other_accounts_stay_web_urls(monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "mine")
    assert azure_blob_url("https://mine.blob.core.windows.net/box/a%20b/x.png") == \
        "abfs://box@mine.blob.core.windows.net/a b/x.png"
    for url in ("https://theirs.blob.core.windows.net/box/x.png", "https://mine.blob.core.windows.net/box/x.png?sv=1",
                "https://example.com/mine.blob.core.windows.net/box/x.png", "az://box/x.png"):
        assert azure_blob_url(url) == url
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_NAME")
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    assert azure_blob_url("https://mine.blob.core.windows.net/box/x.png") == "https://mine.blob.core.windows.net/box/x.png"


def test_azure_errors_are_transient_or_an_outage_by_their_type_and_code():
    exceptions = pytest.importorskip("azure.core.exceptions")

    def response_error(status: int, code: str):
        error = exceptions.HttpResponseError(message=code)
        error.status_code, error.error_code = status, code
        return error

    assert is_transient(exceptions.ServiceRequestError("connection refused"))
    assert is_transient(exceptions.ServiceResponseError("connection reset"))
    assert is_transient(response_error(503, "ServerBusy")) and is_transient(response_error(429, "TooManyRequests"))
    assert not is_transient(response_error(404, "BlobNotFound"))
    assert outage(response_error(404, "ContainerNotFound")) == "the bucket does not exist"
    assert outage(response_error(403, "AuthorizationPermissionMismatch")) == "permission denied"
    assert outage(exceptions.ClientAuthenticationError("no credential")).startswith("no credentials for the container")
    assert outage(response_error(404, "BlobNotFound")) is None
