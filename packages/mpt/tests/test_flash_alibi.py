"""The Triton causal ALiBi FlashAttention against a float64 reference, on CPU (TRITON_INTERPRET=1).

Tiny shapes (the interpreter is slow) with 16 x 16 blocks, so multi-block paths, the diagonal /
off-diagonal split and lengths that are not multiples of the block all run. Errors are relative
Frobenius norms ||x - ref|| / ||ref||. Tolerances:
* fp32 inputs: the kernels compute in fp32 (dot products of <= 128 terms, online softmax), so the
  error against float64 is ~1e-6; we allow 2e-5.
* bf16 / fp16 inputs: the interpreter upcasts q, k, v, dO to fp32 after loading, so the error is
  the rounding of the outputs and gradients to 8 (bf16) or 11 (fp16) mantissa bits: ~3e-3 (bf16),
  ~4e-4 (fp16) in the norm; we allow 1e-2 and 3e-3.
The reference takes the same (rounded) inputs upcast to float64, so input rounding cancels.
"""

import math
import os
import subprocess
import sys
import types

import pytest
import torch

if torch.cuda.is_available():  # keep TRITON_INTERPRET out of a GPU test session
    pytest.skip(
        "interpreter tests run on CPU-only machines; test_flash_alibi_gpu.py covers the GPU",
        allow_module_level=True,
    )
# Before triton is imported: importing torch does not, and mpt.kernels imports it lazily.
os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="triton is not installed (optional dependency mpt[triton])")

from mpt.kernels import (
    SUPPORTED_HEAD_DIMS,
    _launch,
    autotuned_configs,
    document_bounds,
    flash_alibi_attention,
    flash_alibi_attention_packed,
    flash_alibi_decode,
    flash_alibi_forward,
    kernels_available,
    reset_kernel_configs,
    set_kernel_config,
    supported_head_dim,
)
from mpt.kernels._launch import KernelArgs, _backward_impl, _forward_impl

TOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 3e-3}


def alibi_slopes(n_heads: int, bias_max: float = 8.0) -> torch.Tensor:
    """MPT's slopes for a power-of-two head count: 2^(-bias_max * (h + 1) / H)."""
    return torch.tensor([2.0 ** (-bias_max * (h + 1) / n_heads) for h in range(n_heads)])


def reference(q, k, v, slopes, scale=None, q_seq_id=None, k_seq_id=None):
    """float64 (out (B, Tq, H, D), lse (B, H, Tq)) with the kernels' semantics; differentiable."""
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    scale = D**-0.5 if scale is None else scale
    kd = k.double().repeat_interleave(H // Hkv, dim=2)
    vd = v.double().repeat_interleave(H // Hkv, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q.double(), kd) * scale
    dist = (torch.arange(Tq)[:, None] + (Tk - Tq) - torch.arange(Tk)[None, :]).double()
    s = s - slopes.double()[None, :, None, None] * dist
    visible = (dist >= 0)[None, None]
    if q_seq_id is not None:
        visible = visible & (q_seq_id[:, None, :, None] == k_seq_id[:, None, None, :])
    s = s.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    any_visible = visible.any(dim=-1, keepdim=True)
    p = torch.softmax(s.masked_fill(~any_visible, 0.0), dim=-1) * any_visible
    return torch.einsum("bhij,bjhd->bihd", p, vd), lse


def rel(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm()).item()


def make_inputs(B, Tq, Tk, H, Hkv, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Tq, H, D, generator=g).to(dtype)
    k = torch.randn(B, Tk, Hkv, D, generator=g).to(dtype)
    v = torch.randn(B, Tk, Hkv, D, generator=g).to(dtype)
    do = torch.randn(B, Tq, H, D, generator=g).to(dtype)
    return q, k, v, do


def check_against_reference(q, k, v, do, slopes, tol, q_seq_id=None, k_seq_id=None, **kw):
    """Forward, lse and all three gradients vs float64; the kernel's (out, dq, dk, dv, lse)."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = flash_alibi_attention(*leaves, slopes, q_seq_id=q_seq_id, k_seq_id=k_seq_id, **kw)
    out.backward(do)
    _, lse = flash_alibi_forward(q, k, v, slopes, q_seq_id=q_seq_id, k_seq_id=k_seq_id, **kw)
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    scale = kw.get("softmax_scale")
    ref_out, ref_lse = reference(*ref_leaves, slopes, scale, q_seq_id, k_seq_id)
    ref_out.backward(do.double())
    assert out.dtype == q.dtype and out.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    for name, x in [("out", out), ("dq", leaves[0].grad), ("dk", leaves[1].grad)]:
        assert torch.isfinite(x).all(), f"{name} has non-finite values"
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite), "lse is -inf exactly where no key is visible"
    assert rel(lse[finite], ref_lse[finite]) < 2e-5  # fp32 math on the same rounded inputs
    assert rel(out, ref_out) < tol
    for leaf, ref_leaf, name in zip(leaves, ref_leaves, ("dq", "dk", "dv"), strict=True):
        assert leaf.grad.dtype == leaf.dtype and leaf.grad.shape == leaf.shape
        assert rel(leaf.grad, ref_leaf.grad) < tol, name
    return out, *(leaf.grad for leaf in leaves), lse


@pytest.fixture(autouse=True)
def _fresh_configs():
    reset_kernel_configs()
    yield
    reset_kernel_configs()


@pytest.mark.parametrize(
    ("B", "Tq", "Tk", "H", "Hkv", "D", "dtype"),
    [
        (2, 37, 37, 2, 2, 16, torch.float32),  # T not a multiple of the block
        (1, 77, 77, 4, 2, 64, torch.float32),  # grouped-query
        (1, 37, 37, 2, 1, 112, torch.bfloat16),  # multi-query, D padded to 128 (MPT-30B)
        (1, 33, 33, 2, 2, 128, torch.bfloat16),
        (1, 20, 53, 4, 1, 32, torch.float16),  # continuation from a cache (Tq < Tk)
        (1, 29, 29, 3, 3, 96, torch.float32),  # 3 heads, D padded to 128
    ],
)
def test_matches_reference(B, Tq, Tk, H, Hkv, D, dtype):
    q, k, v, do = make_inputs(B, Tq, Tk, H, Hkv, D, dtype, seed=Tq * 100 + D)
    check_against_reference(q, k, v, do, alibi_slopes(H), TOL[dtype])


def test_packed_documents_and_empty_rows():
    B, T, H, Hkv, D = 2, 50, 2, 1, 32  # grouped-query: 2 query heads per key/value head
    q, k, v, do = make_inputs(B, T, T, H, Hkv, D, torch.float32, seed=1)
    ids = torch.tensor([[0] * 13 + [1] * 20 + [2] * 17, [-1] * 7 + [0] * 43])
    q_ids = ids.clone()
    q_ids[0, 40] = 99  # a row that sees no key: output 0, lse -inf, no NaN anywhere
    out, dq, _, _, lse = check_against_reference(
        q, k, v, do, alibi_slopes(H), TOL[torch.float32], q_seq_id=q_ids, k_seq_id=ids
    )
    assert torch.all(out[0, 40] == 0) and torch.all(dq[0, 40] == 0)
    assert torch.all(lse[0, :, 40] == float("-inf"))


def test_packed_documents_continuation():
    B, Tq, Tk, H, D = 1, 17, 50, 2, 16
    q, k, v, do = make_inputs(B, Tq, Tk, H, H, D, torch.float32, seed=2)
    ids = torch.tensor([[0] * 20 + [1] * 22 + [2] * 8])
    check_against_reference(
        q, k, v, do, alibi_slopes(H), TOL[torch.float32], q_seq_id=ids[:, -Tq:], k_seq_id=ids
    )


@pytest.mark.parametrize(("bm", "bn"), [(32, 16), (16, 32)])
def test_unequal_blocks(bm, bn):
    for kernel in ("fwd", "dkdv", "dq"):
        set_kernel_config(kernel, block_m=bm, block_n=bn)
    q, k, v, do = make_inputs(1, 30, 45, 2, 1, 16, torch.float32, seed=bm)
    check_against_reference(q, k, v, do, alibi_slopes(2, 4.0), TOL[torch.float32])


def test_strided_views_of_fused_qkv_and_custom_scale():
    B, T, H, D = 2, 21, 2, 16
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(B, T, 3, H, D, generator=g)
    q, k, v = qkv.unbind(2)  # strided views, last dim contiguous: passed to the kernels as they are
    assert not q.is_contiguous()
    do = torch.randn(B, T, H, D, generator=g)
    check_against_reference(q, k, v, do, alibi_slopes(H), TOL[torch.float32], softmax_scale=0.3)
    # a non-contiguous last dim is copied first
    qt = torch.randn(B, T, D, H, generator=g).transpose(-1, -2)
    assert qt.stride(-1) != 1
    check_against_reference(qt, k, v, do, alibi_slopes(H), TOL[torch.float32])


@pytest.mark.parametrize(("H", "Hkv", "docs"), [(2, 2, False), (4, 2, True), (3, 1, False)])
def test_packed_qkv_gives_the_same_output_and_one_gradient(H, Hkv, docs):
    """The packed op on a fused (B, T, (H + 2 Hkv) D) projection vs the float64 reference on its
    q, k, v views: same output, and its one gradient is [dq | dk | dv] in the projection's layout.
    Two 16-row blocks, the second a masked tail: every block writes its rows of the one buffer
    (the kernels' longer loops are test_matches_reference's); with documents, row 1's second
    query block starts at key 16 (the document skip)."""
    B, T, D = 2, 21, 16
    g = torch.Generator().manual_seed(H * 10 + Hkv)
    qkv = torch.randn(B, T, (H + 2 * Hkv) * D, generator=g)
    do = torch.randn(B, T, H, D, generator=g)
    ids = {}
    if docs:
        seq = torch.tensor([[0] * 11 + [1] * 10, [0] * 16 + [1] * 5])
        ids = dict(q_seq_id=seq, k_seq_id=seq)
    leaf = qkv.clone().requires_grad_()
    out = flash_alibi_attention_packed(leaf, alibi_slopes(H), H, Hkv, **ids)
    out.backward(do)
    ref_leaf = qkv.double().requires_grad_()
    q, k, v = ref_leaf.split([H * D, Hkv * D, Hkv * D], dim=-1)
    heads = (q.reshape(B, T, H, D), k.reshape(B, T, Hkv, D), v.reshape(B, T, Hkv, D))
    ref_out, _ = reference(*heads, alibi_slopes(H), None, ids.get("q_seq_id"), ids.get("k_seq_id"))
    ref_out.backward(do.double())
    assert out.shape == (B, T, H, D) and leaf.grad.shape == qkv.shape
    assert rel(out, ref_out) < TOL[torch.float32]
    assert rel(leaf.grad, ref_leaf.grad) < TOL[torch.float32]
    # the separate-views path gives the same numbers (the same kernels, other output buffers)
    views = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    sep = flash_alibi_attention(
        *(t.float().view(B, T, -1, D) for t in views), alibi_slopes(H), **ids
    )
    sep.backward(do)
    assert torch.equal(sep, out)
    assert torch.equal(torch.cat([t.grad for t in views], dim=-1).float(), leaf.grad)


def test_packed_qkv_bad_shapes():
    with pytest.raises(ValueError, match="not a multiple of n_heads"):
        flash_alibi_attention_packed(torch.zeros(1, 4, 50), alibi_slopes(2), 2, 2)
    with pytest.raises(ValueError, match=r"\(B, T, \(H \+ 2 \* Hkv\) \* D\)"):
        flash_alibi_attention_packed(torch.zeros(4, 48), alibi_slopes(2), 2)


@pytest.mark.parametrize(("Tq", "Hkv", "dtype"), [(1, 2, torch.float32), (3, 1, torch.bfloat16)])
def test_decode_with_left_padding(Tq, Hkv, dtype):
    B, Tk, H, D = 2, 70, 4, 64
    q, k, v, _ = make_inputs(B, Tq, Tk, H, Hkv, D, dtype, seed=Tq)
    k_ids = torch.zeros(B, Tk, dtype=torch.long)
    k_ids[0, :5] = -1  # left padding of each prompt
    k_ids[1, :23] = -1
    slopes = alibi_slopes(H)
    ref, _ = reference(q, k, v, slopes, None, k_ids[:, -Tq:], k_ids)
    for splits in (1, 3):
        set_kernel_config("decode", block_m=16, block_n=16, num_splits=splits)
        out = flash_alibi_decode(q, k, v, slopes, k_seq_id=k_ids)
        assert out.dtype == dtype and out.shape == q.shape and torch.isfinite(out).all()
        assert rel(out, ref) < TOL[dtype], splits
    no_pad = flash_alibi_decode(q, k, v, slopes, skip_bits=None)
    assert rel(no_pad, reference(q, k, v, slopes)[0]) < TOL[dtype]


def _loop_bounds(q, k, v, do, slopes, skip_bits, q_seq_id=None, k_seq_id=None):
    debug: dict[str, torch.Tensor] = {}
    args = KernelArgs(slopes, q.shape[-1] ** -0.5, q_seq_id, k_seq_id, skip_bits)
    fwd = _forward_impl(q, k, v, args, debug)
    grads = _backward_impl(do, q, k, v, fwd, args, debug)
    return (fwd.out, fwd.lse, *grads), debug


@pytest.mark.parametrize("with_seq", [False, True])
def test_alibi_skip_changes_nothing_but_rounding(with_seq):
    # Steep slopes (2^3, 2^2) so that whole 16-key blocks are skipped at T = 80, a middle one
    # (2^0) and MPT's gentlest of 8 heads (2^-4), which needs every key: 4 heads, 2 per KV head.
    B, Tq, Tk, H, Hkv, D = 1, 64, 80, 4, 2, 16
    slopes = torch.tensor([2.0**3, 2.0**2, 2.0**0, 2.0**-4])
    q, k, v, do = make_inputs(B, Tq, Tk, H, Hkv, D, torch.float32, seed=5)
    ids = torch.tensor([[0] * 9 + [1] * 71]) if with_seq else None
    q_ids = ids[:, -Tq:] if with_seq else None
    on, dbg_on = _loop_bounds(q, k, v, do, slopes, 150.0, q_ids, ids)
    off, dbg_off = _loop_bounds(q, k, v, do, slopes, 0.0, q_ids, ids)
    # the loops really moved: later key starts (fwd, dq) and earlier query ends (dk/dv)
    assert torch.all(dbg_off["fwd_kv_start"] == 0) and torch.all(dbg_off["dq_kv_start"] == 0)
    assert torch.all(dbg_off["dkdv_q_end"] == Tq)
    # The two steepest heads (slopes 8 and 4) drop keys more than ~14 and ~28 behind a row.
    for name in ("fwd_kv_start", "dq_kv_start"):
        starts = dbg_on[name]  # (B * H, query blocks), multiples of 16
        assert starts[0, -1] >= 32 and starts[1, -1] >= 16, (name, starts)
        assert torch.all(starts[-1] == 0), (name, starts)  # slope 1/16 needs every key
    q_end = dbg_on["dkdv_q_end"]  # (B * H, key blocks)
    assert q_end[0, 0] < 32 and q_end[1, 0] < 48 and torch.all(q_end[-1] == Tq), q_end
    for name, x, y in zip(("out", "lse", "dq", "dk", "dv"), on, off, strict=True):
        assert torch.isfinite(x).all()
        assert rel(x, y) < 1e-6, name
    ref_out, _ = reference(q, k, v, slopes, None, q_ids, ids)
    assert rel(on[0], ref_out) < TOL[torch.float32]


def test_doc_bounds_match_brute_force():
    g = torch.Generator().manual_seed(11)
    pool = torch.tensor([-1, 0, 1, 2, 7, 1000, -5])  # arbitrary, non-contiguous, -1 padding
    for B, Tq, Tk in [(3, 20, 20), (2, 7, 33), (1, 1, 9), (2, 33, 40)]:
        for runs in (False, True):  # i.i.d. ids, or runs of ids that reappear later
            k_ids = pool[torch.randint(len(pool), (B, Tk), generator=g)]
            if runs:
                k_ids = k_ids[:, torch.arange(Tk) // 5]
            q_ids = k_ids[:, Tk - Tq :].clone()
            q_ids[:, ::3] = pool[torch.randint(len(pool), q_ids[:, ::3].shape, generator=g)]
            first_key, last_row = _launch._doc_bounds(q_ids, k_ids)
            assert first_key.dtype == last_row.dtype == torch.int32
            assert first_key.is_contiguous() and last_row.is_contiguous()
            for b in range(B):
                for i in range(Tq):
                    pos = i + Tk - Tq
                    seen = [j for j in range(pos + 1) if k_ids[b, j] == q_ids[b, i]]
                    assert first_key[b, i] == (seen[0] if seen else pos + 1), (b, i)
                for j in range(Tk):
                    rows = [i for i in range(Tq) if q_ids[b, i] == k_ids[b, j] and i + Tk - Tq >= j]
                    assert last_row[b, j] == (rows[-1] if rows else -1), (b, j)


def _doc_skip_off(monkeypatch, *args):
    monkeypatch.setattr(_launch, "_DOC_SKIP", False)
    try:
        return _loop_bounds(*args)
    finally:
        monkeypatch.setattr(_launch, "_DOC_SKIP", True)


@pytest.mark.parametrize("skip_bits", [0.0, 150.0])
def test_document_skip_packed(monkeypatch, skip_bits):
    B, T, H, Hkv, D = 2, 80, 2, 1, 16
    q, k, v, do = make_inputs(B, T, T, H, Hkv, D, torch.float32, seed=12)
    slopes = alibi_slopes(H, 2.0)  # gentle slopes: the ALiBi skip alone drops little
    ids = torch.tensor([[0] * 17 + [1] * 30 + [2] * 20 + [3] * 13, [7] * 25 + [3] * 35 + [9] * 20])
    args = (q, k, v, do, slopes, skip_bits, ids, ids)
    on, dbg_on = _loop_bounds(*args)
    off, dbg_off = _doc_skip_off(monkeypatch, *args)
    for name, x, y in zip(("out", "lse", "dq", "dk", "dv"), on, off, strict=True):
        assert torch.isfinite(x).all(), name
        assert rel(x, y) < 1e-6, name
    ref_out, ref_lse = reference(q, k, v, slopes, None, ids, ids)
    assert rel(on[0], ref_out) < TOL[torch.float32] and rel(on[1], ref_lse) < 2e-5
    for name in ("fwd_kv_start", "dq_kv_start"):  # (B * H, query blocks); batch 0 = rows 0, 1
        start_on, start_off = dbg_on[name], dbg_off[name]
        assert torch.all(start_on >= start_off) and start_on.sum() > start_off.sum(), name
        # the smallest first key of each 16-row block, rounded down to 16: batch 0 rows 32..47
        # start in document 1 (key 17), rows 48..79 in document 2 (key 47); batch 1 rows 64..79
        # are in document 9 (key 60)
        expect = torch.tensor([[0, 0, 16, 32, 32]] * 2 + [[0, 0, 16, 16, 48]] * 2)
        assert torch.equal(start_on, expect.to(torch.int32)), (name, start_on)
    end_on, end_off = dbg_on["dkdv_q_end"], dbg_off["dkdv_q_end"]  # (B * Hkv * group, key blocks)
    assert torch.all(end_on <= end_off) and end_on.sum() < end_off.sum()
    # batch 0, keys 0..15 (document 0): the last row that sees them is 16; keys 16..31: row 46
    assert torch.all(end_on[:2, 0] == 17) and torch.all(end_on[:2, 1] == 47), end_on
    assert torch.all(end_on[2:, 0] == 25) and torch.all(end_on[2:, 4] == T), end_on


def test_given_document_bounds_change_nothing_and_are_checked():
    B, T, H, Hkv, D = 2, 40, 2, 1, 16
    q, k, v, do = make_inputs(B, T, T, H, Hkv, D, torch.float32, seed=12)
    ids = torch.tensor([[0] * 15 + [1] * 25, [3] * 40])
    bounds = document_bounds(ids, ids)
    runs = []
    for given in (None, bounds):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = flash_alibi_attention(
            *leaves, alibi_slopes(H), q_seq_id=ids, k_seq_id=ids, doc_bounds=given
        )
        out.backward(do)
        runs.append((out, *(t.grad for t in leaves)))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    with pytest.raises(ValueError, match="doc_bounds needs q_seq_id and k_seq_id"):
        flash_alibi_attention(q, k, v, alibi_slopes(H), doc_bounds=bounds)
    int64_bounds = (bounds[0].long(), bounds[1])
    with pytest.raises(ValueError, match=r"int32 tensors of shapes \(2, 40\) and \(2, 40\)"):
        flash_alibi_attention(
            q, k, v, alibi_slopes(H), q_seq_id=ids, k_seq_id=ids, doc_bounds=int64_bounds
        )
    with pytest.raises(ValueError, match="need one batch size and Tq <= Tk"):
        document_bounds(ids, ids[:, :10])


@pytest.mark.parametrize(("bm", "bn"), [(16, 16), (32, 16), (16, 32)])
def test_document_skip_non_contiguous_ids(bm, bn):
    for kernel in ("fwd", "dkdv", "dq"):
        set_kernel_config(kernel, block_m=bm, block_n=bn)
    B, Tq, Tk, H, Hkv, D = 1, 50, 80, 2, 2, 16
    q, k, v, do = make_inputs(B, Tq, Tk, H, Hkv, D, torch.float32, seed=13 + bm)
    # ids 4 and 1 come back after other documents; -1 is padding
    k_ids = torch.tensor([[-1] * 6 + [4] * 14 + [1] * 15 + [4] * 12 + [2] * 20 + [1] * 13])
    q_ids = k_ids[:, -Tq:].clone()
    q_ids[0, 10] = 2  # at pos 40, before id 2's keys (47..66): sees no key at all
    q_ids[0, 3] = -1  # padding row: sees the padding keys 0..5
    check_against_reference(
        q, k, v, do, alibi_slopes(H, 2.0), TOL[torch.float32], q_seq_id=q_ids, k_seq_id=k_ids
    )


def test_decode_takes_a_key_norm_bound_from_the_caller():
    B, Tq, Tk, H, Hkv, D = 2, 1, 80, 4, 2, 16
    slopes = torch.tensor([4.0, 1.0, 0.25, 0.0625])
    q, k, v, _ = make_inputs(B, Tq, Tk, H, Hkv, D, torch.float32, seed=9)
    exact = k.norm(dim=-1).amax(dim=1)  # (B, Hkv): what a KV cache's running max holds
    set_kernel_config("decode", block_m=16, block_n=16, num_splits=5)
    try:
        found = flash_alibi_decode(q, k, v, slopes)  # finds the bound with a pass over K
        given = flash_alibi_decode(q, k, v, slopes, k_norm_max=exact)
        loose = flash_alibi_decode(q, k, v, slopes, k_norm_max=exact * 3)  # any upper bound works
    finally:
        reset_kernel_configs()
    assert torch.equal(given, found)
    assert rel(loose, found) < 1e-6
    with pytest.raises(ValueError, match=r"k_norm_max must be \(B, Hkv\) = \(2, 2\)"):
        flash_alibi_decode(q, k, v, slopes, k_norm_max=exact[:, :1])


def test_rounding_threshold_skips_more_and_stays_within_fp32_rounding():
    # skip_bits="rounding" = 25 + ceil(log2(Tk)) = 32 bits at Tk = 80: the skipped weights of a row
    # sum to < 2^-25 of its row sum, so results move by fp32 rounding only. Slopes as in
    # test_alibi_skip_changes_nothing_but_rounding (steep, middle, gentlest).
    B, Tq, Tk, H, Hkv, D = 1, 64, 80, 4, 2, 16
    slopes = torch.tensor([2.0**3, 2.0**2, 2.0**0, 2.0**-4])
    q, k, v, do = make_inputs(B, Tq, Tk, H, Hkv, D, torch.float32, seed=8)
    exact, dbg_exact = _loop_bounds(q, k, v, do, slopes, 150.0)
    rounded, dbg_rounded = _loop_bounds(q, k, v, do, slopes, 32.0)
    assert dbg_rounded["fwd_kv_start"].sum() > dbg_exact["fwd_kv_start"].sum()
    assert dbg_rounded["dkdv_q_end"].sum() < dbg_exact["dkdv_q_end"].sum()
    for name, x, y in zip(("out", "lse", "dq", "dk", "dv"), rounded, exact, strict=True):
        assert rel(x, y) < 1e-6, name
    set_kernel_config("fwd", block_m=16, block_n=16)
    try:
        by_name = flash_alibi_forward(q, k, v, slopes, skip_bits="rounding")[0]
    finally:
        reset_kernel_configs()
    assert torch.equal(by_name, rounded[0])
    with pytest.raises(ValueError, match="skip_bits must be None, a number or 'rounding'"):
        flash_alibi_forward(q, k, v, slopes, skip_bits="fast")


def test_decode_skip_matches_no_skip():
    B, Tq, Tk, H, Hkv, D = 1, 2, 80, 4, 1, 16
    slopes = torch.tensor([4.0, 1.0, 0.25, 0.0625])
    q, k, v, _ = make_inputs(B, Tq, Tk, H, Hkv, D, torch.float32, seed=6)
    set_kernel_config("decode", block_m=16, block_n=16, num_splits=5)
    on = flash_alibi_decode(q, k, v, slopes)
    off = flash_alibi_decode(q, k, v, slopes, skip_bits=0)
    rounding = flash_alibi_decode(q, k, v, slopes, skip_bits="rounding")  # the model's default
    assert rel(on, off) < 1e-6 and rel(rounding, off) < 1e-6
    assert rel(on, reference(q, k, v, slopes)[0]) < TOL[torch.float32]


def test_torch_compile_one_opaque_op():
    """Compiled, the attention is the custom ops (aot_eager traces forward and backward through
    their fake implementations, no graph break with fullgraph=True, no C++ compiler needed; on
    the GPU test inductor runs too). Eager, it is a plain autograd.Function over the same
    launchers and the same saved tensors: the same bits either way."""
    q, k, v, do = make_inputs(1, 20, 20, 2, 1, 16, torch.float32, seed=7)
    slopes = alibi_slopes(2)

    def fn(q, k, v):
        return (flash_alibi_attention(q, k, v, slopes) * do).sum()

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    compiled(*leaves).backward()
    eager = [t.clone().requires_grad_() for t in (q, k, v)]
    fn(*eager).backward()
    for a, b in zip(leaves, eager, strict=True):
        assert torch.equal(a.grad, b.grad)
    assert type(flash_alibi_attention(*eager, slopes).grad_fn).__name__ == "QKVAttentionBackward"

    def packed(qkv):
        return (flash_alibi_attention_packed(qkv, slopes, 2, 1) * do).sum()

    qkv = torch.cat([q.flatten(2), k.flatten(2), v.flatten(2)], dim=-1)
    a, b = qkv.clone().requires_grad_(), qkv.clone().requires_grad_()
    torch.compile(packed, backend="aot_eager", fullgraph=True)(a).backward()
    packed(b).backward()
    assert torch.equal(a.grad, b.grad)
    out = flash_alibi_attention_packed(b, slopes, 2, 1)
    assert type(out.grad_fn).__name__ == "PackedAttentionBackward"


def test_meta_and_fake_tensors_take_the_custom_ops():
    """Shape inference without data (meta tensors, FakeTensorMode) runs the ops' fake
    implementations, forward and backward, and launches nothing."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    q = torch.randn(2, 8, 4, 16, device="meta", requires_grad=True)
    kv = torch.randn(2, 8, 2, 16, device="meta")
    out = flash_alibi_attention(q, kv, kv, torch.ones(4, device="meta"))
    out.sum().backward()
    assert out.shape == q.shape and out.device.type == "meta" and q.grad.shape == q.shape
    with FakeTensorMode():
        qkv = torch.randn(2, 8, (4 + 2 * 2) * 16, requires_grad=True)
        out = flash_alibi_attention_packed(qkv, torch.ones(4), 4, 2)
        out.sum().backward()
        assert isinstance(out, FakeTensor) and out.shape == (2, 8, 4, 16)
        assert qkv.grad.shape == qkv.shape


def test_inference_calls_run_the_forward_alone():
    """A call autograd does not record (no_grad, inference_mode, or no input that requires grad)
    runs the forward launcher without an autograd.Function: the same bits, no graph."""
    q, k, v, _ = make_inputs(1, 20, 20, 2, 1, 16, torch.float32, seed=8)
    slopes = alibi_slopes(2)
    qkv = torch.cat([q.flatten(2), k.flatten(2), v.flatten(2)], dim=-1)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    trained = flash_alibi_attention(*leaves, slopes)
    packed_trained = flash_alibi_attention_packed(qkv.clone().requires_grad_(), slopes, 2, 1)
    assert trained.grad_fn is not None and packed_trained.grad_fn is not None
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            out = flash_alibi_attention(*leaves, slopes)
            packed = flash_alibi_attention_packed(qkv, slopes, 2, 1)
        assert out.grad_fn is None and packed.grad_fn is None
        assert torch.equal(out, trained) and torch.equal(packed, packed_trained)
    assert torch.equal(flash_alibi_attention(q, k, v, slopes), trained)  # nothing requires grad


def test_inference_launches_never_start_the_autotuner(monkeypatch):
    """`tune=False` (inference) launches the autotuner's pick when training tuned the case, else
    the default config; only `tune=True` (training) starts the autotuner. Here the autotuner and
    the kernel are stand-ins that record launches (Triton's autotuner does not run on a CPU)."""
    from mpt.kernels import _configs

    launches = []

    class Kernel:  # fn[grid](*args, **kwargs), as a @triton.jit function launches
        def __init__(self, name):
            self.name = name
            self.best_config = types.SimpleNamespace(
                all_kwargs=lambda: {"BLOCK_M": 7, "BLOCK_N": 9}
            )

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.name, kwargs))

    tuned = Kernel("autotuner")
    monkeypatch.setattr(_configs, "_PICKED", {})
    monkeypatch.setattr(_configs, "_fixed_config", lambda kernel, block_d: None)  # as on a GPU
    monkeypatch.setattr(_configs, "_autotuned", lambda kernel, block_d: tuned)
    fn, grid, consts = Kernel("kernel"), lambda m, n: (1, 1), {"HEAD_DIM": 16}
    default = _configs._default_config("fwd", 16)

    def launch(tune, key=(32, 32)):
        launches.clear()
        _configs._launch("fwd", fn, grid, (), consts, 16, key, tune)
        ((name, kwargs),) = launches
        return name, kwargs.get("BLOCK_M"), kwargs.get("BLOCK_N")

    assert launch(tune=False) == ("kernel", default["block_m"], default["block_n"])
    assert _configs._PICKED == {}
    assert launch(tune=True) == ("autotuner", None, None)  # the autotuner picks the blocks
    assert launch(tune=False) == ("kernel", 7, 9)  # training's pick, launched directly
    assert launch(tune=True) == ("kernel", 7, 9)
    assert launch(tune=False, key=(64, 64)) == ("kernel", default["block_m"], default["block_n"])


def test_compile_survives_dynamic_shapes():
    """A second shape makes dynamo recompile with symbolic sizes: the default softmax scale and
    skip_bits="rounding" are then derived from symbols; no graph break (fullgraph) and right
    values. (On an H100 this broke the packed op's second compile before the fix.) Lengths within
    one 16-row block: what dynamo traces does not depend on them (the kernels' multi-block paths
    are tested eagerly above), and the interpreter runs fewer programs."""
    torch._dynamo.reset()
    for H, Hkv, T in ((2, 2, 9), (2, 1, 12), (4, 1, 14)):
        D = 16
        slopes = alibi_slopes(H)
        qkv = torch.randn(1, T, (H + 2 * Hkv) * D, generator=torch.Generator().manual_seed(T))

        def packed(x, H=H, Hkv=Hkv, slopes=slopes):
            return flash_alibi_attention_packed(x, slopes, H, Hkv, skip_bits="rounding")

        def views(x, H=H, Hkv=Hkv, slopes=slopes, D=D):
            q, k, v = x.split([H * D, Hkv * D, Hkv * D], dim=-1)
            t = x.shape[1]
            q, k, v = q.view(1, t, H, D), k.view(1, t, Hkv, D), v.view(1, t, Hkv, D)
            return flash_alibi_attention(q, k, v, slopes, skip_bits="rounding")

        for fn in (packed, views):
            a, b = qkv.clone().requires_grad_(), qkv.clone().requires_grad_()
            out = torch.compile(fn, backend="aot_eager", fullgraph=True)(a)
            out.sum().backward()
            eager = fn(b)
            eager.sum().backward()
            assert rel(out, eager) < 1e-6 and rel(a.grad, b.grad) < 1e-6


def test_forward_has_no_autograd_and_empty_inputs():
    q, k, v, _ = make_inputs(1, 5, 9, 2, 2, 16, torch.float32, seed=8)
    q.requires_grad_()
    out, lse = flash_alibi_forward(q, k, v, alibi_slopes(2))
    assert not out.requires_grad and not lse.requires_grad
    empty = flash_alibi_attention(q[:, :0], k, v, alibi_slopes(2))
    assert empty.shape == (1, 0, 2, 16)


def _bad(**over):
    q, k, v, _ = make_inputs(1, 8, 8, 4, 2, 16, torch.float32, seed=9)
    args = {"q": q, "k": k, "v": v, "slopes": alibi_slopes(4)}
    kw = {key: over.pop(key) for key in list(over) if key not in args}
    args.update(over)
    return flash_alibi_attention(args["q"], args["k"], args["v"], args["slopes"], **kw)


_KV48 = torch.randn(1, 8, 2, 48)
_KV3 = torch.randn(1, 8, 3, 16)
_IDS7, _IDS8 = torch.zeros(1, 7, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long)
_D48 = r"D=48 .*\(16, 32, 64, 96, 112, 128\)"


@pytest.mark.parametrize(
    ("over", "exc", "match"),
    [
        ({"q": torch.randn(1, 8, 4, 48), "k": _KV48, "v": _KV48}, ValueError, _D48),
        ({"k": _KV3, "v": _KV3}, ValueError, "multiple of the 3"),
        ({"q": torch.randn(1, 9, 4, 16)}, ValueError, "Tq=9 .* Tk=8"),
        ({"k": torch.randn(1, 8, 2, 16).half()}, TypeError, "one dtype"),
        ({"q": torch.randn(1, 8, 4, 16).double()}, TypeError, "q must be bfloat16"),
        ({"q": torch.randn(8, 4, 16)}, ValueError, "q must be 4-D"),
        ({"v": torch.randn(1, 7, 2, 16)}, ValueError, "same shape"),
        ({"slopes": torch.ones(3)}, ValueError, r"slopes must have shape \(H,\)"),
        ({"q_seq_id": _IDS8}, ValueError, "both q_seq_id and k_seq_id"),
        ({"q_seq_id": torch.zeros(1, 8), "k_seq_id": torch.zeros(1, 8)}, TypeError, "integer"),
        ({"q_seq_id": _IDS7, "k_seq_id": _IDS8}, ValueError, r"q_seq_id must have shape \(1, 8\)"),
        ({"skip_bits": -1.0}, ValueError, "skip_bits"),
        ({"k": torch.randn(1, 8, 2, 16, device="meta")}, ValueError, "one device"),
    ],
)
def test_bad_inputs(over, exc, match):
    with pytest.raises(exc, match=match):
        _bad(**over)


def test_helpers():
    assert SUPPORTED_HEAD_DIMS == (16, 32, 64, 96, 112, 128)
    assert supported_head_dim(112) and not supported_head_dim(80)
    assert kernels_available()
    with pytest.raises(ValueError, match="unknown config keys"):
        set_kernel_config("fwd", block_k=3)
    with pytest.raises(ValueError, match="kernel must be one of"):
        set_kernel_config("attn", block_m=16)
    assert autotuned_configs(64, 128) == {}  # the interpreter runs one fixed config


def test_import_without_triton():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, mpt.kernels as K\n"
        "assert not K.kernels_available()\n"
        "q = torch.zeros(1, 4, 2, 16)\n"
        "try:\n"
        "    K.flash_alibi_attention(q, q, q, torch.ones(2))\n"
        "except ImportError as e:\n"
        "    assert 'mpt[triton]' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no ImportError')\n"
        "assert 'triton' not in sys.modules\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]


def test_slopes_helper_is_mpt_style():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0**-i for i in range(1, 9)]))
    assert math.isclose(alibi_slopes(2)[0].item(), 2.0**-4)
