"""AdamW with fp32 master weights for bf16 (or fp16) parameters: `MasterWeightAdamW`.

    model = model.to(torch.bfloat16)                  # activations and residual stream in bf16
    opt = MasterWeightAdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)

This is the single-device form of the mixed precision FSDP2 gives with
`ParallelConfig(param_dtype="bf16")` (and that MPT was trained with): the forward and backward run
on bf16 weights with no autocast casts, while the update happens in fp32. The optimizer keeps, per
low-precision parameter, an fp32 master copy next to Adam's two moments (all in its `state`, so
they are checkpointed with it); each step updates the master from the parameter's gradient and
writes it back rounded to the parameter's dtype. fp32 parameters are updated in place as plain
AdamW does. The update is torch.optim.AdamW's (decoupled weight decay, bias-corrected moments).

On CUDA (or under TRITON_INTERPRET=1) with Triton, one fused kernel per parameter reads the
gradient, master, and moments and writes master, moments and the bf16 weight: 28 bytes of memory
traffic per bf16 parameter, where AdamW on fp32 copies plus the two casts moves 40. Elsewhere the
same update runs as torch ops.

Gradients arrive in the parameter's dtype, and with several microbatches per step autograd sums
them there (in bf16); for many microbatches per step, `amp_bf16` (fp32 weights) or FSDP2 with
`reduce_dtype=fp32` (which accumulates the sharded gradients in fp32) keep more precision.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["MasterWeightAdamW"]

_BLOCK = 2048
_LAUNCH = {"BLOCK": _BLOCK, "num_warps": 4}  # elements per program, warps per program
_FP32_STATE = ("exp_avg", "exp_avg_sq", "master")


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def adamw_kernel(
        param,
        grad,
        master,
        exp_avg,
        exp_avg_sq,
        n,
        lr_decay,
        beta1,
        beta2,
        eps,
        step_size,
        inv_sqrt_bc2,
        HAS_MASTER: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n
        g = tl.load(grad + offs, mask=ok, other=0.0).to(tl.float32)
        if HAS_MASTER:
            w = tl.load(master + offs, mask=ok, other=0.0)
        else:
            w = tl.load(param + offs, mask=ok, other=0.0).to(tl.float32)
        m = tl.load(exp_avg + offs, mask=ok, other=0.0)
        v = tl.load(exp_avg_sq + offs, mask=ok, other=0.0)
        m = m + (1.0 - beta1) * (g - m)  # torch's lerp_(grad, 1 - beta1)
        v = v * beta2 + (1.0 - beta2) * g * g
        w = w * lr_decay - step_size * m / (tl.sqrt(v) * inv_sqrt_bc2 + eps)
        tl.store(exp_avg + offs, m, mask=ok)
        tl.store(exp_avg_sq + offs, v, mask=ok)
        if HAS_MASTER:
            tl.store(master + offs, w, mask=ok)
        tl.store(param + offs, w.to(param.dtype.element_ty), mask=ok)

    return adamw_kernel


@functools.cache
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


class MasterWeightAdamW(torch.optim.Optimizer):
    """AdamW whose update runs in fp32 for parameters of any float dtype (see the module doc).

    fused: None (default) uses the Triton kernel where it can run (CUDA tensors, or any under
    TRITON_INTERPRET=1) and torch ops elsewhere; True requires the kernel; False never uses it.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        fused: bool | None = None,
    ) -> None:
        if not 0.0 <= lr:
            raise ValueError(f"MasterWeightAdamW: lr must be >= 0, got {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"MasterWeightAdamW: eps must be >= 0, got {eps}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"MasterWeightAdamW: betas[{i}] must be in [0, 1), got {beta}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"MasterWeightAdamW: weight_decay must be >= 0, got {weight_decay}")
        if fused and not _triton_importable():
            raise RuntimeError("MasterWeightAdamW(fused=True) needs Triton, which is not installed")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.fused = fused
        for group in self.param_groups:
            for p in group["params"]:
                if not p.is_floating_point():
                    raise TypeError(
                        f"MasterWeightAdamW: parameters must be floating point, got {p.dtype}"
                    )

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but the master copies and moments stay fp32 (torch casts them to the
        parameter's dtype, which would round bf16 parameters' masters to bf16)."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(saved_ids, params, strict=True):
            for key, value in state_dict["state"].get(i, {}).items():
                if key in _FP32_STATE:
                    self.state[p][key] = value.to(device=p.device, dtype=torch.float32, copy=True)

    # -- the step ----------------------------------------------------------------------------------
    def _use_kernel(self, p: Tensor) -> bool:
        if self.fused is False or not _triton_importable():
            return False
        runs = p.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
        if self.fused and not runs:
            raise RuntimeError(
                f"MasterWeightAdamW(fused=True): the Triton kernel cannot run on {p.device} tensors"
            )
        return runs

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError("MasterWeightAdamW does not support sparse gradients")
                if "exp_avg" not in state:
                    self._init_state(p, state)
                state["step"] += 1
                self._update(p, grad, state, _Scalars.of(group, float(state["step"])))
        return loss

    def _init_state(self, p: Tensor, state: dict) -> None:
        state["step"] = torch.tensor(0.0)  # on the CPU: reading it costs no device sync
        state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
        state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
        if p.dtype != torch.float32:
            state["master"] = p.detach().to(torch.float32, copy=True)

    def _update(self, p: Tensor, grad: Tensor, state: dict, scalars: _Scalars) -> None:
        master = state.get("master")
        m, v = state["exp_avg"], state["exp_avg_sq"]
        tensors = [_local(t) for t in (p, grad, m, v, *([master] if master is not None else []))]
        lp, lg, lm, lv = tensors[:4]
        w = tensors[4] if master is not None else lp  # the fp32 weights the update goes to
        if self._use_kernel(p) and all(t.is_contiguous() for t in tensors):
            n, has_master = lp.numel(), master is not None
            if n:
                _kernel()[(_cdiv(n, _BLOCK),)](
                    lp, lg, w, lm, lv, n, *astuple(scalars), HAS_MASTER=has_master, **_LAUNCH
                )
            return
        g = lg.to(torch.float32)
        w.mul_(scalars.lr_decay)
        lm.lerp_(g, 1.0 - scalars.beta1)
        lv.mul_(scalars.beta2).addcmul_(g, g, value=1.0 - scalars.beta2)
        denom = lv.sqrt().mul_(scalars.inv_sqrt_bc2).add_(scalars.eps)
        w.addcdiv_(lm, denom, value=-scalars.step_size)
        if master is not None:
            lp.copy_(w)


@dataclass(frozen=True)
class _Scalars:
    """The scalars of one parameter's update, in the kernel's argument order: torch.optim.AdamW's
    (decoupled weight decay, bias-corrected moments) with the bias corrections folded in."""

    lr_decay: float  # 1 - lr * weight_decay
    beta1: float
    beta2: float
    eps: float
    step_size: float  # lr / (1 - beta1**step)
    inv_sqrt_bc2: float  # 1 / sqrt(1 - beta2**step)

    @classmethod
    def of(cls, group: dict[str, Any], step: float) -> _Scalars:
        """The scalars of a parameter group's settings at `step` (counted from 1)."""
        lr, (beta1, beta2) = float(group["lr"]), group["betas"]
        return cls(
            lr_decay=1.0 - lr * group["weight_decay"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            step_size=lr / (1.0 - beta1**step),
            inv_sqrt_bc2=1.0 / math.sqrt(1.0 - beta2**step),
        )


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)
