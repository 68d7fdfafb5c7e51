"""Shared fixtures: a real S3 API (moto's server over HTTP on 127.0.0.1) and bucket roots; the GCS
emulator and Azurite (Azure Blob Storage's emulator, installed from npm on first use) the same way.

Every test that takes `root_url` runs twice: on a local folder and on the S3 API server. The
server's address and dummy credentials go into the environment, so subprocesses (trials, a
controller started by a test) reach the same server.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import torch

TESTS = Path(__file__).resolve().parent   # shared helpers (simulated.py, trial_data.py, ...) and fixtures/
REPO = TESTS.parent
SHARED = REPO.parent / "shared"


@contextlib.contextmanager
def _serving(command: list[str], port: int, name: str) -> Iterator[None]:
    """`command` started, and waited for (30 s at most) until it listens on `port` of 127.0.0.1;
    stopped when the block ends."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError(f"{name} did not start") from None
                time.sleep(0.1)
        yield
    finally:
        server.terminate()
        server.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory):
    """Keep the tests' local launcher state and AWS settings out of the user's home."""
    base = tmp_path_factory.mktemp("env")
    aws_config = base / "aws-config"
    aws_config.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    saved = dict(os.environ)
    os.environ.update({
        "AUTOML_IMAGES_LOCAL_DIR": str(base / "local-launcher"),
        "AWS_CONFIG_FILE": str(aws_config),
        "AWS_SHARED_CREDENTIALS_FILE": str(base / "no-credentials"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def s3_endpoint(_isolated_environment):
    """moto's S3 server on a free port of 127.0.0.1, for the whole session."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with _serving([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, "moto's S3 server"):
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        yield endpoint
        os.environ.pop("AWS_ENDPOINT_URL", None)


def make_bucket(endpoint: str) -> str:
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def gcs_endpoint(_isolated_environment):
    """gcp-storage-emulator on a free port of 127.0.0.1, for the whole session, with GCS's upload
    precondition added (tests/gcs_server.py says why); gcsfs finds it by STORAGE_EMULATOR_HOST."""
    pytest.importorskip("gcsfs", reason="gcsfs is not installed (the gcs extra)")
    pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator is not installed (the dev extra)")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with _serving([sys.executable, str(TESTS / "gcs_server.py"), str(port)], port, "the GCS emulator"):
        # No credentials, and no probe of the bucket type through the Storage Control API, which the
        # emulator does not serve.
        os.environ.update(STORAGE_EMULATOR_HOST=endpoint, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
        yield endpoint
        for name in ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"):
            os.environ.pop(name, None)


def make_gcs_bucket(endpoint: str) -> str:
    import json
    import urllib.request

    name = f"test-{uuid.uuid4().hex[:12]}"
    request = urllib.request.Request(f"{endpoint}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    return name


# Azurite, Azure Storage's emulator, from npm: installed once per machine (make test does it on its
# first run), into a cache folder beside the user's others.
AZURITE_VERSION = "3.35.0"
AZURITE_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "automl-images"
# Azurite's well-known development account (published in its README; it guards nothing).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _azurite_blob() -> Path:
    """Azurite's blob server, installed from npm into AZURITE_CACHE when missing (into a temporary
    folder first, renamed when complete: an interrupted install is never taken for one)."""
    folder = AZURITE_CACHE / f"azurite-{AZURITE_VERSION}"
    binary = folder / "node_modules" / ".bin" / "azurite-blob"
    if binary.exists():
        return binary
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("Azurite (the Azure Storage emulator) needs node and npm, which are not installed")
    partial = AZURITE_CACHE / f".azurite-{AZURITE_VERSION}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["npm", "install", "--prefix", str(partial), "--no-audit", "--no-fund", "--silent",
                    f"azurite@{AZURITE_VERSION}"], check=True, timeout=600, stdout=subprocess.DEVNULL)
    try:
        partial.rename(folder)
    except OSError:  # another session installed it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    return binary


@pytest.fixture(scope="session")
def azure_endpoint(_isolated_environment, tmp_path_factory):
    """Azurite's blob server on a free port of 127.0.0.1, for the whole session; adlfs (and the
    trials, subprocesses) reach it through AZURE_STORAGE_CONNECTION_STRING with its dev account."""
    pytest.importorskip("adlfs", reason="adlfs is not installed (the azure extra)")
    binary = _azurite_blob()
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    # --skipApiVersionCheck: azure-storage-blob may speak a newer API version than this Azurite knows.
    with _serving([str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--skipApiVersionCheck",
                   "--location", str(tmp_path_factory.mktemp("azurite")), "--silent"], port, "Azurite"):
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                                                         f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};")
        yield endpoint
        os.environ.pop("AZURE_STORAGE_CONNECTION_STRING", None)


def make_container(endpoint: str) -> str:
    """A new container on Azurite at `endpoint` (the azure_endpoint fixture's)."""
    from azure.storage.blob import BlobServiceClient

    name = f"test-{uuid.uuid4().hex[:12]}"
    BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"]).create_container(name)
    return name


@pytest.fixture(params=["local", "s3", "gcs", "azure"])
def exclusive_root_url(request, tmp_path):
    """`root_url`, and a bucket on the GCS emulator and a container on Azurite too: for the tests of
    the conditional create (the one write whose mechanism differs per store) and of what is built on
    it (leases)."""
    if request.param == "gcs":
        return f"gs://{make_gcs_bucket(request.getfixturevalue('gcs_endpoint'))}/automl"
    return _root(request, tmp_path)


@pytest.fixture(params=["local", "s3"])
def root_url(request, tmp_path):
    """A fresh, empty root: a local folder, or a new bucket on the S3 API server (or, for a test
    that asks for it with `@pytest.mark.parametrize("root_url", [..., "azure"], indirect=True)`, a
    new container on Azurite)."""
    return _root(request, tmp_path)


def _root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    if request.param == "azure":
        return f"az://{make_container(request.getfixturevalue('azure_endpoint'))}/automl"
    return f"s3://{make_bucket(request.getfixturevalue('s3_endpoint'))}/automl"


@pytest.fixture
def local_root(tmp_path) -> str:
    return str(tmp_path / "root")


# An MLTable file as Azure's notebooks and docs write it (azureml-examples' image jobs).
AZURE_MLTABLE = """\
paths:
  - file: ./{jsonl}
transformations:
  - read_json_lines:
        encoding: utf8
        invalid_lines: error
        include_path_column: false
  - convert_column_types:
      - columns: image_url
        column_type: stream_info
"""


def mltable_folder(folder: Path, jsonl: str = "train.jsonl", text: str = AZURE_MLTABLE, seed: int = 0) -> Path:
    """An MLTable folder: squares (tests/synthetic.py) and their JSONL files, and an MLTable file listing `jsonl`."""
    from synthetic import write_squares

    write_squares(folder, per_class=3, validation_per_class=1, seed=seed)
    (folder / "MLTable").write_text(text.format(jsonl=jsonl))
    return folder


def upload_folder(folder: Path, storage, prefix: str) -> str:
    """Every file below `folder` copied under `prefix` of `storage` (a core.storage.Storage); the prefix's URL."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            storage.upload_file(str(path), f"{prefix}/{path.relative_to(folder).as_posix()}")
    return storage.url(prefix)


def shared_dataset(name: str) -> Path:
    """A dataset of ../shared/datasets, or a skip saying why."""
    path = SHARED / "datasets" / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared datasets sit beside the checkout, not in it)")
    return path


@pytest.fixture
def one_torch_thread():
    """One torch thread: on 2 shared cores, two threads competing with other work ran several times
    slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def trial_process(one_torch_thread, monkeypatch, tmp_path):
    """A trial run in this process as the local launcher runs one: one torch thread, and an image
    cache of its own."""
    monkeypatch.setenv("AUTOML_IMAGES_THREADS", "1")
    monkeypatch.setenv("AUTOML_IMAGES_IMAGE_CACHE", str(tmp_path / "image-cache"))
