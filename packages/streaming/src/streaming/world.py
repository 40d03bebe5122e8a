"""Where this process sits in the job: node, rank, and dataloader worker.

Rank and world size come from `torch.distributed` when it is initialized, else from the usual
launcher environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`), as in
mosaicml-streaming; the dataloader worker comes from torch's worker info. Without torch, a process
is worker 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["World"]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


@dataclass(frozen=True, kw_only=True)
class World:
    """One process's place: `rank` of `num_ranks` (global), grouped into nodes of `ranks_per_node`,
    and `worker` of `num_workers` dataloader workers of that rank."""

    rank: int = 0
    num_ranks: int = 1
    ranks_per_node: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if self.num_ranks < 1 or self.ranks_per_node < 1 or self.num_workers < 1:
            raise ValueError(f"world sizes must be positive: {self}")
        if self.num_ranks % self.ranks_per_node:
            raise ValueError(
                f"world size {self.num_ranks} is not a multiple of the ranks per node "
                f"{self.ranks_per_node} (LOCAL_WORLD_SIZE); every node must run as many ranks"
            )
        if not 0 <= self.rank < self.num_ranks or not 0 <= self.worker < self.num_workers:
            raise ValueError(f"rank or worker out of range: {self}")

    @property
    def node(self) -> int:
        return self.rank // self.ranks_per_node

    @property
    def num_nodes(self) -> int:
        return self.num_ranks // self.ranks_per_node

    @property
    def local_rank(self) -> int:
        return self.rank % self.ranks_per_node

    @property
    def is_local_leader(self) -> bool:
        """True for the first worker of the first rank of each node."""
        return self.local_rank == 0 and self.worker == 0

    def replicate(self, replication: int) -> World:
        """The world as data sees it when each `replication` consecutive ranks (a tensor or
        sequence parallel group) read the same samples: rank // replication of
        num_ranks // replication, as mosaicml-streaming's `World.replicate` (nodes kept when the
        ranks still divide into them, else one node)."""
        if not isinstance(replication, int) or replication < 1:
            raise ValueError(f"replication={replication!r} must be a positive integer")
        if self.num_ranks % replication:
            raise ValueError(
                f"replication={replication} does not divide the world size {self.num_ranks}"
            )
        num_ranks = self.num_ranks // replication
        nodes = num_ranks // self.ranks_per_node if num_ranks % self.ranks_per_node == 0 else 1
        return World(
            rank=self.rank // replication,
            num_ranks=num_ranks,
            ranks_per_node=num_ranks // nodes,
            worker=self.worker,
            num_workers=self.num_workers,
        )

    @classmethod
    def detect(cls) -> World:
        """The world of the calling process (see the module docstring)."""
        rank, num_ranks = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
        ranks_per_node = _env_int("LOCAL_WORLD_SIZE", 0)
        worker, num_workers = 0, 1
        try:
            import torch.distributed as dist
            from torch.utils.data import get_worker_info
        except ImportError:
            pass
        else:
            if dist.is_available() and dist.is_initialized():
                rank, num_ranks = dist.get_rank(), dist.get_world_size()
            info = get_worker_info()
            if info is not None:
                worker, num_workers = info.id, info.num_workers
        if ranks_per_node <= 0:
            # Without LOCAL_WORLD_SIZE, every rank is assumed to share one node (as torchrun
            # on a single machine); multi-node launchers set it.
            ranks_per_node = num_ranks
        return cls(
            rank=rank,
            num_ranks=num_ranks,
            ranks_per_node=ranks_per_node,
            worker=worker,
            num_workers=num_workers,
        )
