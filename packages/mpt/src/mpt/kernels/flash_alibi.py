"""Causal ALiBi FlashAttention in Triton: the public API, input checks and custom ops.

Semantics (what the model and the other attention backends rely on):

* q (B, Tq, H, D); k, v (B, Tk, Hkv, D), H % Hkv == 0 (grouped-query; Hkv == 1 multi-query);
  any strides with a contiguous last dim (views of a fused qkv projection are used as they are).
* Tq <= Tk and query row i sits at position pos_i = i + (Tk - Tq) (bottom-right, as when
  continuing from a KV cache). Key j is visible to row i iff j <= pos_i and, when sequence ids
  are given, q_seq_id[b, i] == k_seq_id[b, j]. A row with no visible key gives 0 and lse -inf.
* score_ij = softmax_scale * q_i . k_j - slopes[h] * (pos_i - j); softmax_scale defaults to
  1/sqrt(D); out has q's dtype and shape; lse (B, H, Tq) fp32 is the natural-log log-sum-exp.
* skip_bits: key blocks whose softmax weight provably stays below 2^-skip_bits are skipped (see
  `_fwd.py`); with the default 150 the skipped weights are exactly 0 in fp32, so only the
  accumulation order changes. None or 0 turns skipping off (the kernels then do no extra work).
  "rounding" uses 25 + ceil(log2(Tk)) bits: all skipped weights of a row together stay below
  Tk * 2^-bits <= 2^-25 of its largest one (and of the row sum, which is >= it), under half an
  fp32 ulp of that sum, so the output changes by less than fp32 rounding does; far more blocks are
  skipped than at 150 (at Tk = 2048: 36 bits).

The forward and backward are the custom ops "mpt::flash_alibi_fwd" and "mpt::flash_alibi_bwd"
(with fake implementations and autograd attached; "mpt::flash_alibi_packed_fwd" / "_bwd" take
and give a fused (B, T, (H + 2 Hkv) D) qkv), and the decode path is
"mpt::flash_alibi_decode", so torch.compile sees each as one opaque op and does not break the
graph. Triton is imported only when a kernel runs: `import mpt.kernels` works without it.

Knobs for timing variants: `set_autotune()` and `set_kernel_config()` (launch configs live in
`_configs.py`; the launchers that allocate outputs and run the kernels in `_launch.py`).
"""

import functools
import math

import torch
from torch import Tensor

from ._configs import _interpret, reset_kernel_configs, set_autotune, set_kernel_config
from ._launch import _backward_impl, _decode_impl, _doc_bounds, _forward_impl

__all__ = [
    "SUPPORTED_HEAD_DIMS",
    "document_bounds",
    "flash_alibi_attention",
    "flash_alibi_attention_packed",
    "flash_alibi_decode",
    "flash_alibi_forward",
    "kernels_available",
    "reset_kernel_configs",
    "set_autotune",
    "set_kernel_config",
    "supported_head_dim",
]

SUPPORTED_HEAD_DIMS: tuple[int, ...] = (16, 32, 64, 96, 112, 128)
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def supported_head_dim(d: int) -> bool:
    """Whether the kernels serve head dim `d` (padded inside to the next power of two)."""
    return d in SUPPORTED_HEAD_DIMS


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def kernels_available() -> bool:
    """Triton importable and something to run on: CUDA, or the CPU interpreter (TRITON_INTERPRET=1)."""
    return _triton_importable() and (torch.cuda.is_available() or _interpret())


# ---- custom ops: one opaque node each for torch.compile --------------------------------------


@torch.library.custom_op("mpt::flash_alibi_fwd", mutates_args=())
def _fwd_op(
    q: Tensor, k: Tensor, v: Tensor, slopes: Tensor, softmax_scale: float,
    q_seq_id: Tensor | None, k_seq_id: Tensor | None, skip_bits: float,
    first_key: Tensor | None, last_row: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    return _forward_impl(
        q, k, v, slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits, first_key=first_key
    )


def _fake_forward_outputs(like: Tensor, B: int, Tq: int, H: int, Hkv: int, D: int, skip_bits):
    """Empty (out, lse, kmax, col_bound) of the forward's shapes, for the ops' fake kernels."""
    skip = skip_bits > 0
    f32 = torch.float32
    return (
        like.new_empty((B, Tq, H, D)),
        like.new_empty((B, H, Tq), dtype=f32),
        like.new_empty((B, Hkv) if skip else (0,), dtype=f32),
        like.new_empty((B, H) if skip else (0,), dtype=f32),
    )


@_fwd_op.register_fake
def _(q, k, v, slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits, first_key, last_row):
    B, Tq, H, D = q.shape
    return _fake_forward_outputs(q, B, Tq, H, k.shape[2], D, skip_bits)


@torch.library.custom_op("mpt::flash_alibi_bwd", mutates_args=())
def _bwd_op(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, slopes: Tensor, out: Tensor, lse: Tensor,
    kmax: Tensor, col_bound: Tensor, softmax_scale: float, q_seq_id: Tensor | None,
    k_seq_id: Tensor | None, skip_bits: float, first_key: Tensor | None, last_row: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    return _backward_impl(
        dout, q, k, v, slopes, out, lse, kmax, col_bound, softmax_scale, q_seq_id, k_seq_id,
        skip_bits, bounds=_given_bounds(first_key, last_row),
    )  # fmt: skip


@_bwd_op.register_fake
def _(
    dout, q, k, v, slopes, out, lse, kmax, col_bound, softmax_scale, q_seq_id, k_seq_id, skip_bits,
    first_key, last_row,
):  # fmt: skip
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _given_bounds(first_key: Tensor | None, last_row: Tensor | None):
    return None if first_key is None else (first_key, last_row)


def _setup_context(ctx, inputs, output):
    q, k, v, slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits, first_key, last_row = inputs
    out, lse, kmax, col_bound = output
    ctx.save_for_backward(
        q, k, v, slopes, out, lse, kmax, col_bound, q_seq_id, k_seq_id, first_key, last_row
    )
    ctx.softmax_scale = softmax_scale
    ctx.skip_bits = skip_bits
    ctx.mark_non_differentiable(lse, kmax, col_bound)


def _backward(ctx, dout, *_):
    q, k, v, slopes, out, lse, kmax, col_bound, q_seq_id, k_seq_id, fk, lr = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = torch.ops.mpt.flash_alibi_bwd(
        dout, q, k, v, slopes, out, lse, kmax, col_bound, ctx.softmax_scale, q_seq_id, k_seq_id,
        ctx.skip_bits, fk, lr,
    )  # fmt: skip
    return dq, dk, dv, None, None, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# The packed form takes the fused projection's output qkv (B, T, (H + 2 * Hkv) * D) and returns
# the gradient as one such tensor, written in place by the kernels: with separate q, k, v the
# backward of the split would copy dq, dk and dv into it (a full read and write of qkv per layer).


def _split_qkv(qkv: Tensor, n_heads: int, n_kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    B, T, width = qkv.shape
    D = width // (n_heads + 2 * n_kv_heads)
    q, k, v = qkv.split([n_heads * D, n_kv_heads * D, n_kv_heads * D], dim=-1)
    return (
        q.view(B, T, n_heads, D),
        k.view(B, T, n_kv_heads, D),
        v.view(B, T, n_kv_heads, D),
    )


@torch.library.custom_op("mpt::flash_alibi_packed_fwd", mutates_args=())
def _packed_fwd_op(
    qkv: Tensor, slopes: Tensor, softmax_scale: float, n_heads: int, n_kv_heads: int,
    q_seq_id: Tensor | None, k_seq_id: Tensor | None, skip_bits: float,
    first_key: Tensor | None, last_row: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    q, k, v = _split_qkv(qkv, n_heads, n_kv_heads)
    return _forward_impl(
        q, k, v, slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits, first_key=first_key
    )


@_packed_fwd_op.register_fake
def _(
    qkv, slopes, softmax_scale, n_heads, n_kv_heads, q_seq_id, k_seq_id, skip_bits, first_key,
    last_row,
):  # fmt: skip
    B, T, width = qkv.shape
    D = width // (n_heads + 2 * n_kv_heads)
    return _fake_forward_outputs(qkv, B, T, n_heads, n_kv_heads, D, skip_bits)


@torch.library.custom_op("mpt::flash_alibi_packed_bwd", mutates_args=())
def _packed_bwd_op(
    dout: Tensor, qkv: Tensor, slopes: Tensor, out: Tensor, lse: Tensor, kmax: Tensor,
    col_bound: Tensor, softmax_scale: float, n_heads: int, n_kv_heads: int,
    q_seq_id: Tensor | None, k_seq_id: Tensor | None, skip_bits: float,
    first_key: Tensor | None, last_row: Tensor | None,
) -> Tensor:  # fmt: skip
    dqkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
    q, k, v = _split_qkv(qkv, n_heads, n_kv_heads)
    _backward_impl(
        dout, q, k, v, slopes, out, lse, kmax, col_bound, softmax_scale, q_seq_id, k_seq_id,
        skip_bits, grads=_split_qkv(dqkv, n_heads, n_kv_heads),
        bounds=_given_bounds(first_key, last_row),
    )  # fmt: skip
    return dqkv


@_packed_bwd_op.register_fake
def _(dout, qkv, slopes, out, lse, kmax, col_bound, softmax_scale, n_heads, n_kv_heads,
      q_seq_id, k_seq_id, skip_bits, first_key, last_row):  # fmt: skip
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _packed_setup_context(ctx, inputs, output):
    qkv, slopes, softmax_scale, n_heads, n_kv_heads, q_seq_id, k_seq_id, skip_bits, fk, lr = inputs
    out, lse, kmax, col_bound = output
    ctx.save_for_backward(qkv, slopes, out, lse, kmax, col_bound, q_seq_id, k_seq_id, fk, lr)
    ctx.args = (softmax_scale, n_heads, n_kv_heads, skip_bits)
    ctx.mark_non_differentiable(lse, kmax, col_bound)


def _packed_backward(ctx, dout, *_):
    qkv, slopes, out, lse, kmax, col_bound, q_seq_id, k_seq_id, fk, lr = ctx.saved_tensors
    softmax_scale, n_heads, n_kv_heads, skip_bits = ctx.args
    if dout is None:
        dout = torch.zeros_like(out)
    dqkv = torch.ops.mpt.flash_alibi_packed_bwd(
        dout, qkv, slopes, out, lse, kmax, col_bound, softmax_scale, n_heads, n_kv_heads,
        q_seq_id, k_seq_id, skip_bits, fk, lr,
    )  # fmt: skip
    return dqkv, None, None, None, None, None, None, None, None, None


_packed_fwd_op.register_autograd(_packed_backward, setup_context=_packed_setup_context)


@torch.library.custom_op("mpt::flash_alibi_decode", mutates_args=())
def _decode_op(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, slopes: Tensor, softmax_scale: float,
    q_seq_id: Tensor | None, k_seq_id: Tensor | None, skip_bits: float,
    k_norm_max: Tensor | None,
) -> Tensor:  # fmt: skip
    return _decode_impl(
        q, k_cache, v_cache, slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits, k_norm_max
    )


@_decode_op.register_fake
def _(q, k_cache, v_cache, slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits, k_norm_max):
    return q.new_empty(q.shape)


# ---- input checks and the public API ---------------------------------------------------------


def _check(fn, names, q, k, v, slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits):
    """Validate; return (slopes fp32, softmax_scale, skip_bits) as the ops take them."""
    for name, t in zip(names, (q, k, v), strict=True):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{fn}: {name} must be 4-D (B, T, H, D), got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{fn}: {name} must be bfloat16, float16 or float32, got {t.dtype}")
    qn, kn, vn = names
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(
            f"{fn}: {qn}, {kn} and {vn} must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if k.device != q.device or v.device != q.device:
        raise ValueError(
            f"{fn}: {qn}, {kn} and {vn} must be on one device, got {q.device}, {k.device}, {v.device}"
        )
    B, Tq, H, D = q.shape
    if k.shape != v.shape:
        raise ValueError(
            f"{fn}: {kn} and {vn} must have the same shape (B, Tk, Hkv, D), "
            f"got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    _, Tk, Hkv, _ = k.shape
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(
            f"{fn}: {kn} must have the batch size and head dim of {qn} (B={B}, D={D}), "
            f"got shape {tuple(k.shape)}"
        )
    if not supported_head_dim(D):
        raise ValueError(
            f"{fn}: head dim D={D} is not supported; supported head dims: {SUPPORTED_HEAD_DIMS}"
        )
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(
            f"{fn}: the {H} query heads must be a multiple of the {Hkv} key/value heads "
            f"({qn} has H={H}, {kn} has Hkv={Hkv})"
        )
    if Tq > Tk:
        raise ValueError(
            f"{fn}: {qn} has Tq={Tq} tokens but {kn} only Tk={Tk}; need Tq <= Tk "
            f"(the queries are the last Tq positions)"
        )
    for name, t in ((qn, q), (kn, k), (vn, v)):  # the kernels index within a batch in int32
        span = sum((n - 1) * abs(s) for n, s in zip(t.shape[1:], t.stride()[1:], strict=True))
        if span >= 2**31:
            raise ValueError(
                f"{fn}: {name} spans {span} elements per batch entry; at most 2**31 - 1"
            )
    if not isinstance(slopes, Tensor):
        raise TypeError(
            f"{fn}: slopes must be a torch.Tensor of shape (H,), got {type(slopes).__name__}"
        )
    if not slopes.is_floating_point():
        raise TypeError(f"{fn}: slopes must be a floating tensor (fp32), got {slopes.dtype}")
    if tuple(slopes.shape) != (H,):
        raise ValueError(f"{fn}: slopes must have shape (H,) = ({H},), got {tuple(slopes.shape)}")
    if slopes.device != q.device:
        raise ValueError(f"{fn}: slopes must be on {q.device}, got {slopes.device}")
    for name, ids, T in (("q_seq_id", q_seq_id, Tq), ("k_seq_id", k_seq_id, Tk)):
        if ids is None:
            continue
        if not isinstance(ids, Tensor):
            raise TypeError(
                f"{fn}: {name} must be a torch.Tensor or None, got {type(ids).__name__}"
            )
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"{fn}: {name} must be an integer tensor, got {ids.dtype}")
        if tuple(ids.shape) != (B, T):
            raise ValueError(f"{fn}: {name} must have shape {(B, T)}, got {tuple(ids.shape)}")
        if ids.device != q.device:
            raise ValueError(f"{fn}: {name} must be on {q.device}, got {ids.device}")
    if (q_seq_id is None) != (k_seq_id is None):
        raise ValueError(f"{fn}: pass both q_seq_id and k_seq_id, or neither")
    # Under torch.compile a recompile can make shapes symbolic (dynamic): the values derived from
    # them stay symbolic (no Python-only math on them), the checks apply to what the caller gave.
    if softmax_scale is None:
        softmax_scale = D**-0.5
    else:
        softmax_scale = float(softmax_scale)
        if not math.isfinite(softmax_scale):
            raise ValueError(f"{fn}: softmax_scale must be finite, got {softmax_scale}")
    if skip_bits == "rounding":  # derived from the key count: valid by construction
        skip_bits = 25.0 + math.ceil(math.log2(max(k.shape[1], 1)))
    elif isinstance(skip_bits, str):
        raise ValueError(f"{fn}: skip_bits must be None, a number or 'rounding', got {skip_bits!r}")
    else:
        skip_bits = 0.0 if skip_bits is None else float(skip_bits)
        if not (skip_bits >= 0.0 and math.isfinite(skip_bits)):
            raise ValueError(
                f"{fn}: skip_bits must be None or a finite number >= 0, got {skip_bits}"
            )
    return slopes.to(torch.float32).contiguous(), softmax_scale, skip_bits


_QKV = ("q", "k", "v")


def document_bounds(q_seq_id: Tensor, k_seq_id: Tensor) -> tuple[Tensor, Tensor]:
    """(first_key (B, Tq), last_row (B, Tk)) int32: where each query row's visible keys start and
    the last row that sees each key, for packed documents. The kernels find these themselves; a
    model whose layers share one `sequence_id` computes them once per forward and passes them as
    `doc_bounds=` to every layer (a sort and a search over (B, T) saved per layer and pass)."""
    for name, ids in (("q_seq_id", q_seq_id), ("k_seq_id", k_seq_id)):
        if not isinstance(ids, Tensor) or ids.dim() != 2:
            raise ValueError(f"document_bounds: {name} must be a (B, T) tensor")
    if q_seq_id.shape[0] != k_seq_id.shape[0] or q_seq_id.shape[1] > k_seq_id.shape[1]:
        raise ValueError(
            f"document_bounds: q_seq_id {tuple(q_seq_id.shape)} and k_seq_id "
            f"{tuple(k_seq_id.shape)} need one batch size and Tq <= Tk"
        )
    return _doc_bounds(q_seq_id, k_seq_id)


def _bounds(fn, doc_bounds, q_seq_id, k_seq_id):
    """The (first_key, last_row) to pass to the ops: given ones checked, else (None, None)."""
    if doc_bounds is None:
        return None, None
    if q_seq_id is None:
        raise ValueError(f"{fn}: doc_bounds needs q_seq_id and k_seq_id")
    first_key, last_row = doc_bounds
    expected = ((tuple(q_seq_id.shape), first_key), (tuple(k_seq_id.shape), last_row))
    for shape, t in expected:
        if not isinstance(t, Tensor) or tuple(t.shape) != shape or t.dtype != torch.int32:
            got = (tuple(t.shape), t.dtype) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"{fn}: doc_bounds must be document_bounds(q_seq_id, k_seq_id): int32 tensors "
                f"of shapes {expected[0][0]} and {expected[1][0]}, got {got}"
            )
    return first_key.contiguous(), last_row.contiguous()


def flash_alibi_attention(
    q: Tensor, k: Tensor, v: Tensor, slopes: Tensor, *, softmax_scale: float | None = None,
    q_seq_id: Tensor | None = None, k_seq_id: Tensor | None = None,
    skip_bits: float | str | None = 150.0, doc_bounds: tuple[Tensor, Tensor] | None = None,
) -> Tensor:  # fmt: skip
    """Causal ALiBi attention (B, Tq, H, D) -> (B, Tq, H, D), differentiable wrt q, k and v.
    `doc_bounds`: `document_bounds(q_seq_id, k_seq_id)`, computed once for many calls."""
    fn = "flash_alibi_attention"
    slopes, scale, skip = _check(
        fn, _QKV, q, k, v, slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits
    )
    fk, lr = _bounds(fn, doc_bounds, q_seq_id, k_seq_id)
    out, _, _, _ = torch.ops.mpt.flash_alibi_fwd(
        q, k, v, slopes, scale, q_seq_id, k_seq_id, skip, fk, lr
    )
    return out


def flash_alibi_attention_packed(
    qkv: Tensor, slopes: Tensor, n_heads: int, n_kv_heads: int | None = None, *,
    softmax_scale: float | None = None, q_seq_id: Tensor | None = None,
    k_seq_id: Tensor | None = None, skip_bits: float | str | None = 150.0,
    doc_bounds: tuple[Tensor, Tensor] | None = None,
) -> Tensor:  # fmt: skip
    """`flash_alibi_attention` on a fused projection's output, differentiable wrt `qkv`.

    qkv (B, T, (H + 2 * Hkv) * D): the queries' H heads, then the keys' and the values' Hkv heads
    (MPT's Wqkv layout); n_kv_heads defaults to n_heads. Returns (B, T, H, D). The gradient comes
    back as one (B, T, (H + 2 * Hkv) * D) tensor that the kernels write directly.
    """
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    if not isinstance(qkv, Tensor) or qkv.dim() != 3:
        got = tuple(qkv.shape) if isinstance(qkv, Tensor) else type(qkv).__name__
        raise ValueError(
            f"flash_alibi_attention_packed: qkv must be (B, T, (H + 2 * Hkv) * D), got {got}"
        )
    if n_heads < 1 or n_kv_heads < 1 or qkv.shape[-1] % (n_heads + 2 * n_kv_heads):
        raise ValueError(
            f"flash_alibi_attention_packed: qkv's last dim {qkv.shape[-1]} is not a multiple of "
            f"n_heads + 2 * n_kv_heads = {n_heads} + 2 * {n_kv_heads}"
        )
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    q, k, v = _split_qkv(qkv, n_heads, n_kv_heads)
    slopes, scale, skip = _check(
        "flash_alibi_attention_packed", _QKV, q, k, v, slopes, softmax_scale, q_seq_id, k_seq_id,
        skip_bits,
    )  # fmt: skip
    fk, lr = _bounds("flash_alibi_attention_packed", doc_bounds, q_seq_id, k_seq_id)
    out, _, _, _ = torch.ops.mpt.flash_alibi_packed_fwd(
        qkv, slopes, scale, n_heads, n_kv_heads, q_seq_id, k_seq_id, skip, fk, lr
    )
    return out


def flash_alibi_forward(
    q: Tensor, k: Tensor, v: Tensor, slopes: Tensor, *, softmax_scale: float | None = None,
    q_seq_id: Tensor | None = None, k_seq_id: Tensor | None = None,
    skip_bits: float | str | None = 150.0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(out, lse) without autograd; lse (B, H, Tq) fp32 natural-log log-sum-exp, -inf if no key."""
    slopes, scale, skip = _check(
        "flash_alibi_forward", _QKV, q, k, v, slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits
    )
    with torch.no_grad():
        out, lse, _, _ = torch.ops.mpt.flash_alibi_fwd(
            q, k, v, slopes, scale, q_seq_id, k_seq_id, skip, None, None
        )
    return out, lse


def flash_alibi_decode(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, slopes: Tensor, *,
    softmax_scale: float | None = None, k_seq_id: Tensor | None = None,
    q_seq_id: Tensor | None = None, skip_bits: float | str | None = 150.0,
    k_norm_max: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """Inference attention of a few new tokens q (B, Tq, H, D) against a KV cache (B, Tk, Hkv, D).

    The cache holds the new tokens' keys too (its last Tq positions). Split-KV: the keys are
    divided among programs and the partial results merged. `k_seq_id` alone is enough (left
    padding as id -1 for pad keys); `q_seq_id` then defaults to the ids of the last Tq keys.
    The ALiBi skip needs an upper bound on ||k|| over the cache per (batch, kv head): pass it as
    `k_norm_max` (B, Hkv) fp32 (a KV cache can keep a running max as keys arrive) or it is found
    with one extra pass over K. skip_bits=None turns the skip off.
    """
    if q_seq_id is None and isinstance(k_seq_id, Tensor) and isinstance(q, Tensor):
        if k_seq_id.dim() == 2 and q.dim() == 4 and q.shape[1] <= k_seq_id.shape[1]:
            q_seq_id = k_seq_id[:, k_seq_id.shape[1] - q.shape[1] :]
    if q_seq_id is not None and k_seq_id is None:
        raise ValueError("flash_alibi_decode: q_seq_id needs k_seq_id")
    slopes, scale, skip = _check(
        "flash_alibi_decode", ("q", "k_cache", "v_cache"), q, k_cache, v_cache, slopes,
        softmax_scale, q_seq_id, k_seq_id, skip_bits,
    )  # fmt: skip
    if k_norm_max is not None:
        expected = (k_cache.shape[0], k_cache.shape[2])
        if not isinstance(k_norm_max, Tensor) or tuple(k_norm_max.shape) != expected:
            got = tuple(k_norm_max.shape) if isinstance(k_norm_max, Tensor) else type(k_norm_max)
            raise ValueError(
                f"flash_alibi_decode: k_norm_max must be (B, Hkv) = {expected}, got {got}"
            )
        k_norm_max = k_norm_max.to(k_cache.device, torch.float32).contiguous()
    with torch.no_grad():
        return torch.ops.mpt.flash_alibi_decode(
            q, k_cache, v_cache, slopes, scale, q_seq_id, k_seq_id, skip, k_norm_max
        )
