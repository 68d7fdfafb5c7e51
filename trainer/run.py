"""Run one trial: read its spec, train, report to the trial folder, export the best model.

    automl-images trial run SPEC_URL        (or: python -m automl_images.trainer.run SPEC_URL)

SPEC_URL is the trial's `spec.json` (a path or a URL); everything the trial writes goes to the
folder named by the spec's `output` (see `report.py` for the layout). Running it again is safe:
a finished trial is left as it is, an unfinished one continues from its checkpoint.

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

from . import checkpoint, data, engine, export, presets
from .config import SpecError, TrialSpec
from .hyperparameters import metric_direction
from .report import FILES, ErrorKind, Reporter, TrialStatus
from .storage import Storage, filesystem, with_retries
from .tasks import get_adapter

log = logging.getLogger(__package__)

LOG_KEY = f"{FILES.logs_dir}/trainer.log"
MAX_SKIPPED_LISTED = 100      # skipped images listed in status.json; the rest are counted
MAX_SKIPPED_LOGGED = 20
HEARTBEAT_S = 30.0            # status.json is rewritten at least this often while training
# Status fields that describe how an attempt ended; a new attempt clears them.
OUTCOME_FIELDS = ("error", "reason", "metrics", "best_epoch", "epochs", "duration_s", "early_stopped")

EXIT_OK, EXIT_FAILED, EXIT_BAD_SPEC = 0, 1, 3


class _Stopped(Exception):
    """Ends training early with status `stopped`; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _TrialLog(logging.Handler):
    """Keeps this trial's log lines so that they can be written to the trial folder, after the
    lines of earlier attempts."""

    def __init__(self, storage: Storage):
        super().__init__(logging.INFO)
        self.storage = storage
        try:
            earlier = storage.read_text(LOG_KEY)
        except FileNotFoundError:
            earlier = ""
        self.lines = [earlier.rstrip("\n")] if earlier.strip() else []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def save(self) -> None:
        self.storage.write_text(LOG_KEY, "\n".join(self.lines) + "\n")


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


def _formatter() -> logging.Formatter:
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def read_spec(spec_url: str) -> TrialSpec:
    """The trial spec at `spec_url`. On an invalid spec whose `output` can be read, the trial
    folder gets a failed status before the SpecError is raised."""
    fs, path = filesystem(spec_url)
    try:
        text = with_retries(lambda: fs.cat_file(path))
    except Exception as exc:  # noqa: BLE001 - any failure to read means the same to the caller
        raise SpecError(f"cannot read trial spec {spec_url}: {type(exc).__name__}: {exc}") from exc
    try:
        return TrialSpec.from_json(text)
    except SpecError as exc:
        output = _output_of(text)
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
    status.json). Raises SpecError when the spec cannot be read or is invalid."""
    spec = read_spec(spec_url)
    storage = Storage(spec.output)
    reporter = Reporter(storage, "")
    current = reporter.status.get("status")
    if current and TrialStatus(current).is_terminal():
        return reporter.status

    trial_log = _TrialLog(storage)
    trial_log.setFormatter(_formatter())
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setFormatter(_formatter())
    previous_level, previous_propagate = log.level, log.propagate
    log.addHandler(trial_log)
    log.addHandler(to_stderr)
    log.setLevel(logging.INFO)
    log.propagate = False  # our stderr handler already prints; a root handler would print twice
    try:
        with _StopSignal() as stop_signal:
            return _Trial(spec, storage, reporter, trial_log, stop_signal).run()
    finally:
        log.removeHandler(trial_log)
        log.removeHandler(to_stderr)
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
    """One attempt at a trial: everything `run_trial` does once the spec is read."""

    def __init__(self, spec: TrialSpec, storage: Storage, reporter: Reporter, trial_log: _TrialLog,
                 stop_signal: Callable[[], bool]):
        self.spec = spec
        self.hp = spec.hyperparameters
        self.storage = storage
        self.reporter = reporter
        self.trial_log = trial_log
        self.stop_signal = stop_signal
        self.started = time.time()
        self.duration_before = 0.0   # training time of earlier attempts, from the checkpoint
        self.progress = checkpoint.Progress()
        self.skipped: list[data.SkippedImage] = []
        self.model_info: dict[str, Any] = {}

    # -- outcome -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        try:
            try:
                return self._train()
            except _Stopped as stop:
                return self._finish(TrialStatus.STOPPED, reason=stop.reason)
        except KeyboardInterrupt:
            # A second Ctrl-C: the person wants out now, so no export, just an honest status.
            self.reporter.update(TrialStatus.STOPPED, reason="interrupted", **self._status_fields())
            raise
        except BaseException as exc:
            status = self._fail(exc)
            if not isinstance(exc, Exception):  # SystemExit and the like: marked, passed on
                raise
            return status

    def _fail(self, exc: BaseException) -> dict[str, Any]:
        kind = error_kind(exc)
        message = _error_message(exc)
        log.error("trial failed (%s): %s", kind.value, message,
                  exc_info=kind is not ErrorKind.USER)
        status = self.reporter.update(TrialStatus.FAILED, error={
            "kind": kind.value, "message": message, "traceback": traceback.format_exc()},
            **self._status_fields())
        self._save_log()
        return status

    def _finish(self, status: TrialStatus, **fields: Any) -> dict[str, Any]:
        progress = self.progress
        if progress.best_model is not None:
            export.export_model(self.storage, progress.best_model, {
                **self.model_info, "primary_metric": self.spec.primary_metric,
                "best_metric": progress.best_metrics[self.spec.primary_metric],
                "metrics": _without_per_class(progress.best_metrics), "epoch": progress.best_epoch})
        log.info("trial %s after %d epoch(s); best epoch %s: %s=%s", status.value, progress.epoch,
                 progress.best_epoch, self.spec.primary_metric,
                 progress.best_metrics and progress.best_metrics[self.spec.primary_metric])
        result = self.reporter.update(status, metrics=progress.best_metrics, best_epoch=progress.best_epoch,
                                      epochs=progress.epoch, duration_s=self._duration(),
                                      **self._status_fields(), **fields)
        self._save_log()
        return result

    def _save_log(self) -> None:
        try:
            self.trial_log.save()
        except Exception:  # noqa: BLE001 - a lost log must not turn a result into a failure
            log.exception("could not write %s", LOG_KEY)

    def _duration(self) -> float:
        return self.duration_before + (time.time() - self.started)

    def _status_fields(self) -> dict[str, Any]:
        progress, metric = self.progress, self.spec.primary_metric
        return {
            "epoch": progress.epoch,
            "epochs_total": self.hp["number_of_epochs"],
            "history": [{"epoch": m["epoch"], metric: m[metric], "loss": m["loss"],
                         "train_loss": m["train_loss"]} for m in progress.history],
            "best": None if progress.best_epoch is None else {
                "epoch": progress.best_epoch, "metrics": _without_per_class(progress.best_metrics)},
            "skipped_images": [s.to_dict() for s in self.skipped[:MAX_SKIPPED_LISTED]],
            "skipped_images_count": len(self.skipped),
        }

    # -- training ----------------------------------------------------------------------------------
    def _train(self) -> dict[str, Any]:
        spec, hp = self.spec, self.hp
        threads = engine.configure_threads()
        device = engine.select_device()
        engine.seed_everything(spec.seed)
        adapter = get_adapter(spec.task)
        metric = spec.primary_metric
        if metric not in adapter.metrics:
            raise SpecError(f"trial spec field 'primary_metric': {metric!r} is not a metric of "
                            f"{spec.task.value} (one of {', '.join(adapter.metrics)})")
        attempt = int(self.reporter.status.get("attempt", 0)) + 1
        self.reporter.update(TrialStatus.RUNNING, attempt=attempt, pid=os.getpid(), host=socket.gethostname(),
                             device=str(device), threads=threads, epoch=0,
                             epochs_total=hp["number_of_epochs"], **dict.fromkeys(OUTCOME_FIELDS))
        log.info("trial %s/%s attempt %d: %s %s on %s (%d threads)", spec.job_id, spec.trial_id, attempt,
                 spec.task.value, hp["model_name"], device, threads)

        # Data, then everything built from it.
        labels, train_samples, val_samples = self._load_data(adapter)
        if self.stop_signal():
            raise _Stopped("terminated")
        class_index = {name: i for i, name in enumerate(labels)}
        train_targets = [adapter.encode(s.record.label, class_index) for s in train_samples]
        val_targets = [adapter.encode(s.record.label, class_index) for s in val_samples]
        class_counts = [0] * len(labels)
        for sample in train_samples:
            for name in adapter.classes_of(sample.record.label):
                class_counts[class_index[name]] += 1

        preprocessing = adapter.preprocessing(hp)
        generator = torch.Generator().manual_seed(spec.seed)
        train_loader = engine.make_loader(
            data.ImageDataset(train_samples, train_targets, presets.train_transform(preprocessing)),
            hp["training_batch_size"], train=True, device=device, generator=generator)
        val_loader = engine.make_loader(
            data.ImageDataset(val_samples, val_targets, presets.eval_transform(preprocessing)),
            hp["validation_batch_size"], train=False, device=device)
        if len(train_loader) == 0:
            raise data.DataError(f"{spec.training_data}: no training batch: {len(train_samples)} "
                                 f"image(s) for training_batch_size {hp['training_batch_size']}")

        model = adapter.build_model(hp["model_name"], len(labels), bool(hp["pretrained"]),
                                    spec.weights_cache, hp.get("layers_to_freeze")).to(device)
        loss_fn = adapter.loss(hp, class_counts).to(device)
        optimizer = engine.build_optimizer(model.parameters(), hp)
        epochs = hp["number_of_epochs"]
        lr_scheduler = engine.build_lr_scheduler(optimizer, hp, len(train_loader), epochs)
        autocast = engine.amp_dtype(device)
        scaler = torch.amp.GradScaler("cuda") if autocast is torch.float16 else None
        early_stopping = engine.EarlyStopping(bool(hp["early_stopping"]), hp["early_stopping_patience"],
                                              hp["early_stopping_delay"], metric_direction(metric))
        self.model_info = {"task": spec.task.value, "model_name": hp["model_name"], "labels": labels,
                           "preprocessing": preprocessing.to_dict()}

        saved = checkpoint.load(self.storage)
        if saved is not None:
            self.progress, rng = checkpoint.restore(
                saved, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler,
                early_stopping=early_stopping, labels=labels, loader_generator=generator)
            engine.set_rng_state(rng)
            self.duration_before = self.progress.duration_s
            log.info("resumed from the checkpoint of epoch %d", self.progress.epoch)
        del saved

        for epoch in range(self.progress.epoch + 1, epochs + 1):
            if early_stopping.should_stop():
                break
            heartbeat = _Heartbeat(self.reporter, epoch)
            stats = engine.train_one_epoch(model, loss_fn, optimizer, lr_scheduler, train_loader, device,
                                           scaler=scaler, autocast_dtype=autocast,
                                           should_stop=self.stop_signal, on_step=heartbeat)
            if stats.pop("interrupted"):
                # The partial epoch is dropped: the checkpoint of the last whole epoch is what a
                # restart continues from, with the data order and RNG states that match it.
                raise _Stopped("terminated")
            evaluated = epoch % hp["evaluation_frequency"] == 0 or epoch == epochs
            if evaluated:
                metrics = engine.evaluate(model, val_loader, adapter.evaluator(labels, loss_fn), device,
                                          autocast_dtype=autocast)
                metrics.update(stats, epoch=epoch, time=time.time())
                self.progress.history.append(metrics)
                if early_stopping.improved(metrics[metric]):
                    self.progress.record_best(epoch, metrics, model)
                self.reporter.write_metrics(epoch, metrics)
                log.info("epoch %d/%d: %s=%.4f loss=%.4f train_loss=%.4f lr=%.5f (%.1fs, %.0f img/s)",
                         epoch, epochs, metric, metrics[metric], metrics["loss"], stats["train_loss"],
                         stats["lr"], stats["train_seconds"], stats["images_per_second"])
            else:
                log.info("epoch %d/%d: train_loss=%.4f lr=%.5f (%.1fs)", epoch, epochs,
                         stats["train_loss"], stats["lr"], stats["train_seconds"])
            self.progress.epoch = epoch
            self.progress.duration_s = self._duration()
            checkpoint.save(self.storage, checkpoint.state_dict(
                model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler,
                early_stopping=early_stopping, progress=self.progress, labels=labels,
                loader_generator=generator, rng=engine.rng_state()), hp.get("checkpoint_frequency"))
            self.reporter.update(TrialStatus.RUNNING, progress=None, **self._status_fields())
            if evaluated:
                self._save_log()
                # After the last epoch a stop request changes nothing: the trial is complete.
                stop = self.reporter.stop_requested() if epoch < epochs else None
                if stop is not None:
                    raise _Stopped(str(stop.get("reason") or "stop requested")
                                   if isinstance(stop, dict) else "stop requested")
            if self.stop_signal():
                raise _Stopped("terminated")

        early = early_stopping.should_stop()
        if early:
            log.info("early stopping: %s did not improve for %d evaluation(s)", metric,
                     early_stopping.bad_evaluations)
        return self._finish(TrialStatus.COMPLETED, early_stopped=early)

    def _load_data(self, adapter) -> tuple[list[str], list[data.Sample], list[data.Sample]]:
        spec = self.spec
        train_records = data.read_jsonl(spec.training_data, adapter.parse_label)
        if spec.validation_data:
            val_records = data.read_jsonl(spec.validation_data, adapter.parse_label)
        else:
            train_records, val_records = data.split(train_records, self.hp["split_ratio"], spec.seed,
                                                    key=lambda r: adapter.classes_of(r.label))
        labels = sorted({name for r in train_records for name in adapter.classes_of(r.label)})
        if len(labels) < 2:
            raise data.DataError(f"{spec.training_data}: {len(labels)} class(es) ({', '.join(labels)}); "
                                 f"classification needs at least 2")
        data.check_known_classes(val_records, set(labels), adapter.classes_of)

        started = time.perf_counter()
        samples, self.skipped = data.fetch_images(train_records + val_records)
        data.check_bad_images(self.skipped, len(train_records) + len(val_records), spec.max_bad_image_ratio)
        for s in self.skipped[:MAX_SKIPPED_LOGGED]:
            log.warning("skipped image %s (%s): %s", s.where, s.image_url, s.reason)
        if len(self.skipped) > MAX_SKIPPED_LOGGED:
            log.warning("and %d more skipped images (see status.json)", len(self.skipped) - MAX_SKIPPED_LOGGED)
        # A record's (file, line) identifies it; with a split, train and validation share a file.
        train_keys = {(r.source, r.line) for r in train_records}
        train_samples = [s for s in samples if (s.record.source, s.record.line) in train_keys]
        val_samples = [s for s in samples if (s.record.source, s.record.line) not in train_keys]
        if not train_samples or not val_samples:
            raise data.DataError(f"no readable {'training' if not train_samples else 'validation'} images "
                                 f"({len(self.skipped)} skipped)")
        log.info("data: %d training and %d validation images, %d classes, %d skipped (%.1fs)",
                 len(train_samples), len(val_samples), len(labels), len(self.skipped),
                 time.perf_counter() - started)
        return labels, train_samples, val_samples


class _Heartbeat:
    """Rewrites status.json every HEARTBEAT_S seconds during an epoch, so that a watcher can tell
    a long epoch from a hung trainer."""

    def __init__(self, reporter: Reporter, epoch: int):
        self.reporter = reporter
        self.epoch = epoch
        self.last = time.monotonic()

    def __call__(self, step: int, steps: int) -> None:
        now = time.monotonic()
        if now - self.last >= HEARTBEAT_S:
            self.last = now
            self.reporter.update(TrialStatus.RUNNING, progress={"epoch": self.epoch, "step": step, "steps": steps})


def _without_per_class(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """Summary metrics: per-class counts stay in metrics/NNNNNN.json, status.json stays small."""
    return None if metrics is None else {k: v for k, v in metrics.items() if k != "per_class"}


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
