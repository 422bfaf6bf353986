"""Several processes under ``torchrun``: who this process is, its device, and what the ranks share.

torchrun starts one process per device and tells each its place in environment variables
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Outside torchrun this process is
rank 0 of 1 and every collective here is a no-op, so the training loop and ``stylize`` read
the same whether one process runs or many.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

from ..network.loading import default_device

Item = TypeVar("Item")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of a run: ``rank`` of ``world_size``, ``local_rank`` on its host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and previews."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def torchrun_ranks() -> Ranks:
    """This process's ranks from torchrun's environment variables; rank 0 of 1 without them."""
    def number(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        try:
            return int(value) if value else default
        except ValueError:
            raise ValueError(f"the environment variable {name}={value!r} is not a whole number; it is set by "
                             "torchrun, do not set it by hand.") from None

    ranks = Ranks(number("RANK", 0), number("WORLD_SIZE", 1), number("LOCAL_RANK", 0))
    if not 0 <= ranks.rank < ranks.world_size:
        raise ValueError(f"RANK={ranks.rank} is not below WORLD_SIZE={ranks.world_size}; start several processes "
                         "with torchrun, which sets both.")
    return ranks


def shard(items: Sequence[Item], ranks: Ranks) -> list[Item]:
    """The items this rank takes: ``rank``, ``rank + world_size``, ... (every item by exactly one rank)."""
    return list(items[ranks.rank::ranks.world_size])


def rank_device(requested: str | None, ranks: Ranks) -> torch.device:
    """The device of this rank: ``requested`` (default the best available), CUDA device LOCAL_RANK under torchrun.

    Under torchrun each process of a host takes its own GPU, so "cuda" (or no choice) means
    ``cuda:LOCAL_RANK`` there; an explicit index ("cuda:1") is kept as given.
    """
    device = torch.device(requested) if requested else default_device()
    if device.type == "cuda" and device.index is None:
        if ranks.distributed or "LOCAL_RANK" in os.environ:
            if ranks.local_rank >= torch.cuda.device_count():
                raise ValueError(f"local rank {ranks.local_rank} has no GPU of its own: this host has "
                                 f"{torch.cuda.device_count()}; start at most that many processes per node.")
            device = torch.device("cuda", ranks.local_rank)
    return device


def start(ranks: Ranks, device: torch.device) -> None:
    """Join the run's process group (NCCL between GPUs, Gloo between CPUs); nothing for a single process."""
    if not ranks.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method="env://", rank=ranks.rank, world_size=ranks.world_size,
                            device_id=device if device.type == "cuda" else None)


def stop() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def sum_over_ranks(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """``values`` summed over the ranks (a copy; the values themselves for a single process)."""
    if not ranks.distributed:
        return values
    total = values.clone()
    dist.all_reduce(total)
    return total


def gather(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if not ranks.distributed:
        return [value]
    values: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(values, value)
    return values


def data_parallel(module: torch.nn.Module, device: torch.device, ranks: Ranks) -> torch.nn.Module:
    """``module`` under DistributedDataParallel when several processes run, else ``module`` itself.

    DDP broadcasts rank 0's parameters and buffers to the other ranks when it wraps the module,
    and averages each gradient over the ranks, bucket by bucket, while backward still runs.
    """
    if not ranks.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
