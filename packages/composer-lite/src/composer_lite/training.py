"""Small pieces of the training loop kept out of `trainer.py`: intervals, devices, seeding,
placing the model (parallelism, re-binding the optimizer), averaging and measuring gradients,
building the LR schedule, signal handlers."""

from __future__ import annotations

import functools
import os
import random
import signal
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from composer_lite.core import State
from composer_lite.time import Time, Timestamp, TimeUnit

__all__ = [
    "Every",
    "average_gradients",
    "build_scheduler",
    "device_of",
    "epoch_length",
    "install_signal_handlers",
    "move_to_device",
    "place_model",
    "rebind_optimizer",
    "restore_signal_handlers",
    "seed_everything",
    "total_grad_norm",
    "warn_if_interval_never_comes",
]


class Every:
    """Whether an interval ('1ep', '100ba', '0.25dur', ...) has come round since it last did."""

    def __init__(self, interval: Time, max_duration: Time) -> None:
        if interval.value <= 0:
            raise ValueError(f"an interval must be positive, got {interval}")
        self.interval, self.max_duration = interval, max_duration
        self._last: float | None = None

    def _count(self, timestamp: Timestamp) -> float:
        if self.interval.unit is TimeUnit.DURATION:
            return timestamp.fraction_of(self.max_duration)
        return timestamp.get(self.interval.unit)

    def due(self, timestamp: Timestamp, epoch_end: bool) -> bool:
        """Epoch intervals fire at epoch ends; the others when their count crosses a multiple."""
        if self.interval.unit is TimeUnit.EPOCH and not epoch_end:
            return False
        count = self._count(timestamp)
        last = self._last if self._last is not None else 0.0
        fired = int(count / self.interval.value + 1e-9) > int(last / self.interval.value + 1e-9)
        if fired:
            self._last = count
        elif self._last is None:
            self._last = last
        return fired

    def reset(self, timestamp: Timestamp) -> None:
        self._last = self._count(timestamp)


def warn_if_interval_never_comes(
    name: str, interval: Time, max_duration: Time, timestamp: Timestamp
) -> None:
    """Warn when an interval in epochs or batches is longer than a run given in the other unit
    (known once the loader's length is: the config alone cannot tell)."""
    per_epoch, units = timestamp.epoch_length, {interval.unit, max_duration.unit}
    if not per_epoch or units != {TimeUnit.EPOCH, TimeUnit.BATCH}:
        return
    batches = {TimeUnit.EPOCH: per_epoch, TimeUnit.BATCH: 1}
    if interval.value * batches[interval.unit] > max_duration.value * batches[max_duration.unit]:
        warnings.warn(
            f"{name} {interval} is longer than the run (max_duration {max_duration}, "
            f"{per_epoch} batches an epoch): it never comes round, so it happens only at the "
            f"end; set {name} within the run, or '1dur' to say that on purpose",
            stacklevel=3,
        )


def device_of(name: str | None) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', or None for cuda:LOCAL_RANK when CUDA is there, else cpu."""
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def move_to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def total_grad_norm(model: nn.Module) -> float:
    """The L2 norm of all gradients (DTensor shards combined across ranks); inf/nan propagate."""
    from composer_lite.parallel import grad_norm

    return float(grad_norm(model))


def rebind_optimizer(
    optimizer: torch.optim.Optimizer,
    before: dict[str, nn.Parameter],
    after: dict[str, nn.Parameter],
) -> torch.optim.Optimizer:
    """Point an optimizer at the parameters that sharding put in place of the originals, matched
    by name, keeping its groups and hyperparameters. It must not have taken a step yet."""
    if any(optimizer.state.values()):
        raise ValueError(
            "the optimizer has state already: build it fresh, before the Trainer shards the model"
        )
    name_of = {id(p): n for n, p in before.items()}
    for group in optimizer.param_groups:
        missing = [p for p in group["params"] if id(p) not in name_of]
        if missing:
            raise ValueError(
                f"the optimizer holds {len(missing)} parameters that are not the model's"
            )
        group["params"] = [after[name_of[id(p)]] for p in group["params"]]
    return optimizer


def install_signal_handlers(on_signal: Callable[[int], None]) -> dict[int, Any]:
    """Route SIGTERM and SIGINT to `on_signal(signum)` (main thread only); returns the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {
        sig: signal.signal(sig, lambda signum, frame: on_signal(signum))
        for sig in (signal.SIGTERM, signal.SIGINT)
    }


def restore_signal_handlers(handlers: dict[int, Any]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def place_model(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    parallelism: Any,
    device: torch.device,
    world_size: int,
) -> tuple[nn.Module, torch.optim.Optimizer, bool]:
    """Move the model to its device and apply `parallelism` (a `ParallelConfig`, or None) from
    outside: activation checkpointing -> compile -> FSDP2. Plain data parallel starts every rank
    from rank 0's weights. Returns the model, the optimizer (re-bound to sharded parameters) and
    whether FSDP2 sharded the model."""
    named = dict(model.named_parameters())
    model.to(device)
    sharded = False
    if parallelism is not None:
        from composer_lite.parallel import apply_parallelism, is_sharded

        model = apply_parallelism(model, parallelism, device=device)
        sharded = is_sharded(model)
        if sharded:
            optimizer = rebind_optimizer(optimizer, named, dict(model.named_parameters()))
    if world_size > 1 and not sharded:
        for tensor in [*model.parameters(), *model.buffers()]:
            torch.distributed.broadcast(tensor.data, src=0)
    return model, optimizer, sharded


def average_gradients(model: nn.Module, world_size: int) -> None:
    """Plain data parallel: average the gradients over ranks in one flat all-reduce."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]) / world_size
    torch.distributed.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def build_scheduler(scheduler: Any, state: State) -> Any:
    """A `Schedule` built for the run (its times converted to steps with what the train dataloader
    tells: its length, its batch size); any other scheduler (or None) as it is."""
    from composer_lite.schedulers import Schedule

    if not isinstance(scheduler, Schedule):
        return scheduler
    loader = state.train_dataloader
    samples = getattr(loader, "batch_size", None)  # None: 'sp' times cannot be converted
    to_steps = functools.partial(
        state.timestamp.to_steps,
        max_duration=state.max_duration,
        steps_per_epoch=len(loader) if hasattr(loader, "__len__") else None,
        samples_per_batch=samples and samples * state.world_size,
        tokens_per_batch=scheduler.tokens_per_batch,
    )
    return scheduler.build(state.optimizer, to_steps, state.max_duration)


def epoch_length(loader: Any) -> int | None:
    """Batches in an epoch of `loader`, when it knows (an iterable without a length: None)."""
    try:
        return len(loader) or None
    except TypeError:
        return None
