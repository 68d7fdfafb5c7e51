"""Run one trial: read its spec, train, report to the trial folder, export the best model.

    automl-images trial run SPEC_URL        (or: python -m automl_images.trainer.run SPEC_URL)

SPEC_URL is the trial's `spec.json` (a path or a URL); everything the trial writes goes to the
folder named by the spec's `output` (its files: `automl_images.core.layout.TrialFiles`). Running it
again is safe: a finished trial is left as it is, an unfinished one continues from its checkpoint.

This module is the trial run: the spec, the status, signals, the log and the attempt's outcome.
What the trial reads is `inputs.py`; the fit loop is `fit.py`.

Exit codes: 0 completed or stopped, 1 failed (status.json holds the error), 3 unreadable spec.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable

import torch

from automl_images.core.hyperparameters import PRIMARY_METRICS
from automl_images.core.layout import FILES
from automl_images.core.records import ErrorKind, TrialStatus
from automl_images.core.storage import Storage, filesystem, json_bytes, with_retries
from automl_images.core.trial_spec import SpecError, TrialSpec

from . import checkpoint, data, distributed, engine, export
from .best_predictions import BestPredictions
from .fit import Fit, Stopped
from .inputs import TrialInputs
from .report import BackgroundWriter, Reporter
from .tasks import get_adapter

log = logging.getLogger(__package__)

MAX_SKIPPED_LISTED = 100      # skipped images listed in status.json; the rest are counted
HEARTBEAT_S = 30.0            # status.json is rewritten at least this often while training
HEARTBEAT_ENV = "AUTOML_IMAGES_HEARTBEAT_S"  # overrides HEARTBEAT_S (0: after every step)
# Status fields that describe how an attempt ended; a new attempt clears them.
OUTCOME_FIELDS = ("error", "reason", "metrics", "best_epoch", "epochs", "duration_s", "early_stopped")

EXIT_OK, EXIT_FAILED, EXIT_BAD_SPEC = 0, 1, 3


class _TrialLog(logging.Handler):
    """Keeps this trial's log lines so that they can be written to the trial folder, after the
    lines of earlier attempts."""

    def __init__(self, storage: Storage):
        super().__init__(logging.INFO)
        self.storage = storage
        try:
            earlier = storage.read_text(FILES.trainer_log)
        except FileNotFoundError:
            earlier = ""
        self.lines = [earlier.rstrip("\n")] if earlier.strip() else []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class _StopSignal:
    """SIGTERM (a preempted machine, a cancelled job) and SIGINT set a flag that the training loop
    checks at every step; a second SIGINT interrupts at once. Signal handlers can only be installed
    from the main thread: elsewhere the flag is never set."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        log.warning("received %s: stopping at the next training step", self.received)

    def __call__(self) -> bool:
        return self.received is not None


def _formatter(ctx: distributed.Context = distributed.SINGLE) -> logging.Formatter:
    rank = f" [rank {ctx.rank}]" if ctx.enabled else ""
    return logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{rank}: %(message)s")


def read_spec(spec_url: str, write_status: bool = True) -> TrialSpec:
    """The trial spec at `spec_url`. On an invalid spec whose `output` can be read, the trial
    folder gets a failed status (when `write_status`) before the SpecError is raised."""
    fs, path = filesystem(spec_url)
    try:
        text = with_retries(lambda: fs.cat_file(path))
    except Exception as exc:  # noqa: BLE001 - any failure to read means the same to the caller
        raise SpecError(f"cannot read trial spec {spec_url}: {type(exc).__name__}: {exc}") from exc
    try:
        return TrialSpec.from_json(text)
    except SpecError as exc:
        output = _output_of(text) if write_status else None
        if output:
            try:
                Reporter(Storage(output), "").update(TrialStatus.FAILED, error={
                    "kind": ErrorKind.USER.value, "message": f"{spec_url}: {exc}", "traceback": ""})
            except Exception:  # noqa: BLE001 - the SpecError is what the caller must see
                log.exception("could not write the failed status to %s", output)
        raise SpecError(f"{spec_url}: {exc}") from None


def _output_of(text: bytes) -> str | None:
    try:
        output = json.loads(text).get("output")
    except (ValueError, AttributeError):
        return None
    return output if isinstance(output, str) and output else None


def run_trial(spec_url: str) -> dict[str, Any]:
    """Run the trial whose spec is at `spec_url`; returns its final status (the content of
    status.json). Raises SpecError when the spec cannot be read or is invalid. Under torchrun, every
    process calls this (see distributed.py)."""
    ctx = distributed.from_environment()
    spec = read_spec(spec_url, write_status=ctx.is_main)
    storage = Storage(spec.output)
    writer = BackgroundWriter() if ctx.is_main else None
    reporter = Reporter(storage, "", writer)
    current = reporter.status.get("status")
    if current and TrialStatus(current).is_terminal():
        return reporter.status

    trial_log = _TrialLog(storage) if ctx.is_main else None
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setFormatter(_formatter(ctx))
    handlers: list[logging.Handler] = [to_stderr]
    if trial_log is not None:
        trial_log.setFormatter(_formatter(ctx))
        handlers.append(trial_log)
    previous_level, previous_propagate = log.level, log.propagate
    for handler in handlers:
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # our stderr handler already prints; a root handler would print twice
    try:
        with _StopSignal() as stop_signal:
            return _Trial(spec, storage, reporter, trial_log, stop_signal, ctx).run()
    finally:
        try:
            if writer is not None:
                writer.close()
        finally:
            distributed.finish(ctx)
            for handler in handlers:
                log.removeHandler(handler)
            log.setLevel(previous_level)
            log.propagate = previous_propagate


def error_kind(exc: BaseException) -> ErrorKind:
    if isinstance(exc, (data.DataError, SpecError, FloatingPointError, torch.cuda.OutOfMemoryError)):
        return ErrorKind.USER
    if isinstance(exc, OSError):  # storage, network, disk: retrying on another machine may help
        return ErrorKind.INFRASTRUCTURE
    return ErrorKind.INTERNAL


def _error_message(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return f"the GPU ran out of memory; lower training_batch_size or crop_size ({exc})"
    if isinstance(exc, (data.DataError, SpecError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class _Trial:
    """One attempt at a trial: everything `run_trial` does once the spec is read. In a trial of
    several processes (torchrun), every process runs this; only rank 0 writes to the trial folder."""

    def __init__(self, spec: TrialSpec, storage: Storage, reporter: Reporter, trial_log: _TrialLog | None,
                 stop_signal: Callable[[], bool], ctx: distributed.Context = distributed.SINGLE):
        self.spec = spec
        self.hp = spec.hyperparameters
        self.storage = storage
        self.reporter = reporter
        self.trial_log = trial_log
        self.stop_signal = stop_signal
        self.ctx = ctx
        self.main = ctx.is_main
        self.started = time.time()
        self.fit: Fit | None = None   # once the data is loaded
        self.inputs = TrialInputs(spec, ctx)
        self.model_info: dict[str, Any] = {}
        self.best_predictions: BestPredictions | None = None   # rank 0, once the data is loaded

    # -- outcome -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        try:
            try:
                return self._train()
            except Stopped as stop:
                return self._finish(TrialStatus.STOPPED, final=stop.requested, reason=stop.reason)
        except KeyboardInterrupt:
            # A second Ctrl-C: the person wants out now, so no export, just an honest status.
            self._flush(quietly=True)
            self._update(TrialStatus.STOPPED, reason="interrupted", **self._status_fields())
            raise
        except BaseException as exc:
            status = self._fail(exc)
            if not isinstance(exc, Exception):  # SystemExit and the like: marked, passed on
                raise
            return status

    def _update(self, status: TrialStatus, **fields: Any) -> dict[str, Any]:
        """status.json, written by rank 0; the other ranks only keep their copy of it."""
        if self.main:
            return self.reporter.update(status, **fields)
        self.reporter.status.update(fields, status=status.value)
        return self.reporter.status

    def _flush(self, quietly: bool = False) -> None:
        """Wait for the background writes (checkpoint, status); `quietly`: a failure is logged, not
        raised (the trial is already failing for another reason)."""
        if self.reporter.writer is None:
            return
        try:
            self.reporter.writer.flush()
        except Exception:  # noqa: BLE001
            if not quietly:
                raise
            log.exception("a background write to the trial folder failed")

    def _fail(self, exc: BaseException) -> dict[str, Any]:
        kind = error_kind(exc)
        message = _error_message(exc)
        log.error("trial failed (%s): %s", kind.value, message,
                  exc_info=kind is not ErrorKind.USER)
        self._flush(quietly=True)
        status = self._update(TrialStatus.FAILED, error={
            "kind": kind.value, "message": message, "traceback": traceback.format_exc()},
            **self._status_fields())
        self._save_log()
        self._flush(quietly=True)
        return status

    def _finish(self, status: TrialStatus, final: bool, **fields: Any) -> dict[str, Any]:
        """The model exported, then the status that says the trial ended. `final`: nothing will
        resume it, so its resume checkpoint goes (after the status: a kill in between leaves a
        finished trial with a checkpoint, never an unfinished one without)."""
        progress = self.progress
        self._flush()  # the last checkpoint is written before the trial says it is done
        if progress.best_model is not None and self.main:
            export.export_model(self.storage, progress.best_model, {
                **self.model_info, "primary_metric": self.spec.primary_metric,
                "best_metric": progress.best_metrics[self.spec.primary_metric],
                "metrics": _without_per_class(progress.best_metrics), "epoch": progress.best_epoch})
        log.info("trial %s after %d epoch(s); best epoch %s: %s=%s", status.value, progress.epoch,
                 progress.best_epoch, self.spec.primary_metric,
                 progress.best_metrics and progress.best_metrics[self.spec.primary_metric])
        result = self._update(status, metrics=_without_per_class(progress.best_metrics),
                              best_epoch=progress.best_epoch,
                              epochs=progress.epoch, duration_s=self._duration(),
                              **self._status_fields(), **fields)
        if final and self.main and not self.spec.keep_checkpoints:
            self._flush()  # the final status is written first
            self._drop_checkpoint()
        self._save_log()
        self._flush()
        return result

    def _drop_checkpoint(self) -> None:
        size = self.storage.size(FILES.checkpoint)
        if size is None:
            return
        try:
            self.storage.delete(FILES.checkpoint)
        except Exception:  # noqa: BLE001 - a checkpoint left behind costs storage, not the result
            log.exception("could not delete %s (`automl-images gc` removes it later)", FILES.checkpoint)
            return
        log.info("deleted %s (%.1f MB): only a resume needs it (keep_checkpoints: true keeps it)",
                 FILES.checkpoint, size / 1e6)

    @property
    def progress(self) -> checkpoint.Progress:
        return self.fit.progress if self.fit is not None else checkpoint.Progress()

    def _save_log(self) -> None:
        if not self.main or self.trial_log is None:
            return
        text = self.trial_log.text()
        try:
            if self.reporter.writer is not None:
                self.reporter.writer.submit(lambda: self.storage.write_text(FILES.trainer_log, text))
            else:
                self.storage.write_text(FILES.trainer_log, text)
        except Exception:  # noqa: BLE001 - a lost log must not turn a result into a failure
            log.exception("could not write %s", FILES.trainer_log)

    # -- what the fit loop reports to (fit.Trial) ---------------------------------------------------
    def heartbeat(self, epoch: int) -> Callable[[int, int], None]:
        if not self.main:
            return engine.no_heartbeat
        return _Heartbeat(self.reporter, epoch, self.hp["training_batch_size"] * self.ctx.world_size)

    def write_metrics(self, epoch: int, metrics: dict[str, Any]) -> None:
        if self.main:
            self.reporter.write_metrics(epoch, metrics)

    def best_epoch(self, epoch: int, model: torch.nn.Module) -> None:
        if self.best_predictions is None:
            return
        content = json_bytes(self.best_predictions.build(epoch, model))
        if self.reporter.writer is not None:  # in order: after the metrics of the epoch
            self.reporter.writer.submit(lambda: self.storage.write_bytes(FILES.best_predictions, content))
        else:
            self.storage.write_bytes(FILES.best_predictions, content)

    def save_epoch(self, state: dict[str, Any] | None, evaluated: bool) -> None:
        if self.main:
            # The checkpoint is written in the background while the next epoch trains; status.json
            # (queued after it) says epoch N only once checkpoint N is written.
            self._save_checkpoint(state, self.hp.get("checkpoint_frequency"))
            self._update(TrialStatus.RUNNING, progress=None, **self._status_fields())
        if evaluated:
            self._save_log()

    def stop_requested(self) -> Any:
        return self.reporter.stop_requested()

    def signalled(self) -> bool:
        return self.stop_signal()

    def elapsed(self) -> float:
        return time.time() - self.started

    def _save_checkpoint(self, state: dict[str, Any], frequency: int | None) -> None:
        writer = self.reporter.writer
        if writer is None:
            checkpoint.save(self.storage, state, frequency)
            return
        writer.submit(lambda: checkpoint.save(self.storage, state, frequency), heavy=True)
        self.reporter.status["checkpoint_wait_s"] = round(writer.waited_s, 3)

    def _duration(self) -> float:
        return self.fit.duration() if self.fit is not None else self.elapsed()

    def _status_fields(self) -> dict[str, Any]:
        progress, metric = self.progress, self.spec.primary_metric
        return {
            "epoch": progress.epoch,
            "epochs_total": self.hp["number_of_epochs"],
            "history": [{"epoch": m["epoch"], metric: m[metric], "loss": m.get("loss"),
                         "train_loss": m["train_loss"]} for m in progress.history],
            "best": None if progress.best_epoch is None else {
                "epoch": progress.best_epoch, "metrics": _without_per_class(progress.best_metrics)},
            "skipped_images": [s.to_dict() for s in self.inputs.skipped[:MAX_SKIPPED_LISTED]],
            "skipped_images_count": len(self.inputs.skipped),
            "image_warnings": self.inputs.image_warnings[:MAX_SKIPPED_LISTED],
            "image_warnings_count": len(self.inputs.image_warnings),
        }

    # -- training ----------------------------------------------------------------------------------
    def _train(self) -> dict[str, Any]:
        device = self._start()
        # The settings' own checks (crop size, model input size, tiles) before any data is fetched.
        adapter = get_adapter(self.spec.task, self.hp, self.spec.lenient_labels)
        labels, train_samples, val_samples = self.inputs.load(adapter, on_error=_error_message)
        if self.inputs.stats:
            self._update(TrialStatus.RUNNING, **self.inputs.stats, **self._status_fields())
        if distributed.any_true(self.ctx, self.stop_signal())[0]:
            raise Stopped("terminated")
        self.model_info = {"task": self.spec.task.value, "model_name": self.hp["model_name"], "labels": labels,
                           "hyperparameters": self.hp, **adapter.model_info}
        training_data = self.inputs.loaders(adapter, device, labels, train_samples, val_samples)
        if self.main:
            self.best_predictions = BestPredictions(adapter, self.model_info, val_samples, device)
        self.fit = Fit(self.spec, adapter, training_data, self, device, self.ctx)
        self.fit.resume(checkpoint.load(self.storage))
        early = self.fit.run()
        return self._finish(TrialStatus.COMPLETED, final=True, early_stopped=early)

    def _start(self) -> torch.device:
        """The machine set up for the trial (threads, device, process group, kernels, seeds) and the
        attempt's status; returns the device."""
        spec, hp, ctx = self.spec, self.hp, self.ctx
        threads = engine.configure_threads()
        device = distributed.device_for(ctx)
        distributed.start(ctx, device)
        deterministic = engine.configure_kernels(device)
        engine.seed_everything(spec.seed)
        metrics = PRIMARY_METRICS[spec.task]
        if spec.primary_metric not in metrics:
            raise SpecError(f"trial spec field 'primary_metric': {spec.primary_metric!r} is not a metric of "
                            f"{spec.task.value} (one of {', '.join(metrics)})")
        attempt = int(self.reporter.status.get("attempt", 0)) + 1
        self._update(TrialStatus.RUNNING, attempt=attempt, pid=os.getpid(), host=socket.gethostname(),
                     device=str(device), threads=threads, processes=ctx.world_size,
                     deterministic=deterministic,
                     compiled=engine.compile_backend() if spec.compile else None, epoch=0,
                     epochs_total=hp["number_of_epochs"], **dict.fromkeys(OUTCOME_FIELDS))
        log.info("trial %s/%s attempt %d: %s %s on %s (%d threads%s)", spec.job_id, spec.trial_id, attempt,
                 spec.task.value, hp["model_name"], device, threads,
                 f", {ctx.world_size} processes, {ctx.backend}" if ctx.enabled else "")
        if spec.registry_defaults:
            log.warning("the trial spec has no %s: this trainer's defaults are used (%s)",
                        ", ".join(spec.registry_defaults),
                        ", ".join(f"{name}={hp[name]!r}" for name in spec.registry_defaults))
        return device


class _Heartbeat:
    """Rewrites status.json every `heartbeat_seconds()` during an epoch, so that a watcher can tell
    a long epoch from a hung trainer, and see how far the epoch is: its step, the images per second
    so far and the seconds left of its training part (validation comes after)."""

    def __init__(self, reporter: Reporter, epoch: int, images_per_step: int):
        self.reporter = reporter
        self.epoch = epoch
        self.images_per_step = images_per_step  # every rank's batch; the epoch's last one may be smaller
        self.every = heartbeat_seconds()
        self.started = self.last = time.monotonic()

    def __call__(self, step: int, steps: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            per_step = (now - self.started) / max(step, 1)
            self.reporter.update(TrialStatus.RUNNING, progress={
                "epoch": self.epoch, "step": step, "steps": steps,
                "images_per_second": round(self.images_per_step / per_step, 1) if per_step > 0 else None,
                "eta_s": round(per_step * (steps - step), 1)})


def heartbeat_seconds() -> float:
    value = os.environ.get(HEARTBEAT_ENV)
    if not value:
        return HEARTBEAT_S
    try:
        return max(0.0, float(value))
    except ValueError:
        raise ValueError(f"{HEARTBEAT_ENV} must be a number of seconds, got {value!r}") from None


def _without_per_class(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """Summary metrics: per-class figures and the confusion matrix stay in metrics/NNNNNN.json,
    status.json stays small."""
    return None if metrics is None else {k: v for k, v in metrics.items()
                                         if k not in ("per_class", "confusion_matrix")}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: automl-images trial run SPEC_URL", file=sys.stderr)
        return EXIT_BAD_SPEC
    try:
        status = run_trial(args[0])
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_SPEC
    return EXIT_FAILED if status.get("status") == TrialStatus.FAILED.value else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
