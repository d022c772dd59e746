"""Multi-process data-parallel training on ``torch.distributed``, launched with ``torchrun``.

Launch one process per worker; each reads its rank from the environment that ``torchrun`` sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)::

    torchrun --nproc_per_node=4 --standalone train.py      # or python -m torch.distributed.run

The :class:`~bbvae.training.Trainer` calls :func:`init_from_env` itself when ``WORLD_SIZE > 1``,
so a training script needs no change. Every rank draws the same global batch (the shuffling
generator has the same seed everywhere) and keeps its shard (:func:`shard_batch`: rows
``rank::world_size``); gradients are averaged across ranks by
:class:`~torch.nn.parallel.DistributedDataParallel` wrapping the loss module (:func:`wrap_ddp`);
only rank 0 writes checkpoints and logs (:func:`is_main_process`).

The default backend is ``"gloo"`` (CPU tensors; works everywhere). For CUDA models pass
``backend="nccl"`` and give each process its device (e.g. ``torch.cuda.set_device(LOCAL_RANK)``
before building the model): this module never chooses a device.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from bbvae._validation import shape_str
from bbvae.data.batching import SequenceBatch

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "batch_size_of",
    "cleanup",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "shard_batch",
    "wrap_ddp",
]

_INITIALISED_HERE = False


class DistInfo(NamedTuple):
    """Where this process stands: ``rank`` in ``0..world_size-1`` and its ``local_rank`` on the node."""

    rank: int
    world_size: int
    local_rank: int


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"init_from_env: expected the environment variable {name} to be an int, got {raw!r}"
        ) from None


def init_from_env(backend: str = "gloo", timeout: float | None = None) -> DistInfo:
    """Join the process group described by the environment (``torchrun``'s variables).

    With ``WORLD_SIZE`` unset or 1 nothing is initialised and ``DistInfo(0, 1, 0)`` is returned.
    If a process group already exists it is used as it is.

    Args:
        backend: ``"gloo"`` (CPU, the default) or ``"nccl"`` (CUDA).
        timeout: seconds a collective may wait before failing (None: torch's default).

    Returns:
        this process's :class:`DistInfo`.
    """
    global _INITIALISED_HERE
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistInfo(0, 1, 0)
    if not dist.is_available():
        raise RuntimeError(
            f"init_from_env: WORLD_SIZE={world_size} asks for {world_size} processes, but this torch "
            "build has no torch.distributed support"
        )
    kwargs: dict[str, Any] = {}
    if timeout is not None:
        kwargs["timeout"] = timedelta(seconds=timeout)
    dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    _INITIALISED_HERE = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))


def cleanup() -> None:
    """Destroy the process group if :func:`init_from_env` created it."""
    global _INITIALISED_HERE
    if _INITIALISED_HERE and dist.is_initialized():
        dist.destroy_process_group()
    _INITIALISED_HERE = False


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Whether this process is rank 0, the one that writes files."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process (a no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes, in place, and return it (unchanged when not distributed)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over processes, in place, and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard_batch(batch, rank: int, world_size: int):
    """Rows ``rank::world_size`` of a global batch.

    Args:
        batch: a Tensor ``[batch, ...]`` or a :class:`~bbvae.data.SequenceBatch` (``x``,
            ``lengths`` and ``inputs`` are sliced alike).
        rank: this process's rank, ``0 <= rank < world_size``.
        world_size: number of processes.

    Returns:
        the same type with ``ceil((batch - rank) / world_size)`` rows. With a batch size that
        ``world_size`` divides, every shard has the same size, so averaging the shards' mean
        gradients gives the global batch's mean gradient exactly.
    """
    if not 0 <= rank < world_size:
        raise ValueError(
            f"shard_batch: expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
        )
    if world_size == 1:
        return batch
    if isinstance(batch, SequenceBatch):
        inputs = None if batch.inputs is None else batch.inputs[rank::world_size]
        return SequenceBatch(batch.x[rank::world_size], batch.lengths[rank::world_size], inputs)
    if isinstance(batch, torch.Tensor):
        return batch[rank::world_size]
    raise TypeError(f"shard_batch: expected a Tensor or a SequenceBatch, got {type(batch).__name__}")


def batch_size_of(batch) -> int:
    """Number of rows of a Tensor or SequenceBatch batch."""
    x = batch.x if isinstance(batch, SequenceBatch) else batch
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        shape = shape_str(list(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a batch with a leading batch dimension, got {shape}")
    return x.shape[0]


def wrap_ddp(module: nn.Module, find_unused_parameters: bool = True) -> nn.Module:
    """Wrap a loss module in :class:`~torch.nn.parallel.DistributedDataParallel`.

    The wrapper's ``forward`` is the loss's (``ddp(x, lengths=...)``); the wrapped module stays
    reachable as ``.module``. At construction rank 0's parameters and buffers are broadcast, so
    every rank starts from the same model; after each ``backward`` the gradients are averaged
    across ranks.

    Args:
        module: the loss (its parameters include inf_net's, gen_model's and any it owns).
        find_unused_parameters: let parameters that receive no gradient in a step (an
            inference network a deterministic objective ignores, a generation-only head) take
            part without hanging the all-reduce. It costs one traversal of the autograd graph
            per step.

    Returns:
        the DDP wrapper, or ``module`` itself when not distributed.
    """
    if not is_distributed():
        return module
    params = [p for p in module.parameters() if p.requires_grad]
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise ValueError(
            f"wrap_ddp: expected all parameters on one device, got {sorted(str(d) for d in devices)}"
        )
    device = next(iter(devices)) if devices else torch.device("cpu")
    device_ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )
