"""Writing a running trial's folder: status, metrics, stop requests (the keys are
`automl_images.core.layout.TrialFiles`; the statuses `automl_images.core.records`). The controller
never writes a key the trainer owns while the trainer is alive."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from automl_images.core.layout import FILES
from automl_images.core.records import TrialStatus
from automl_images.core.storage import InvalidJSON, Storage, join, json_bytes

log = logging.getLogger(__package__)


class BackgroundWriter:
    """Writes to the trial folder from one background thread, in the order they were asked for, so
    that training goes on while a checkpoint is uploaded. Order is what makes it safe: status.json
    never says epoch N before checkpoint N is written. At most `max_heavy` large writes (checkpoints)
    wait at a time; asking for another waits for the oldest. A write that failed (after the
    storage's own retries) is raised by the next `submit` or `flush`."""

    def __init__(self, max_heavy: int = 1):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trial-writer")
        self._pending: deque[Future] = deque()
        self._heavy: deque[Future] = deque()
        self._max_heavy = max_heavy
        self._lock = threading.Lock()
        self.waited_s = 0.0  # time the caller spent waiting for earlier writes

    def submit(self, write: Callable[[], None], heavy: bool = False) -> None:
        self._raise_failed()
        if heavy:
            while len(self._heavy) >= self._max_heavy:
                started = time.perf_counter()
                self._heavy.popleft().result()
                self.waited_s += time.perf_counter() - started
        future = self._pool.submit(write)
        with self._lock:
            self._pending.append(future)
            if heavy:
                self._heavy.append(future)

    def _raise_failed(self) -> None:
        with self._lock:
            while self._pending and self._pending[0].done():
                done = self._pending.popleft()
                if done.exception() is not None:
                    raise done.exception()

    def flush(self) -> None:
        """Wait until everything asked for is written; raise the first failure."""
        started = time.perf_counter()
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
            self._heavy.clear()
        errors = [f.exception() for f in pending]
        self.waited_s += time.perf_counter() - started
        for error in errors:
            if error is not None:
                raise error

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)


class Reporter:
    """Writes a running trial's status and metrics to its folder; reads stop requests. With a
    `writer`, writes happen in its background thread (in order); without, at once."""

    def __init__(self, storage: Storage, trial_prefix: str, writer: BackgroundWriter | None = None):
        self.storage = storage
        self.prefix = trial_prefix
        self.writer = writer
        self.started_at = time.time()
        try:
            status = storage.read_json(self.key(FILES.status), default=None)
        except InvalidJSON as exc:  # torn by a kill: the attempt before this one's, rewritten from here on
            log.warning("%s; starting a new status", exc)
            status = None
        self.status: dict[str, Any] = status if isinstance(status, dict) else {}

    def key(self, name: str) -> str:
        return join(self.prefix, name) if self.prefix else name

    def update(self, status: TrialStatus, **fields: Any) -> dict[str, Any]:
        self.status.update(fields)
        self.status["status"] = status.value
        self.status["updated_at"] = time.time()
        self.status.setdefault("started_at", self.started_at)
        data = json_bytes(self.status)
        self.status = json.loads(data)  # what the file holds, its ISO times included
        self._write_bytes(self.key(FILES.status), data)
        return self.status

    def write_metrics(self, evaluation: int, metrics: dict[str, Any]) -> None:
        self._write_json(self.key(FILES.metrics(evaluation)), metrics)

    def _write_json(self, key: str, value: Any) -> None:
        # Encoded now: the dict may change before the background thread writes it.
        self._write_bytes(key, json_bytes(value))

    def _write_bytes(self, key: str, data: bytes) -> None:
        if self.writer is None:
            self.storage.write_bytes(key, data)
        else:
            self.writer.submit(lambda: self.storage.write_bytes(key, data))

    def stop_requested(self) -> dict[str, Any] | None:
        """The stop request, if any. One that cannot be read (torn) is still a request: the
        controller writes stop.json only to stop the trial."""
        try:
            stop = self.storage.read_json(self.key(FILES.stop), default=None)
        except InvalidJSON as exc:
            return {"reason": f"stop requested ({exc})"}
        if stop is None or isinstance(stop, dict):
            return stop
        return {"reason": "stop requested"}
