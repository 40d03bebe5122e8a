"""Causal ALiBi FlashAttention in Triton: the public API, input checks, launch code and custom ops.

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

The forward and backward are the custom ops "mpt::flash_alibi_fwd" and "mpt::flash_alibi_bwd"
(with fake implementations and autograd attached), and the decode path is
"mpt::flash_alibi_decode", so torch.compile sees each as one opaque op and does not break the
graph. Triton is imported only when a kernel runs: `import mpt.kernels` works without it.

Knobs for timing variants: `set_autotune()` and `set_kernel_config()`.
"""

import functools
import math
import os

import torch
from torch import Tensor

__all__ = [
    "SUPPORTED_HEAD_DIMS",
    "flash_alibi_attention",
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
_KERNELS = ("fwd", "dkdv", "dq", "decode")

#: On the GPU, autotune block sizes per (head dim, bucketed lengths, group, masks, dtype).
#: False: use the forced config (`set_kernel_config`) or the per-head-dim default.
AUTOTUNE = os.environ.get("MPT_TRITON_AUTOTUNE", "1") != "0"  # set_autotune() changes it
_FORCED: dict[str, dict[str, int]] = {}
# Under TRITON_INTERPRET=1 one small config (autotuning there wastes minutes); 16 x 16 blocks
# make the multi-block paths run at tiny sequence lengths.
_INTERPRET_CONFIG = {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1}


def supported_head_dim(d: int) -> bool:
    """Whether the kernels serve head dim `d` (padded inside to the next power of two)."""
    return d in SUPPORTED_HEAD_DIMS


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


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


def _kernels():
    try:
        from . import _bwd, _decode, _fwd
    except ImportError as e:
        raise ImportError(
            "mpt.kernels needs Triton to run its attention kernels; install it with "
            "`pip install 'mpt[triton]'` or pick another attention implementation"
        ) from e
    return _fwd, _bwd, _decode


def set_autotune(enabled: bool) -> None:
    """Autotune on the GPU (the default), or use forced/default configs only (timing variants)."""
    global AUTOTUNE
    AUTOTUNE = bool(enabled)


def set_kernel_config(kernel: str, **config: int) -> None:
    """Force one launch config for `kernel` ("fwd", "dkdv", "dq" or "decode") instead of autotuning.

    Keys: block_m, block_n, num_warps, num_stages (decode also num_splits). For "dkdv", block_n is
    the key block of a program and block_m the query rows per step. Example:
    `set_kernel_config("fwd", block_m=128, block_n=64, num_warps=8, num_stages=3)`.
    """
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
    allowed = {"block_m", "block_n", "num_warps", "num_stages"} | (
        {"num_splits"} if kernel == "decode" else set()
    )
    bad = sorted(set(config) - allowed)
    if bad:
        raise ValueError(f"unknown config keys {bad} for {kernel!r}; allowed: {sorted(allowed)}")
    _FORCED[kernel] = dict(config)


def reset_kernel_configs() -> None:
    """Forget every forced config (back to autotuning on the GPU)."""
    _FORCED.clear()


def _default_config(kernel: str, block_d: int) -> dict[str, int]:
    """Configs the autotuner picked most often on an H200 (bf16, S = 2048 and 8192)."""
    small = block_d <= 64
    if kernel == "fwd":
        return {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3}
    if kernel == "dkdv":
        if small:
            return {"block_m": 32, "block_n": 128, "num_warps": 4, "num_stages": 3}
        return {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2}
    if kernel == "dq":
        if small:
            return {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3}
        return {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2}
    return {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2}


def _tune_space(kernel: str, block_d: int) -> list[tuple[int, int, int, int]]:
    """(block_m, block_n, num_warps, num_stages) candidates; pruned by head dim (registers)."""
    if kernel == "fwd":
        shapes = [(128, 64), (128, 128), (64, 64)] if block_d <= 64 else [(128, 64), (64, 64)]
        return [(m, n, w, s) for m, n in shapes for w in (4, 8) for s in (2, 3, 4)]
    if kernel == "dkdv":  # (query rows per step, keys per program)
        shapes = [(32, 128), (64, 128), (64, 64)] if block_d <= 64 else [(32, 64), (64, 64)]
        shapes += [(32, 128)] if block_d > 64 else []
        return [(m, n, w, s) for m, n in shapes for w in (4, 8) for s in (2, 3)]
    shapes = [(128, 64), (64, 64), (128, 32)] if block_d <= 64 else [(64, 64), (128, 32), (64, 32)]
    return [(m, n, w, s) for m, n in shapes for w in (4, 8) for s in (2, 3)]


@functools.cache
def _autotuned(kernel: str, block_d: int):
    import triton

    _fwd, _bwd, _ = _kernels()
    fn = {"fwd": _fwd.fwd_kernel, "dkdv": _bwd.dkdv_kernel, "dq": _bwd.dq_kernel}[kernel]
    configs = [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for m, n, w, s in _tune_space(kernel, block_d)
    ]
    key = ["HEAD_DIM", "TQ_BUCKET", "TK_BUCKET", "GROUP", "HAS_SEQ", "SKIP"]
    return triton.autotune(configs=configs, key=key)(fn)


def _fixed_config(kernel: str, block_d: int) -> dict[str, int] | None:
    """The config to launch with, or None to autotune."""
    if kernel in _FORCED:
        cfg = dict(_default_config(kernel, block_d))
        if _interpret():
            cfg.update(_INTERPRET_CONFIG)
        cfg.update(_FORCED[kernel])
        return cfg
    if _interpret():
        return dict(_INTERPRET_CONFIG)
    if not AUTOTUNE or kernel == "decode":
        return _default_config(kernel, block_d)
    return None


def _launch(kernel: str, fn, grid, args: tuple, consts: dict, block_d: int) -> dict[str, int]:
    """Launch `fn` with a fixed config, or its autotuned wrapper; `grid(block_m, block_n)`."""
    cfg = _fixed_config(kernel, block_d)
    if cfg is None:
        tuned = _autotuned(kernel, block_d)
        tuned[lambda meta: grid(meta["BLOCK_M"], meta["BLOCK_N"])](*args, **consts)
        return {}
    fn[grid(cfg["block_m"], cfg["block_n"])](
        *args, **consts, BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return cfg


def _block_d(d: int) -> int:
    return max(16, 1 << (d - 1).bit_length())


def _bucket(t: int) -> int:
    return max(16, 1 << (max(t, 1) - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _lastdim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _dot_prec(dtype: torch.dtype) -> str:
    # fp32 inputs (tests) want true fp32 products on the GPU, not TF32.
    return "ieee" if dtype == torch.float32 or _interpret() else "tf32"


def _check_device(t: Tensor) -> None:
    if t.device.type != "cuda" and not _interpret():
        raise ValueError(
            f"the Triton attention kernels run on CUDA tensors (or on CPU under TRITON_INTERPRET=1); "
            f"got tensors on {t.device}"
        )


def _seq_args(q_seq_id: Tensor | None, k_seq_id: Tensor | None, dummy: Tensor) -> tuple:
    if q_seq_id is None:
        return (dummy, dummy, 0, 0, 0, 0)
    return (q_seq_id, k_seq_id, *q_seq_id.stride(), *k_seq_id.stride())


def _key_norm_max(k: Tensor) -> Tensor:
    """(B, Hkv) fp32: max over keys of ||k_j||, one pass over K without an fp32 copy."""
    _fwd, _, _ = _kernels()
    B, Tk, Hkv, D = k.shape
    block_t = 16 if _interpret() else 64
    n_blk = _cdiv(Tk, block_t)
    part = torch.empty((B * Hkv, n_blk), device=k.device, dtype=torch.float32)
    _fwd.key_norm_max_kernel[(n_blk, B * Hkv)](
        k, part, *k.stride()[:3], Hkv, Tk, HEAD_DIM=D, BLOCK_D=_block_d(D), BLOCK_T=block_t
    )
    return part.amax(dim=1).view(B, Hkv)


def _forward_impl(q, k, v, slopes, scale, q_seq_id, k_seq_id, skip_bits, debug=None):
    """Returns (out, lse, kmax, col_bound); the last two are empty when skipping is off."""
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    dev = q.device
    out = torch.empty((B, Tq, H, D), device=dev, dtype=q.dtype)
    lse = torch.empty((B, H, Tq), device=dev, dtype=torch.float32)
    skip = skip_bits > 0
    f32_empty = torch.empty(0, device=dev, dtype=torch.float32)
    if B * H * Tq == 0:
        return out, lse, f32_empty, f32_empty.clone()
    _check_device(q)
    _fwd, _, _ = _kernels()
    q, k, v = _lastdim_contiguous(q), _lastdim_contiguous(k), _lastdim_contiguous(v)
    dummy_i = torch.zeros(1, device=dev, dtype=torch.int32)
    dummy_f = torch.zeros(1, device=dev, dtype=torch.float32)
    kmax = _key_norm_max(k) if skip else dummy_f
    row_bound = torch.empty((B, H, Tq), device=dev, dtype=torch.float32) if skip else dummy_f
    block_d = _block_d(D)
    store = debug is not None
    kv_start = dummy_i
    if store:
        cfg = _fixed_config("fwd", block_d)
        assert cfg is not None, "debug loop bounds need a fixed config (set_kernel_config)"
        kv_start = torch.full((B * H, _cdiv(Tq, cfg["block_m"])), -1, device=dev, dtype=torch.int32)
    args = (
        q, k, v, slopes, out, lse, *_seq_args(q_seq_id, k_seq_id, dummy_i)[:2], kmax, row_bound,
        kv_start, scale, skip_bits * math.log(2.0),
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        *_seq_args(q_seq_id, k_seq_id, dummy_i)[2:], H, Tq, Tk, _bucket(Tq), _bucket(Tk),
    )  # fmt: skip
    consts = {
        "GROUP": H // Hkv, "HEAD_DIM": D, "BLOCK_D": block_d, "HAS_SEQ": q_seq_id is not None,
        "SKIP": skip, "STORE_KV_START": store, "UPCAST": _interpret(), "DOT_PREC": _dot_prec(q.dtype),
    }  # fmt: skip
    _launch("fwd", _fwd.fwd_kernel, lambda bm, bn: (_cdiv(Tq, bm), B * H), args, consts, block_d)
    if store:
        debug["fwd_kv_start"] = kv_start
    if not skip:
        return out, lse, f32_empty, f32_empty.clone()
    return out, lse, kmax.contiguous(), row_bound.amax(dim=-1)


def _backward_impl(
    dout, q, k, v, slopes, out, lse, kmax, col_bound, scale, q_seq_id, k_seq_id, skip_bits,
    debug=None,
):  # fmt: skip
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    dev = q.device
    dq = torch.empty((B, Tq, H, D), device=dev, dtype=q.dtype)
    dk = torch.empty((B, Tk, Hkv, D), device=dev, dtype=k.dtype)  # every row is written
    dv = torch.empty((B, Tk, Hkv, D), device=dev, dtype=v.dtype)
    if B * H * Tq == 0:
        return dq, dk.zero_(), dv.zero_()
    _check_device(q)
    _, _bwd, _ = _kernels()
    q, k, v = _lastdim_contiguous(q), _lastdim_contiguous(k), _lastdim_contiguous(v)
    dout = _lastdim_contiguous(dout)
    skip = skip_bits > 0
    block_d = _block_d(D)
    upcast = _interpret()
    delta = torch.empty((B, H, Tq), device=dev, dtype=torch.float32)
    pre_m = 16 if upcast else 64
    _bwd.preprocess_kernel[(_cdiv(Tq, pre_m), B * H)](
        out, dout, delta, *out.stride()[:3], *dout.stride()[:3], H, Tq,
        HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=pre_m,
    )  # fmt: skip
    dummy_i = torch.zeros(1, device=dev, dtype=torch.int32)
    dummy_f = torch.zeros(1, device=dev, dtype=torch.float32)
    seq = _seq_args(q_seq_id, k_seq_id, dummy_i)
    store = debug is not None
    consts = {
        "GROUP": H // Hkv, "HEAD_DIM": D, "BLOCK_D": block_d, "HAS_SEQ": q_seq_id is not None,
        "SKIP": skip, "UPCAST": upcast, "DOT_PREC": _dot_prec(q.dtype),
    }  # fmt: skip
    skip_nats = skip_bits * math.log(2.0)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *dout.stride()[:3])
    tail = (H, Tq, Tk, _bucket(Tq), _bucket(Tk))

    q_end = dummy_i
    if store:
        cfg = _fixed_config("dkdv", block_d)
        assert cfg is not None, "debug loop bounds need a fixed config (set_kernel_config)"
        q_end = torch.full((B * H, _cdiv(Tk, cfg["block_n"])), -1, device=dev, dtype=torch.int32)
    _launch(
        "dkdv", _bwd.dkdv_kernel, lambda bm, bn: (_cdiv(Tk, bn), B * Hkv),
        (q, k, v, dout, slopes, lse, delta, *seq[:2], col_bound if skip else dummy_f, dk, dv,
         q_end, scale, skip_nats, *strides, *dk.stride()[:3], *seq[2:], *tail),
        {**consts, "STORE_Q_END": store}, block_d,
    )  # fmt: skip

    kv_start = dummy_i
    if store:
        cfg = _fixed_config("dq", block_d)
        assert cfg is not None, "debug loop bounds need a fixed config (set_kernel_config)"
        kv_start = torch.full((B * H, _cdiv(Tq, cfg["block_m"])), -1, device=dev, dtype=torch.int32)
    _launch(
        "dq", _bwd.dq_kernel, lambda bm, bn: (_cdiv(Tq, bm), B * H),
        (q, k, v, dout, slopes, lse, delta, *seq[:2], kmax if skip else dummy_f, dq, kv_start,
         scale, skip_nats, *strides, *dq.stride()[:3], *seq[2:], *tail),
        {**consts, "STORE_KV_START": store}, block_d,
    )  # fmt: skip
    if store:
        debug["dkdv_q_end"] = q_end
        debug["dq_kv_start"] = kv_start
    return dq, dk, dv


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _decode_impl(q, k, v, slopes, scale, q_seq_id, k_seq_id, skip_bits):
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    dev = q.device
    out = torch.empty((B, Tq, H, D), device=dev, dtype=q.dtype)
    if B * H * Tq == 0:
        return out
    _check_device(q)
    _fwd, _, _decode = _kernels()
    q, k, v = _lastdim_contiguous(q), _lastdim_contiguous(k), _lastdim_contiguous(v)
    group = H // Hkv
    block_d = _block_d(D)
    cfg = _fixed_config("decode", block_d)
    assert cfg is not None
    rows = group * Tq
    block_m = min(cfg["block_m"], _bucket(rows))  # >= 16 for tl.dot
    block_n = cfg["block_n"]
    n_rows = _cdiv(rows, block_m)
    n_blocks = _cdiv(Tk, block_n)
    splits = cfg.get("num_splits")
    if splits is None:  # about two programs per SM, at least one key block per split
        target = 2 * _sm_count(dev.index or 0) if dev.type == "cuda" else 4
        splits = _cdiv(target, B * Hkv * n_rows)
    splits = max(1, min(splits, n_blocks, 64))
    split_len = _cdiv(n_blocks, splits) * block_n
    n_split = _cdiv(Tk, split_len)
    skip = skip_bits > 0
    dummy_i = torch.zeros(1, device=dev, dtype=torch.int32)
    kmax = _key_norm_max(k) if skip else torch.zeros(1, device=dev, dtype=torch.float32)
    o_part = torch.empty((B, H, Tq, n_split, D), device=dev, dtype=torch.float32)
    lse_part = torch.empty((B, H, Tq, n_split), device=dev, dtype=torch.float32)
    seq = _seq_args(q_seq_id, k_seq_id, dummy_i)
    _decode.split_kernel[(n_split, B * Hkv, n_rows)](
        q, k, v, slopes, *seq[:2], kmax, o_part, lse_part, scale, skip_bits * math.log(2.0),
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *seq[2:], H, Tq, Tk, split_len, n_split,
        GROUP=group, HEAD_DIM=D, BLOCK_D=block_d, HAS_SEQ=q_seq_id is not None, SKIP=skip,
        UPCAST=_interpret(), DOT_PREC=_dot_prec(q.dtype), BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    _decode.combine_kernel[(B * H * Tq,)](
        o_part, lse_part, out, *out.stride()[:3], H, Tq, n_split,
        HEAD_DIM=D, BLOCK_D=block_d, BLOCK_S=_bucket(n_split),
    )  # fmt: skip
    return out


# ---- custom ops: one opaque node each for torch.compile --------------------------------------


@torch.library.custom_op("mpt::flash_alibi_fwd", mutates_args=())
def _fwd_op(
    q: Tensor, k: Tensor, v: Tensor, slopes: Tensor, softmax_scale: float,
    q_seq_id: Tensor | None, k_seq_id: Tensor | None, skip_bits: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    return _forward_impl(q, k, v, slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits)


@_fwd_op.register_fake
def _(q, k, v, slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits):
    B, Tq, H, D = q.shape
    Hkv = k.shape[2]
    skip = skip_bits > 0
    f32 = torch.float32
    return (
        q.new_empty((B, Tq, H, D)),
        q.new_empty((B, H, Tq), dtype=f32),
        q.new_empty((B, Hkv) if skip else (0,), dtype=f32),
        q.new_empty((B, H) if skip else (0,), dtype=f32),
    )


@torch.library.custom_op("mpt::flash_alibi_bwd", mutates_args=())
def _bwd_op(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, slopes: Tensor, out: Tensor, lse: Tensor,
    kmax: Tensor, col_bound: Tensor, softmax_scale: float, q_seq_id: Tensor | None,
    k_seq_id: Tensor | None, skip_bits: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    return _backward_impl(
        dout, q, k, v, slopes, out, lse, kmax, col_bound, softmax_scale, q_seq_id, k_seq_id,
        skip_bits,
    )  # fmt: skip


@_bwd_op.register_fake
def _(
    dout, q, k, v, slopes, out, lse, kmax, col_bound, softmax_scale, q_seq_id, k_seq_id, skip_bits
):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits = inputs
    out, lse, kmax, col_bound = output
    ctx.save_for_backward(q, k, v, slopes, out, lse, kmax, col_bound, q_seq_id, k_seq_id)
    ctx.softmax_scale = softmax_scale
    ctx.skip_bits = skip_bits
    ctx.mark_non_differentiable(lse, kmax, col_bound)


def _backward(ctx, dout, *_):
    q, k, v, slopes, out, lse, kmax, col_bound, q_seq_id, k_seq_id = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = torch.ops.mpt.flash_alibi_bwd(
        dout, q, k, v, slopes, out, lse, kmax, col_bound, ctx.softmax_scale, q_seq_id, k_seq_id,
        ctx.skip_bits,
    )  # fmt: skip
    return dq, dk, dv, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("mpt::flash_alibi_decode", mutates_args=())
def _decode_op(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, slopes: Tensor, softmax_scale: float,
    q_seq_id: Tensor | None, k_seq_id: Tensor | None, skip_bits: float,
) -> Tensor:  # fmt: skip
    return _decode_impl(q, k_cache, v_cache, slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits)


@_decode_op.register_fake
def _(q, k_cache, v_cache, slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits):
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
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(D)
    softmax_scale = float(softmax_scale)
    if not math.isfinite(softmax_scale):
        raise ValueError(f"{fn}: softmax_scale must be finite, got {softmax_scale}")
    skip_bits = 0.0 if skip_bits is None else float(skip_bits)
    if not (skip_bits >= 0.0 and math.isfinite(skip_bits)):
        raise ValueError(f"{fn}: skip_bits must be None or a finite number >= 0, got {skip_bits}")
    return slopes.to(torch.float32).contiguous(), softmax_scale, skip_bits


_QKV = ("q", "k", "v")


def flash_alibi_attention(
    q: Tensor, k: Tensor, v: Tensor, slopes: Tensor, *, softmax_scale: float | None = None,
    q_seq_id: Tensor | None = None, k_seq_id: Tensor | None = None,
    skip_bits: float | None = 150.0,
) -> Tensor:  # fmt: skip
    """Causal ALiBi attention (B, Tq, H, D) -> (B, Tq, H, D), differentiable wrt q, k and v."""
    slopes, scale, skip = _check(
        "flash_alibi_attention", _QKV, q, k, v, slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits
    )
    out, _, _, _ = torch.ops.mpt.flash_alibi_fwd(q, k, v, slopes, scale, q_seq_id, k_seq_id, skip)
    return out


def flash_alibi_forward(
    q: Tensor, k: Tensor, v: Tensor, slopes: Tensor, *, softmax_scale: float | None = None,
    q_seq_id: Tensor | None = None, k_seq_id: Tensor | None = None,
    skip_bits: float | None = 150.0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(out, lse) without autograd; lse (B, H, Tq) fp32 natural-log log-sum-exp, -inf if no key."""
    slopes, scale, skip = _check(
        "flash_alibi_forward", _QKV, q, k, v, slopes, softmax_scale, q_seq_id, k_seq_id, skip_bits
    )
    with torch.no_grad():
        out, lse, _, _ = torch.ops.mpt.flash_alibi_fwd(
            q, k, v, slopes, scale, q_seq_id, k_seq_id, skip
        )
    return out, lse


def flash_alibi_decode(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, slopes: Tensor, *,
    softmax_scale: float | None = None, k_seq_id: Tensor | None = None,
    q_seq_id: Tensor | None = None, skip_bits: float | None = 150.0,
) -> Tensor:  # fmt: skip
    """Inference attention of a few new tokens q (B, Tq, H, D) against a KV cache (B, Tk, Hkv, D).

    The cache holds the new tokens' keys too (its last Tq positions). Split-KV: the keys are
    divided among programs and the partial results merged. `k_seq_id` alone is enough (left
    padding as id -1 for pad keys); `q_seq_id` then defaults to the ids of the last Tq keys.
    The ALiBi skip needs max ||k|| over the cache (one extra pass over K); skip_bits=None turns it off.
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
    with torch.no_grad():
        return torch.ops.mpt.flash_alibi_decode(
            q, k_cache, v_cache, slopes, scale, q_seq_id, k_seq_id, skip
        )
