"""Free space before a checkpoint is written: `space_needed` (per rank) and `check_space`.

A save that runs out of disk fails deep inside DCP with a message about stream positions, after
minutes of writing, and under torchrun it is retried. Before writing, each rank reports what it
will write (the bytes of its tensors in the state dict: its shards of the model and optimizer
state) and where (its host, the filesystem of the folder it writes into, that filesystem's free
bytes); `check_space` adds up the ranks that write to the same filesystem of the same host and
raises `CheckpointError` naming the folder, the bytes and the free space when the sum (with 5%
and 64 MiB for the small files and the filesystem's rounding) does not fit. Filesystems shared
between hosts are counted per host, so the check is a lower bound there.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from composer_lite.checkpoint.format import CheckpointError

__all__ = ["SpaceNeed", "check_space", "space_needed", "tensor_bytes"]

_MARGIN, _SLACK = 1.05, 64 << 20


@dataclass(frozen=True)
class SpaceNeed:
    """What one rank will write, and where."""

    host: str
    folder: str
    filesystem: int  # st_dev of the folder
    nbytes: int
    free: int


def tensor_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) state dict; of a DTensor, this rank's shard."""
    from torch.distributed.tensor import DTensor

    total = 0
    for leaf in tree_leaves(state):
        if isinstance(leaf, DTensor):
            leaf = leaf.to_local()
        if isinstance(leaf, torch.Tensor):
            total += leaf.numel() * leaf.element_size()
    return total


def space_needed(state: Any, folder: str) -> SpaceNeed:
    """This rank's `SpaceNeed` for writing `state` into `folder` (which exists)."""
    return SpaceNeed(
        host=socket.gethostname(),
        folder=folder,
        filesystem=os.stat(folder).st_dev,
        nbytes=tensor_bytes(state),
        free=shutil.disk_usage(folder).free,
    )


def check_space(needs: list[SpaceNeed], *, name: str) -> None:
    """Raise `CheckpointError` when the ranks writing to one filesystem need more than it has."""
    total: dict[tuple[str, int], int] = defaultdict(int)
    for need in needs:
        total[need.host, need.filesystem] += need.nbytes
    for need in needs:
        wanted = total[need.host, need.filesystem]
        if wanted * _MARGIN + _SLACK > need.free:
            raise CheckpointError(
                f"checkpoint {name}: its tensors need {_gib(wanted)} in {need.folder} (on"
                f" {need.host}), which has {_gib(need.free)} free: free some space, save"
                " elsewhere, or keep fewer checkpoints there"
            )


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"
