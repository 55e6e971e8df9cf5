"""Tensor parallelism across the processes of one host, as the original release ran.

Each rank holds one slice of every weight (the slice of a model-parallel shard, see
`checkpoint`), computes its own attention heads and feed-forward columns, and two
collectives per layer glue the slices together:

- after `wo` and `w2` (row-parallel, input dim split): `all_reduce` of partial sums;
- after `tok_embeddings` (split on the model dim) and `output` (split on the vocab):
  `all_gather` along the last dimension.

The backend is gloo on the CPU (what the tests run) and NCCL on CUDA, one GPU per rank.
Rank 0 decides every sampled token and broadcasts it (see `generation.BatchDecoder`),
so ranks never drift apart even where float sums differ in the last bit.

Launch with `torchrun --nproc-per-node N -m inference.llama generate --tp N ...`, or let
`spawn()` start the processes (the CLI's `--tp N` does that without torchrun).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Parallel:
    """Which slice this process holds; world_size 1 means no communication at all."""

    world_size: int = 1
    rank: int = 0
    group: Any = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=-1)

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's tensor on every rank (in place)."""
        if self.world_size > 1:
            dist.broadcast(x, src=0, group=self.group)
        return x

    def broadcast_object(self, obj: Any) -> Any:
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(
    rank: int | None = None,
    world_size: int | None = None,
    *,
    backend: str | None = None,
    init_method: str | None = None,
) -> Parallel:
    """Join (or reuse) the default process group and return this rank's `Parallel`.

    Without arguments it reads torchrun's RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT.
    On CUDA each rank takes the GPU `LOCAL_RANK` (or its rank); CUDA is touched only here.
    """
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Parallel()
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        dist.init_process_group(
            backend, init_method=init_method or "env://", rank=rank, world_size=world_size
        )
    return Parallel(world_size=dist.get_world_size(), rank=dist.get_rank())


def shutdown() -> None:
    if dist.is_initialized():
        # Every rank reaches this point before any tears its group down: a rank that
        # destroyed the group while a peer's last messages were still in flight aborted
        # now and then in gloo's I/O threads ("terminate called without an active
        # exception", SIGABRT).
        dist.barrier()
        dist.destroy_process_group()


def _entry(
    rank: int, fn: Callable[..., Any], world_size: int, port: int, backend: str | None, args: tuple
) -> None:
    # A spawned child: one intra-op thread per rank, or N ranks fight over the same cores.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    par = init(rank, world_size, backend=backend, init_method=f"tcp://127.0.0.1:{port}")
    try:
        fn(par, *args)
    finally:
        shutdown()


def spawn(fn: Callable[..., Any], world_size: int, *args: Any, backend: str | None = None) -> None:
    """Run `fn(parallel, *args)` in `world_size` fresh processes joined by a process group.

    `fn` must be importable (a module-level function); results travel back however the
    caller likes (a file, a queue passed in args). Raises if any rank fails.
    """
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(fn, world_size, free_port(), backend, args), nprocs=world_size)
