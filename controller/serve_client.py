"""A client for `automl-images serve` (and SkyServe in front of it) that retries with backoff.

    from automl_images.controller.serve_client import ServeClient
    client = ServeClient("http://<service endpoint>")
    [prediction] = client.predict([open("can.jpg", "rb").read()])   # Azure's scoring schema

SkyServe replaces a preempted spot replica but does not retry the requests that were on it: they
fail with a reset connection, a 502/503 from its load balancer, or a timeout while no replica is
ready. Predictions are idempotent, so this client sends the same request again after 0.5, 1, 2, 4
... s (with jitter, at most `max_delay_s`; a `Retry-After` is honoured), up to `attempts` times.
Other 4xx answers are the request's own fault and are raised at once, with the server's message.

Only the standard library: the client runs anywhere, without torch or the trainer.
"""
from __future__ import annotations

import base64
import json
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Sequence

RETRIED_STATUSES = frozenset({429, 502, 503, 504})


class ServeError(Exception):
    """The server refused the request (`status` the HTTP status; 0: it could not be reached)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


@dataclass
class ServeClient:
    url: str                          # the server or the SkyServe endpoint, e.g. http://1.2.3.4:30001
    attempts: int = 6
    first_delay_s: float = 0.5
    max_delay_s: float = 8.0
    timeout_s: float = 60.0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self):
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")

    def predict(self, images: Sequence[bytes | str]) -> list[dict[str, Any]]:
        """Predictions for images given as encoded bytes or http(s) URLs (which the server fetches),
        one item each, in Azure's scoring schema."""
        data = [image if isinstance(image, str) else base64.b64encode(image).decode("ascii") for image in images]
        body = json.dumps({"input_data": {"columns": ["image"], "data": data}}).encode("utf-8")
        return self._call("POST", "/predict", body, {"Content-Type": "application/json"})

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def _call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        delay = self.first_delay_s
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(self.url.rstrip("/") + path, data=body, method=method,
                                             headers=headers or {})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                error = ServeError(exc.code, _detail(exc))
                if exc.code not in RETRIED_STATUSES:
                    raise error from None
                wait = _retry_after(exc) or delay
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:  # no replica answered
                reason = getattr(exc, "reason", exc)
                error = ServeError(0, f"{self.url}{path}: {type(reason).__name__}: {reason}")
                wait = delay
            if attempt == self.attempts:
                raise error
            self.sleep(min(self.max_delay_s, wait) * random.uniform(0.8, 1.2))
            delay = min(self.max_delay_s, delay * 2)
        raise AssertionError("unreachable")


def _detail(error: urllib.error.HTTPError) -> str:
    """FastAPI's `detail`, else the body as text."""
    text = error.read().decode("utf-8", "replace")
    try:
        return str(json.loads(text)["detail"])
    except (ValueError, KeyError, TypeError):
        return text or str(error.reason)


def _retry_after(error: urllib.error.HTTPError) -> float | None:
    try:
        return float(error.headers.get("Retry-After", ""))
    except ValueError:
        return None
