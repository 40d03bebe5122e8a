"""Sharded, atomic, resumable checkpoints: `CheckpointManager`, RNG capture, the on-disk format.

    manager = CheckpointManager("s3://bucket/run", keep=3)
    path = manager.save("ep1-ba200", model=model, optimizer=optimizer,
                        objects={"timestamp": ...}, rank_objects={"rng": capture_rng()})
    objects, mine = manager.load(manager.latest(), model=model, optimizer=optimizer)
    restore_rng(mine["rng"])

`format` defines the layout and the manifest (versioned); `state` what goes into
torch.distributed.checkpoint; `verify` the content hashes and how a load checks them;
`locations` the folder operations for local paths and URLs alike.
"""

from composer_lite.checkpoint.format import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    IncompleteCheckpointError,
    Manifest,
)
from composer_lite.checkpoint.manager import CheckpointManager
from composer_lite.checkpoint.rng import capture_rng, restore_rng

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "IncompleteCheckpointError",
    "Manifest",
    "capture_rng",
    "restore_rng",
]
