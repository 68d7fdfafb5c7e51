"""A launcher we own for controller tests: trials that 'train' on a clock instead of a CPU.

`SimLauncher` implements the launcher interface. A launched trial runs no process: each `poll`
writes what the trainer would have written by then (status.json with its history, metrics/, the
model) for the epochs that `epoch_s` seconds each allow, following a deterministic learning curve
of its hyperparameters (`curve`). It honours stop.json and `cancel` as the trainer does (status
`stopped` with the best so far), can lose a run (`lose`: the run vanishes without a verdict, as on
a preempted machine) or fail it for the user's reasons (`fail`), and prices runs at
`price_per_hour`. It counts every `launch` call per trial, adopted or not, so tests can assert
that no controller launched a trial twice.
"""
from __future__ import annotations

import io
import json
import math
import threading
import time
from typing import Any, Callable

from PIL import Image

from automl_images.controller.launch.base import Handle, LaunchRequest, RunState
from automl_images.core.layout import FILES
from automl_images.core.storage import Storage


def quality(params: dict[str, Any]) -> float:
    """The accuracy a trial's hyperparameters reach: best at learning_rate 0.02, momentum 0.8."""
    lr = float(params.get("learning_rate", 0.01))
    momentum = float(params.get("momentum", 0.9))
    return 0.95 - 0.08 * (math.log(lr / 0.02)) ** 2 - 0.5 * (momentum - 0.8) ** 2


def curve(params: dict[str, Any], epoch: int) -> float:
    """Accuracy after `epoch` epochs: rises towards quality(params)."""
    return max(0.0, quality(params)) * (1 - math.exp(-epoch / 2.0))


class SimLauncher:
    name = "local"  # stands in for the local launcher of the jobs under test

    def __init__(self, clock: Callable[[], float] = time.time, epoch_s: float = 10.0, price_per_hour: float = 0.0,
                 lose: set[str] = frozenset(), fail: dict[str, str] | None = None,
                 metric: str = "accuracy", launch_delay_s: float = 0.0):
        self.clock = clock
        self.epoch_s = epoch_s
        self.price_per_hour = price_per_hour
        self.lose = set(lose)            # trial ids whose first attempt vanishes after one epoch
        self.fail = dict(fail or {})     # trial id -> a user error message
        self.metric = metric
        self.launch_delay_s = launch_delay_s  # a launch takes this long (real seconds): widens races
        self.launches: dict[str, int] = {}
        self._runs: dict[str, dict[str, Any]] = {}
        self._storages: dict[str, Storage] = {}  # one per trial folder: an S3 client is slow to make
        self._lock = threading.Lock()

    # -- the launcher interface -------------------------------------------------------------------
    def launch(self, request: LaunchRequest) -> Handle:
        if self.launch_delay_s:
            time.sleep(self.launch_delay_s)
        with self._lock:
            self.launches[request.trial_id] = self.launches.get(request.trial_id, 0) + 1
            run = self._runs.get(request.spec_url)
            if run is not None and run["state"] is RunState.RUNNING:
                return dict(run["handle"], adopted=True)
            handle = {"spec_url": request.spec_url, "attempt": request.attempt, "started": self.clock(),
                      "hourly_price_usd": self.price_per_hour}
            self._runs[request.spec_url] = {"handle": handle, "state": RunState.RUNNING, "cancelled": False}
            return handle

    def poll(self, handle: Handle) -> RunState:
        with self._lock:
            run = self._runs.get(handle["spec_url"])
            if run is None or run["handle"]["started"] != handle["started"]:
                return RunState.GONE
            if run["state"] is RunState.RUNNING:
                self._advance(run)
            return run["state"]

    def cancel(self, handle: Handle) -> None:
        with self._lock:
            run = self._runs.get(handle["spec_url"])
            if run is not None:
                run["cancelled"] = True

    def logs(self, handle: Handle) -> bytes | None:
        return None

    def cost(self, handle: Handle, elapsed_s: float) -> float | None:
        return self.price_per_hour * elapsed_s / 3600.0

    # -- the simulated trainer --------------------------------------------------------------------
    def _advance(self, run: dict[str, Any]) -> None:
        spec_url = run["handle"]["spec_url"]
        folder, _, spec_name = spec_url.rpartition("/")
        if folder not in self._storages:
            self._storages[folder] = Storage(folder)
        storage = self._storages[folder]
        spec = storage.read_json(spec_name)
        trial = spec["trial_id"]
        params = spec["hyperparameters"]
        total = int(params["number_of_epochs"])
        status = storage.read_json(FILES.status) or {}
        done = len(status.get("history") or [])
        now = self.clock()
        target = min(total, done + int((now - max(run["handle"]["started"], status.get("updated_at", 0)))
                                       // self.epoch_s))
        if trial in self.fail:
            self._write(storage, status, "failed", now, error={"kind": "user", "message": self.fail[trial]})
            run["state"] = RunState.FAILED
            return
        history = list(status.get("history") or [])
        stop = storage.read_json(FILES.stop)
        for epoch in range(done + 1, target + 1):
            if stop or run["cancelled"]:
                break
            value = curve(params, epoch)
            history.append({"epoch": epoch, self.metric: value, "loss": 1 - value})
            storage.write_json(FILES.metrics(epoch), {"epoch": epoch, self.metric: value})
        if trial in self.lose and run["handle"]["attempt"] == 1 and history:
            self._write(storage, status, "running", now, history=history)
            run["state"] = RunState.GONE  # the machine vanished: no verdict
            return
        if stop or run["cancelled"]:
            self._write(storage, status, "stopped", now, history=history, final=True,
                        reason=(stop or {}).get("reason", "terminated"))
            run["state"] = RunState.CANCELLED
        elif len(history) >= total:
            self._write(storage, status, "completed", now, history=history, final=True)
            run["state"] = RunState.SUCCEEDED
        elif len(history) > done or not status:
            self._write(storage, status, "running", now, history=history)

    def _write(self, storage: Storage, status: dict[str, Any], state: str, now: float,
               history: list | None = None, final: bool = False, **fields: Any) -> None:
        history = history if history is not None else list(status.get("history") or [])
        best = max(history, key=lambda h: h[self.metric]) if history else None
        status = dict(status, status=state, updated_at=now, epoch=len(history), history=history,
                      best=None if best is None else {"epoch": best["epoch"], "metrics": {self.metric: best[self.metric]}},
                      **fields)
        status.setdefault("started_at", now)
        spec = storage.read_json(FILES.spec)
        status["epochs_total"] = int(spec["hyperparameters"]["number_of_epochs"])
        if final:
            status.update(metrics=None if best is None else {self.metric: best[self.metric]},
                          epochs=len(history), duration_s=now - status["started_at"])
            if best is not None:
                storage.write_bytes(FILES.model_weights, b"weights")
                storage.write_json(FILES.model_info, {"labels": ["a", "b"], "epoch": best["epoch"]})
        storage.write_json(FILES.status, status)


class FakeClock:
    """A clock tests move by hand (thread-safe enough for one controller)."""

    def __init__(self, start: float = 1_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sim_job(max_trials: int = 4, concurrent: int = 2, epochs: int = 4, sampling: str = "random",
            extra: str = "", space: str | None = None, metric: str = "accuracy") -> str:
    """A job file for simulated trials (its data is never read: point it at any existing file)."""
    space = space or "  - learning_rate: loguniform(-7, -2)\n    momentum: uniform(0.5, 0.99)\n"
    return (f"task: image-classification\ntraining_data: train.jsonl\nprimary_metric: {metric}\n"
            f"sampling: {sampling}\nlimits:\n  max_trials: {max_trials}\n  max_concurrent_trials: {concurrent}\n"
            f"search_space:\n{space}arguments:\n  number_of_epochs: {epochs}\n  pretrained: 0\n{extra}")


def submit(root, name: str, text: str) -> str:
    """Drop a job file into the inbox, its training data at <root>/data/train.jsonl (checked when
    the job is accepted, never trained on); returns the job id."""
    text = text.replace("training_data: train.jsonl", f"training_data: {write_sim_data(root)}")
    root.storage.write_text(f"inbox/{name}.yaml", text)
    return name


# Four 1x1 PNG images, two per class: the least data that the controller's data check accepts.
_PIXELS = {"a0.png": (255, 0, 0), "a1.png": (200, 0, 0), "b0.png": (0, 0, 255), "b1.png": (0, 0, 200)}


def write_sim_data(root, folder: str = "data") -> str:
    """<root>/<folder>/train.jsonl and its images (once per root); returns the JSONL's URL."""
    key = f"{folder}/train.jsonl" if folder else "train.jsonl"
    if not root.storage.exists(key):
        for name, colour in _PIXELS.items():
            buffer = io.BytesIO()
            Image.new("RGB", (1, 1), colour).save(buffer, format="PNG")
            root.storage.write_bytes(f"{folder}/{name}" if folder else name, buffer.getvalue())
        root.storage.write_text(key, "".join(json.dumps({"image_url": name, "label": name[0]}) + "\n"
                                             for name in _PIXELS))
    return root.storage.url(key)


def run_until_done(controller, clock: FakeClock | None = None, step_s: float = 5.0, passes: int = 2000) -> int:
    """Reconcile until no job runs, moving the clock `step_s` per pass; returns the passes made."""
    for i in range(passes):
        active = controller.reconcile_once()
        if not active:
            return i + 1
        if clock is not None:
            clock.advance(step_s)
    raise AssertionError(f"jobs still running after {passes} passes")
