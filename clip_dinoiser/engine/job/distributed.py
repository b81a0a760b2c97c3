"""torch.distributed helpers: started by torchrun (env://), inert in a single process."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

MAX_LOADER_PROCESSES = 8  # per rank, when the count is not given (num_workers=null)


def loader_processes(requested: int | None, most: int = MAX_LOADER_PROCESSES) -> int:
    """``requested`` data-loading processes, or for None the CPU cores this process may use
    (its affinity, as PyTorch's DataLoader counts them) shared among torchrun's processes on this
    machine, at most ``most``: never more than PyTorch suggests, so it never warns."""
    if requested is not None:
        return int(requested)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(most, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun; returns (rank, world_size).

    NCCL on CUDA, gloo on the CPU. On CUDA each rank takes GPU ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=60))
    return dist.get_rank(), dist.get_world_size()


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[tuple[int, int]]:
    """``init_distributed`` for the block; the group is destroyed on exit only if this call
    created it (a caller's own process group is left alone)."""
    owned = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    try:
        yield init_distributed(device)
    finally:
        if owned:
            cleanup()


def launched_rank() -> int:
    """This process's rank as torchrun set it (``RANK``; 0 outside torchrun), readable before the
    process group exists: the main process claims folders and writes results."""
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks (in place); a no-op in a single process."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
