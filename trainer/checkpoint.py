"""The checkpoint: one dict with everything a restarted trial needs to continue where it left off,
written atomically to `checkpoints/last.pt` after every epoch (torchvision references' layout:
`model`, `optimizer`, `lr_scheduler`, `scaler`, `epoch`, plus what our trials add: the metric
history and best epoch, early stopping's counters, the RNG states of every process).

The training order needs no state of its own: it is a function of the seed and the epoch (see
engine.EpochSampler), as is each image's augmentation.

`snapshot` copies the states, so that the copy can be written in the background while the next
epoch changes the originals.

The best epoch's weights travel in the same dict (`best_model`, None when the last epoch is the
best one, which is then `model`), so the checkpoint and the best model can never disagree after a
crash between two writes. Everything in it loads with `torch.load(weights_only=True)` (through
`weights.safe_load`): plain containers and tensors, no pickled objects.

`save` writes through `Storage.write_bytes`, atomic (a temporary name renamed, or one PUT): a kill
mid-write leaves the previous last.pt, never a torn one. A last.pt that is unreadable all the same
(cut short by a copy, damaged, another trainer's format) costs the trial its progress, never the
trial: `load` keeps it aside and the attempt starts afresh.
"""
from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from automl_images.core.layout import FILES
from automl_images.core.storage import Storage

from .data import DataError
from .weights import WeightsError, safe_load

log = logging.getLogger(__package__)

FORMAT_VERSION = 1


@dataclass
class Progress:
    """A trial's progress: what the checkpoint restores besides the torch objects' states."""
    epoch: int = 0                      # completed epochs (1-based numbering: epoch 1 is the first)
    history: list[dict[str, Any]] = field(default_factory=list)  # every evaluation's full metrics
    best_epoch: int | None = None
    best_metrics: dict[str, Any] | None = None
    best_model: dict[str, torch.Tensor] | None = None  # CPU copy of the best epoch's weights
    duration_s: float = 0.0             # training time over every attempt, up to `epoch`

    def record_best(self, epoch: int, metrics: dict[str, Any], model: torch.nn.Module | None) -> None:
        """`model` None: keep no copy of the weights (a rank that never writes the checkpoint)."""
        self.best_epoch = epoch
        self.best_metrics = metrics
        self.best_model = None if model is None else \
            {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def state_dict(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr_scheduler,
               scaler: torch.amp.GradScaler | None, early_stopping, progress: Progress, labels: list[str],
               rng: dict[str, Any], rng_by_rank: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`model` is the bare module (not its DistributedDataParallel or compiled wrapper), so that
    the keys are those of the exported model. `rng_by_rank`: every process's RNG states when there
    are several (rank 0's are `rng`)."""
    return {
        "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": progress.epoch,
        "history": progress.history,
        "best_epoch": progress.best_epoch,
        "best_metrics": progress.best_metrics,
        "best_model": None if progress.best_epoch == progress.epoch else progress.best_model,
        "duration_s": progress.duration_s,
        "early_stopping": early_stopping.state_dict(),
        "labels": labels,
        "rng": rng,
        "rng_by_rank": rng_by_rank,
    }


def snapshot(value: Any) -> Any:
    """A copy of a (nested) state on the CPU that shares no tensor with the live objects."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snapshot(v) for v in value]
    if isinstance(value, tuple):
        return tuple(snapshot(v) for v in value)
    return value


def save(storage: Storage, checkpoint: dict[str, Any], checkpoint_frequency: int | None = None) -> None:
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    storage.write_bytes(FILES.checkpoint, data)
    epoch = checkpoint["epoch"]
    if checkpoint_frequency and epoch % checkpoint_frequency == 0:
        storage.write_bytes(FILES.epoch_checkpoint(epoch), data)


def load(storage: Storage) -> dict[str, Any] | None:
    """The checkpoint on the CPU (RNG states must be CPU tensors; `load_state_dict` moves the rest
    to the model's device), or None when the trial has none yet, or none this trainer can use: an
    unreadable or invalid last.pt is logged with the reason and kept aside (`_set_aside`), and the
    trial starts afresh."""
    try:
        data = storage.read_bytes(FILES.checkpoint)
    except FileNotFoundError:
        return None
    url = storage.url(FILES.checkpoint)
    try:
        checkpoint = safe_load(data, url)
    except WeightsError as exc:
        reason = str(exc)
    else:
        problem = _invalid(checkpoint)
        if problem is None:
            return checkpoint
        reason = f"{url}: {problem}"
    _set_aside(storage, data, reason)
    return None


# What `restore` reads: a dict that lacks one is not a checkpoint of this format.
_KEYS = ("model", "optimizer", "lr_scheduler", "scaler", "epoch", "history", "best_epoch", "best_metrics",
         "best_model", "duration_s", "early_stopping", "labels", "rng")


def _invalid(checkpoint: Any) -> str | None:
    if not isinstance(checkpoint, dict):
        return f"not a checkpoint: a {type(checkpoint).__name__}, not a dict"
    if checkpoint.get("format_version") != FORMAT_VERSION:
        return f"checkpoint format {checkpoint.get('format_version')!r} is not {FORMAT_VERSION}"
    missing = [key for key in _KEYS if key not in checkpoint]
    return f"not a checkpoint: no {', '.join(missing)}" if missing else None


def _set_aside(storage: Storage, data: bytes, reason: str) -> None:
    """Keep an unusable last.pt as `last.pt.corrupt-<sha256 prefix>` (the user may want it back; a
    name from the content makes a retry after a kill write the same file, not a second one) and
    remove it: copied first, so a kill between the two leaves both, never neither. In a trial of
    several processes only rank 0 writes the trial folder; the others start afresh as it does."""
    aside = f"{FILES.checkpoint}.corrupt-{hashlib.sha256(data).hexdigest()[:12]}"
    log.warning("%s; starting this trial afresh, the file kept as %s", reason, storage.url(aside))
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    storage.write_bytes(aside, data)
    storage.delete(FILES.checkpoint)


def restore(checkpoint: dict[str, Any], *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            lr_scheduler, scaler: torch.amp.GradScaler | None, early_stopping, labels: list[str],
            rank: int = 0, world_size: int = 1) -> tuple[Progress, dict[str, Any]]:
    """Load the states into the given objects; returns the progress and this process's RNG states
    (applied by the caller once everything else is built, as building draws random numbers). A
    process of another world size than the checkpoint's takes rank 0's."""
    if checkpoint["labels"] != labels:
        raise DataError(f"the checkpoint was trained on classes {checkpoint['labels']} but the data now has "
                        f"{labels}; the data changed since this trial started (delete its checkpoints/ "
                        f"folder to train from scratch)")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
    if scaler is not None and checkpoint["scaler"] is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    early_stopping.load_state_dict(checkpoint["early_stopping"])
    best_model = checkpoint["best_model"]
    if best_model is None and checkpoint["best_epoch"] is not None:
        best_model = checkpoint["model"]
    progress = Progress(epoch=checkpoint["epoch"], history=checkpoint["history"],
                        best_epoch=checkpoint["best_epoch"], best_metrics=checkpoint["best_metrics"],
                        best_model=best_model, duration_s=checkpoint["duration_s"])
    by_rank = checkpoint.get("rng_by_rank")
    rng = by_rank[rank] if by_rank and len(by_rank) == world_size else checkpoint["rng"]
    return progress, rng
