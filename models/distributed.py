"""Data-parallel training under ``torch.distributed`` (PyTorch DDP), for whichever training loop
runs inside a process group (tasks/distributed.py launches the group with ``torchrun``).

Every rank draws the whole global batch from the same seeded generator (indices, noise,
timesteps, masks) and keeps its own contiguous share of the rows; DDP averages the gradients,
so with equal shares a step is the one-process step on the global batch (up to the order of
float sums), and one process is exactly the loop without a group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def share(batch_size: int) -> slice:
    """This rank's rows of a global batch of ``batch_size`` (a multiple of the world size)."""
    rank, size = world()
    if batch_size % size:
        raise ValueError(f"a batch of {batch_size} does not split evenly over {size} processes; "
                         f"use a batch size that is a multiple of {size}")
    rows = batch_size // size
    return slice(rank * rows, (rank + 1) * rows)


def wrap(model: nn.Module) -> nn.Module:
    """``model`` under DistributedDataParallel inside a process group (its weights broadcast
    from rank 0), else ``model`` itself. Call it after loading any saved state."""
    if world()[1] == 1:
        return model
    device = next(model.parameters()).device
    if device.type == "cuda":  # one BatchNorm statistic over the whole batch (NCCL only)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the processes (every rank must call it at the same point)."""
    if world()[1] == 1:
        return values
    total = values.clone()
    dist.all_reduce(total)
    return total


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` averaged over the processes (every rank must call it at the same point)."""
    return sum_over_ranks(values) / world()[1]


def is_main() -> bool:
    """Rank 0: the process that saves and reports."""
    return world()[0] == 0


def backend(device: torch.device) -> str:
    """NCCL between GPUs, gloo on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"
