"""The custom ops behind `flash_alibi.py`'s functions: one opaque node each for torch.compile
(eager calls take `_autograd.py`'s plain autograd.Functions instead, or the launchers directly).

"mpt::flash_alibi_fwd" / "_bwd" take q, k, v; "mpt::flash_alibi_packed_fwd" / "_bwd" take the
fused projection's qkv (B, T, (H + 2 Hkv) D) and give its gradient as one such tensor, written in
place by the kernels (with separate q, k, v the backward of the split would copy dq, dk and dv
into it: a full read and write of qkv per layer); "mpt::flash_alibi_decode" is the split-KV
inference path. Each has a fake implementation, and the two forwards have autograd attached.

torch.library infers an op's schema from its signature, so the ops take their arguments flat:
their tensors, then the fields of `KernelArgs` in order (`KernelArgs.flat()`). Everything behind
the signatures (the fake implementations, `setup_context`, the backward, the launchers) works with
the dataclass again.
"""

from dataclasses import fields

import torch
from torch import Tensor

from ._autograd import _save_for_backward, _saved
from ._launch import (
    ForwardOutputs,
    KernelArgs,
    _backward_impl,
    _decode_impl,
    _forward_impl,
    _packed_backward_impl,
    _split_qkv,
)

__all__: list[str] = []  # registers the ops under torch.ops.mpt; nothing to import from here

#: No gradient for any field of KernelArgs.
_NO_GRADS = (None,) * len(fields(KernelArgs))


def _empty_forward(like: Tensor, q_shape, n_kv_heads: int, args: KernelArgs) -> ForwardOutputs:
    """Empty outputs of the forward's shapes and dtypes, for the fake implementations."""
    B, Tq, H, D = q_shape
    f32 = torch.float32
    return ForwardOutputs(
        out=like.new_empty((B, Tq, H, D)),
        lse=like.new_empty((B, H, Tq), dtype=f32),
        k_norm_max=like.new_empty((B, n_kv_heads) if args.skip else (0,), dtype=f32),
        col_bound=like.new_empty((B, H) if args.skip else (0,), dtype=f32),
    )


# ---- q, k, v ---------------------------------------------------------------------------------


@torch.library.custom_op("mpt::flash_alibi_fwd", mutates_args=())
def _fwd_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    slopes: Tensor,
    softmax_scale: float,
    q_seq_id: Tensor | None,
    k_seq_id: Tensor | None,
    skip_bits: float,
    first_key: Tensor | None,
    last_row: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    args = KernelArgs(slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits, first_key, last_row)
    return tuple(_forward_impl(q, k, v, args))


@_fwd_op.register_fake
def _(q, k, v, *flat):
    return tuple(_empty_forward(q, q.shape, k.shape[2], KernelArgs(*flat)))


@torch.library.custom_op("mpt::flash_alibi_bwd", mutates_args=())
def _bwd_op(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    k_norm_max: Tensor,
    col_bound: Tensor,
    slopes: Tensor,
    softmax_scale: float,
    q_seq_id: Tensor | None,
    k_seq_id: Tensor | None,
    skip_bits: float,
    first_key: Tensor | None,
    last_row: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    fwd = ForwardOutputs(out, lse, k_norm_max, col_bound)
    args = KernelArgs(slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits, first_key, last_row)
    return _backward_impl(dout, q, k, v, fwd, args)


@_bwd_op.register_fake
def _(dout, q, k, v, *saved_and_flat):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, *flat = inputs
    _save_for_backward(ctx, (q, k, v, *output), KernelArgs(*flat))
    ctx.mark_non_differentiable(*output[1:])  # lse, k_norm_max, col_bound


def _backward(ctx, dout, *_):
    (q, k, v, *outputs), args = _saved(ctx)
    fwd = ForwardOutputs(*outputs)
    if dout is None:
        dout = torch.zeros_like(fwd.out)
    dq, dk, dv = torch.ops.mpt.flash_alibi_bwd(dout, q, k, v, *fwd, *args.flat())
    return dq, dk, dv, *_NO_GRADS


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ---- the fused projection's qkv --------------------------------------------------------------


@torch.library.custom_op("mpt::flash_alibi_packed_fwd", mutates_args=())
def _packed_fwd_op(
    qkv: Tensor,
    n_heads: int,
    n_kv_heads: int,
    slopes: Tensor,
    softmax_scale: float,
    q_seq_id: Tensor | None,
    k_seq_id: Tensor | None,
    skip_bits: float,
    first_key: Tensor | None,
    last_row: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    q, k, v = _split_qkv(qkv, n_heads, n_kv_heads)
    args = KernelArgs(slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits, first_key, last_row)
    return tuple(_forward_impl(q, k, v, args))


@_packed_fwd_op.register_fake
def _(qkv, n_heads, n_kv_heads, *flat):
    B, T, width = qkv.shape
    q_shape = (B, T, n_heads, width // (n_heads + 2 * n_kv_heads))
    return tuple(_empty_forward(qkv, q_shape, n_kv_heads, KernelArgs(*flat)))


@torch.library.custom_op("mpt::flash_alibi_packed_bwd", mutates_args=())
def _packed_bwd_op(
    dout: Tensor,
    qkv: Tensor,
    out: Tensor,
    lse: Tensor,
    k_norm_max: Tensor,
    col_bound: Tensor,
    n_heads: int,
    n_kv_heads: int,
    slopes: Tensor,
    softmax_scale: float,
    q_seq_id: Tensor | None,
    k_seq_id: Tensor | None,
    skip_bits: float,
    first_key: Tensor | None,
    last_row: Tensor | None,
) -> Tensor:
    fwd = ForwardOutputs(out, lse, k_norm_max, col_bound)
    args = KernelArgs(slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits, first_key, last_row)
    return _packed_backward_impl(dout, qkv, fwd, (n_heads, n_kv_heads), args)


@_packed_bwd_op.register_fake
def _(dout, qkv, *saved_and_flat):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _packed_setup_context(ctx, inputs, output):
    qkv, n_heads, n_kv_heads, *flat = inputs
    _save_for_backward(ctx, (qkv, *output), KernelArgs(*flat))
    ctx.heads = (n_heads, n_kv_heads)
    ctx.mark_non_differentiable(*output[1:])  # lse, k_norm_max, col_bound


def _packed_backward(ctx, dout, *_):
    (qkv, *outputs), args = _saved(ctx)
    fwd = ForwardOutputs(*outputs)
    if dout is None:
        dout = torch.zeros_like(fwd.out)
    dqkv = torch.ops.mpt.flash_alibi_packed_bwd(dout, qkv, *fwd, *ctx.heads, *args.flat())
    return dqkv, None, None, *_NO_GRADS


_packed_fwd_op.register_autograd(_packed_backward, setup_context=_packed_setup_context)


# ---- decode ----------------------------------------------------------------------------------


@torch.library.custom_op("mpt::flash_alibi_decode", mutates_args=())
def _decode_op(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    k_norm_max: Tensor | None,
    slopes: Tensor,
    softmax_scale: float,
    q_seq_id: Tensor | None,
    k_seq_id: Tensor | None,
    skip_bits: float,
    first_key: Tensor | None,
    last_row: Tensor | None,
) -> Tensor:
    args = KernelArgs(slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits, first_key, last_row)
    return _decode_impl(q, k_cache, v_cache, args, k_norm_max)


@_decode_op.register_fake
def _(q, *rest):
    return q.new_empty(q.shape)
