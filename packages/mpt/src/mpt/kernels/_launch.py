"""Launchers of the ALiBi attention kernels: tensors in, output buffers allocated, kernels run.

`_forward_impl`, `_backward_impl` and `_decode_impl` are the bodies of the custom ops in `_ops.py`
(`flash_alibi.py` has the semantics and the input checks; the inputs arrive checked). Each takes
its tensors and a `KernelArgs` (what every op takes beside them), allocates the outputs, makes the
last dims contiguous, gathers the kernels' operands in the order every kernel declares them
(tensors, scalars, strides, sizes; see `_operands`) and launches the `@triton.jit` kernels of
`_fwd.py`, `_bwd.py` and `_decode.py` with the configs `_configs.py` chooses. Passing a `debug`
dict (tests only, with a forced config) records the kernels' loop bounds. With sequence ids,
`_doc_bounds` gives the kernels the per-row first visible key and the per-key last row that sees
it, so that they skip the blocks of other packed documents.
"""

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ._configs import _block_d, _bucket, _cdiv, _fixed_config, _interpret, _kernels, _launch

__all__ = [
    "ForwardOutputs",
    "KernelArgs",
    "_backward_impl",
    "_decode_impl",
    "_forward_impl",
    "_packed_backward_impl",
    "_split_qkv",
]


@dataclass(frozen=True)
class KernelArgs:
    """What every attention op takes beside its tensors (checked by `flash_alibi`).

    The custom ops take these fields flat, in this order (`flat()`: torch.library infers an op's
    schema from its signature), and rebuild the dataclass with `KernelArgs(*flat)`.
    """

    slopes: Tensor  # (H,) fp32, contiguous; zeros give plain causal attention
    softmax_scale: float
    q_seq_id: Tensor | None  # (B, Tq) integer ids of packed documents, or None
    k_seq_id: Tensor | None  # (B, Tk), given exactly when q_seq_id is
    skip_bits: float  # the ALiBi block skip drops weights below 2^-skip_bits; 0: off
    first_key: Tensor | None = None  # (B, Tq) int32 `_doc_bounds(...)[0]` when the caller has it
    last_row: Tensor | None = None  # (B, Tk) int32 `_doc_bounds(...)[1]`, given with first_key

    def flat(self) -> tuple:
        """The fields in order, as the custom ops take them."""
        return (
            self.slopes,
            self.softmax_scale,
            self.q_seq_id,
            self.k_seq_id,
            self.skip_bits,
            self.first_key,
            self.last_row,
        )

    @property
    def has_seq(self) -> bool:
        return self.q_seq_id is not None

    @property
    def skip(self) -> bool:
        return self.skip_bits > 0

    def doc_bounds(self) -> tuple[Tensor, Tensor]:
        """(first_key, last_row): the ones given, else found from the sequence ids."""
        if self.first_key is not None:
            return self.first_key, self.last_row
        return _doc_bounds(self.q_seq_id, self.k_seq_id)


class ForwardOutputs(NamedTuple):
    """The forward's outputs, which its backward takes back."""

    out: Tensor  # (B, Tq, H, D), q's dtype
    lse: Tensor  # (B, H, Tq) fp32, natural log; -inf where a row sees no key
    k_norm_max: Tensor  # (B, Hkv) fp32 max_j ||k_j|| for the ALiBi skip; empty without it
    col_bound: Tensor  # (B, H) fp32 the dK/dV kernel's skip bound; empty without the skip


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


def _bth(t: Tensor) -> tuple[int, int, int]:
    """The strides of a (B, T, H, D) tensor's batch, token and head dims (D is contiguous)."""
    return t.stride()[:3]


def _skip_nats(args: KernelArgs) -> float:
    return args.skip_bits * math.log(2.0)


def _flags(q: Tensor, n_kv_heads: int, args: KernelArgs) -> dict:
    """The constexpr flags every attention kernel takes."""
    H, D = q.shape[2], q.shape[3]
    return {
        "GROUP": H // n_kv_heads,
        "HEAD_DIM": D,
        "BLOCK_D": _block_d(D),
        "HAS_SEQ": args.has_seq,
        "SKIP": args.skip,
        "UPCAST": _interpret(),
        "DOT_PREC": _dot_prec(q.dtype),
    }


class _SeqIds(NamedTuple):
    """The kernels' sequence-id operands: both id tensors (dummies without ids) and their strides
    (q batch, q token, k batch, k token)."""

    q_ids: Tensor
    k_ids: Tensor
    strides: tuple[int, int, int, int]


def _seq_ids(args: KernelArgs, dummy: Tensor) -> _SeqIds:
    if not args.has_seq:
        return _SeqIds(dummy, dummy, (0, 0, 0, 0))
    strides = (*args.q_seq_id.stride(), *args.k_seq_id.stride())
    return _SeqIds(args.q_seq_id, args.k_seq_id, strides)


@functools.cache
def _dummies(device: torch.device) -> tuple[Tensor, Tensor]:
    """(int32, fp32) one-element zeros per device: the operands of features a launch leaves off
    (the kernels never touch them then). Made once, so a call launches no fill kernels for them."""
    return (
        torch.zeros(1, device=device, dtype=torch.int32),
        torch.zeros(1, device=device, dtype=torch.float32),
    )


def _tuning_case(q: Tensor, seq: _SeqIds, Tq: int, Tk: int) -> tuple:
    """What tells the autotuner's cases apart beside the constexprs: the bucketed lengths and the
    dtypes of the tensors that vary (the others are fixed: fp32 slopes and lse, int32 bounds)."""
    return (_bucket(Tq), _bucket(Tk), q.dtype, seq.q_ids.dtype, seq.k_ids.dtype)


def _operands(tensors: tuple, scalars: tuple, strides: tuple, sizes: tuple) -> tuple:
    """A kernel's positional operands, in the order the kernels declare them."""
    return (*tensors, *scalars, *strides, *sizes)


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


def _query_grid(Tq: int, programs: int):
    """The grid of a kernel with one program per block of query rows, per (batch, head)."""
    return lambda block_m, block_n: (_cdiv(Tq, block_m), programs)


def _key_grid(Tk: int, programs: int):
    """The grid of a kernel with one program per block of keys, per (batch, kv head)."""
    return lambda block_m, block_n: (_cdiv(Tk, block_n), programs)


def _key_norm_max(k: Tensor) -> Tensor:
    """(B, Hkv) fp32: max over keys of ||k_j||, one pass over K without an fp32 copy."""
    _fwd, _, _ = _kernels()
    B, Tk, Hkv, D = k.shape
    block_t = 16 if _interpret() else 64
    n_blk = _cdiv(Tk, block_t)
    part = torch.empty((B * Hkv, n_blk), device=k.device, dtype=torch.float32)
    consts = {"HEAD_DIM": D, "BLOCK_D": _block_d(D), "BLOCK_T": block_t}
    _fwd.key_norm_max_kernel[(n_blk, B * Hkv)](k, part, *_bth(k), Hkv, Tk, **consts)
    return part.amax(dim=1).view(B, Hkv)


def _forward_impl(
    q: Tensor, k: Tensor, v: Tensor, args: KernelArgs, debug=None, tune: bool = True
) -> ForwardOutputs:
    """The forward of `flash_alibi_attention`; the skip's outputs are empty when it is off.
    `tune=False`: an inference call, which never starts the autotuner (`_configs._launch`)."""
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    dev = q.device
    out = torch.empty((B, Tq, H, D), device=dev, dtype=q.dtype)
    lse = torch.empty((B, H, Tq), device=dev, dtype=torch.float32)
    f32_empty = torch.empty(0, device=dev, dtype=torch.float32)
    if B * H * Tq == 0:
        return ForwardOutputs(out, lse, f32_empty, f32_empty.clone())
    _check_device(q)
    _fwd, _, _ = _kernels()
    q, k, v = _lastdim_contiguous(q), _lastdim_contiguous(k), _lastdim_contiguous(v)
    dummy_i, dummy_f = _dummies(dev)
    k_norm_max = _key_norm_max(k) if args.skip else dummy_f
    row_bound = torch.empty((B, H, Tq), device=dev, dtype=torch.float32) if args.skip else dummy_f
    block_d = _block_d(D)
    store = debug is not None
    kv_start = _loop_bounds_buffer("fwd", block_d, B * H, Tq, "block_m", dev) if store else dummy_i
    first_key = args.doc_bounds()[0] if args.has_seq else dummy_i
    seq = _seq_ids(args, dummy_i)

    documents = (seq.q_ids, seq.k_ids, first_key)
    tensors = (q, k, v, args.slopes, out, lse, *documents, k_norm_max, row_bound, kv_start)
    strides = (*_bth(q), *_bth(k), *_bth(v), *_bth(out), *seq.strides)
    sizes = (H, Tq, Tk, _bucket(Tq), _bucket(Tk))
    operands = _operands(tensors, (args.softmax_scale, _skip_nats(args)), strides, sizes)
    consts = {**_flags(q, Hkv, args), "STORE_KV_START": store}
    case = _tuning_case(q, seq, Tq, Tk)
    grid = _query_grid(Tq, B * H)
    _launch("fwd", _fwd.fwd_kernel, grid, operands, consts, block_d, case, tune)
    if store:
        debug["fwd_kv_start"] = kv_start
    if not args.skip:
        return ForwardOutputs(out, lse, f32_empty, f32_empty.clone())
    return ForwardOutputs(out, lse, k_norm_max.contiguous(), row_bound.amax(dim=-1))


def _delta(out: Tensor, dout: Tensor) -> Tensor:
    """delta (B, H, Tq) fp32 = rowsum(dO * O): the backward's preprocess kernel."""
    _, _bwd, _ = _kernels()
    B, Tq, H, D = out.shape
    delta = torch.empty((B, H, Tq), device=out.device, dtype=torch.float32)
    block_m = 16 if _interpret() else 64
    consts = {"HEAD_DIM": D, "BLOCK_D": _block_d(D), "BLOCK_M": block_m}
    grid = (_cdiv(Tq, block_m), B * H)
    _bwd.preprocess_kernel[grid](out, dout, delta, *_bth(out), *_bth(dout), H, Tq, **consts)
    return delta


def _backward_impl(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fwd: ForwardOutputs,
    args: KernelArgs,
    debug=None,
    grads=None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv); `grads`: the three buffers to write instead (views into one packed dqkv
    buffer; last dims contiguous, dk and dv with equal strides)."""
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
    delta = _delta(fwd.out, dout)
    dummy_i, dummy_f = _dummies(dev)
    seq = _seq_ids(args, dummy_i)
    first_key, last_row = args.doc_bounds() if args.has_seq else (dummy_i, dummy_i)
    block_d = _block_d(D)
    store = debug is not None
    flags = _flags(q, Hkv, args)
    inputs = (q, k, v, dout, args.slopes, fwd.lse, delta, seq.q_ids, seq.k_ids)
    scalars = (args.softmax_scale, _skip_nats(args))
    strides = (*_bth(q), *_bth(k), *_bth(v), *_bth(dout))
    sizes = (H, Tq, Tk, _bucket(Tq), _bucket(Tk))

    q_end = _loop_bounds_buffer("dkdv", block_d, B * H, Tk, "block_n", dev) if store else dummy_i
    col_bound = fwd.col_bound if args.skip else dummy_f
    tensors = (*inputs, last_row, col_bound, dk, dv, q_end)
    operands = _operands(tensors, scalars, (*strides, *_bth(dk), *seq.strides), sizes)
    consts = {**flags, "STORE_Q_END": store}
    case = _tuning_case(q, seq, Tq, Tk)
    _launch("dkdv", _bwd.dkdv_kernel, _key_grid(Tk, B * Hkv), operands, consts, block_d, case)

    kv_start = _loop_bounds_buffer("dq", block_d, B * H, Tq, "block_m", dev) if store else dummy_i
    k_norm_max = fwd.k_norm_max if args.skip else dummy_f
    tensors = (*inputs, first_key, k_norm_max, dq, kv_start)
    operands = _operands(tensors, scalars, (*strides, *_bth(dq), *seq.strides), sizes)
    consts = {**flags, "STORE_KV_START": store}
    _launch("dq", _bwd.dq_kernel, _query_grid(Tq, B * H), operands, consts, block_d, case)
    if store:
        debug["dkdv_q_end"] = q_end
        debug["dq_kv_start"] = kv_start
    return dq, dk, dv


def _split_qkv(qkv: Tensor, n_heads: int, n_kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Views q (B, T, H, D), k and v (B, T, Hkv, D) of a fused projection's (B, T, (H+2Hkv) D)."""
    B, T, width = qkv.shape
    D = width // (n_heads + 2 * n_kv_heads)
    q, k, v = qkv.split([n_heads * D, n_kv_heads * D, n_kv_heads * D], dim=-1)
    return (
        q.view(B, T, n_heads, D),
        k.view(B, T, n_kv_heads, D),
        v.view(B, T, n_kv_heads, D),
    )


def _packed_backward_impl(
    dout: Tensor, qkv: Tensor, fwd: ForwardOutputs, heads: tuple[int, int], args: KernelArgs
) -> Tensor:
    """The gradient of a fused qkv (`heads`: (H, Hkv)) as one tensor, which the kernels write
    through views of it (no copy of dq, dk, dv into it)."""
    dqkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
    q, k, v = _split_qkv(qkv, *heads)
    _backward_impl(dout, q, k, v, fwd, args, grads=_split_qkv(dqkv, *heads))
    return dqkv


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _decode_impl(
    q: Tensor, k: Tensor, v: Tensor, args: KernelArgs, k_norm_max: Tensor | None = None
) -> Tensor:
    """Split-KV decode: `args`' document bounds are not used (every key block is masked)."""
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    dev = q.device
    out = torch.empty((B, Tq, H, D), device=dev, dtype=q.dtype)
    if B * H * Tq == 0:
        return out
    _check_device(q)
    _, _, _decode = _kernels()
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
    dummy_i, kmax = _dummies(dev)
    if args.skip:  # a bound the caller keeps (a KV cache's running max) saves a pass over K
        kmax = k_norm_max if k_norm_max is not None else _key_norm_max(k)
    o_part = torch.empty((B, H, Tq, n_split, D), device=dev, dtype=torch.float32)
    lse_part = torch.empty((B, H, Tq, n_split), device=dev, dtype=torch.float32)
    seq = _seq_ids(args, dummy_i)

    tensors = (q, k, v, args.slopes, seq.q_ids, seq.k_ids, kmax, o_part, lse_part)
    scalars = (args.softmax_scale, _skip_nats(args))
    strides = (*_bth(q), *_bth(k), *_bth(v), *seq.strides)
    operands = _operands(tensors, scalars, strides, (H, Tq, Tk, split_len, n_split))
    launch = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    consts = {**_flags(q, Hkv, args), "BLOCK_M": block_m, "BLOCK_N": block_n, **launch}
    _decode.split_kernel[(n_split, B * Hkv, n_rows)](*operands, **consts)

    consts = {"HEAD_DIM": D, "BLOCK_D": block_d, "BLOCK_S": _bucket(n_split)}
    operands = (o_part, lse_part, out, *_bth(out), H, Tq, n_split)
    _decode.combine_kernel[(B * H * Tq,)](*operands, **consts)
    return out
