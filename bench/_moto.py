"""moto's S3 API server on a free port of 127.0.0.1, for the benchmarks that use a bucket over HTTP
(the tests start theirs in tests/conftest.py)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Iterator

START_TIMEOUT_S = 30   # moto takes seconds to import before it listens; more on a busy machine
_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """The server, running for the `with` block; yields its endpoint URL. Meanwhile AWS_ENDPOINT_URL
    and dummy credentials are set in the environment (and restored after), so that boto3 and s3fs,
    in this process and in the trials it starts, reach the server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {key: os.environ.get(key) for key in (*_ENVIRONMENT, "AWS_ENDPOINT_URL")}
    try:
        deadline = time.time() + START_TIMEOUT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"the moto server did not start within {START_TIMEOUT_S} s") from None
                time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        os.environ.update(_ENVIRONMENT, AWS_ENDPOINT_URL=endpoint)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
