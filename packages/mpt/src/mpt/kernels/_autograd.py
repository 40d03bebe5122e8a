"""The attention's autograd: what a forward saves for its backward, and the eager path.

Both paths run the launchers of `_launch.py` and save the same tensors (`_save_for_backward`,
`_saved`), so they give bitwise-equal outputs and gradients:

* under torch.compile, the custom ops of `_ops.py` (one opaque node each, fake implementations
  for tracing, autograd attached with torch.library);
* in eager mode, the plain autograd.Functions here. A call through a custom op pays for its
  dispatch on every forward and backward (schema defaults, alias checks, a dynamo-disabled
  wrapper, a generated autograd.Function); on an H200's host that made one eager fwd+bwd at
  mpt_1b's shape take longer to issue than the GPU took to run it (tools/bench/RESULTS.md,
  issue 18).

`flash_alibi.py` picks the path (`_eager`).
"""

import torch
from torch import Tensor

from ._launch import (
    ForwardOutputs,
    KernelArgs,
    _backward_impl,
    _forward_impl,
    _packed_backward_impl,
    _split_qkv,
)

__all__ = ["PackedAttention", "QKVAttention", "_save_for_backward", "_saved"]


def _save_for_backward(ctx, tensors: tuple, args: KernelArgs) -> None:
    """`tensors` and the tensors of `args` through save_for_backward, its numbers on ctx."""
    ctx.save_for_backward(
        *tensors, args.slopes, args.q_seq_id, args.k_seq_id, args.first_key, args.last_row
    )
    ctx.softmax_scale, ctx.skip_bits = args.softmax_scale, args.skip_bits


def _saved(ctx) -> tuple[list[Tensor], KernelArgs]:
    """What `_save_for_backward` saved: (tensors, args)."""
    *tensors, slopes, q_seq_id, k_seq_id, first_key, last_row = ctx.saved_tensors
    scale, skip_bits = ctx.softmax_scale, ctx.skip_bits
    return tensors, KernelArgs(slopes, scale, q_seq_id, k_seq_id, skip_bits, first_key, last_row)


class QKVAttention(torch.autograd.Function):
    """out = attention(q, k, v) in eager mode; gradients for q, k and v."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, args: KernelArgs) -> Tensor:
        fwd = _forward_impl(q, k, v, args)
        _save_for_backward(ctx, (q, k, v, *fwd), args)
        return fwd.out

    @staticmethod
    def backward(ctx, dout: Tensor):
        (q, k, v, *outputs), args = _saved(ctx)
        dq, dk, dv = _backward_impl(dout, q, k, v, ForwardOutputs(*outputs), args)
        return dq, dk, dv, None


class PackedAttention(torch.autograd.Function):
    """out = attention of a fused projection's qkv in eager mode; its gradient as one tensor."""

    @staticmethod
    def forward(ctx, qkv: Tensor, heads: tuple[int, int], args: KernelArgs) -> Tensor:
        fwd = _forward_impl(*_split_qkv(qkv, *heads), args)
        _save_for_backward(ctx, (qkv, *fwd), args)
        ctx.heads = heads
        return fwd.out

    @staticmethod
    def backward(ctx, dout: Tensor):
        (qkv, *outputs), args = _saved(ctx)
        dqkv = _packed_backward_impl(dout, qkv, ForwardOutputs(*outputs), ctx.heads, args)
        return dqkv, None, None
