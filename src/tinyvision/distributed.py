"""Distributed data-parallel training under ``torchrun``, in a few small functions.

    torchrun --nproc_per_node 4 -m tinyvision train configs/fmnist-mixer.toml
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 8 -m tinyvision train ...

Semantics (the same config trains the same way on any number of processes):

- ``data.batch_size`` is the *global* batch: each of the W processes takes batch_size / W
  images per step, and DistributedDataParallel averages the gradients, so one step sees the
  same number of images, and ``optim.lr`` means the same thing, as in a single process.
- Each process holds only its shard of the training set on its device (a fixed, seeded
  interleaving of the whole set) and shuffles and augments it with its own generator.
- Evaluation is sharded the same way; sums of loss and correct answers are added up across
  processes, so every process sees the full-split numbers.
- Process 0 alone prints, writes the run folder and saves checkpoints; a checkpoint holds the
  random-number states of every process, so ``--resume`` works the same as in one process.
- Batch norm statistics stay per process (no SyncBatchNorm), as in most data-parallel recipes.

NCCL on GPUs (one process per GPU, ``cuda:LOCAL_RANK``), gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from tinyvision.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(device_name: str) -> tuple[World, str]:
    """Join the process group that torchrun describes in the environment, if any.

    Returns the world and the device name this process should use.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device_name
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        device_name = f"cuda:{world.local_rank}"
        torch.cuda.set_device(world.local_rank)
    elif device_name == "auto":
        device_name = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return world, device_name


def shutdown(world: World, *, finished: bool) -> None:
    """Leave the process group. ``finished``: this process got to the end without an error, so
    it first waits for the others. Without that wait, a process that tore down its gloo group
    while process 0 was still at work was sometimes aborted ("terminate called without an active
    exception": 2 of 28 runs of tests/test_distributed.py alone, 2 of 4 runs of the whole suite
    on the project's 2-core machine, 2026-12-07). After an error there is no wait: the others
    may never arrive, and the error must not hang behind it."""
    if world.distributed and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def check_batch(batch_size: int, world: World) -> int:
    """The per-process batch for a global ``batch_size``."""
    if batch_size % world.size:
        raise ConfigError(
            f"data.batch_size {batch_size} must be divisible by the {world.size} processes"
        )
    return batch_size // world.size


def shard(
    images: torch.Tensor, labels: torch.Tensor, world: World, *, equal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's interleaved share of a split (every ``size``-th image from ``rank``).

    ``equal`` trims the shards to one length so that every process runs the same number of
    steps (training); evaluation keeps every image.
    """
    if not world.distributed:
        return images, labels
    index = torch.arange(world.rank, len(labels), world.size)
    if equal:
        index = index[: len(labels) // world.size]
    return images[index], labels[index]


def all_reduce_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_process(flag: bool, world: World, device: torch.device) -> bool:
    """True on every process if ``flag`` is true on any (a stop request, say)."""
    if not world.distributed:
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather(obj: Any, world: World) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process."""
    if not world.distributed:
        return [obj]
    objects: list[Any] = [None] * world.size
    dist.all_gather_object(objects, obj)
    return objects
