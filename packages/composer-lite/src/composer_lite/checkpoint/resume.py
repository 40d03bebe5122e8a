"""How a run starts from its save folder: autoresume goes back past damaged checkpoints, and a new
run is refused in a folder that holds another run's checkpoints. Both are collective (rank 0
lists the folder, every rank acts on its list) and work on local folders and URLs alike."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from composer_lite.checkpoint.collective import on_all_ranks
from composer_lite.checkpoint.format import (
    CheckpointError,
    CorruptCheckpointError,
    IncompleteCheckpointError,
)
from composer_lite.checkpoint.locations import location_key, normalize_location
from composer_lite.checkpoint.manager import CheckpointManager
from composer_lite.dist import get_rank

__all__ = ["check_unused", "load_newest"]

log = logging.getLogger(__name__)


def load_newest(
    manager: CheckpointManager, *, model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[str, dict[str, Any], dict[str, Any] | None] | None:
    """Load the newest checkpoint of the folder that is whole, as autoresume does: one with files
    missing, truncated or changed (`IncompleteCheckpointError`, `CorruptCheckpointError`) is
    skipped with a warning naming it and why, and the next older one is tried (a checkpoint with
    an unreadable manifest is not even listed: see `complete_checkpoints`). Returns (its path,
    objects, rank objects); None if the folder has no complete checkpoint; raises if it has some
    and none of them loads. A failed attempt leaves the model and optimizer partly loaded; the
    next one loads all of them again."""
    rank = get_rank()
    found = _listed(manager)
    skipped: list[str] = []
    for location in found:
        try:
            objects, mine = manager.load(location, model=model, optimizer=optimizer)
        except (IncompleteCheckpointError, CorruptCheckpointError) as err:
            skipped.append(f"{location} ({err})")
            if rank == 0:
                log.warning("skipping checkpoint %s, it cannot be loaded: %s", location, err)
            continue
        if skipped and rank == 0:
            log.warning(
                "resuming from %s, the newest checkpoint that loads (%d newer skipped)",
                location,
                len(skipped),
            )
        return location, objects, mine
    if skipped:
        raise CheckpointError(
            f"none of the {len(found)} checkpoints in {manager.folder} can be loaded: "
            f"{'; '.join(skipped)}. Move them out of the folder to start the run afresh (from "
            "load_path, if set)"
        )
    return None


def check_unused(manager: CheckpointManager, *, resuming_from: str | None = None) -> None:
    """Refuse to start a new run in a folder that holds complete checkpoints: its saves would
    replace them or mix with them (`autoresume` and `save_overwrite` say otherwise). Starting
    from the newest of them (`resuming_from`, a load_path) is resuming by hand, not a new run."""
    found = _listed(manager)
    newest = found[0] if found else None
    if newest is None or (
        resuming_from and location_key(normalize_location(resuming_from)) == location_key(newest)
    ):
        return
    raise CheckpointError(
        f"save_folder {manager.folder} already holds {len(found)} checkpoint(s) of another run "
        f"(newest: {newest}); a new run would write over them or mix with them. Resume that run "
        "with autoresume=True, choose another save_folder, or pass save_overwrite=True to save "
        "into it anyway"
    )


def _listed(manager: CheckpointManager) -> list[str]:
    """Rank 0's list of the folder's complete checkpoints, on every rank (or its error)."""
    rank = get_rank()
    return on_all_ranks("listing checkpoints", lambda: manager.checkpoints() if rank == 0 else [])[
        0
    ]
