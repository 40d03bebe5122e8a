"""Causal ALiBi FlashAttention in Triton: the public API and its input checks.

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

The functions check their inputs and gather what every op takes beside the tensors into a
`KernelArgs`. Under torch.compile they call the custom ops of `_ops.py` ("mpt::flash_alibi_fwd",
"_bwd", "_packed_fwd", "_packed_bwd", "_decode"), so that torch.compile sees each as one opaque op
and does not break the graph; in eager mode they run the same launchers through plain
autograd.Functions (`_autograd.py`), which cost the host far less per call (`_eager`); an eager
call that autograd does not record (inference) runs the forward launcher alone and never starts
the autotuner (`_records_grad`). Triton is imported only when a kernel runs: `import mpt.kernels`
works without it.

Knobs for timing variants: `set_autotune()`, `set_kernel_config()`, `reset_kernel_configs()`,
and `autotuned_configs()` to record what the autotuner chose (launch configs live in
`_configs.py`; the launchers that allocate outputs and run the kernels in `_launch.py`).
"""

import functools
import math

import torch
from torch import Tensor

from . import _ops  # noqa: F401  (registers the custom ops under torch.ops.mpt)
from ._autograd import PackedAttention, QKVAttention
from ._configs import (
    _interpret,
    autotuned_configs,
    reset_kernel_configs,
    set_autotune,
    set_kernel_config,
)
from ._launch import KernelArgs, _decode_impl, _doc_bounds, _forward_impl, _split_qkv

__all__ = [
    "SUPPORTED_HEAD_DIMS",
    "autotuned_configs",
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
_QKV = ("q", "k", "v")


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


def _records_grad(*tensors: Tensor) -> bool:
    """Whether autograd records this call (training); otherwise it is inference, which runs the
    forward alone, outside any autograd.Function, and never starts the autotuner."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _eager(t: Tensor) -> bool:
    """Whether a call runs the launchers without the custom ops: outside torch.compile, on a plain
    tensor with storage. Fake, meta and subclassed tensors take the custom ops, whose fake
    implementations serve them."""
    return not torch.compiler.is_compiling() and type(t) is Tensor and t.device.type != "meta"


# ---- input checks ----------------------------------------------------------------------------


def _check_qkv(fn: str, names: tuple[str, str, str], q, k, v) -> None:
    """Raise unless q, k, v are tensors the kernels take (`names`: theirs in the caller's API)."""
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


def _kernel_args(
    fn: str,
    q: Tensor,
    k: Tensor,
    slopes,
    *,
    softmax_scale,
    q_seq_id,
    k_seq_id,
    skip_bits,
    doc_bounds=None,
) -> KernelArgs:
    """Check what the ops take beside q, k, v (after `_check_qkv`); return it as they take it:
    slopes fp32, the default softmax scale filled in, skip_bits a number."""
    B, Tq, H, D = q.shape
    Tk = k.shape[1]
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
        skip_bits = 25.0 + math.ceil(math.log2(max(Tk, 1)))
    elif isinstance(skip_bits, str):
        raise ValueError(f"{fn}: skip_bits must be None, a number or 'rounding', got {skip_bits!r}")
    else:
        skip_bits = 0.0 if skip_bits is None else float(skip_bits)
        if not (skip_bits >= 0.0 and math.isfinite(skip_bits)):
            raise ValueError(
                f"{fn}: skip_bits must be None or a finite number >= 0, got {skip_bits}"
            )
    first_key, last_row = _given_bounds(fn, doc_bounds, q_seq_id, k_seq_id)
    slopes = slopes.to(torch.float32).contiguous()
    return KernelArgs(slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits, first_key, last_row)


def _given_bounds(fn, doc_bounds, q_seq_id, k_seq_id):
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


# ---- the public API --------------------------------------------------------------------------


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


def flash_alibi_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    slopes: Tensor,
    *,
    softmax_scale: float | None = None,
    q_seq_id: Tensor | None = None,
    k_seq_id: Tensor | None = None,
    skip_bits: float | str | None = 150.0,
    doc_bounds: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Causal ALiBi attention (B, Tq, H, D) -> (B, Tq, H, D), differentiable wrt q, k and v.
    `doc_bounds`: `document_bounds(q_seq_id, k_seq_id)`, computed once for many calls."""
    fn = "flash_alibi_attention"
    _check_qkv(fn, _QKV, q, k, v)
    args = _kernel_args(
        fn,
        q,
        k,
        slopes,
        softmax_scale=softmax_scale,
        q_seq_id=q_seq_id,
        k_seq_id=k_seq_id,
        skip_bits=skip_bits,
        doc_bounds=doc_bounds,
    )
    if _eager(q):
        if not _records_grad(q, k, v):
            return _forward_impl(q, k, v, args, tune=False).out
        return QKVAttention.apply(q, k, v, args)
    out, _, _, _ = torch.ops.mpt.flash_alibi_fwd(q, k, v, *args.flat())
    return out


def flash_alibi_attention_packed(
    qkv: Tensor,
    slopes: Tensor,
    n_heads: int,
    n_kv_heads: int | None = None,
    *,
    softmax_scale: float | None = None,
    q_seq_id: Tensor | None = None,
    k_seq_id: Tensor | None = None,
    skip_bits: float | str | None = 150.0,
    doc_bounds: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """`flash_alibi_attention` on a fused projection's output, differentiable wrt `qkv`.

    qkv (B, T, (H + 2 * Hkv) * D): the queries' H heads, then the keys' and the values' Hkv heads
    (MPT's Wqkv layout); n_kv_heads defaults to n_heads. Returns (B, T, H, D). The gradient comes
    back as one (B, T, (H + 2 * Hkv) * D) tensor that the kernels write directly.
    """
    fn = "flash_alibi_attention_packed"
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    if not isinstance(qkv, Tensor) or qkv.dim() != 3:
        got = tuple(qkv.shape) if isinstance(qkv, Tensor) else type(qkv).__name__
        raise ValueError(f"{fn}: qkv must be (B, T, (H + 2 * Hkv) * D), got {got}")
    if n_heads < 1 or n_kv_heads < 1 or qkv.shape[-1] % (n_heads + 2 * n_kv_heads):
        raise ValueError(
            f"{fn}: qkv's last dim {qkv.shape[-1]} is not a multiple of "
            f"n_heads + 2 * n_kv_heads = {n_heads} + 2 * {n_kv_heads}"
        )
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    q, k, v = _split_qkv(qkv, n_heads, n_kv_heads)
    _check_qkv(fn, _QKV, q, k, v)
    args = _kernel_args(
        fn,
        q,
        k,
        slopes,
        softmax_scale=softmax_scale,
        q_seq_id=q_seq_id,
        k_seq_id=k_seq_id,
        skip_bits=skip_bits,
        doc_bounds=doc_bounds,
    )
    if _eager(qkv):
        if not _records_grad(qkv):
            return _forward_impl(q, k, v, args, tune=False).out
        return PackedAttention.apply(qkv, (n_heads, n_kv_heads), args)
    out, _, _, _ = torch.ops.mpt.flash_alibi_packed_fwd(qkv, n_heads, n_kv_heads, *args.flat())
    return out


def flash_alibi_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    slopes: Tensor,
    *,
    softmax_scale: float | None = None,
    q_seq_id: Tensor | None = None,
    k_seq_id: Tensor | None = None,
    skip_bits: float | str | None = 150.0,
) -> tuple[Tensor, Tensor]:
    """(out, lse) without autograd; lse (B, H, Tq) fp32 natural-log log-sum-exp, -inf if no key."""
    fn = "flash_alibi_forward"
    _check_qkv(fn, _QKV, q, k, v)
    args = _kernel_args(
        fn,
        q,
        k,
        slopes,
        softmax_scale=softmax_scale,
        q_seq_id=q_seq_id,
        k_seq_id=k_seq_id,
        skip_bits=skip_bits,
    )
    with torch.no_grad():
        if _eager(q):
            out, lse, _, _ = _forward_impl(q, k, v, args, tune=False)
        else:
            out, lse, _, _ = torch.ops.mpt.flash_alibi_fwd(q, k, v, *args.flat())
    return out, lse


def flash_alibi_decode(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    slopes: Tensor,
    *,
    softmax_scale: float | None = None,
    k_seq_id: Tensor | None = None,
    q_seq_id: Tensor | None = None,
    skip_bits: float | str | None = 150.0,
    k_norm_max: Tensor | None = None,
) -> Tensor:
    """Inference attention of a few new tokens q (B, Tq, H, D) against a KV cache (B, Tk, Hkv, D).

    The cache holds the new tokens' keys too (its last Tq positions). Split-KV: the keys are
    divided among programs and the partial results merged. `k_seq_id` alone is enough (left
    padding as id -1 for pad keys); `q_seq_id` then defaults to the ids of the last Tq keys.
    The ALiBi skip needs an upper bound on ||k|| over the cache per (batch, kv head): pass it as
    `k_norm_max` (B, Hkv) fp32 (a KV cache can keep a running max as keys arrive) or it is found
    with one extra pass over K. skip_bits=None turns the skip off.
    """
    fn = "flash_alibi_decode"
    if q_seq_id is None and isinstance(k_seq_id, Tensor) and isinstance(q, Tensor):
        if k_seq_id.dim() == 2 and q.dim() == 4 and q.shape[1] <= k_seq_id.shape[1]:
            q_seq_id = k_seq_id[:, k_seq_id.shape[1] - q.shape[1] :]
    if q_seq_id is not None and k_seq_id is None:
        raise ValueError(f"{fn}: q_seq_id needs k_seq_id")
    _check_qkv(fn, ("q", "k_cache", "v_cache"), q, k_cache, v_cache)
    args = _kernel_args(
        fn,
        q,
        k_cache,
        slopes,
        softmax_scale=softmax_scale,
        q_seq_id=q_seq_id,
        k_seq_id=k_seq_id,
        skip_bits=skip_bits,
    )
    if k_norm_max is not None:
        expected = (k_cache.shape[0], k_cache.shape[2])
        if not isinstance(k_norm_max, Tensor) or tuple(k_norm_max.shape) != expected:
            got = tuple(k_norm_max.shape) if isinstance(k_norm_max, Tensor) else type(k_norm_max)
            raise ValueError(f"{fn}: k_norm_max must be (B, Hkv) = {expected}, got {got}")
        k_norm_max = k_norm_max.to(k_cache.device, torch.float32).contiguous()
    with torch.no_grad():
        if _eager(q):
            return _decode_impl(q, k_cache, v_cache, args, k_norm_max)
        return torch.ops.mpt.flash_alibi_decode(q, k_cache, v_cache, k_norm_max, *args.flat())
