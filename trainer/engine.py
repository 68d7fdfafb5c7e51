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
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from automl_images.core.hyperparameters import oriented
from automl_images.core.seeds import epoch_order_seed
from automl_images.core.trial_spec import SpecError

from . import distributed

# Environment variable: how many CPU threads torch may use (the local launcher runs several trials
# on one machine, each with a share of the cores).
THREADS_ENV = "AUTOML_IMAGES_THREADS"
# Environment variable: "1" makes GPU training bitwise reproducible (deterministic cuDNN kernels, no
# kernel search), at some cost in speed. The CPU is always deterministic.
DETERMINISTIC_ENV = "AUTOML_IMAGES_DETERMINISTIC"
# On a GPU the training loss is read back (which waits for the GPU) every this many steps, to check
# that it is finite; reading it every step would stall the queue of kernels for small models.
LOSS_CHECK_STEPS_GPU = 20
MAX_LOADER_WORKERS = 32  # per training process: beyond, memory grows faster than throughput
# Environment variable: torch.compile's backend when a trial has `compile: true` (default inductor).
COMPILE_BACKEND_ENV = "AUTOML_IMAGES_COMPILE_BACKEND"


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


def configure_kernels(device: torch.device) -> bool:
    """Pick kernels for speed or for reproducibility; returns True when training is deterministic.

    On the CPU, PyTorch's kernels are deterministic for a given thread count, and deterministic
    algorithms are asked for where an op has a choice: a resumed trial computes what an
    uninterrupted one would have. On a GPU, speed by default: cuDNN searches the fastest kernels
    for the (fixed) input size, and TF32 matmuls are allowed; AUTOML_IMAGES_DETERMINISTIC=1 trades
    that for bitwise reproducibility."""
    strict = os.environ.get(DETERMINISTIC_ENV, "") == "1"
    # Deterministic mode would also fill every new tensor with NaN (to expose reads of uninitialised
    # memory, which our kernels do not do): 20% of a CPU training step for mobilenetv2.
    torch.utils.deterministic.fill_uninitialized_memory = False
    if device.type == "cuda":
        if strict:
            # cuBLAS needs a fixed workspace to be deterministic; read when CUDA starts its handles.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
            torch.use_deterministic_algorithms(True, warn_only=True)
            return True
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return False
    # Subnormal floats take the CPU's slow path: an untrained detector at learning_rate 0.05 drifts
    # into them, and its steps took 2-3x longer (Faster R-CNN at 320 px: 6.6-10.2 s against 3.5 s).
    torch.set_flush_denormal(True)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return True


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
    with `weights_only=True`. On a GPU, the current device's state only: asking for every device's
    would start a CUDA context on each GPU from each process of a multi-GPU trial."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # written by an earlier version: one state per device
        cuda = cuda[torch.cuda.current_device()] if torch.cuda.is_available() and cuda else None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


def loader_workers(device: torch.device, dataset_size: int, batch_size: int, processes_per_node: int = 1,
                   requested: int | None = None) -> int:
    """DataLoader worker processes: `requested` (the job's number_of_workers) when set. Otherwise,
    on CPU none: the model's own threads already use every core the
    trial has, and a worker would only compete with them (and cost a process start per loader).
    On a GPU the CPU decodes while the GPU computes (the workers start once per trial and stay),
    unless the data is two batches or less; the cores are shared by the node's training processes."""
    if requested is not None:
        return requested
    if device.type != "cuda" or dataset_size <= 2 * batch_size:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    # Every core but one (the training process's own) decodes: on an H100 with 16 cores, resnet18
    # trained at 1570 images/s with 8 workers, 2400 with 12 and 2490 with 15 (JPEG decoding bound;
    # the GPU alone does 10,000).
    return max(1, min(MAX_LOADER_WORKERS, cores // max(1, processes_per_node) - 1))


class EpochSampler(torch.utils.data.Sampler):
    """The training order: a permutation that depends only on (seed, epoch), split across ranks
    like DistributedSampler (padded so that every rank takes as many steps). It yields (epoch,
    index) pairs so that the dataset seeds each image's augmentation from them: a resumed epoch,
    a different number of loader workers or of processes see the same crops for the same image.

    With one process it keeps no state but the epoch, which the trainer sets before each epoch."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0
        self.per_rank = math.ceil(size / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(epoch_order_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        padded = (order * math.ceil(self.per_rank * self.world_size / max(1, self.size)))[
            :self.per_rank * self.world_size]
        return iter((self.epoch, index) for index in padded[self.rank::self.world_size])

    def __len__(self) -> int:
        return self.per_rank


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of an EpochSampler's (epoch, index) pairs (call `set_epoch(e)` before each epoch).

    With `group_ids` (one per dataset index), a batch holds images of one group, as torchvision's
    references group detection images by aspect ratio: a batch of images of like shape pads less.
    Images wait in their group until it has a batch; the ones left over at the end are batched in
    the order they were drawn. The batches are a function of (seed, epoch) alone, and as many as
    without groups: ceil(n / batch_size), less a last batch of one image (it breaks batch norm's
    statistics in training)."""

    def __init__(self, sampler: EpochSampler, batch_size: int, group_ids: list[int] | None = None):
        self.sampler, self.batch_size, self.group_ids = sampler, batch_size, group_ids

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        batches = list(self._grouped() if self.group_ids is not None else self._in_order())
        if self._drops_last():
            batches.pop()
        return iter(batches)

    def _drops_last(self) -> bool:
        # Grouped or not, the last batch holds len % batch_size images (the leftovers add up so).
        return self.batch_size > 1 and len(self.sampler) % self.batch_size == 1

    def _in_order(self):
        items = list(self.sampler)
        for start in range(0, len(items), self.batch_size):
            yield items[start:start + self.batch_size]

    def _grouped(self):
        waiting: dict[int, list] = {}
        drawn = 0
        for item in self.sampler:
            group = waiting.setdefault(self.group_ids[item[1]], [])
            group.append((drawn, item))
            drawn += 1
            if len(group) == self.batch_size:
                yield [entry for _, entry in group]
                group.clear()
        left = sorted(entry for group in waiting.values() for entry in group)
        for start in range(0, len(left), self.batch_size):
            yield [entry for _, entry in left[start:start + self.batch_size]]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size) - self._drops_last()


def aspect_ratio_groups(sizes: list[tuple[int, int]], factor: int = 3) -> list[int]:
    """Group ids of images by aspect ratio (width / height), as torchvision's references bin them:
    2 * factor + 2 bins with edges 2 ** linspace(-1, 1, 2 * factor + 1) (ratios 1/2 to 2)."""
    edges = [2.0 ** (-1 + 2 * i / (2 * factor)) for i in range(2 * factor + 1)]
    return [sum(width / height >= edge for edge in edges) for width, height in sizes]


def make_loader(dataset, batch_size: int, *, train: bool, device: torch.device, seed: int = 0,
                rank: int = 0, world_size: int = 1, processes_per_node: int = 1,
                collate_fn: Callable | None = None, group_ids: list[int] | None = None,
                workers: int | None = None) -> DataLoader:
    """Training: batches from an EpochBatchSampler (call `loader.batch_sampler.set_epoch(e)` before
    each epoch), grouped by `group_ids` when given. Validation: the images in order, split across
    ranks without padding (see distributed.ShardSampler). `collate_fn`: the task's, when its batches
    are not stacked tensors (detection: lists)."""
    options: dict[str, Any]
    if train:
        sampler: torch.utils.data.Sampler = EpochSampler(len(dataset), seed, rank, world_size)
        options = {"batch_sampler": EpochBatchSampler(sampler, batch_size, group_ids)}
    else:
        sampler = distributed.ShardSampler(len(dataset), rank, world_size) if world_size > 1 \
            else torch.utils.data.SequentialSampler(dataset)
        options = {"batch_size": batch_size, "sampler": sampler}
    workers = loader_workers(device, len(sampler), batch_size, processes_per_node, workers)
    return DataLoader(dataset, collate_fn=collate_fn, num_workers=workers,
                      # Kept between epochs: starting 8 workers costs a second an epoch. Augmentation
                      # does not depend on the workers' RNG (see EpochSampler).
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                      pin_memory=device.type == "cuda", **options)


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Channels-last weights on a GPU: its tensor cores take NHWC, and cuDNN would otherwise convert
    every activation. (On the CPU the task adapter decides per model.)"""
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def compile_backend() -> str:
    """torch.compile's backend: inductor (generated kernels), unless AUTOML_IMAGES_COMPILE_BACKEND
    names another (e.g. "eager" to check a model traces without waiting minutes for a C++ build)."""
    return os.environ.get(COMPILE_BACKEND_ENV) or "inductor"


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model wrapped by torch.compile; the wrapper shares the model's parameters, so state
    dicts are taken from the model itself."""
    return torch.compile(model, backend=compile_backend())


def is_channels_last(model: torch.nn.Module) -> bool:
    for parameter in model.parameters():
        if parameter.dim() == 4:
            return parameter.is_contiguous(memory_format=torch.channels_last) and not parameter.is_contiguous()
    return False


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

def to_device(value: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Tensors (in lists, tuples, dicts) to `device`, without waiting when they are pinned; image
    batches channels-last when the model is."""
    if isinstance(value, torch.Tensor):
        if channels_last and value.dim() == 4:
            return value.to(device, non_blocking=True, memory_format=torch.channels_last)
        return value.to(device, non_blocking=True)
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device, channels_last) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device, channels_last) for k, v in value.items()}
    return value


def _never() -> bool:
    return False


def no_heartbeat(step: int, steps: int) -> None:
    """The heartbeat of a process that reports nothing (a rank other than 0, a benchmark)."""


@dataclass
class EpochContext:
    """What one training epoch runs with: everything but the data. `model` is what trains (the
    DistributedDataParallel or torch.compile wrapper when there is one)."""
    model: torch.nn.Module
    loss_fn: Callable             # loss_fn(model, inputs, targets), the task adapter's
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any             # stepped after every optimizer step
    device: torch.device
    scaler: torch.amp.GradScaler | None = None        # float16 only: bfloat16 needs no loss scaling
    autocast_dtype: torch.dtype | None = None         # None: float32
    # A batch of inputs, once on the device, -> what the model takes (presets.BatchNormalize;
    # batch_augment.BatchAugment, which also augments training batches).
    prepare: Callable[[Any], Any] | None = None
    ctx: distributed.Context = field(default_factory=distributed.Context)  # one process
    should_stop: Callable[[], bool] = _never          # this process's stop flag (a signal)
    on_step: Callable[[int, int], None] = no_heartbeat  # (step, steps) after every step: the heartbeat
    # gradient_accumulation_step: batches whose gradients are summed (each loss divided by it)
    # before one optimizer step, so that they act as one batch this many times larger
    accumulation_steps: int = 1


def train_one_epoch(context: EpochContext, loader: DataLoader) -> dict[str, Any]:
    """One pass over `loader`. Returns the summed training loss, the images, the last learning rate,
    and `interrupted` when `context.should_stop` turned true before the epoch's end.

    The stop and bad-loss flags are combined over every process of the trial (distributed.any_true):
    all processes stop at the same step, or fail together."""
    model, device = context.model, context.device
    model.train()
    channels_last = is_channels_last(model)
    started, cpu_started = time.perf_counter(), time.process_time()
    # The loss is summed on the device; reading it back waits for the GPU, so that happens only
    # every few steps there (on the CPU every step: it costs nothing).
    check_every = LOSS_CHECK_STEPS_GPU if device.type == "cuda" else 1
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    unchecked = 0  # the first step whose loss has not been checked yet
    images, steps = 0, 0
    interrupted = False
    steps_total = len(loader)
    for step, (inputs, targets) in enumerate(loader):
        checking = step > unchecked and step % check_every == 0
        bad_loss = checking and not bool(torch.isfinite(total_loss))
        stop, bad_loss = distributed.any_true(context.ctx, context.should_stop(), bad_loss)
        if bad_loss:
            _raise_non_finite(total_loss, unchecked, step - 1)
        if checking:
            unchecked = step
        if stop:
            interrupted = True
            break
        inputs, targets = to_device(inputs, device, channels_last), to_device(targets, device)
        if context.prepare is not None:
            inputs = context.prepare(inputs)
            if channels_last and inputs.dim() == 4:   # batch augmentation's new tensors: the model's format
                inputs = inputs.contiguous(memory_format=torch.channels_last)
        autocast = context.autocast_dtype
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = context.loss_fn(model, inputs, targets)
        accumulate = context.accumulation_steps
        if step % accumulate == 0:
            context.optimizer.zero_grad(set_to_none=True)
        # With several processes every backward all-reduces; the sum of averaged gradients is the
        # average of the sums, so accumulation stays exact (no_sync would only save the traffic).
        scaled = loss / accumulate if accumulate > 1 else loss
        (context.scaler.scale(scaled) if context.scaler is not None else scaled).backward()
        if (step + 1) % accumulate == 0 or step + 1 == steps_total:  # a last, shorter group steps too
            if context.scaler is not None:
                context.scaler.step(context.optimizer)
                context.scaler.update()
            else:
                context.optimizer.step()
            # The schedule counts batches (its warmup and length are in epochs of batches): it
            # moves on by the group's batches, after the step, as torch expects.
            for _ in range(step % accumulate + 1):
                context.lr_scheduler.step()
        batch = len(inputs)
        total_loss += loss.detach().to(torch.float64) * batch
        images += batch
        steps += 1
        context.on_step(step + 1, steps_total)
    if not interrupted:
        _, bad_loss = distributed.any_true(context.ctx, False, not bool(torch.isfinite(total_loss)))
        if bad_loss:
            _raise_non_finite(total_loss, unchecked, steps - 1)
    seconds = time.perf_counter() - started
    loss_sum = float(total_loss)
    return {"train_loss": loss_sum / max(1, images), "train_loss_sum": loss_sum,
            "last_learning_rate": context.optimizer.param_groups[0]["lr"], "train_images": images, "train_steps": steps,
            "train_seconds": seconds, "train_cpu_seconds": time.process_time() - cpu_started,
            "images_per_second": images / seconds if seconds else 0.0, "interrupted": interrupted}


def _raise_non_finite(total_loss: torch.Tensor, first: int, last: int) -> None:
    where = f"at step {first}" if first >= last else f"between steps {first} and {last}"
    raise FloatingPointError(f"the training loss became {float(total_loss)} {where} "
                             f"(try a lower learning_rate)")


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: DataLoader, evaluator, device: torch.device, *,
             autocast_dtype: torch.dtype | None = None, prepare: Callable[[Any], Any] | None = None,
             ctx: distributed.Context = distributed.SINGLE) -> dict[str, Any] | None:
    """The evaluator's metrics over the loader. With several processes each evaluates its share
    (distributed.ShardSampler), rank 0 gathers the outputs, puts them back in the validation set's
    order and batches, and computes the metrics; the other ranks return None. Pass the model
    itself, not its DistributedDataParallel wrapper: the shares differ in size, and the wrapper's
    forward may talk to the other ranks."""
    model.eval()
    channels_last = is_channels_last(model)
    started, cpu_started = time.perf_counter(), time.process_time()
    gathered: list[tuple[Any, Any]] = []
    batch_size = loader.batch_size or 1
    not_finite = torch.zeros((), dtype=torch.bool, device=device)
    for inputs, targets in loader:
        inputs = to_device(inputs, device, channels_last)
        if prepare is not None:
            inputs = prepare(inputs)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            outputs = model(inputs)
        if isinstance(outputs, torch.Tensor):
            not_finite |= ~torch.isfinite(outputs).all()
        if ctx.enabled:
            gathered.append((to_device(outputs, torch.device("cpu")), targets))
        else:
            evaluator.update(outputs, targets)
    # Every rank raises together (a rank left waiting in the gather below would hang).
    if distributed.any_true(ctx, bool(not_finite))[0]:
        raise FloatingPointError("the model's outputs on the validation images are not finite: training "
                                 "diverged (try a lower learning_rate)")
    if ctx.enabled:
        items = [(o, t) for outputs, targets in gathered
                 for o, t in zip(distributed.unbatch(outputs), distributed.unbatch(targets))]
        kinds = (distributed.batch_kind(gathered[0][0]), distributed.batch_kind(gathered[0][1])) \
            if gathered else None
        per_rank = distributed.gather(ctx, (items, kinds))
        if per_rank is None:
            return None
        kinds = next(k for _, k in per_rank if k is not None)
        ordered = distributed.interleave([rank_items for rank_items, _ in per_rank])
        for start in range(0, len(ordered), batch_size):
            chunk = ordered[start:start + batch_size]
            evaluator.update(distributed.rebatch([o for o, _ in chunk], kinds[0]),
                             distributed.rebatch([t for _, t in chunk], kinds[1]))
    metrics = evaluator.compute()
    metrics["eval_seconds"] = time.perf_counter() - started
    metrics["eval_cpu_seconds"] = time.process_time() - cpu_started  # this process, every thread
    return metrics


@torch.no_grad()
def validation_loss(model: torch.nn.Module, loader: DataLoader, loss_parts: Callable[..., dict[str, torch.Tensor]],
                    device: torch.device, *, autocast_dtype: torch.dtype | None = None,
                    ctx: distributed.Context = distributed.SINGLE) -> dict[str, float]:
    """The mean loss over the loader's images, `validation_loss`, and of each of its parts
    (`loss_parts(model, inputs, targets)`, e.g. torchvision's `loss_classifier` as
    `validation_loss_classifier`), for models that compute losses only in training mode (the
    detectors): a pass of its own, the model in training mode but its batch norm layers in eval
    mode, so that their running statistics are used and not updated. torch's RNG is restored after
    it (the detectors' proposal sampling draws from it): the pass changes nothing that training
    sees. With several processes each passes over its share and the sums are taken over every rank.
    Pass the model itself, not its DistributedDataParallel wrapper (see `evaluate`)."""
    modes = [(module, module.training) for module in model.modules()]
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    channels_last = is_channels_last(model)
    sums: dict[str, torch.Tensor] = {}
    images = 0
    rng_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng_devices):
            for inputs, targets in loader:
                inputs, targets = to_device(inputs, device, channels_last), to_device(targets, device)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    parts = loss_parts(model, inputs, targets)
                for name, value in parts.items():
                    sums[name] = sums.get(name, 0) + value.detach().to(torch.float64) * len(inputs)
                images += len(inputs)
    finally:
        for module, training in modes:
            module.training = training
    # Rank 0 has images whenever any rank has (distributed.ShardSampler deals them from rank 0),
    # so it names the parts that every rank sums.
    names = distributed.broadcast(ctx, sorted(sums))
    total_images, *totals = distributed.sum_over_ranks(ctx, float(images), *(float(sums.get(n, 0.0)) for n in names))
    means = {name: total / max(1.0, total_images) for name, total in zip(names, totals)}
    out = {"validation_loss": sum(means.values())}
    out.update((f"validation_{name}" if name.startswith("loss") else f"validation_loss_{name}", value)
               for name, value in means.items())
    return out


# -- early stopping --------------------------------------------------------------------------------

class EarlyStopping:
    """Azure's early stopping, counted in evaluations: the first `delay` evaluations are not
    counted; after them, `patience` evaluations in a row without improving the best value stop
    the trial. Values of `metric` are compared as hyperparameters.oriented scores (higher is better)."""

    def __init__(self, enabled: bool, patience: int, delay: int, metric: str):
        self.enabled = enabled
        self.patience = patience
        self.delay = delay
        self.metric = metric
        self.evaluations = 0
        self.best: float | None = None
        self.bad_evaluations = 0

    def improved(self, value: float) -> bool:
        """Record one evaluation; True when it is the best so far."""
        self.evaluations += 1
        score = oriented(self.metric, value)
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
