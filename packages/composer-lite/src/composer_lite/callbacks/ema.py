"""EMA: an exponential moving average of the model's weights, used for evaluation and saved.

    ema = EMA(decay=0.999)
    Trainer(model, ..., callbacks=[ema])

How it meets the loop:

- INIT / FIT_START: the shadow weights are made as clones of the parameters, so they have the
  same dtype, device and sharding (FSDP2 DTensor parameters give DTensor shadows); a checkpoint
  loaded before FIT_START fills them from `load_state_dict`.
- BATCH_END (after the optimizer step): `shadow = decay * shadow + (1 - decay) * param`, one
  `torch._foreach_lerp_` over the local shards, no communication.
- EVAL_START / EVAL_END: the shadow and live weights are swapped in place, so the Trainer's
  evaluation (of `state.model`) sees the EMA weights and training resumes with its own. We swap
  rather than keep a second module in `state.eval_model` because a swap works unchanged for a
  model that FSDP2 sharded or torch.compile wrapped (a copy would need the same treatment), and
  costs no memory beyond the shadow.
- `state_dict()` holds the shadow weights (by parameter name) and the update count, so
  checkpoints save them and a resumed run continues the same average.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from composer_lite.core import Callback, Logger, State
from composer_lite.time import Time, TimeUnit

__all__ = ["EMA"]


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (a view: in-place ops change the DTensor), else the tensor."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def _like(value: torch.Tensor, shadow: torch.Tensor) -> torch.Tensor:
    """`value` in the form of `shadow`: a full tensor is sharded like a DTensor shadow, a DTensor
    is gathered for a plain one (both are collectives: every rank loads the same state)."""
    value_sharded, shadow_sharded = hasattr(value, "placements"), hasattr(shadow, "placements")
    if shadow_sharded and not value_sharded:
        from torch.distributed.tensor import distribute_tensor

        local = _local(shadow)
        return distribute_tensor(
            value.to(local.device, local.dtype), shadow.device_mesh, shadow.placements
        )
    if value_sharded and not shadow_sharded:
        value = value.full_tensor()
    return value.to(shadow.device, shadow.dtype)


class EMA(Callback):
    """Exponential moving average of the weights; the EMA weights are evaluated and saved.

    decay:    weight of the old average at each update (0.999 averages over ~1000 updates).
    interval: update every this many batches (the decay applies per update).
    start:    a Time before which the average just tracks the weights (e.g. '0.1dur', '500ba').
    """

    def __init__(
        self, *, decay: float = 0.999, interval: int = 1, start: Time | str | int = "0ba"
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        if not (isinstance(interval, int) and interval >= 1):
            raise ValueError(f"EMA interval must be a positive int (batches), got {interval!r}")
        self.decay, self.interval = float(decay), interval
        self.start = Time.coerce(start, TimeUnit.BATCH)
        self.num_updates = 0
        self._names: list[str] = []
        self._params: list[nn.Parameter] = []
        self._shadow: list[torch.Tensor] = []
        self._pending: dict[str, torch.Tensor] | None = None
        self._swapped = False

    # -- the shadow weights -----------------------------------------------------------------
    def _ensure(self, model: nn.Module) -> None:
        """(Re)bind to `model`'s trainable parameters, making the shadow on first use."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if self._params and [id(p) for _, p in named] == [id(p) for p in self._params]:
            return
        if self._shadow:  # the model's parameters were replaced: keep the average by name
            self._pending = self._pending or dict(zip(self._names, self._shadow, strict=True))
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        with torch.no_grad():
            self._shadow = [p.detach().clone() for p in self._params]
        if self._pending is not None:
            self._fill(self._pending)
            self._pending = None

    def _fill(self, saved: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self._names if n not in saved]
        unexpected = [n for n in saved if n not in set(self._names)]
        if missing or unexpected:
            raise ValueError(
                f"EMA state does not fit the model: missing {missing}, unexpected {unexpected}"
            )
        with torch.no_grad():
            for name, shadow in zip(self._names, self._shadow, strict=True):
                value = saved[name]
                if tuple(value.shape) != tuple(shadow.shape):
                    raise ValueError(
                        f"EMA weight {name!r} has shape {tuple(value.shape)}, the model's has "
                        f"{tuple(shadow.shape)}"
                    )
                shadow.copy_(_like(value, shadow))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards the current weights of `model`."""
        self._ensure(model)
        if not self._shadow:
            return
        shadow = [_local(s) for s in self._shadow]
        live = [_local(p.detach()) for p in self._params]
        torch._foreach_lerp_(shadow, live, 1.0 - self.decay)
        self.num_updates += 1

    @torch.no_grad()
    def _swap(self) -> None:
        for param, shadow in zip(self._params, self._shadow, strict=True):
            p, s = _local(param.detach()), _local(shadow)
            held = p.clone()
            p.copy_(s)
            s.copy_(held)
        self._swapped = not self._swapped

    @contextlib.contextmanager
    def averaged_weights(self, model: nn.Module) -> Iterator[nn.Module]:
        """`with ema.averaged_weights(model):` the model holds the EMA weights inside the block."""
        self._ensure(model)
        self._swap()
        try:
            yield model
        finally:
            self._swap()

    # -- events -----------------------------------------------------------------------------
    def init(self, state: State, logger: Logger) -> None:
        self._ensure(state.model)

    def fit_start(self, state: State, logger: Logger) -> None:
        self._ensure(state.model)

    def batch_end(self, state: State, logger: Logger) -> None:
        self._ensure(state.model)
        if not state.timestamp.reached(self.start, state.max_duration):
            with torch.no_grad():  # not started: the average is the weights themselves
                torch._foreach_copy_(
                    [_local(s) for s in self._shadow], [_local(p.detach()) for p in self._params]
                )
            return
        if state.timestamp.batch % self.interval == 0:
            self.update(state.model)

    def eval_start(self, state: State, logger: Logger) -> None:
        self._ensure(state.model)
        if not self._swapped:
            self._swap()

    def eval_end(self, state: State, logger: Logger) -> None:
        if self._swapped:
            self._swap()

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Shadow weights by parameter name (DTensors for a sharded model) and the update count.

        While the weights are swapped (inside evaluation) the shadow lives in the model, so the
        tensors are taken from there.
        """
        tensors = self._params if self._swapped else self._shadow
        weights = {n: t.detach() for n, t in zip(self._names, tensors, strict=True)}
        if self._pending is not None and not weights:
            weights = dict(self._pending)
        return {"weights": weights, "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "weights" not in state:
            raise ValueError(f"not an EMA state: expected a 'weights' key, got {sorted(state)}")
        self.num_updates = int(state.get("num_updates", 0))
        if self._shadow:
            self._fill(state["weights"])
        else:
            self._pending = dict(state["weights"])
