"""The fit loop of one trial: the model, loss, optimizer, schedule and early stopping built from the
task adapter, resumed from the checkpoint, then trained epoch by epoch: evaluation when due, a
checkpoint after every epoch, early stopping, stop requests and signals.

`run.py` reads the spec and reports to the trial folder, `inputs.py` loads the data; the loop is
given the data (`TrainingData`) and the trial run (`Trial`, what the loop reports to). Under torchrun every process
runs the loop and they take every decision together: the same stop step, and rank 0's metrics for
early stopping and the best epoch.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch.utils.data import DataLoader

from automl_images.core.seeds import rank_seed
from automl_images.core.trial_spec import TrialSpec

from . import checkpoint, distributed, engine
from .tasks import TaskAdapter

log = logging.getLogger(__package__)


class Stopped(Exception):
    """Ends training early with status `stopped`; `reason` says why. `requested`: by a stop request
    (early termination, a cancel), which is final; otherwise by a signal (a preemption, Ctrl-C),
    after which the next attempt resumes from the checkpoint."""

    def __init__(self, reason: str, requested: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.requested = requested


@dataclass(frozen=True)
class TrainingData:
    """What the loop trains and evaluates on (inputs.TrialInputs.loaders)."""
    labels: list[str]             # the class names, in the order of the model's outputs
    train_loader: DataLoader      # batches from an engine.EpochBatchSampler
    val_loader: DataLoader
    class_counts: list[int]       # training images per class
    train_images: int
    # log_training_metrics: the training images without augmentation, in order, scored at each evaluation
    train_eval_loader: DataLoader | None = None


class Trial(Protocol):
    """What the loop asks of the trial run around it (run.py). Only rank 0 writes to the trial
    folder: on the other ranks the writing methods do nothing."""

    def heartbeat(self, epoch: int) -> Callable[[int, int], None]:
        """Called with (step, steps) after every training step of `epoch`."""
    def write_metrics(self, epoch: int, metrics: dict[str, Any]) -> None: ...
    def best_epoch(self, epoch: int, model: torch.nn.Module) -> None:
        """`model` (evaluated at `epoch`) is the best so far: its validation predictions are saved."""
    def save_epoch(self, state: dict[str, Any] | None, evaluated: bool) -> None:
        """The checkpoint of the epoch just trained (`state`, rank 0's), then the status that says so;
        after an evaluation, the log."""
    def stop_requested(self) -> Any:
        """The trial folder's stop request (a dict with its `reason`, or true); None when there is none."""
    def signalled(self) -> bool:
        """True once this process was told to stop (SIGTERM, SIGINT)."""
    def elapsed(self) -> float:
        """Seconds since this attempt started."""


class Fit:
    """One attempt's training: built from the adapter, `resume`d from a checkpoint, then `run`."""

    def __init__(self, spec: TrialSpec, adapter: TaskAdapter, data: TrainingData, trial: Trial,
                 device: torch.device, ctx: distributed.Context = distributed.SINGLE):
        self.spec, self.adapter, self.data, self.trial, self.device, self.ctx = spec, adapter, data, trial, device, ctx
        hp = spec.hyperparameters
        self.epochs = hp["number_of_epochs"]
        self.model = engine.prepare_model(adapter.build_model(len(data.labels), spec.weights_cache).to(device),
                                          device)
        self.loss_fn = adapter.loss(data.class_counts, data.train_images).to(device)
        self.optimizer = engine.build_optimizer(self.model.parameters(), hp)
        self.lr_scheduler = engine.build_lr_scheduler(self.optimizer, hp, len(data.train_loader), self.epochs)
        self.autocast = engine.amp_dtype(device)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast is torch.float16 else None
        self.prepare = adapter.batch_transform(device)  # a batch on the device -> the model's inputs
        self.early_stopping = engine.EarlyStopping(bool(hp["early_stopping"]), hp["early_stopping_patience"],
                                                   hp["early_stopping_delay"], spec.primary_metric)
        self.progress = checkpoint.Progress()
        self.duration_before = 0.0   # training time of earlier attempts, from the checkpoint
        if ctx.rank:
            # The model is built (the same on every rank); from here each rank draws its own
            # random numbers (dropout), else every rank would drop the same units.
            engine.seed_everything(rank_seed(spec.seed, ctx.rank))

    def resume(self, saved: dict[str, Any] | None) -> None:
        """Continue from `saved` (checkpoint.load's), when there is one: weights, optimizer, schedule,
        early stopping, progress and every RNG, so that the next epoch draws what it would have."""
        if saved is None:
            return
        self.progress, rng = checkpoint.restore(
            saved, model=self.model, optimizer=self.optimizer, lr_scheduler=self.lr_scheduler, scaler=self.scaler,
            early_stopping=self.early_stopping, labels=self.data.labels, rank=self.ctx.rank,
            world_size=self.ctx.world_size)
        engine.set_rng_state(rng)
        self.duration_before = self.progress.duration_s
        log.info("resumed from the checkpoint of epoch %d", self.progress.epoch)

    def duration(self) -> float:
        """Training time of every attempt so far."""
        return self.duration_before + self.trial.elapsed()

    def run(self) -> bool:
        """Train the epochs left; True when early stopping ended training. Raises Stopped on a stop
        request or signal."""
        training, eval_model = self._models()
        for epoch in range(self.progress.epoch + 1, self.epochs + 1):
            if self.early_stopping.should_stop():
                break
            self.data.train_loader.batch_sampler.set_epoch(epoch)
            stats = engine.train_one_epoch(dataclasses.replace(training, on_step=self.trial.heartbeat(epoch)),
                                           self.data.train_loader)
            if stats.pop("interrupted"):
                # The partial epoch is dropped: the checkpoint of the last whole epoch is what a
                # restart continues from, with the data order and RNG states that match it.
                raise Stopped("terminated")
            stats = _over_ranks(self.ctx, stats)
            evaluated = epoch % self.spec.hyperparameters["evaluation_frequency"] == 0 or epoch == self.epochs
            if evaluated:
                self._evaluate(epoch, eval_model, stats)
            else:
                log.info("epoch %d/%d: train_loss=%.4f lr=%.5f (%.1fs)", epoch, self.epochs,
                         stats["train_loss"], stats["last_learning_rate"], stats["train_seconds"])
            self._save(epoch, evaluated)
            self._check_stop(epoch, evaluated)
        early = self.early_stopping.should_stop()
        if early:
            log.info("early stopping: %s did not improve for %d evaluation(s)", self.spec.primary_metric,
                     self.early_stopping.bad_evaluations)
        return early

    def _models(self) -> tuple[engine.EpochContext, torch.nn.Module]:
        """What trains and what evaluates: DDP's wrapper splits the gradient work; evaluation runs on
        the model itself (each rank its share of the validation set)."""
        ctx = self.ctx
        train_model: torch.nn.Module = self.model
        if ctx.enabled:
            train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        eval_model: torch.nn.Module = self.model
        if self.spec.compile:
            train_model = engine.compile_model(train_model)
            eval_model = train_model if not ctx.enabled else engine.compile_model(self.model)
            log.info("torch.compile (%s): the first steps of training and of evaluation compile the model",
                     engine.compile_backend())
        accumulation = int(self.spec.hyperparameters.get("gradient_accumulation_step", 1))  # .get: older jobs
        training = engine.EpochContext(train_model, self.loss_fn, self.optimizer, self.lr_scheduler, self.device,
                                       scaler=self.scaler, autocast_dtype=self.autocast, prepare=self.prepare,
                                       ctx=ctx, should_stop=self.trial.signalled, accumulation_steps=accumulation)
        return training, self.adapter.inference_model(eval_model)

    def _evaluate(self, epoch: int, eval_model: torch.nn.Module, stats: dict[str, Any]) -> None:
        ctx, metric = self.ctx, self.spec.primary_metric
        # Batch norm's running statistics differ between ranks after their last steps: every rank
        # evaluates with rank 0's, which are the ones saved.
        distributed.broadcast_buffers(ctx, self.model)
        metrics = engine.evaluate(eval_model, self.data.val_loader,
                                  self.adapter.evaluator(self.data.labels, self.loss_fn), self.device,
                                  autocast_dtype=self.autocast, prepare=self.prepare, ctx=ctx)
        # Every rank takes the same decisions (early stopping, best epoch) from rank 0's figures.
        metrics = distributed.broadcast(ctx, metrics)
        # log_validation_loss (detection tasks; classification's evaluator computes its loss with
        # the metrics). .get: jobs accepted before it was a setting ran without it.
        if self.spec.hyperparameters.get("log_validation_loss") == "enable":
            metrics.update(engine.validation_loss(self.model, self.data.val_loader, self.loss_fn.parts, self.device,
                                                  autocast_dtype=self.autocast, ctx=ctx))
        if self.data.train_eval_loader is not None:
            training = distributed.broadcast(ctx, engine.evaluate(
                eval_model, self.data.train_eval_loader, self.adapter.evaluator(self.data.labels, self.loss_fn),
                self.device, autocast_dtype=self.autocast, prepare=self.prepare, ctx=ctx))
            metrics.update((f"training_{name}", value) for name, value in training.items()
                           if isinstance(value, (int, float)) and not isinstance(value, bool))
        metrics.update(stats, epoch=epoch, time=time.time())
        self.progress.history.append(metrics)
        # validation_metric_type none: no figure to compare, the latest epoch is the one kept.
        if metrics[metric] is None or self.early_stopping.improved(metrics[metric]):
            self.progress.record_best(epoch, metrics, self.model if ctx.is_main else None)
            self.trial.best_epoch(epoch, self.model)
        self.trial.write_metrics(epoch, metrics)
        loss = metrics.get("loss", metrics.get("validation_loss"))   # classification's, or the detectors'
        validation_loss = f" loss={loss:.4f}" if loss is not None else ""
        log.info("epoch %d/%d: %s=%s%s train_loss=%.4f lr=%.5f (%.1fs, %.1f img/s)",
                 epoch, self.epochs, metric, _figure(metrics[metric]), validation_loss, stats["train_loss"],
                 stats["last_learning_rate"], stats["train_seconds"], stats["images_per_second"])

    def _save(self, epoch: int, evaluated: bool) -> None:
        self.progress.epoch = epoch
        self.progress.duration_s = self.duration()
        rng_by_rank = distributed.gather(self.ctx, engine.rng_state()) if self.ctx.enabled else None
        state = None
        if self.ctx.is_main:
            # Copied now, written in the background while the next epoch trains.
            state = checkpoint.snapshot(checkpoint.state_dict(
                model=self.model, optimizer=self.optimizer, lr_scheduler=self.lr_scheduler, scaler=self.scaler,
                early_stopping=self.early_stopping, progress=self.progress, labels=self.data.labels,
                rng=engine.rng_state(), rng_by_rank=rng_by_rank))
        self.trial.save_epoch(state, evaluated)

    def _check_stop(self, epoch: int, evaluated: bool) -> None:
        """Stop requests are read after evaluations, signals after every epoch; every rank stops at
        the same epoch."""
        stop = None
        if evaluated:
            # After the last epoch a stop request changes nothing: the trial is complete.
            if self.ctx.is_main and epoch < self.epochs:
                stop = self.trial.stop_requested()
            stop = distributed.broadcast(self.ctx, stop)
        if stop is not None:
            raise Stopped(str(stop.get("reason") or "stop requested") if isinstance(stop, dict) else "stop requested",
                          requested=True)
        if distributed.any_true(self.ctx, self.trial.signalled())[0]:
            raise Stopped("terminated")


def _over_ranks(ctx: distributed.Context, stats: dict[str, Any]) -> dict[str, Any]:
    """One epoch's training figures over every rank: the loss is the mean over every image trained."""
    if not ctx.enabled:
        return stats
    loss_sum, images = distributed.sum_over_ranks(ctx, stats["train_loss_sum"], stats["train_images"])
    seconds, = distributed.max_over_ranks(ctx, stats["train_seconds"])
    return {**stats, "train_loss": loss_sum / max(1, images), "train_loss_sum": loss_sum,
            "train_images": int(images), "train_seconds": seconds,
            "images_per_second": images / seconds if seconds else 0.0}


def _figure(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"
