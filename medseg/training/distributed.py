"""The one module that knows about ``torch.distributed``: who this process is, and who writes.

A run launched by ``torchrun`` (or SLURM's ``srun`` with the same variables) has ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment; without them medseg is one process of one
(rank 0 of 1), and everything here answers so: the rest of medseg asks this module and runs
unchanged in a single process.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import MedsegError


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run.

    Attributes:
        rank: the global rank, 0..size-1.
        size: the number of processes.
        local_rank: the rank on this machine (which GPU it takes).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs, reports and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as error:
        raise ValueError(f"environment variable {name}={value!r} is not an integer "
                         "(set by torchrun/srun: leave it to the launcher).") from error


def world_from_env() -> World:
    """The :class:`World` the launcher describes in ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
    (one process of one without them)."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"RANK={rank} WORLD_SIZE={size}: a rank must lie in 0..WORLD_SIZE-1.")
    return World(rank=rank, size=size, local_rank=_env_int("LOCAL_RANK", 0))


def shard(items: list, rank: int, size: int) -> list:
    """The items process ``rank`` of ``size`` handles: every ``size``-th item from ``rank``, so
    each item goes to exactly one process (no padding duplicates, unlike ``DistributedSampler``)."""
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"part {rank} of {size}: a part must lie in 0..parts-1.")
    return list(items)[rank::size]


# -- the process group ------------------------------------------------------------------------------
# Everything below asks torch.distributed only when a run has more than one process; with one
# process each function returns at once and does what a single process would.

DEFAULT_TIMEOUT = 600.0
"""Seconds a collective waits for the other processes before the run stops with an error
(``MEDSEG_DIST_TIMEOUT`` overrides it): a failed or stuck process never leaves the others hanging."""

_control: Any = None  # the gloo group of small CPU messages (the stop decision, scores, barriers)


class DistributedError(MedsegError):
    """Another process of a distributed run failed or stopped answering."""


def timeout_seconds() -> float:
    """``$MEDSEG_DIST_TIMEOUT`` seconds, else :data:`DEFAULT_TIMEOUT`."""
    value = os.environ.get("MEDSEG_DIST_TIMEOUT", "")
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT
    except ValueError as error:
        raise ValueError(f"MEDSEG_DIST_TIMEOUT={value!r} is not a number of seconds; give e.g. 600.") from error
    if seconds <= 0:
        raise ValueError(f"MEDSEG_DIST_TIMEOUT={value!r}: give seconds > 0.")
    return seconds


def current_world() -> World:
    """The world of the process group this process joined (:func:`setup`); one process of one
    when it joined none (before ``setup``, or after :func:`shutdown`)."""
    if joined():
        return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=_env_int("LOCAL_RANK", 0))
    return World()


def setup(device: str | torch.device) -> tuple[World, torch.device]:
    """Join the process group the launcher describes (once; a group the caller made is kept).

    NCCL for CUDA devices, gloo otherwise; every collective times out after
    :func:`timeout_seconds`. A CUDA process takes the GPU ``cuda:LOCAL_RANK``.

    Returns:
        This process's :class:`World` and the device it trains on.
    """
    device = torch.device(device)
    world = current_world() if joined() else world_from_env()
    if not world.distributed:
        return world, device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")  # torchrun sets both; a bare launch on one machine
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_seconds()), rank=world.rank, world_size=world.size)
    return world, device


def _control_group() -> Any:
    """A gloo group for small CPU messages: the default group when it is gloo (no GPU sync)."""
    global _control
    if _control is None:
        gloo = dist.get_backend() == "gloo"
        _control = dist.group.WORLD if gloo else dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_seconds()))
    return _control


def joined() -> bool:
    """Whether this process is in a process group (:func:`setup`, or one the caller made)."""
    return dist.is_available() and dist.is_initialized()


def _active() -> bool:
    return joined() and dist.get_world_size() > 1


def shutdown() -> None:
    """Leave the process group (what :func:`setup` joined), so the process exits cleanly."""
    global _control
    if joined():
        dist.destroy_process_group()
    _control = None


# -- who draws what ---------------------------------------------------------------------------------

def local_batch(batch_size: int, world: World) -> int:
    """Each process's share of the global batch ``batch_size``.

    Raises:
        ValueError: the batch does not split evenly over the processes (DDP averages the
            processes' gradients, which equals the global batch's only for equal shares).
    """
    if batch_size % world.size:
        lower = max(world.size, batch_size - batch_size % world.size)
        raise ValueError(f"batch_size {batch_size} does not split over {world.size} processes; give "
                         f"--batch-size {lower} or {lower + world.size} (a multiple of the process count).")
    return batch_size // world.size


def seed_process(seed: int, world: World, position: int) -> None:
    """Seed torch, NumPy and Python per process: ``(seed, rank, position)``, so no two ranks share
    a stream (dropout, shuffles) and a resumed run draws what its position says."""
    state = np.random.SeedSequence([seed, world.rank, position]).generate_state(2)
    torch.manual_seed(int(state[0]))
    np.random.seed(int(state[1]))
    random.seed(int(state[1]))


# -- reductions and decisions -----------------------------------------------------------------------

def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the processes, differentiable (its gradient is summed as well:
    with DDP's averaging, a loss of the global sums gets the gradient of one process holding the
    whole batch). One process: ``tensor`` itself."""
    if not _active():
        return tensor
    # autograd-aware, imported only when a run has several processes
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor, op=dist.ReduceOp.SUM)


def all_true(flag: torch.Tensor) -> torch.Tensor:
    """Whether ``flag`` (a bool tensor) holds on every process; a tensor on its device."""
    if not _active():
        return flag
    value = flag.to(torch.int32).reshape(1)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value[0].bool()


def sum_values(*values: float) -> list[float]:
    """The sums of ``values`` over the processes."""
    if not _active():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=_control_group())
    return tensor.tolist()


def decided(value: float) -> float:
    """Rank 0's ``value`` on every process (its clock says when the time limit ends the run)."""
    if not _active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(tensor, src=0, group=_control_group())
    return float(tensor[0])


def gather_shards(values: list, world: World) -> list:
    """Put the per-process results of ``shard(items, rank, size)`` back in the items' order."""
    if not _active():
        return list(values)
    parts: list[Any] = [None] * world.size
    dist.all_gather_object(parts, list(values), group=_control_group())
    merged: list[Any] = [None] * sum(len(p) for p in parts)
    for rank, part in enumerate(parts):
        merged[rank::world.size] = part
    return merged


def barrier(timeout: float | None = None) -> None:
    """Wait for every process (at most ``timeout`` seconds, default :func:`timeout_seconds`);
    names the ranks that did not come."""
    if not _active():
        return
    seconds = timeout_seconds() if timeout is None else timeout
    try:
        dist.monitored_barrier(group=_control_group(), timeout=timedelta(seconds=seconds), wait_all_ranks=True)
    except RuntimeError as error:
        raise failure(error) from error


def failure(error: BaseException) -> DistributedError:
    """The one-line error a process ends with when a collective failed: a peer died or hung."""
    world = current_world()
    return DistributedError(
        f"rank {world.rank} of {world.size}: another process of the distributed run failed or did not answer "
        f"(collective timeout {timeout_seconds():.0f} s, MEDSEG_DIST_TIMEOUT; {type(error).__name__}: "
        f"{' '.join(str(error).split())[:200]}); the other processes' output says why; the checkpoint on disk "
        "holds the last complete epoch: rerun with --resume.")


def is_communication_error(error: BaseException) -> bool:
    """Whether ``error`` came from a collective (a peer gone, a timeout), not from this process's work."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        word in text for word in ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout"))
