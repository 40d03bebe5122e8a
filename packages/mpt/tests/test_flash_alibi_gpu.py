"""The Triton causal ALiBi FlashAttention on a CUDA GPU at full shapes (skipped without one).

Inputs are bf16 (one case fp16); the reference is fp32 torch math (TF32 off) computed in blocks
of query rows, so that no (B, H, S, S) tensor is held. Errors are relative Frobenius norms. On the
GPU the kernels multiply bf16 operands with fp32 accumulation and round P to bf16 before P V (as
FlashAttention does), so on top of the output rounding (~3e-3) there is ~3e-3 from P; we allow
1.5e-2 for outputs and 2.5e-2 for gradients (dS = P (dP - delta) loses a little more), and 1e-4
for the lse (fp32 all along). Correctness tests use the default (non-autotuned) configs so that
the run stays short; `test_autotuned_config_is_correct` runs the autotuner once.
"""

import gc
import os

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU; the CPU interpreter tests are in test_flash_alibi.py",
    ),
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
        reason="TRITON_INTERPRET is set: GPU tests must compile the kernels",
    ),
]

triton = pytest.importorskip("triton", reason="triton is not installed (mpt[triton])")

from mpt.kernels import (  # noqa: E402
    _configs,
    autotuned_configs,
    flash_alibi_attention,
    flash_alibi_attention_packed,
    flash_alibi_decode,
    flash_alibi_forward,
    reset_kernel_configs,
    set_autotune,
)
from mpt.kernels._launch import KernelArgs, _backward_impl, _forward_impl  # noqa: E402

OUT_TOL, GRAD_TOL, LSE_TOL = 1.5e-2, 2.5e-2, 1e-4


def alibi_slopes(n_heads: int, bias_max: float = 8.0) -> torch.Tensor:
    return torch.tensor(
        [2.0 ** (-bias_max * (h + 1) / n_heads) for h in range(n_heads)], device="cuda"
    )


def rel(x, ref):
    x, ref = x.float(), ref.float()
    return ((x - ref).norm() / ref.norm()).item()


def chunked_reference(q, k, v, do, slopes, q_seq_id=None, k_seq_id=None, chunk=256):
    """fp32 (out, lse, dq, dk, dv), one block of query rows at a time."""
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    kf = k.detach().float().requires_grad_()
    vf = v.detach().float().requires_grad_()
    outs, lses, dqs = [], [], []
    for i0 in range(0, Tq, chunk):
        i1 = min(i0 + chunk, Tq)
        qc = q[:, i0:i1].detach().float().requires_grad_()
        kk = kf.repeat_interleave(H // Hkv, dim=2)
        vv = vf.repeat_interleave(H // Hkv, dim=2)
        s = torch.einsum("bihd,bjhd->bhij", qc, kk) * D**-0.5
        pos = torch.arange(i0, i1, device="cuda") + (Tk - Tq)
        dist = (pos[:, None] - torch.arange(Tk, device="cuda")[None, :]).float()
        s = s - slopes[None, :, None, None] * dist
        visible = (dist >= 0)[None, None]
        if q_seq_id is not None:
            visible = visible & (q_seq_id[:, None, i0:i1, None] == k_seq_id[:, None, None, :])
        s = s.masked_fill(~visible, float("-inf"))
        any_visible = visible.any(dim=-1, keepdim=True)
        lses.append(torch.logsumexp(s, dim=-1).detach())
        p = torch.softmax(s.masked_fill(~any_visible, 0.0), dim=-1) * any_visible
        o = torch.einsum("bhij,bjhd->bihd", p, vv)
        o.backward(do[:, i0:i1].float())
        outs.append(o.detach())
        dqs.append(qc.grad)
    return torch.cat(outs, 1), torch.cat(lses, 2), torch.cat(dqs, 1), kf.grad, vf.grad


def make_inputs(B, Tq, Tk, H, Hkv, D, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [
        torch.randn(shape, generator=g, device="cuda", dtype=dtype)
        for shape in ((B, Tq, H, D), (B, Tk, Hkv, D), (B, Tk, Hkv, D), (B, Tq, H, D))
    ]


@pytest.fixture(autouse=True)
def _fixed_configs():
    set_autotune(False)
    reset_kernel_configs()
    yield
    set_autotune(True)
    reset_kernel_configs()


def check(q, k, v, do, slopes, q_seq_id=None, k_seq_id=None):
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_alibi_attention(*leaves, slopes, q_seq_id=q_seq_id, k_seq_id=k_seq_id)
    out.backward(do)
    _, lse = flash_alibi_forward(q, k, v, slopes, q_seq_id=q_seq_id, k_seq_id=k_seq_id)
    ref = chunked_reference(q, k, v, do, slopes, q_seq_id, k_seq_id)
    got = (out, lse, *(t.grad for t in leaves))
    for name, x, r, tol in zip(
        ("out", "lse", "dq", "dk", "dv"), got, ref, (OUT_TOL, LSE_TOL, *[GRAD_TOL] * 3), strict=True
    ):
        finite = torch.isfinite(r)
        assert torch.equal(torch.isfinite(x), finite), name
        assert rel(x[finite], r[finite]) < tol, (name, rel(x[finite], r[finite]))
    return got


@pytest.mark.parametrize(
    ("B", "Tq", "Tk", "H", "Hkv", "D"),
    [
        (2, 2048, 2048, 16, 16, 128),
        (1, 2048, 2048, 64, 64, 112),  # MPT-30B heads
        (2, 1024, 1024, 32, 32, 64),
        (2, 1000, 1000, 16, 4, 128),  # grouped-query, length not a multiple of the block
        (1, 777, 777, 8, 1, 64),  # multi-query
        (2, 300, 1500, 16, 16, 128),  # continuation (Tq < Tk)
    ],
)
def test_matches_reference(B, Tq, Tk, H, Hkv, D):
    q, k, v, do = make_inputs(B, Tq, Tk, H, Hkv, D, seed=Tq + D)
    check(q, k, v, do, alibi_slopes(H))


def test_fp16_and_packed_documents():
    B, T, H, D = 2, 2048, 16, 64
    q, k, v, do = make_inputs(B, T, T, H, H, D, dtype=torch.float16, seed=1)
    ids = torch.zeros(B, T, dtype=torch.long, device="cuda")
    ids[0] = torch.arange(T, device="cuda") // 300  # documents of 300 tokens
    ids[1, :700] = -1  # left padding
    check(q, k, v, do, alibi_slopes(H), ids, ids)


def test_fused_qkv_views():
    B, T, H, D = 2, 1024, 16, 128
    qkv = torch.randn(B, T, 3, H, D, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.unbind(2)
    do = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)
    check(q, k, v, do, alibi_slopes(H))


@pytest.mark.parametrize(("H", "Hkv"), [(16, 16), (16, 4)])
def test_packed_qkv_equals_the_views_path(H, Hkv):
    """The packed op writes [dq | dk | dv] straight into one buffer: the same numbers, bit for bit,
    as the separate-views op (the same kernels with other output strides), under inductor too."""
    B, T, D = 2, 1024, 128
    qkv = torch.randn(B, T, (H + 2 * Hkv) * D, device="cuda", dtype=torch.bfloat16)
    do = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)
    slopes = alibi_slopes(H)

    def packed(x):
        return flash_alibi_attention_packed(x, slopes, H, Hkv)

    a = qkv.clone().requires_grad_()
    out = torch.compile(packed, fullgraph=True)(a)
    out.backward(do)
    views = [t.detach().clone().requires_grad_() for t in qkv.split([H * D, Hkv * D, Hkv * D], -1)]
    ref = flash_alibi_attention(*(t.view(B, T, -1, D) for t in views), slopes)
    ref.backward(do)
    grads = torch.cat([t.grad for t in views], dim=-1)
    # against the fp32 reference first (the packed path must be right), then against the views
    q, k, v = (t.detach().view(B, T, -1, D) for t in views)
    want = chunked_reference(q, k, v, do, slopes)
    got = (
        out,
        a.grad[..., : H * D],
        a.grad[..., H * D : (H + Hkv) * D],
        a.grad[..., (H + Hkv) * D :],
    )
    names, wants, tols = ("out", "dq", "dk", "dv"), (want[0], *want[2:]), (OUT_TOL, *[GRAD_TOL] * 3)
    for name, x, r, tol in zip(names, got, wants, tols, strict=True):
        assert rel(x.reshape(r.shape), r) < tol, (name, rel(x.reshape(r.shape), r))
    diffs = {
        n: (x - y).abs().max().item() for n, x, y in (("out", out, ref), ("dqkv", a.grad, grads))
    }
    assert torch.equal(out, ref) and torch.equal(a.grad, grads), diffs


def test_alibi_skip_at_long_sequences():
    B, T, H, D = 1, 4096, 8, 128  # slopes 2^-1 .. 2^-8 (MPT, alibi_bias_max 8)
    q, k, v, do = make_inputs(B, T, T, H, H, D, seed=2)
    slopes = alibi_slopes(H)
    reset_kernel_configs()
    results, debugs = [], []
    for bits in (150.0, 0.0):
        debug = {}
        args = KernelArgs(slopes, D**-0.5, None, None, bits)
        fwd = _forward_impl(q, k, v, args, debug)
        grads = _backward_impl(do, q, k, v, fwd, args, debug)
        results.append((fwd.out, fwd.lse, *grads))
        debugs.append(debug)
    assert debugs[0]["fwd_kv_start"][0].max() > 2048  # the steepest head skips most keys
    assert debugs[0]["dq_kv_start"][0].max() > 2048
    assert debugs[0]["dkdv_q_end"][0].min() < T // 2
    for name, x, y in zip(("out", "lse", "dq", "dk", "dv"), *results, strict=True):
        assert rel(x, y) < 2e-3, name  # accumulation order only (bf16 outputs)
    ref = chunked_reference(q, k, v, do, slopes)
    assert rel(results[0][0], ref[0]) < OUT_TOL


@pytest.mark.parametrize(("H", "Hkv", "Tq"), [(32, 8, 1), (16, 1, 1), (16, 16, 4)])
def test_decode(H, Hkv, Tq):
    B, Tk, D = 4, 4096, 128
    q, k, v, _ = make_inputs(B, Tq, Tk, H, Hkv, D, seed=3)
    ids = torch.zeros(B, Tk, dtype=torch.long, device="cuda")
    for b, pad in enumerate((0, 17, 1000, 3000)):
        ids[b, :pad] = -1
    slopes = alibi_slopes(H)
    out = flash_alibi_decode(q, k, v, slopes, k_seq_id=ids)
    ref = chunked_reference(q, k, v, torch.zeros_like(q), slopes, ids[:, -Tq:], ids)[0]
    assert rel(out, ref) < OUT_TOL
    no_skip = flash_alibi_decode(q, k, v, slopes, k_seq_id=ids, skip_bits=None)
    assert rel(out, no_skip) < 2e-3


def test_torch_compile_inductor():
    B, T, H, D = 1, 512, 8, 64
    q, k, v, do = make_inputs(B, T, T, H, H, D, seed=4)
    slopes = alibi_slopes(H)

    def fn(q, k, v):
        return (flash_alibi_attention(q, k, v, slopes).float() * do.float()).sum()

    compiled = torch.compile(fn, fullgraph=True)
    a = [t.clone().requires_grad_() for t in (q, k, v)]
    b = [t.clone().requires_grad_() for t in (q, k, v)]
    compiled(*a).backward()
    fn(*b).backward()
    for x, y in zip(a, b, strict=True):
        assert rel(x.grad, y.grad) < 1e-3


def test_autotuned_config_is_correct():
    """The autotuner's pick is right, and the later calls, which launch that pick directly
    (without the autotuner), give the same bits."""
    set_autotune(True)
    q, k, v, do = make_inputs(1, 1024, 1024, 8, 8, 64, seed=5)
    first = check(q, k, v, do, alibi_slopes(8))
    assert {case[0] for case in _configs._PICKED} >= {"fwd", "dkdv", "dq"}
    again = check(q, k, v, do, alibi_slopes(8))
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), first, again, strict=True):
        assert torch.equal(a, b), name


def test_inference_calls_never_autotune():
    """With autotuning on, inference calls (no_grad, new lengths as in evaluation) launch the
    default config and tune nothing; once a training call has tuned a case, inference at that
    case launches its pick: the training forward's bits."""
    set_autotune(True)
    _configs._PICKED.clear()
    slopes = alibi_slopes(8)
    for T in (200, 333, 700):
        q, k, v, _ = make_inputs(2, T, T, 8, 8, 64, seed=T)
        with torch.no_grad():
            out = flash_alibi_attention(q, k, v, slopes)
        ref = chunked_reference(q, k, v, torch.zeros_like(q), slopes)[0]
        assert rel(out, ref) < OUT_TOL
    assert _configs._PICKED == {} and autotuned_configs(64, 333) == {}
    q, k, v, do = make_inputs(2, 700, 700, 8, 8, 64, seed=3)
    trained = check(q, k, v, do, slopes)
    assert {case[0] for case in _configs._PICKED} >= {"fwd", "dkdv", "dq"}
    with torch.no_grad():
        assert torch.equal(flash_alibi_attention(q, k, v, slopes), trained[0])


def test_peak_memory_stays_near_inputs_outputs_and_grads():
    B, S, H, D = 1, 16384, 16, 128
    q, k, v, do = make_inputs(B, S, S, H, H, D, seed=6)
    slopes = alibi_slopes(H)
    for t in (q, k, v):
        t.requires_grad_()
    flash_alibi_attention(q, k, v, slopes).backward(do)  # compile first
    for t in (q, k, v):
        t.grad = None
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    # Relative to what is allocated now (q, k, v, dout, and whatever earlier tests left behind).
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    flash_alibi_attention(q, k, v, slopes).backward(do)
    torch.cuda.synchronize()
    added = torch.cuda.max_memory_allocated() - base
    tensor_bytes = q.numel() * q.element_size()
    # q, k, v, out, dout, dq, dk, dv, plus fp32 (B, H, S) rows: lse, delta, the skip's row bound
    needed = 8 * tensor_bytes + 3 * B * H * S * 4
    assert added + 4 * tensor_bytes <= 1.10 * needed, (added / 2**20, needed / 2**20)
