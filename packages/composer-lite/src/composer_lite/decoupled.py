"""Optimizers whose weight decay follows the schedule, not the learning rate: composer's
`DecoupledAdamW` (llm-foundry's MPT pretraining optimizer) and `DecoupledLionW`.

torch's AdamW multiplies each parameter by `1 - lr * weight_decay` per step, so the decay's
strength depends on the learning rate's scale. Here the factor is
`1 - (lr / initial_lr) * weight_decay`: `weight_decay` is the per-step decay at the peak learning
rate, and a schedule scales it as it scales the learning rate (composer's convention, in which
MPT's `weight_decay: 0.0` ... `1.0e-5` settings are written). `initial_lr` is each parameter
group's learning rate when the optimizer was made (an LR scheduler records the same); the decay
is the group's `scheduled_weight_decay` (torch's AdamW keeps its own `weight_decay` at 0).

    opt = DecoupledAdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=1e-5)
    opt = DecoupledLionW(model.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=1e-5)

Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the update is the sign
of an interpolation of the momentum and the gradient, so every coordinate moves by exactly `lr`;
one moment per parameter (Adam keeps two). Both work with FSDP2's sharded (DTensor) parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["DecoupledAdamW", "DecoupledLionW", "decay_parameters"]


def _check(lr: float, betas: tuple[float, float], weight_decay: float) -> None:
    problems = []
    if not lr >= 0:
        problems.append(f"lr={lr!r} (expected >= 0)")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        problems.append(f"betas={betas!r} (expected two numbers in [0, 1))")
    if not weight_decay >= 0:
        problems.append(f"weight_decay={weight_decay!r} (expected >= 0)")
    if problems:
        raise ValueError(f"bad optimizer settings: {', '.join(problems)}")


def _closure_loss(closure: Callable[[], float] | None) -> float | None:
    """The loss of an optimizer step's closure (re-evaluated with gradients on), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


@torch.no_grad()
def decay_parameters(group: dict[str, Any]) -> None:
    """Multiply the group's parameters that have a gradient by 1 - (lr / initial_lr) * decay."""
    decay = group["scheduled_weight_decay"]
    if not decay:
        return
    initial = group.get("initial_lr") or group["lr"]
    factor = 1.0 - (group["lr"] / initial if initial else 1.0) * decay
    params = [p for p in group["params"] if p.grad is not None]
    if params:
        torch._foreach_mul_(params, factor)


class DecoupledAdamW(torch.optim.AdamW):
    """AdamW with decoupled weight decay (see the module docstring); otherwise torch's AdamW."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 1e-5,
        **adamw_options: Any,
    ) -> None:
        _check(lr, betas, weight_decay)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=0.0, **adamw_options)
        for group in self.param_groups:
            group.setdefault("scheduled_weight_decay", weight_decay)
            group.setdefault("initial_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            decay_parameters(group)
        super().step()
        return loss


class DecoupledLionW(torch.optim.Optimizer):
    """Lion with decoupled weight decay (see the module docstring).

    Per parameter: p *= 1 - (lr / initial_lr) * weight_decay;
    p -= lr * sign(beta1 * m + (1 - beta1) * g);  m = beta2 * m + (1 - beta2) * g.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        _check(lr, betas, weight_decay)
        super().__init__(params, dict(lr=lr, betas=betas, scheduled_weight_decay=weight_decay))
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            decay_parameters(group)
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("DecoupledLionW does not take sparse gradients")
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                momentum = state["exp_avg"]
                update = momentum.lerp(p.grad, 1 - beta1).sign_()
                p.add_(update, alpha=-group["lr"])
                momentum.lerp_(p.grad, 1 - beta2)
        return loss
