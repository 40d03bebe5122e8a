"""`Checkpointer`: the Trainer's component that saves a run and starts one from a checkpoint.

It owns what checkpointing keeps between calls: the `CheckpointManager` of `save_folder`, the
batch last saved, the checkpoint the run resumed from, and what the first epoch after a mid-epoch
resume needs (the batches to skip, the saved RNG states). The Trainer calls it at four points:

    checkpointer = Checkpointer(config, state, callbacks=..., algorithms=..., scaler=...,
                                microbatch=...)
    checkpointer.resume()                   # Trainer.__init__: autoresume, else load_path
    for batch in checkpointer.epoch_batches(): ...   # each epoch of fit(), resumed mid-epoch
    checkpointer.rollback(reason)           # a callback asked for a rollback
    checkpointer.save()                     # at save_interval, on a stop, at the end

A checkpoint holds the model and optimizer (sharded, through torch.distributed.checkpoint), the
run's objects (timestamp, scheduler, dataloader state, callback and algorithm states by class,
gradient scaler, microbatch size, world size), and each rank's RNG states: as the checkpoint was
made (`rng`) and as the epoch's iterator began (`epoch_rng`).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from composer_lite.checkpoint import CheckpointManager, capture_rng, restore_rng
from composer_lite.checkpoint.resume import check_unused, load_newest
from composer_lite.config import TrainerConfig
from composer_lite.core import Algorithm, Callback, State
from composer_lite.microbatch import MicrobatchSize

__all__ = ["Checkpointer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _MidEpoch:
    """What the first epoch iterator after a mid-epoch resume needs to go on where the saved run
    was: the batches to draw and drop (when the loader has no state_dict of its own), this rank's
    RNG as the checkpoint was made, and the RNG as the saved epoch's iterator began (None in
    checkpoints older than 0.2.1)."""

    skip_batches: int
    rng: dict[str, Any] | None
    epoch_rng: dict[str, Any] | None


class Checkpointer:
    """Saves and restores a run for the Trainer (see the module docstring).

    config:     the run's settings (save_folder, save_num_checkpoints_to_keep,
                save_storage_options, save_overwrite, load_path, autoresume).
    state:      the run's `State` (model, optimizer, timestamp, scheduler, train dataloader).
    callbacks, algorithms, scaler, microbatch: the Trainer's parts whose state a checkpoint
                keeps (the lists are the Trainer's own, so callbacks added later are saved too).

    After `resume()`, `resumed_from` is the checkpoint the run started from (None: a fresh run);
    `last_saved` is the batch of the last save or resume (-1: none).
    """

    def __init__(
        self,
        config: TrainerConfig,
        state: State,
        *,
        callbacks: Sequence[Callback],
        algorithms: Sequence[Algorithm],
        scaler: Any,
        microbatch: MicrobatchSize,
    ) -> None:
        self.config, self.state = config, state
        self.callbacks, self.algorithms = callbacks, algorithms
        self.scaler, self.microbatch = scaler, microbatch
        self.manager = _manager(config)
        self.last_saved = -1
        self.resumed_from: str | None = None
        self._mid_epoch: _MidEpoch | None = None
        self._epoch_rng: dict[str, Any] | None = None  # the RNG as this epoch's iterator began

    @property
    def saving(self) -> bool:
        """Whether the run saves checkpoints (it has a save_folder)."""
        return self.manager is not None

    # -- saving -------------------------------------------------------------------------------
    def save(self) -> str:
        """Save now (every rank calls it); returns the checkpoint's path or URL."""
        if self.manager is None:
            raise ValueError("saving a checkpoint needs a save_folder (Trainer.Config.save_folder)")
        state, ts = self.state, self.state.timestamp
        path = self.manager.save(
            f"ep{ts.epoch}-ba{ts.batch}",
            model=state.model,
            optimizer=state.optimizer,
            objects=self._run_objects(),
            protect={self.resumed_from} if self.resumed_from else set(),
            rank_objects={"rng": capture_rng(), "epoch_rng": self._epoch_rng or capture_rng()},
        )
        self.last_saved = ts.batch
        return path

    def _run_objects(self) -> dict[str, Any]:
        state, loader = self.state, self.state.train_dataloader
        return {
            "timestamp": state.timestamp.state_dict(),
            "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
            "dataloader": loader.state_dict() if hasattr(loader, "state_dict") else None,
            "callbacks": _states_by_type(self.callbacks),
            "algorithms": _states_by_type(self.algorithms),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "microbatch_size": self.microbatch.checkpoint_value(),
            "world_size": state.world_size,
        }

    # -- starting from a checkpoint -----------------------------------------------------------
    def resume(self) -> bool:
        """At the start of a run: with autoresume, the newest checkpoint of save_folder that
        loads (going back past damaged ones), else load_path. A new run into a save_folder that
        holds checkpoints is refused unless save_overwrite. Returns whether the run resumed."""
        cfg, manager, state = self.config, self.manager, self.state
        if manager is not None and cfg.autoresume:
            found = load_newest(manager, model=state.model, optimizer=state.optimizer)
            if found is not None:
                self._restore(*found)
                return True
        elif manager is not None and not cfg.save_overwrite:
            check_unused(manager, resuming_from=cfg.load_path)
        if cfg.load_path:
            self.load(cfg.load_path)
        return self.resumed_from is not None

    def load(self, path: str, *, weights_only: bool = False) -> None:
        """Restore a run from `path` (or only model, optimizer and scheduler for `weights_only`,
        as a rollback does)."""
        state = self.state
        manager = self.manager or CheckpointManager(
            os.path.dirname(path.rstrip("/")) or ".",
            storage_options=self.config.save_storage_options,
        )
        objects, rank_objects = manager.load(path, model=state.model, optimizer=state.optimizer)
        self._restore(path, objects, rank_objects, weights_only=weights_only)

    def _restore(
        self, path: str, objects: dict[str, Any], rank_objects: Any, *, weights_only: bool = False
    ) -> None:
        """Put what `CheckpointManager.load` returned back into the run."""
        state = self.state
        if state.scheduler is not None and objects.get("scheduler") is not None:
            state.scheduler.load_state_dict(objects["scheduler"])
        if weights_only:
            return
        state.timestamp.load_state_dict(objects["timestamp"])
        skip = self._restore_dataloader(objects.get("dataloader"))
        _load_states_by_type(self.callbacks, objects["callbacks"], "callback", path)
        _load_states_by_type(self.algorithms, objects["algorithms"], "algorithm", path)
        if self.scaler is not None and objects.get("scaler") is not None:
            self.scaler.load_state_dict(objects["scaler"])
        self.microbatch.restore(objects.get("microbatch_size"))
        self._mid_epoch = None
        if state.timestamp.batch_in_epoch:  # the RNG is restored as the epoch's iterator begins
            mine = rank_objects or {}
            self._mid_epoch = _MidEpoch(skip, mine.get("rng"), mine.get("epoch_rng"))
        elif rank_objects is not None:
            restore_rng(rank_objects["rng"])
        self.resumed_from = path
        self.last_saved = state.timestamp.batch
        log.info("resumed from %s at %s", path, state.timestamp)

    def _restore_dataloader(self, saved: Any) -> int:
        """Give the train dataloader its saved state; without one, the batches of this epoch that
        the resumed run skips instead."""
        loader = self.state.train_dataloader
        if saved is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(saved)
            return 0
        skip = self.state.timestamp.batch_in_epoch
        if skip:
            warnings.warn(
                f"the train dataloader has no state_dict: skipping {skip} batches to resume "
                "mid-epoch",
                stacklevel=3,
            )
        return skip

    # -- the epoch's batches ------------------------------------------------------------------
    def epoch_batches(self) -> Iterator[Any]:
        """This epoch's batches from the train dataloader (its sampler told the epoch).

        Resumed mid-epoch, the first epoch goes on where the saved run was. The saved run began
        this epoch's iterator, and fetched the batches before the checkpoint, from the RNG as it
        was then (a shuffling sampler draws its seed at the first batch), so this does the same:
        it restores that RNG, begins the iterator, skips the batches done (when the loader
        cannot restore its own position), then restores the RNG as the checkpoint was made.
        """
        loader = self.state.train_dataloader
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.state.timestamp.epoch)
        resume, self._mid_epoch = self._mid_epoch, None
        if resume is not None and resume.epoch_rng is not None:
            restore_rng(resume.epoch_rng)
        self._epoch_rng = capture_rng()
        iterator = iter(loader)
        for _ in range(resume.skip_batches if resume is not None else 0):
            if next(iterator, None) is None:
                break
        if resume is not None and resume.rng is not None:
            restore_rng(resume.rng)
        yield from iterator

    # -- rollback -----------------------------------------------------------------------------
    def rollback(self, reason: str) -> None:
        """Restore the model, optimizer and scheduler from the newest checkpoint; the schedule
        then follows the run, not the checkpoint (this batch counts as a step)."""
        state = self.state
        latest = self.manager.latest() if self.manager is not None else None
        if latest is None:
            raise RuntimeError(
                f"rollback asked ({reason}) at batch {state.timestamp.batch}, but there is no "
                "checkpoint to roll back to"
            )
        log.warning("rolling back to %s: %s", latest, reason)
        self.load(latest, weights_only=True)
        if state.scheduler is not None:
            state.scheduler.last_epoch = state.timestamp.batch + 1
            lrs = state.scheduler.get_lr()
            for group, lr in zip(state.optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr


def _manager(config: TrainerConfig) -> CheckpointManager | None:
    if not config.save_folder:
        return None
    keep = config.save_num_checkpoints_to_keep
    return CheckpointManager(
        config.save_folder,
        keep=None if keep < 0 else keep,
        storage_options=config.save_storage_options,
    )


def _type_keys(items: Sequence[Any]) -> list[str]:
    """'EMA', 'EMA#1', ...: a callback's class name and its index among those of its class, so a
    resumed run with callbacks added, removed or reordered gives each its own state back."""
    seen: dict[str, int] = {}
    keys = []
    for item in items:
        name = type(item).__name__
        keys.append(name if name not in seen else f"{name}#{seen[name]}")
        seen[name] = seen.get(name, 0) + 1
    return keys


def _states_by_type(items: Sequence[Any]) -> dict[str, Any]:
    return {key: item.state_dict() for key, item in zip(_type_keys(items), items, strict=True)}


def _load_states_by_type(items: Sequence[Any], saved: Any, what: str, path: str) -> None:
    if isinstance(saved, list):  # checkpoints of composer-lite <= 0.2.0: by position
        saved = dict(zip(_type_keys(items), saved, strict=False))
    keys = _type_keys(items)
    for key, item in zip(keys, items, strict=True):
        if key in saved:
            item.load_state_dict(saved[key])
    lost = sorted(key for key, value in saved.items() if key not in keys and value)
    if lost:
        message = "%s: saved state of %s %s matches no %s of this run; it is not restored"
        log.warning(message, path, what, ", ".join(lost), what)
