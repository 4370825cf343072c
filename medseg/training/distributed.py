"""The one module that knows about ``torch.distributed``: who this process is, and who writes.

A run launched by ``torchrun`` (or SLURM's ``srun`` with the same variables) has ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment; without them medseg is one process of one
(rank 0 of 1), and everything here answers so: the rest of medseg asks this module and runs
unchanged in a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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
