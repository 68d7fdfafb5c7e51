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

from automl_images.core.hyperparameters import metric_direction
from automl_images.core.layout import FILES
from automl_images.core.records import ErrorKind, TrialStatus
from automl_images.core.storage import Storage, filesystem, with_retries
from automl_images.core.trial_spec import SpecError, TrialSpec

from . import checkpoint, data, distributed, engine, export
from .report import BackgroundWriter, Reporter
from .tasks import get_adapter

log = logging.getLogger(__package__)

LOG_KEY = f"{FILES.logs_dir}/trainer.log"
MAX_SKIPPED_LISTED = 100      # skipped images listed in status.json; the rest are counted
MAX_SKIPPED_LOGGED = 20
HEARTBEAT_S = 30.0            # status.json is rewritten at least this often while training
HEARTBEAT_ENV = "AUTOML_IMAGES_HEARTBEAT_S"  # overrides HEARTBEAT_S (0: after every step)
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
        self.duration_before = 0.0   # training time of earlier attempts, from the checkpoint
        self.progress = checkpoint.Progress()
        self.skipped: list[data.SkippedImage] = []
        self.image_warnings: list[dict[str, str]] = []
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

    def _finish(self, status: TrialStatus, **fields: Any) -> dict[str, Any]:
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
        self._save_log()
        self._flush()
        return result

    def _save_log(self) -> None:
        if not self.main or self.trial_log is None:
            return
        text = self.trial_log.text()
        try:
            if self.reporter.writer is not None:
                self.reporter.writer.submit(lambda: self.storage.write_text(LOG_KEY, text))
            else:
                self.storage.write_text(LOG_KEY, text)
        except Exception:  # noqa: BLE001 - a lost log must not turn a result into a failure
            log.exception("could not write %s", LOG_KEY)

    def _save_checkpoint(self, state: dict[str, Any], frequency: int | None) -> None:
        writer = self.reporter.writer
        if writer is None:
            checkpoint.save(self.storage, state, frequency)
            return
        writer.submit(lambda: checkpoint.save(self.storage, state, frequency), heavy=True)
        self.reporter.status["checkpoint_wait_s"] = round(writer.waited_s, 3)

    def _duration(self) -> float:
        return self.duration_before + (time.time() - self.started)

    def _status_fields(self) -> dict[str, Any]:
        progress, metric = self.progress, self.spec.primary_metric
        return {
            "epoch": progress.epoch,
            "epochs_total": self.hp["number_of_epochs"],
            "history": [{"epoch": m["epoch"], metric: m[metric], "loss": m.get("loss"),
                         "train_loss": m["train_loss"]} for m in progress.history],
            "best": None if progress.best_epoch is None else {
                "epoch": progress.best_epoch, "metrics": _without_per_class(progress.best_metrics)},
            "skipped_images": [s.to_dict() for s in self.skipped[:MAX_SKIPPED_LISTED]],
            "skipped_images_count": len(self.skipped),
            "image_warnings": self.image_warnings[:MAX_SKIPPED_LISTED],
            "image_warnings_count": len(self.image_warnings),
        }

    # -- training ----------------------------------------------------------------------------------
    def _train(self) -> dict[str, Any]:
        spec, hp, ctx = self.spec, self.hp, self.ctx
        threads = engine.configure_threads()
        device = distributed.device_for(ctx)
        distributed.start(ctx, device)
        deterministic = engine.configure_kernels(device)
        engine.seed_everything(spec.seed)
        adapter = get_adapter(spec.task, spec.lenient_labels)
        metric = spec.primary_metric
        if metric not in adapter.metrics:
            raise SpecError(f"trial spec field 'primary_metric': {metric!r} is not a metric of "
                            f"{spec.task.value} (one of {', '.join(adapter.metrics)})")
        attempt = int(self.reporter.status.get("attempt", 0)) + 1
        self._update(TrialStatus.RUNNING, attempt=attempt, pid=os.getpid(), host=socket.gethostname(),
                     device=str(device), threads=threads, processes=ctx.world_size,
                     deterministic=deterministic,
                     compiled=engine.compile_backend() if spec.compile else None, epoch=0,
                     epochs_total=hp["number_of_epochs"], **dict.fromkeys(OUTCOME_FIELDS))
        log.info("trial %s/%s attempt %d: %s %s on %s (%d threads%s)", spec.job_id, spec.trial_id, attempt,
                 spec.task.value, hp["model_name"], device, threads,
                 f", {ctx.world_size} processes, {ctx.backend}" if ctx.enabled else "")

        # The settings' own checks (crop size, model input size, tiles) before any data is fetched.
        task_info = adapter.model_info(hp)
        # Data, then everything built from it.
        labels, train_samples, val_samples = self._load_data(adapter)
        if distributed.any_true(ctx, self.stop_signal())[0]:
            raise _Stopped("terminated")
        class_index = {name: i for i, name in enumerate(labels)}
        train_targets = [adapter.encode(s.record.label, class_index) for s in train_samples]
        val_targets = [adapter.encode(s.record.label, class_index) for s in val_samples]
        class_counts = [0] * len(labels)
        for sample in train_samples:
            for name in adapter.classes_of(sample.record.label):
                class_counts[class_index[name]] += 1

        loader_options = {"device": device, "seed": spec.seed, "rank": ctx.rank, "world_size": ctx.world_size,
                          "processes_per_node": ctx.local_world_size}
        train_dataset = adapter.dataset(train_samples, train_targets, hp, train=True, seed=spec.seed)
        train_loader = engine.make_loader(train_dataset, hp["training_batch_size"], train=True,
                                          collate_fn=adapter.collate, group_ids=train_dataset.group_ids,
                                          **loader_options)
        val_loader = engine.make_loader(adapter.dataset(val_samples, val_targets, hp, train=False),
                                        hp["validation_batch_size"], train=False, collate_fn=adapter.collate,
                                        **loader_options)
        if len(train_loader) == 0:
            raise data.DataError(f"{spec.training_data}: no training batch: {len(train_samples)} "
                                 f"image(s) for training_batch_size {hp['training_batch_size']}"
                                 + (f" in each of {ctx.world_size} processes" if ctx.enabled else ""))

        model = adapter.build_model(hp, len(labels), spec.weights_cache).to(device)
        model = engine.prepare_model(model, device)
        loss_fn = adapter.loss(hp, class_counts, len(train_samples)).to(device)
        optimizer = engine.build_optimizer(model.parameters(), hp)
        epochs = hp["number_of_epochs"]
        lr_scheduler = engine.build_lr_scheduler(optimizer, hp, len(train_loader), epochs)
        autocast = engine.amp_dtype(device)
        scaler = torch.amp.GradScaler("cuda") if autocast is torch.float16 else None
        early_stopping = engine.EarlyStopping(bool(hp["early_stopping"]), hp["early_stopping_patience"],
                                              hp["early_stopping_delay"], metric_direction(metric))
        self.model_info = {"task": spec.task.value, "model_name": hp["model_name"], "labels": labels,
                           "hyperparameters": hp, **task_info}
        if ctx.rank:
            # The model is built (the same on every rank); from here each rank draws its own
            # random numbers (dropout), else every rank would drop the same units.
            engine.seed_everything(spec.seed + 7919 * ctx.rank)

        saved = checkpoint.load(self.storage)
        if saved is not None:
            self.progress, rng = checkpoint.restore(
                saved, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler,
                early_stopping=early_stopping, labels=labels, rank=ctx.rank, world_size=ctx.world_size)
            engine.set_rng_state(rng)
            self.duration_before = self.progress.duration_s
            log.info("resumed from the checkpoint of epoch %d", self.progress.epoch)
        del saved

        # What trains and what evaluates: DDP's wrapper splits the gradient work; evaluation runs on
        # the model itself (each rank its share of the validation set).
        train_model: torch.nn.Module = model
        if ctx.enabled:
            train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        eval_model: torch.nn.Module = model
        if spec.compile:
            train_model = engine.compile_model(train_model)
            eval_model = train_model if not ctx.enabled else engine.compile_model(model)
            log.info("torch.compile (%s): the first steps of training and of evaluation compile the model",
                     engine.compile_backend())
        eval_model = adapter.inference_model(eval_model, hp)
        channels_last = engine.is_channels_last(model)
        prepare = adapter.batch_transform(hp, device)  # a batch on the device → the model's inputs

        def control(stop: bool, bad_loss: bool) -> tuple[bool, bool]:
            return distributed.any_true(ctx, stop, bad_loss)

        for epoch in range(self.progress.epoch + 1, epochs + 1):
            if early_stopping.should_stop():
                break
            train_loader.batch_sampler.set_epoch(epoch)
            heartbeat = _Heartbeat(self.reporter, epoch) if self.main else _no_heartbeat
            stats = engine.train_one_epoch(train_model, loss_fn, optimizer, lr_scheduler, train_loader, device,
                                           scaler=scaler, autocast_dtype=autocast,
                                           should_stop=self.stop_signal, on_step=heartbeat, control=control,
                                           channels_last=channels_last, prepare=prepare)
            if stats.pop("interrupted"):
                # The partial epoch is dropped: the checkpoint of the last whole epoch is what a
                # restart continues from, with the data order and RNG states that match it.
                raise _Stopped("terminated")
            stats = _over_ranks(ctx, stats)
            evaluated = epoch % hp["evaluation_frequency"] == 0 or epoch == epochs
            if evaluated:
                # Batch norm's running statistics differ between ranks after their last steps: every
                # rank evaluates with rank 0's, which are the ones saved.
                distributed.broadcast_buffers(ctx, model)
                metrics = engine.evaluate(eval_model, val_loader, adapter.evaluator(labels, loss_fn, hp), device,
                                          autocast_dtype=autocast, prepare=prepare, ctx=ctx)
                # Every rank takes the same decisions (early stopping, best epoch) from rank 0's figures.
                metrics = distributed.broadcast(ctx, metrics)
                metrics.update(stats, epoch=epoch, time=time.time())
                self.progress.history.append(metrics)
                # validation_metric_type none: no figure to compare, the latest epoch is the one kept.
                if metrics[metric] is None or early_stopping.improved(metrics[metric]):
                    self.progress.record_best(epoch, metrics, model if self.main else None)
                if self.main:
                    self.reporter.write_metrics(epoch, metrics)
                # Detectors compute losses in training mode only: no validation loss.
                validation_loss = f" loss={metrics['loss']:.4f}" if "loss" in metrics else ""
                log.info("epoch %d/%d: %s=%s%s train_loss=%.4f lr=%.5f (%.1fs, %.1f img/s)",
                         epoch, epochs, metric, _figure(metrics[metric]), validation_loss, stats["train_loss"],
                         stats["lr"], stats["train_seconds"], stats["images_per_second"])
            else:
                log.info("epoch %d/%d: train_loss=%.4f lr=%.5f (%.1fs)", epoch, epochs,
                         stats["train_loss"], stats["lr"], stats["train_seconds"])
            self.progress.epoch = epoch
            self.progress.duration_s = self._duration()
            rng_by_rank = distributed.gather(ctx, engine.rng_state()) if ctx.enabled else None
            if self.main:
                # Copied now, written in the background while the next epoch trains; status.json
                # (queued after it) says epoch N only once checkpoint N is written.
                state = checkpoint.snapshot(checkpoint.state_dict(
                    model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler,
                    early_stopping=early_stopping, progress=self.progress, labels=labels,
                    rng=engine.rng_state(), rng_by_rank=rng_by_rank))
                self._save_checkpoint(state, hp.get("checkpoint_frequency"))
                self._update(TrialStatus.RUNNING, progress=None, **self._status_fields())
            stop = None
            if evaluated:
                self._save_log()
                # After the last epoch a stop request changes nothing: the trial is complete.
                if self.main and epoch < epochs:
                    stop = self.reporter.stop_requested()
                stop = distributed.broadcast(ctx, stop)
            if stop is not None:
                raise _Stopped(str(stop.get("reason") or "stop requested")
                               if isinstance(stop, dict) else "stop requested")
            if distributed.any_true(ctx, self.stop_signal())[0]:
                raise _Stopped("terminated")

        early = early_stopping.should_stop()
        if early:
            log.info("early stopping: %s did not improve for %d evaluation(s)", metric,
                     early_stopping.bad_evaluations)
        return self._finish(TrialStatus.COMPLETED, early_stopped=early)

    def _load_data(self, adapter) -> tuple[list[str], list[data.Sample], list[data.Sample]]:
        """The classes and the samples. With several processes, rank 0 fetches and checks every
        image and tells the others which it kept; they fetch those (from the machine's cache when
        they share rank 0's) without decoding them again."""
        ctx = self.ctx
        if ctx.is_main:
            try:
                labels, train_samples, val_samples = self._load_data_here(adapter)
            except BaseException as exc:
                distributed.broadcast(ctx, {"error": _error_message(exc)})
                raise
            if ctx.enabled:
                distributed.broadcast(ctx, {"kept": [(s.record.source, s.record.line)
                                                     for s in train_samples + val_samples]})
            return labels, train_samples, val_samples
        outcome = distributed.broadcast(ctx, None)
        if "error" in outcome:
            raise data.DataError(f"rank 0 could not load the data: {outcome['error']}")
        labels, train_records, val_records = self._read_records(adapter)
        kept = set(map(tuple, outcome["kept"]))
        train_keys = {(r.source, r.line) for r in train_records}
        records = [r for r in train_records + val_records if (r.source, r.line) in kept]
        samples, skipped = data.fetch_images(records, check=False)
        if skipped:
            raise data.DataError(f"rank {ctx.rank} could not fetch images that rank 0 read: "
                                 + "; ".join(f"{s.where}: {s.reason}" for s in skipped[:5]))
        return (labels, [s for s in samples if (s.record.source, s.record.line) in train_keys],
                [s for s in samples if (s.record.source, s.record.line) not in train_keys])

    def _read_records(self, adapter) -> tuple[list[str], list[data.Record], list[data.Record]]:
        spec = self.spec
        train_records = data.read_jsonl(spec.training_data, adapter.parse_label, spec.datastores)
        if spec.validation_data:
            val_records = data.read_jsonl(spec.validation_data, adapter.parse_label, spec.datastores)
        else:
            train_records, val_records = data.split(train_records, self.hp["split_ratio"], spec.seed,
                                                    key=lambda r: adapter.classes_of(r.label))
        labels = sorted({name for r in train_records for name in adapter.classes_of(r.label)})
        # A detector tells one class from the background; a classifier needs two to choose from.
        needed = 2 if spec.task.is_classification else 1
        if len(labels) < needed:
            raise data.DataError(f"{spec.training_data}: {len(labels)} class(es) ({', '.join(labels)}); "
                                 f"{spec.task.value} needs at least {needed}")
        data.check_known_classes(val_records, set(labels), adapter.classes_of)
        return labels, train_records, val_records

    def _load_data_here(self, adapter) -> tuple[list[str], list[data.Sample], list[data.Sample]]:
        spec = self.spec
        started, cpu_started = time.perf_counter(), time.process_time()
        labels, train_records, val_records = self._read_records(adapter)
        fetched_before = data.FETCH_STATS.snapshot()
        samples, self.skipped = data.fetch_images(train_records + val_records)
        fetched = {k: v - fetched_before[k] for k, v in data.FETCH_STATS.snapshot().items() if k != "max_in_flight"}
        data.check_bad_images(self.skipped, len(train_records) + len(val_records), spec.max_bad_image_ratio)
        for s in self.skipped[:MAX_SKIPPED_LOGGED]:
            log.warning("skipped image %s (%s): %s", s.where, s.image_url, s.reason)
        if len(self.skipped) > MAX_SKIPPED_LOGGED:
            log.warning("and %d more skipped images (see status.json)", len(self.skipped) - MAX_SKIPPED_LOGGED)
        # What a lenient parser changed in a label is listed like what an image's details got wrong.
        self.image_warnings = [{"where": r.where, "image_url": r.image_url, "warning": f"label: {change}"}
                               for r in train_records + val_records for change in adapter.label_changes(r.label)]
        self.image_warnings += [{"where": s.record.where, "image_url": s.record.image_url, "warning": s.warning}
                                for s in samples if s.warning]
        for w in self.image_warnings[:MAX_SKIPPED_LOGGED]:
            log.warning("image %s (%s): %s", w["where"], w["image_url"], w["warning"])
        # A record's (file, line) identifies it; with a split, train and validation share a file.
        train_keys = {(r.source, r.line) for r in train_records}
        train_samples = [s for s in samples if (s.record.source, s.record.line) in train_keys]
        val_samples = [s for s in samples if (s.record.source, s.record.line) not in train_keys]
        if not train_samples or not val_samples:
            raise data.DataError(f"no readable {'training' if not train_samples else 'validation'} images "
                                 f"({len(self.skipped)} skipped)")
        seconds = time.perf_counter() - started
        self._update(TrialStatus.RUNNING, data_seconds=round(seconds, 3),
                     data_cpu_seconds=round(time.process_time() - cpu_started, 3), images_fetched=fetched,
                     **self._status_fields())
        log.info("data: %d training and %d validation images, %d classes, %d skipped, %d downloaded, "
                 "%d from the cache (%.1fs)", len(train_samples), len(val_samples), len(labels),
                 len(self.skipped), fetched["downloaded"], fetched["cache_hits"], seconds)
        return labels, train_samples, val_samples


def _no_heartbeat(step: int, steps: int) -> None:
    pass


def _over_ranks(ctx: distributed.Context, stats: dict[str, Any]) -> dict[str, Any]:
    """One epoch's training figures over every rank: the loss is the mean over every image trained."""
    if not ctx.enabled:
        return stats
    loss_sum, images = distributed.sum_over_ranks(ctx, stats["train_loss_sum"], stats["train_images"])
    seconds, = distributed.max_over_ranks(ctx, stats["train_seconds"])
    return {**stats, "train_loss": loss_sum / max(1, images), "train_loss_sum": loss_sum,
            "train_images": int(images), "train_seconds": seconds,
            "images_per_second": images / seconds if seconds else 0.0}


class _Heartbeat:
    """Rewrites status.json every `heartbeat_seconds()` during an epoch, so that a watcher can tell
    a long epoch from a hung trainer."""

    def __init__(self, reporter: Reporter, epoch: int):
        self.reporter = reporter
        self.epoch = epoch
        self.every = heartbeat_seconds()
        self.last = time.monotonic()

    def __call__(self, step: int, steps: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.reporter.update(TrialStatus.RUNNING, progress={"epoch": self.epoch, "step": step, "steps": steps})


def heartbeat_seconds() -> float:
    value = os.environ.get(HEARTBEAT_ENV)
    if not value:
        return HEARTBEAT_S
    try:
        return max(0.0, float(value))
    except ValueError:
        raise ValueError(f"{HEARTBEAT_ENV} must be a number of seconds, got {value!r}") from None


def _figure(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


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
