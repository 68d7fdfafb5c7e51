"""The trial folder: what a trial writes for the controller and reads from it.

A trial folder (`<root>/jobs/<job_id>/trials/<trial_id>/`) holds:

- `spec.json`         the trial spec (written once by the controller, see `config.py`)
- `status.json`       the trainer's status: running / completed / failed / stopped, the history of
                      the primary metric, the best metrics, errors, skipped images
- `metrics/NNNNNN.json` every evaluation's full metrics, one object per evaluation (epoch)
- `stop.json`         a stop request from the controller, honoured at the next evaluation
- `checkpoints/last.pt` everything resume needs (see `checkpoint.py`)
- `model/`            the final model: `model.pt` (weights) and `model.json` (labels, preprocessing)
- `logs/`             the trainer's log

This module is the trainer's public contract: the controller imports `TrialStatus` and
`TrialFiles` from here and never writes a key the trainer owns while the trainer is alive.
"""
from __future__ import annotations

import enum
import json
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from .storage import Storage, join


class TrialStatus(str, enum.Enum):
    PENDING = "pending"       # created by the controller, not started (or between attempts)
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"       # stopped on request (early termination, cancel, timeout)

    def is_terminal(self) -> bool:
        return self in (TrialStatus.COMPLETED, TrialStatus.FAILED, TrialStatus.STOPPED)


class ErrorKind(str, enum.Enum):
    """Why a trial failed: decides whether the controller retries it or blames the job."""
    USER = "user"                  # bad data, bad settings: retrying cannot help
    INFRASTRUCTURE = "infrastructure"  # lost machine, preemption: retried
    INTERNAL = "internal"          # a bug in the trainer: reported, not retried


@dataclass(frozen=True)
class TrialFiles:
    """Key names inside one trial folder, relative to the folder."""
    spec: str = "spec.json"
    status: str = "status.json"
    metrics_dir: str = "metrics"
    stop: str = "stop.json"
    checkpoint: str = "checkpoints/last.pt"
    model_dir: str = "model"
    model_weights: str = "model/model.pt"
    model_info: str = "model/model.json"
    logs_dir: str = "logs"
    launch: str = "launch.json"     # written by the controller: launcher handle and attempts

    def metrics(self, evaluation: int) -> str:
        return f"{self.metrics_dir}/{evaluation:06d}.json"


FILES = TrialFiles()


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
        self.status: dict[str, Any] = storage.read_json(self.key(FILES.status), default=None) or {}

    def key(self, name: str) -> str:
        return join(self.prefix, name) if self.prefix else name

    def update(self, status: TrialStatus, **fields: Any) -> dict[str, Any]:
        self.status.update(fields)
        self.status["status"] = status.value
        self.status["updated_at"] = time.time()
        self.status.setdefault("started_at", self.started_at)
        self._write_json(self.key(FILES.status), self.status)
        return self.status

    def write_metrics(self, evaluation: int, metrics: dict[str, Any]) -> None:
        self._write_json(self.key(FILES.metrics(evaluation)), metrics)

    def _write_json(self, key: str, value: Any) -> None:
        if self.writer is None:
            self.storage.write_json(key, value)
            return
        # Encoded now: the dict may change before the background thread writes it.
        data = (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")
        self.writer.submit(lambda: self.storage.write_bytes(key, data))

    def stop_requested(self) -> dict[str, Any] | None:
        return self.storage.read_json(self.key(FILES.stop), default=None)
