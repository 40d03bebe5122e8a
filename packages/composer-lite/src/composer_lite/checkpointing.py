"""Saving and restoring a run: what the Trainer puts in a checkpoint, how it resumes, and how
it rolls back. Part of `Trainer` (a base class), kept apart so that `trainer.py` stays the loop."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from composer_lite.events import Event

__all__ = ["Checkpointing"]

log = logging.getLogger(__name__)


class Checkpointing:
    """The Trainer's checkpoint methods (they use its `state`, `config`, callbacks, algorithms)."""

    def save_checkpoint(self) -> str:
        """Save now (every rank calls it); returns the checkpoint's path or URL."""
        from composer_lite.checkpoint import capture_rng

        state, ts = self.state, self.state.timestamp
        protect = {self._resumed_from} if self._resumed_from else set()
        path = self.checkpoints.save(
            f"ep{ts.epoch}-ba{ts.batch}", model=state.model, optimizer=state.optimizer,
            objects=self._run_state(), protect=protect,
            rank_objects={"rng": capture_rng(), "epoch_rng": self._epoch_rng or capture_rng()},
        )  # fmt: skip
        self._last_saved = ts.batch
        self._run(Event.CHECKPOINT)
        return path

    def _run_state(self) -> dict[str, Any]:
        state, loader = self.state, self.state.train_dataloader
        return {
            "timestamp": state.timestamp.state_dict(),
            "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
            "dataloader": loader.state_dict() if hasattr(loader, "state_dict") else None,
            "callbacks": _states_by_type(self.callbacks),
            "algorithms": _states_by_type(self.algorithms),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "microbatch_size": self._auto_size
            if self.microbatch_size == "auto"
            else self.microbatch_size,
            "world_size": state.world_size,
        }

    def _load_start_checkpoint(self) -> None:
        """autoresume: the newest checkpoint of save_folder that loads, else load_path. A new
        run into a save_folder holding checkpoints is refused unless save_overwrite."""
        from composer_lite.checkpoint.resume import check_unused, load_newest

        cfg, manager, state = self.config, self.checkpoints, self.state
        if manager is not None and cfg.autoresume:
            found = load_newest(manager, model=state.model, optimizer=state.optimizer)
            if found is not None:
                self._restore(*found)
                return
        elif manager is not None and not cfg.save_overwrite:
            check_unused(manager, resuming_from=cfg.load_path)
        if cfg.load_path:
            self.load_checkpoint(cfg.load_path)

    def load_checkpoint(self, path: str, *, weights_only: bool = False) -> None:
        """Restore a run (or only model/optimizer/scheduler for `weights_only`, as in rollback)."""
        from composer_lite.checkpoint import CheckpointManager

        state = self.state
        manager = self.checkpoints or CheckpointManager(
            os.path.dirname(path.rstrip("/")) or ".",
            storage_options=self.config.save_storage_options,
        )
        objects, rank_objects = manager.load(path, model=state.model, optimizer=state.optimizer)
        self._restore(path, objects, rank_objects, weights_only=weights_only)

    def _restore(
        self, path: str, objects: dict[str, Any], rank_objects: Any, *, weights_only: bool = False
    ) -> None:
        """Put what `CheckpointManager.load` returned back into the run."""
        from composer_lite.checkpoint import restore_rng

        state = self.state
        if state.scheduler is not None and objects.get("scheduler") is not None:
            state.scheduler.load_state_dict(objects["scheduler"])
        if weights_only:
            return
        state.timestamp.load_state_dict(objects["timestamp"])
        loader = state.train_dataloader
        if objects.get("dataloader") is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(objects["dataloader"])
        else:
            self._skip_batches = state.timestamp.batch_in_epoch
            if self._skip_batches:
                warnings.warn(
                    f"the train dataloader has no state_dict: skipping {self._skip_batches} batches to resume mid-epoch",
                    stacklevel=2,
                )
        for owner, saved, what in (
            (self.callbacks, objects["callbacks"], "callback"),
            (self.algorithms, objects["algorithms"], "algorithm"),
        ):
            _load_states_by_type(owner, saved, what, path)
        if self.scaler is not None and objects.get("scaler") is not None:
            self.scaler.load_state_dict(objects["scaler"])
        if self.microbatch_size == "auto" and objects.get("microbatch_size"):
            self._auto_size = objects["microbatch_size"]
        if rank_objects is not None and state.timestamp.batch_in_epoch:
            # restored once the epoch's iterator exists (see Trainer._epoch_batches)
            self._pending_rng = rank_objects["rng"]
            self._pending_epoch_rng = rank_objects.get("epoch_rng")  # None: before 0.2.1
        elif rank_objects is not None:
            restore_rng(rank_objects["rng"])
        self._resumed_from = path
        self._last_saved = state.timestamp.batch
        log.info("resumed from %s at %s", path, state.timestamp)

    def _rollback(self, reason: str) -> None:
        state = self.state
        latest = self.checkpoints.latest() if self.checkpoints is not None else None
        if latest is None:
            raise RuntimeError(
                f"rollback asked ({reason}) at batch {state.timestamp.batch}, but there is no checkpoint to roll back to"
            )
        log.warning("rolling back to %s: %s", latest, reason)
        self.load_checkpoint(latest, weights_only=True)
        if (
            state.scheduler is not None
        ):  # the schedule follows the run, not the checkpoint: this batch counts as a step
            state.scheduler.last_epoch = state.timestamp.batch + 1
            for group, lr in zip(
                state.optimizer.param_groups, state.scheduler.get_lr(), strict=True
            ):
                group["lr"] = lr

    def _checkpoint_manager(self) -> Any:
        if not self.config.save_folder:
            self._last_saved = -1
            return None
        from composer_lite.checkpoint import CheckpointManager

        self._last_saved = -1
        keep = self.config.save_num_checkpoints_to_keep
        return CheckpointManager(
            self.config.save_folder,
            keep=None if keep < 0 else keep,
            storage_options=self.config.save_storage_options,
        )


def _type_keys(items: list[Any]) -> list[str]:
    """'EMA', 'EMA#1', ...: a callback's class name and its index among those of its class, so a
    resumed run with callbacks added, removed or reordered gives each its own state back."""
    seen: dict[str, int] = {}
    keys = []
    for item in items:
        name = type(item).__name__
        keys.append(name if name not in seen else f"{name}#{seen[name]}")
        seen[name] = seen.get(name, 0) + 1
    return keys


def _states_by_type(items: list[Any]) -> dict[str, Any]:
    return {key: item.state_dict() for key, item in zip(_type_keys(items), items, strict=True)}


def _load_states_by_type(items: list[Any], saved: Any, what: str, path: str) -> None:
    if isinstance(saved, list):  # checkpoints of composer-lite <= 0.2.0: by position
        saved = dict(zip(_type_keys(items), saved, strict=False))
    keys = _type_keys(items)
    for key, item in zip(keys, items, strict=True):
        if key in saved:
            item.load_state_dict(saved[key])
    lost = sorted(key for key, value in saved.items() if key not in keys and value)
    if lost:
        log.warning(
            "%s: saved state of %s %s matches no %s of this run; it is not restored",
            path, what, ", ".join(lost), what,
        )  # fmt: skip
