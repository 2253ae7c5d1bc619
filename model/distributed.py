"""Data-parallel training across processes (torchrun): the process group, and the few collectives that make
a step of N processes the same step as one process over the same global batch.

How the equality is kept:
- The training users are split into `data_shards` shards by user id. A global batch takes one micro-batch
  from every shard, in shard order; a process trains on the shards it owns (shards are dealt out to ranks in
  contiguous runs), so one process with S shards and N processes with S shards see the same global batches.
- Losses are weighted means over the global batch: each process divides its weighted sum by the global
  weight sum (and multiplies by N, since DistributedDataParallel averages gradients), so the gradient is
  that of the global mean.
- Sampled softmax candidates are the distinct targets of the global batch plus random negatives that every
  process draws alike (one generator, seeded alike); per-prediction random draws are made for the global
  batch and each process takes its slice.
- Dropout draws differ between processes: with dropout on, N processes train the same model only in
  distribution.

Where training runs (`--device`, training_device): on the CPU, or on a GPU per process (cuda:LOCAL_RANK, round
robin when processes outnumber GPUs). The backend follows (choose_backend): NCCL when every process on a
machine has a GPU of its own, gloo otherwise: on the CPU, and when processes share a GPU (NCCL refuses two
processes on one device); gloo reduces GPU tensors itself, and the few collectives of ours go through the CPU.

Without torchrun (no WORLD_SIZE in the environment) the collectives are no-ops and training runs in one
process as before, on the chosen device.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
T = TypeVar("T")


DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""  # "gloo" | "nccl"; empty: not distributed
    device: torch.device = torch.device("cpu")  # where this process trains

    @property
    def collective_device(self) -> torch.device:
        """Where our collectives' tensors go: NCCL reduces GPU tensors only; gloo gets ours on the CPU."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owned_shards(self, shards: int) -> range:
        """The shards this process trains on: a contiguous run, so shard order is rank order."""
        if shards % self.world_size:
            raise ValueError(
                f"--data-shards {shards} must be a multiple of the {self.world_size} training processes"
            )
        per_rank = shards // self.world_size
        return range(self.rank * per_rank, (self.rank + 1) * per_rank)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over processes (no gradient flows through it)."""
        if not self.enabled:
            return value
        total = value.detach().to(self.collective_device, copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(value.device)

    def min_int(self, value: int) -> int:
        if not self.enabled:
            return value
        total = torch.tensor([value], dtype=torch.int64, device=self.collective_device)
        dist.all_reduce(total, op=dist.ReduceOp.MIN)
        return int(total.item())

    def broadcast_float(self, value: float) -> float:
        """Rank 0's value on every process."""
        if not self.enabled:
            return value
        shared = torch.tensor([value], dtype=torch.float64, device=self.collective_device)
        dist.broadcast(shared, src=0)
        return float(shared.item())

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every process's 1-d tensor, concatenated in rank order (lengths may differ)."""
        if not self.enabled:
            return values
        device = self.collective_device
        lengths = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self.world_size)]
        dist.all_gather(lengths, torch.tensor([len(values)], dtype=torch.int64, device=device))
        counts = [int(length.item()) for length in lengths]
        padded = torch.zeros(max(counts), dtype=values.dtype, device=device)
        padded[: len(values)] = values
        parts = [torch.zeros(max(counts), dtype=values.dtype, device=device) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)]).to(values.device)

    def local_slice(self, count: int) -> tuple[int, int]:
        """Where this process's `count` items sit among every process's, in rank order: (start, total)."""
        counts = self.gather(torch.tensor([count], dtype=torch.int64))
        return int(counts[: self.rank].sum()), int(counts.sum())

    def sharded_parts(
        self, shards: int, seed: int, epoch: int, part_of: Callable[[int, np.random.Generator], Sized]
    ):
        """This process's part of an epoch for each shard it owns, each built by part_of(shard, rng) with an
        rng seeded by (seed, epoch, shard) alike on every process, and the steps the epoch has: the fewest
        batches of any shard, agreed by every process (the longer shards' last batches wait an epoch)."""
        parts = [part_of(s, np.random.default_rng([seed, epoch, s])) for s in self.owned_shards(shards)]
        return parts, self.min_int(min(len(part) for part in parts))


_CURRENT = Distributed()


def current() -> Distributed:
    """The process group of this training run (a single process when not under torchrun)."""
    return _CURRENT


def training_device(choice: str = "auto", local_rank: int = 0) -> torch.device:
    """The device a process trains on: "cpu"; "cuda", the GPU cuda:LOCAL_RANK (round robin over the GPUs
    when processes outnumber them); "auto", cuda when torch sees a GPU, else the CPU."""
    if choice not in DEVICE_CHOICES:
        raise ValueError(f"--device {choice!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if choice == "cpu" or (choice == "auto" and not gpus):
        return torch.device("cpu")
    if not gpus:
        raise ValueError(
            "--device cuda: torch sees no GPU (torch.cuda.is_available() is False: no driver, "
            "CUDA_VISIBLE_DEVICES empty, or a CPU-only torch build); use --device cpu or auto"
        )
    return torch.device("cuda", local_rank % gpus)


def choose_backend(device: torch.device, local_processes: int, gpus: int) -> str:
    """NCCL when every process on the machine has a GPU of its own; gloo on the CPU and when processes share
    a GPU (NCCL refuses two processes on one device)."""
    return "nccl" if device.type == "cuda" and local_processes <= gpus else "gloo"


def init_from_environment(device: str = "auto", timeout_s: float = 1800.0) -> Distributed:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) on the chosen device, the backend that fits it; a single
    process without torchrun."""
    global _CURRENT
    if _CURRENT.enabled:
        return _CURRENT
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    where = training_device(device, local_rank)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    if world_size <= 1:
        _CURRENT = Distributed(device=where)
        return _CURRENT
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    gpus = torch.cuda.device_count() if where.type == "cuda" else 0
    timeout = datetime.timedelta(seconds=timeout_s)
    rank = int(os.environ["RANK"])
    store = _restart_store(rank, world_size, timeout)
    backend = _agreed_backend(store, rank, world_size, choose_backend(where, local_processes, gpus))
    dist.init_process_group(
        backend,
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=timeout,
        device_id=where if backend == "nccl" else None,
    )
    _CURRENT = Distributed(dist.get_rank(), dist.get_world_size(), local_rank, backend, where)
    log.info("rank %d of %d on %s (%s)", _CURRENT.rank, world_size, where, backend)
    return _CURRENT


def _agreed_backend(store: dist.Store, rank: int, world_size: int, mine: str) -> str:
    """NCCL only when every process can use it: each process judges its own machine (its GPUs, its
    processes), and machines that differ (one without GPUs, one with fewer GPUs than processes) would
    otherwise pick different backends and hang in the group's start. gloo, when any process needs it, works
    for all."""
    store.set(f"backend/{rank}", mine)
    every = [store.get(f"backend/{other}").decode() for other in range(world_size)]  # waits for each
    return "nccl" if all(backend == "nccl" for backend in every) else "gloo"


def _restart_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store:
    """torchrun's store, its keys prefixed by the restart count. When `--max-restarts` restarts the
    processes, the store still holds the previous generation's keys (gloo's peer addresses among them), and
    the new generation read them: it connected to a dead process's port (connection refused) or hung, in 5 of
    8 tries here (a plain torch script too). With a prefix per generation, 6 of 6 restarts went through."""
    hosted_by_agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # else rank 0 hosts it
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=not hosted_by_agent and rank == 0,
        timeout=timeout,
    )
    return dist.PrefixStore(f"pinrec/restart-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


@contextmanager
def process_group(device: str = "auto") -> Iterator[Distributed]:
    """The process group for the length of a command, training on `device` (training_device): joined from
    torchrun's environment (or a single process without it), left at the end."""
    group = init_from_environment(device)
    try:
        yield group
    finally:
        shutdown()


def shutdown() -> None:
    global _CURRENT
    if _CURRENT.enabled:
        dist.destroy_process_group()
    _CURRENT = Distributed()


def on_training_device(train: Callable[..., T]) -> Callable[..., T]:
    """For a training function whose first argument is the model: the model moves to this process's
    training device for the call, and back to the CPU after it (artifacts are written, and served, from the
    CPU)."""

    @functools.wraps(train)
    def on_device(model: torch.nn.Module, *args, **kwargs) -> T:
        model.to(current().device)
        try:
            return train(model, *args, **kwargs)
        finally:
            model.cpu()

    return on_device


def user_shards(user_ids: np.ndarray, shards: int) -> np.ndarray:
    """The shard of each user: a stable function of the id alone, so every process agrees on it."""
    mixed = (user_ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(33)
    return (mixed % np.uint64(shards)).astype(np.int64)


def global_mean(losses: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The weighted mean over the global batch, as this process's share of it: summed over processes (as
    DistributedDataParallel's gradient averaging does, times the process count) it is the global mean."""
    group = current()
    weights = torch.ones_like(losses) if weights is None else weights
    total = group.sum(weights.sum()).clamp(min=1e-12)
    return (losses * weights).sum() / total * group.world_size
