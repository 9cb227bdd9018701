"""Data-parallel training with ``torch.distributed``: process start-up and the few collectives.

Design choices:
- A run is either launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR`` and ``MASTER_PORT``) or by ``spawn_parallel_fn``, which sets the same variables
  for ``nprocs`` local processes. Either way each process then calls ``init_distributed`` and runs
  the same training code.
- The backend follows the device: NCCL for CUDA, gloo for CPU.
- Every rank reads its own shard of each global batch, and gradients are averaged across ranks
  during the backward pass. With ``data_parallel="ddp"`` each rank keeps a full model replica
  wrapped in ``DistributedDataParallel``; with ``"fsdp"`` the weights, gradients and optimizer
  state are sharded across the ranks (see ``fsdp.py``).
- Only rank 0 writes logs and checkpoints; every rank loads checkpoints to resume.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedState:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def cpu_threads_per_process(local_processes: int) -> int:
    """Return the intra-op threads each of ``local_processes`` CPU training processes should use.

    The machine's cores are shared out, at least one each. Left at torch's default, every
    process starts a thread per core, and on 2 cores two DDP processes then trained a tiny model
    4.7x slower than with one thread each. torchrun avoids the same problem by setting
    ``OMP_NUM_THREADS=1`` for its processes when it is not set.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_processes))


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_distributed(device: torch.device) -> DistributedState:
    """Join the process group described by the environment, if there is one (else a 1-process state)."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistributedState()
    state = DistributedState(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
    )
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=state.rank, world_size=state.world_size)
        logger.info("rank %d of %d joined the %s process group", state.rank, state.world_size, backend)
    return state


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(value: float, state: DistributedState, device: torch.device) -> float:
    """Sum a Python number over all ranks (returned unchanged in a 1-process run)."""
    if not state.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


def any_rank(flag: bool, state: DistributedState, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on at least one rank."""
    if not state.enabled:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def barrier(state: DistributedState, device: torch.device) -> None:
    """Wait until every rank reaches this call (returns at once in a 1-process run)."""
    if state.enabled:
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(local_rank: int, nprocs: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(nprocs),
    )
    try:
        fn(*args)
    finally:
        shutdown_distributed()


def spawn_parallel_fn(fn: Callable, nprocs: int, *args) -> None:
    """Run ``fn(*args)`` in ``nprocs`` new processes on this machine, as ranks of one process group.

    ``fn`` must be importable (a module-level function), because the processes are started with
    the ``spawn`` method. SIGINT and SIGTERM received by this process are passed on to the workers,
    so they can save a checkpoint and stop together. A worker's exception or non-zero exit is
    raised here (``torch.multiprocessing.ProcessRaisedException`` or ``ProcessExitedException``).
    """
    if nprocs < 1:
        raise ValueError(f"nprocs must be at least 1, got {nprocs}")
    context = mp.start_processes(_worker, args=(nprocs, _free_port(), fn, args), nprocs=nprocs, join=False)

    def forward(signum, frame):
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not context.join():
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
