"""Launchers of the ALiBi attention kernels: tensors in, output buffers allocated, kernels run.

`_forward_impl`, `_backward_impl` and `_decode_impl` are the bodies of the custom ops in
`flash_alibi.py` (which has the semantics and the input checks; the inputs arrive checked). They
allocate the outputs, make the last dims contiguous, pack strides and flags for the `@triton.jit`
kernels of `_fwd.py`, `_bwd.py` and `_decode.py`, and launch them with the configs `_configs.py`
chooses. Passing a `debug` dict (tests only, with a forced config) records the kernels' loop bounds.
With sequence ids, `_doc_bounds` gives the kernels the per-row first visible key and the per-key
last row that sees it, so that they skip the blocks of other packed documents.
"""

import functools
import math

import torch
from torch import Tensor

from ._configs import _block_d, _bucket, _cdiv, _fixed_config, _interpret, _kernels, _launch

__all__ = ["_backward_impl", "_decode_impl", "_forward_impl"]


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


#: Private switch (tests): False hands the kernels trivial document bounds (no document skip).
_DOC_SKIP = True


def _doc_bounds(q_seq_id: Tensor, k_seq_id: Tensor) -> tuple[Tensor, Tensor]:
    """(first_key (B, Tq), last_row (B, Tk)), int32 contiguous, exact for arbitrary integer ids.

    first_key[b, i]: the smallest j <= pos_i (= i + Tk - Tq) with k_seq_id[b, j] == q_seq_id[b, i],
    else pos_i + 1. last_row[b, j]: the largest i with q_seq_id[b, i] == k_seq_id[b, j] and
    pos_i >= j, else -1. The first key of an id overall is <= pos_i iff some key of it is, and then
    it is the answer; likewise the last query row of an id. A stable sort of each row's ids and a
    batched `searchsorted` find both, with no host sync (this runs once per attention call).
    """
    B, Tq = q_seq_id.shape
    Tk = k_seq_id.shape[1]
    dev = q_seq_id.device
    i = torch.arange(Tq, device=dev)
    j = torch.arange(Tk, device=dev)
    pos = i + (Tk - Tq)
    if not _DOC_SKIP:
        first_key = torch.zeros((B, Tq), device=dev, dtype=torch.int64)
        return _i32(first_key), _i32(torch.full((B, Tk), Tq - 1, device=dev, dtype=torch.int64))
    q_ids, k_ids = q_seq_id.to(torch.int64).contiguous(), k_seq_id.to(torch.int64).contiguous()
    # first key of each query's id: the leftmost equal entry of the stably sorted key ids
    k_sorted, k_order = torch.sort(k_ids, dim=1, stable=True)
    at = torch.searchsorted(k_sorted, q_ids, side="left").clamp(max=Tk - 1)
    found = k_sorted.gather(1, at) == q_ids
    first = torch.where(found, k_order.gather(1, at), Tk)
    first_key = torch.where(first <= pos, first, pos + 1)
    # last query row of each key's id: the rightmost equal entry of the stably sorted query ids
    q_sorted, q_order = torch.sort(q_ids, dim=1, stable=True)
    at = (torch.searchsorted(q_sorted, k_ids, side="right") - 1).clamp(min=0)
    found = q_sorted.gather(1, at) == k_ids
    last = torch.where(found, q_order.gather(1, at), -1)
    last_row = torch.where((last >= 0) & (last + (Tk - Tq) >= j), last, -1)
    return _i32(first_key), _i32(last_row)


def _loop_bounds_buffer(kernel: str, block_d: int, rows: int, length: int, block: str, dev):
    """Tests only (`debug`): an int32 buffer of -1s, one entry per (row, block of `length`), for a
    kernel to store its loop bounds in; the block size comes from the forced launch config."""
    cfg = _fixed_config(kernel, block_d)
    assert cfg is not None, "debug loop bounds need a fixed config (set_kernel_config)"
    return torch.full((rows, _cdiv(length, cfg[block])), -1, device=dev, dtype=torch.int32)


def _i32(x: Tensor) -> Tensor:
    return x.to(torch.int32).contiguous()


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


def _forward_impl(
    q, k, v, slopes, scale, q_seq_id, k_seq_id, skip_bits, debug=None, first_key=None
):  # fmt: skip
    """Returns (out, lse, kmax, col_bound); the last two are empty when skipping is off.
    `first_key`: `_doc_bounds(q_seq_id, k_seq_id)[0]` when the caller has it already."""
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
    kv_start = _loop_bounds_buffer("fwd", block_d, B * H, Tq, "block_m", dev) if store else dummy_i
    if q_seq_id is None:
        first_key = dummy_i
    elif first_key is None:
        first_key = _doc_bounds(q_seq_id, k_seq_id)[0]
    args = (
        q, k, v, slopes, out, lse, *_seq_args(q_seq_id, k_seq_id, dummy_i)[:2], first_key, kmax,
        row_bound, kv_start, scale, skip_bits * math.log(2.0),
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
    debug=None, grads=None, bounds=None,
):  # fmt: skip
    """(dq, dk, dv); `grads`: the three buffers to write instead (views into one packed dqkv
    buffer; last dims contiguous, dk and dv with equal strides); `bounds`: `_doc_bounds(...)` when
    the caller has them already."""
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    dev = q.device
    if grads is not None:
        dq, dk, dv = grads
        assert dk.stride() == dv.stride() and dq.stride(-1) == dk.stride(-1) == 1
    else:
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
    first_key = last_row = dummy_i
    if q_seq_id is not None:
        first_key, last_row = bounds if bounds is not None else _doc_bounds(q_seq_id, k_seq_id)
    store = debug is not None
    consts = {
        "GROUP": H // Hkv, "HEAD_DIM": D, "BLOCK_D": block_d, "HAS_SEQ": q_seq_id is not None,
        "SKIP": skip, "UPCAST": upcast, "DOT_PREC": _dot_prec(q.dtype),
    }  # fmt: skip
    skip_nats = skip_bits * math.log(2.0)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *dout.stride()[:3])
    tail = (H, Tq, Tk, _bucket(Tq), _bucket(Tk))

    q_end = _loop_bounds_buffer("dkdv", block_d, B * H, Tk, "block_n", dev) if store else dummy_i
    _launch(
        "dkdv", _bwd.dkdv_kernel, lambda bm, bn: (_cdiv(Tk, bn), B * Hkv),
        (q, k, v, dout, slopes, lse, delta, *seq[:2], last_row, col_bound if skip else dummy_f,
         dk, dv, q_end, scale, skip_nats, *strides, *dk.stride()[:3], *seq[2:], *tail),
        {**consts, "STORE_Q_END": store}, block_d,
    )  # fmt: skip

    kv_start = _loop_bounds_buffer("dq", block_d, B * H, Tq, "block_m", dev) if store else dummy_i
    _launch(
        "dq", _bwd.dq_kernel, lambda bm, bn: (_cdiv(Tq, bm), B * H),
        (q, k, v, dout, slopes, lse, delta, *seq[:2], first_key, kmax if skip else dummy_f, dq,
         kv_start, scale, skip_nats, *strides, *dq.stride()[:3], *seq[2:], *tail),
        {**consts, "STORE_KV_START": store}, block_d,
    )  # fmt: skip
    if store:
        debug["dkdv_q_end"] = q_end
        debug["dq_kv_start"] = kv_start
    return dq, dk, dv


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _decode_impl(q, k, v, slopes, scale, q_seq_id, k_seq_id, skip_bits, k_norm_max=None):
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
    kmax = torch.zeros(1, device=dev, dtype=torch.float32)
    if skip:  # a bound the caller keeps (a KV cache's running max) saves a pass over K
        kmax = k_norm_max if k_norm_max is not None else _key_norm_max(k)
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
