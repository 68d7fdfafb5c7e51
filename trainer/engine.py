"""The training loop, the same for every task (torchvision references' `engine.py`): the optimizer,
the per-step learning-rate schedule, `train_one_epoch`, `evaluate`, early stopping, and the
machine set-up (device, threads, AMP, seeds, data loaders).

The task adapter supplies the loss (called as `loss_fn(model, images, targets)`) and the evaluator
(`update(outputs, targets)`, `compute() -> dict`); nothing here knows what a label is.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import SpecError

# Environment variable: how many CPU threads torch may use (the local launcher runs several trials
# on one machine, each with a share of the cores).
THREADS_ENV = "AUTOML_IMAGES_THREADS"


# -- machine ---------------------------------------------------------------------------------------

def configure_threads() -> int:
    """Apply AUTOML_IMAGES_THREADS; returns the number of threads torch uses."""
    value = os.environ.get(THREADS_ENV)
    if value:
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}") from None
        torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def select_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA only (CPU autocast is slower than float32 for these models): bfloat16
    where the GPU has it, as it needs no loss scaling; float16 otherwise."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as plain lists and tensors, so that the checkpoint loads
    with `weights_only=True`."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def loader_workers(device: torch.device, dataset_size: int, batch_size: int) -> int:
    """DataLoader worker processes. On CPU none: the model's own threads already use every core the
    trial has, and a worker would only compete with them (and cost a process start per loader).
    On a GPU the CPU decodes while the GPU computes, unless the data is so small that starting the
    workers would cost more than they save."""
    if device.type != "cuda" or dataset_size <= 16 * batch_size:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def make_loader(dataset, batch_size: int, *, train: bool, device: torch.device,
                generator: torch.Generator | None = None) -> DataLoader:
    workers = loader_workers(device, len(dataset), batch_size)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, generator=generator,
                      num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=device.type == "cuda",
                      # A last batch of one image breaks batch norm's statistics in training.
                      drop_last=train and len(dataset) % batch_size == 1)


# -- optimizer and schedule ------------------------------------------------------------------------

def build_optimizer(parameters, hp: dict[str, Any]) -> torch.optim.Optimizer:
    params = [p for p in parameters if p.requires_grad]
    name, lr, weight_decay = hp["optimizer"], hp["learning_rate"], hp["weight_decay"]
    if name == "sgd":
        momentum = hp["momentum"]
        # torch refuses Nesterov without momentum; Azure's default nesterov=1 must not make
        # momentum=0 an error.
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=bool(hp["nesterov"]) and momentum > 0)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=(hp["beta1"], hp["beta2"]), weight_decay=weight_decay,
                   amsgrad=bool(hp["amsgrad"]))
    raise SpecError(f"trial spec hyperparameters.optimizer: unknown optimizer {name!r}")


@dataclass
class WarmupCosine:
    """Azure's warmup_cosine, per step: the factor rises linearly from 0 to 1 over the warmup
    steps, then follows 0.5 * (1 + cos(pi * cycles * 2 * progress)). A dataclass (not a closure)
    so that LambdaLR saves it in its state dict."""
    warmup_steps: int
    total_steps: int
    cycles: float

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * self.cycles * 2.0 * progress)))


@dataclass
class Step:
    """StepLR counted in steps: the factor is gamma ** (completed epochs // step_size)."""
    step_size_steps: int
    gamma: float

    def __call__(self, step: int) -> float:
        return self.gamma ** (step // self.step_size_steps)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, hp: dict[str, Any], steps_per_epoch: int,
                       epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler stepped after every optimizer step."""
    name = hp["lr_scheduler"]
    if name == "warmup_cosine":
        schedule: Callable[[int], float] = WarmupCosine(
            warmup_steps=hp["warmup_cosine_lr_warmup_epochs"] * steps_per_epoch,
            total_steps=epochs * steps_per_epoch, cycles=hp["warmup_cosine_lr_cycles"])
    elif name == "step":
        schedule = Step(step_size_steps=hp["step_lr_step_size"] * steps_per_epoch, gamma=hp["step_lr_gamma"])
    else:
        raise SpecError(f"trial spec hyperparameters.lr_scheduler: unknown scheduler {name!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


# -- loops -----------------------------------------------------------------------------------------

def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def train_one_epoch(model: torch.nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                    lr_scheduler, loader: DataLoader, device: torch.device, *,
                    scaler: torch.amp.GradScaler | None = None, autocast_dtype: torch.dtype | None = None,
                    should_stop: Callable[[], bool] = lambda: False,
                    on_step: Callable[[int, int], None] = lambda step, steps: None) -> dict[str, Any]:
    """One pass over `loader`. Returns the mean training loss, the last learning rate, and
    `interrupted` when `should_stop` turned true before the epoch's end."""
    model.train()
    started = time.perf_counter()
    total_loss, images, steps = 0.0, 0, 0
    interrupted = False
    for step, (inputs, targets) in enumerate(loader):
        if should_stop():
            interrupted = True
            break
        inputs, targets = to_device(inputs, device), to_device(targets, device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = loss_fn(model, inputs, targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the training loss is {loss.item()} at step {step} "
                                     f"(try a lower learning_rate)")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        lr_scheduler.step()
        batch = len(inputs)
        total_loss += loss.item() * batch
        images += batch
        steps += 1
        on_step(step + 1, len(loader))
    seconds = time.perf_counter() - started
    return {"train_loss": total_loss / max(1, images), "lr": optimizer.param_groups[0]["lr"],
            "train_images": images, "train_steps": steps, "train_seconds": seconds,
            "images_per_second": images / seconds if seconds else 0.0, "interrupted": interrupted}


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: DataLoader, evaluator, device: torch.device, *,
             autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
    model.eval()
    started = time.perf_counter()
    for inputs, targets in loader:
        inputs = to_device(inputs, device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            outputs = model(inputs)
        evaluator.update(outputs, targets)
    metrics = evaluator.compute()
    metrics["eval_seconds"] = time.perf_counter() - started
    return metrics


# -- early stopping --------------------------------------------------------------------------------

class EarlyStopping:
    """Azure's early stopping, counted in evaluations: the first `delay` evaluations are not
    counted; after them, `patience` evaluations in a row without improving the best value stop
    the trial. Internally the metric is always maximised (negated once when it is minimised)."""

    def __init__(self, enabled: bool, patience: int, delay: int, direction: str):
        self.enabled = enabled
        self.patience = patience
        self.delay = delay
        self.sign = 1.0 if direction == "maximize" else -1.0
        self.evaluations = 0
        self.best: float | None = None
        self.bad_evaluations = 0

    def improved(self, value: float) -> bool:
        """Record one evaluation; True when it is the best so far."""
        self.evaluations += 1
        score = self.sign * value
        if self.best is None or score > self.best:
            self.best = score
            self.bad_evaluations = 0
            return True
        if self.evaluations > self.delay:
            self.bad_evaluations += 1
        return False

    def should_stop(self) -> bool:
        return self.enabled and self.evaluations > self.delay and self.bad_evaluations >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"evaluations": self.evaluations, "best": self.best, "bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.evaluations = state["evaluations"]
        self.best = state["best"]
        self.bad_evaluations = state["bad_evaluations"]
