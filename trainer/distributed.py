"""Several processes, one trial: DistributedDataParallel under `torchrun`.

    torchrun --standalone --nproc_per_node 4 $(which automl-images) trial run SPEC_URL

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and the rendezvous address; without
them (a plain `automl-images trial run`) the trial is one process and nothing here does anything.

The rules the trainer keeps in several processes:

- Every rank reads the data and builds the same model (DDP then broadcasts rank 0's weights);
  `training_batch_size` is per process, as in Azure's multi-GPU runs.
- Only rank 0 touches the trial folder: status, metrics, checkpoints, model, logs. Every rank reads
  the checkpoint when it resumes.
- Decisions are taken together: a stop (SIGTERM, a stop request, early stopping, a non-finite loss)
  seen by one rank is agreed on at the next step by all, so no rank waits forever in a collective
  that the others left.
- Validation is split across ranks without padding, and the predictions are gathered on rank 0 in
  the order of the validation set, so the metrics are those of one process over the whole set.

Control messages (flags, metrics, predictions) travel over a gloo group on the CPU even when the
gradients use NCCL, so that agreeing on a flag never waits for the GPU.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

# A collective that waits longer than this fails instead of hanging the trial: a rank that died
# without torchrun noticing, a rank 0 stuck on a bucket. Checkpoints are written in the background,
# so no healthy rank waits for minutes.
TIMEOUT = datetime.timedelta(minutes=15)


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    control: Any = None  # the process group for control messages (gloo)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Context()


def from_environment() -> Context:
    """The process's place in a torchrun job, from torchrun's variables (one process without them)."""
    def integer(name: str, default: int) -> int:
        value = os.environ.get(name)
        try:
            return int(value) if value not in (None, "") else default
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {value!r}") from None

    world_size = integer("WORLD_SIZE", 1)
    if world_size <= 1:
        return Context()
    return Context(rank=integer("RANK", 0), world_size=world_size, local_rank=integer("LOCAL_RANK", 0),
                   local_world_size=integer("LOCAL_WORLD_SIZE", world_size))


def device_for(ctx: Context) -> torch.device:
    """One GPU per process (by local rank) when there are GPUs, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if ctx.enabled:
        if ctx.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {ctx.local_rank} has no GPU: this machine has "
                               f"{torch.cuda.device_count()}; start at most that many processes per node")
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return torch.device("cuda")


def start(ctx: Context, device: torch.device) -> Context:
    """Join the process group: NCCL between GPUs, gloo on the CPU."""
    if not ctx.enabled:
        return ctx
    ctx.backend = "nccl" if device.type == "cuda" else "gloo"
    options: dict[str, Any] = {"backend": ctx.backend, "timeout": TIMEOUT}
    if device.type == "cuda":
        options["device_id"] = device
    dist.init_process_group(**options)
    ctx.control = dist.new_group(backend="gloo", timeout=TIMEOUT) if ctx.backend != "gloo" else dist.group.WORLD
    return ctx


def finish(ctx: Context) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


# -- agreeing ----------------------------------------------------------------------------------

def any_true(ctx: Context, *flags: bool) -> tuple[bool, ...]:
    """Each flag, true when it is true on any rank."""
    if not ctx.enabled:
        return tuple(bool(f) for f in flags)
    values = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32)
    dist.all_reduce(values, op=dist.ReduceOp.MAX, group=ctx.control)
    return tuple(bool(v) for v in values.tolist())


def sum_over_ranks(ctx: Context, *values: float) -> tuple[float, ...]:
    return _all_reduce(ctx, dist.ReduceOp.SUM, values)


def max_over_ranks(ctx: Context, *values: float) -> tuple[float, ...]:
    return _all_reduce(ctx, dist.ReduceOp.MAX, values)


def _all_reduce(ctx: Context, op, values: tuple[float, ...]) -> tuple[float, ...]:
    if not ctx.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=op, group=ctx.control)
    return tuple(tensor.tolist())


def broadcast(ctx: Context, value: Any) -> Any:
    """Rank 0's `value` on every rank (picklable objects)."""
    if not ctx.enabled:
        return value
    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0, group=ctx.control)
    return box[0]


def gather(ctx: Context, value: Any) -> list[Any] | None:
    """Every rank's `value`, in rank order, on rank 0; None on the others."""
    if not ctx.enabled:
        return [value]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(value, out, dst=0, group=ctx.control)
    return out


def broadcast_buffers(ctx: Context, model: torch.nn.Module) -> None:
    """Rank 0's buffers (batch norm's running statistics) on every rank."""
    if not ctx.enabled:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


# -- validation split ----------------------------------------------------------------------------

class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, rank + 2·world, ...: every index exactly once over the ranks (no
    padding, unlike DistributedSampler), so gathered predictions cover the set exactly."""

    def __init__(self, size: int, rank: int, world_size: int):
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


def interleave(per_rank: Sequence[Sequence[Any]]) -> list[Any]:
    """Undo ShardSampler: item k of rank r is index r + k·world."""
    world = len(per_rank)
    total = sum(len(items) for items in per_rank)
    return [per_rank[i % world][i // world] for i in range(total)]


def batch_kind(batch: Any) -> Any:
    """How a collated batch is built, for `rebatch`: "tensor", "list", "tuple", or a dict of kinds."""
    if isinstance(batch, torch.Tensor):
        return "tensor"
    if isinstance(batch, dict):
        return {k: batch_kind(v) for k, v in batch.items()}
    return "tuple" if isinstance(batch, tuple) else "list"


def unbatch(batch: Any) -> list[Any]:
    """A collated batch as one item per sample (tensors split on the first dimension; lists and
    tuples are already per sample; dicts split per key)."""
    if isinstance(batch, torch.Tensor):
        return list(batch.unbind(0))
    if isinstance(batch, dict):
        columns = {k: unbatch(v) for k, v in batch.items()}
        size = len(next(iter(columns.values()))) if columns else 0
        return [{k: column[i] for k, column in columns.items()} for i in range(size)]
    return list(batch)


def rebatch(items: Sequence[Any], kind: Any) -> Any:
    """The inverse of `unbatch`: items back into a batch of the given `batch_kind`."""
    if kind == "tensor":
        return torch.stack(list(items))
    if isinstance(kind, dict):
        return {k: rebatch([item[k] for item in items], kind[k]) for k in kind}
    return tuple(items) if kind == "tuple" else list(items)
