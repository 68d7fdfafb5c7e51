"""Shared fixtures: a real S3 API (moto's server over HTTP on 127.0.0.1) and bucket roots.

Every test that takes `root_url` runs twice: on a local folder and on the S3 API server. The
server's address and dummy credentials go into the environment, so subprocesses (trials, a
controller started by a test) reach the same server.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent   # shared helpers (simulated.py, trial_data.py, ...) and fixtures/
REPO = TESTS.parent
SHARED = REPO.parent / "shared"


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
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        server.kill()
        raise RuntimeError("moto server did not start")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield endpoint
    os.environ.pop("AWS_ENDPOINT_URL", None)
    server.terminate()
    server.wait(timeout=10)


def make_bucket(endpoint: str) -> str:
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def root_url(request, tmp_path):
    """A fresh, empty root: a local folder, or a new bucket on the S3 API server."""
    if request.param == "local":
        return str(tmp_path / "root")
    endpoint = request.getfixturevalue("s3_endpoint")
    return f"s3://{make_bucket(endpoint)}/automl"


@pytest.fixture
def local_root(tmp_path) -> str:
    return str(tmp_path / "root")


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
