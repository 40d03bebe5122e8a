"""The attention backends against a float64 reference, and how the model chooses among them."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from mpt import ATTENTION, alibi_slopes
from mpt.attention import AttentionMeta, Capabilities, Case, resolve, why_unsupported
from mpt.attention.base import Backend


def reference(q, k, v, slopes, scale, q_ids=None, k_ids=None):
    """Float64 attention written as plainly as possible: one query row at a time."""
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    out = torch.zeros(B, Tq, H, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            kv = h // (H // Hkv)
            for i in range(Tq):
                pos = i + Tk - Tq
                keys = [
                    j
                    for j in range(pos + 1)
                    if k_ids is None or int(q_ids[b, i]) == int(k_ids[b, j])
                ]
                s = torch.stack([q[b, i, h].double() @ k[b, j, kv].double() * scale for j in keys])
                if slopes is not None:
                    s = s - slopes[h].double() * torch.tensor([pos - j for j in keys]).double()
                p = torch.softmax(s, dim=0)
                out[b, i, h] = sum(p[n] * v[b, j, kv].double() for n, j in enumerate(keys))
    return out


def rel_err(x, ref):
    return float((x.double() - ref).norm() / ref.norm())


CASES = {
    "plain": dict(B=2, Tq=9, Tk=9, H=4, Hkv=4, docs=False),
    "gqa": dict(B=2, Tq=9, Tk=9, H=4, Hkv=2, docs=False),
    "mqa": dict(B=1, Tq=7, Tk=7, H=4, Hkv=1, docs=False),
    "documents": dict(B=2, Tq=11, Tk=11, H=4, Hkv=4, docs=True),
    "kv_cache": dict(B=2, Tq=3, Tk=10, H=4, Hkv=2, docs=True),
}


def make_inputs(B, Tq, Tk, H, Hkv, docs, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Tq, H, D, generator=g)
    k = torch.randn(B, Tk, Hkv, D, generator=g)
    v = torch.randn(B, Tk, Hkv, D, generator=g)
    k_ids = q_ids = None
    if docs:
        # sorted random document ids, with a left-padding run of -1 in row 0
        k_ids = torch.randint(0, 3, (B, Tk), generator=g).sort(dim=1).values
        k_ids[0, :2] = -1
        q_ids = k_ids[:, Tk - Tq :]
    return q, k, v, q_ids, k_ids


@pytest.mark.parametrize("name", ["torch", "sdpa", "flex"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_backends_match_float64_reference(name, case):
    spec = CASES[case]
    q, k, v, q_ids, k_ids = make_inputs(**spec)
    slopes = alibi_slopes(spec["H"], 8) * 4  # steeper than usual so ALiBi visibly matters
    scale = 1 / math.sqrt(q.shape[-1])
    meta = AttentionMeta(slopes=slopes, softmax_scale=scale, q_seq_id=q_ids, k_seq_id=k_ids)
    out = ATTENTION[name].fn(q, k, v, meta)
    ref = reference(q, k, v, slopes, scale, q_ids, k_ids)
    # fp32 products over D=16 and a softmax over <= 11 keys: rounding near 1e-7 relative
    assert out.shape == q.shape
    assert rel_err(out, ref) < 1e-5


def test_without_alibi_every_backend_is_plain_causal_attention():
    q, k, v, _, _ = make_inputs(B=1, Tq=8, Tk=8, H=4, Hkv=4, docs=False)
    meta = AttentionMeta(slopes=None, softmax_scale=0.25)
    ref = reference(q, k, v, None, 0.25)
    for name in ("torch", "sdpa", "flex"):
        assert rel_err(ATTENTION[name].fn(q, k, v, meta), ref) < 1e-5, name


def test_every_backend_declares_what_it_supports():
    assert set(ATTENTION) == {"torch", "sdpa", "flex", "flash", "triton"}
    for backend in ATTENTION.values():
        assert isinstance(backend.capabilities(), Capabilities)
    assert not ATTENTION["flex"].capabilities().dropout
    flash = ATTENTION["flash"].capabilities()
    assert not flash.document_mask and flash.devices == ("cuda",)


CPU_CASE = Case(device="cpu", dtype=torch.float32, head_dim=16, alibi=True)


def test_resolve_falls_back_with_one_log_line(caplog):
    case = Case(device="cpu", dtype=torch.float32, head_dim=16, alibi=True, dropout=True)
    with caplog.at_level(logging.WARNING, logger="mpt.attention"):
        first = resolve(ATTENTION, "flex", "torch", case)
        again = resolve(ATTENTION, "flex", "torch", case)
    assert first.name == again.name == "torch"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "'flex' has no attention dropout" in lines[0], lines


def test_resolve_raises_when_no_fallback_is_allowed():
    case = Case(device="cpu", dtype=torch.float32, head_dim=16, alibi=True, document_mask=True)
    with pytest.raises(ValueError, match="'flash' cannot serve.*(flash-attn|cuda)"):
        resolve(ATTENTION, "flash", None, case)
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        resolve(ATTENTION, "nope", None, CPU_CASE)


def test_a_backend_without_alibi_is_never_used_for_an_alibi_model():
    no_alibi = Backend(name="plain", fn=lambda q, k, v, m: q, caps=Capabilities(alibi=False))
    assert why_unsupported(no_alibi, CPU_CASE) == "has no ALiBi"
    backends = {"plain": no_alibi, "torch": ATTENTION["torch"]}
    with pytest.raises(ValueError, match="has no ALiBi"):
        resolve(backends, "plain", None, CPU_CASE)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = why_unsupported(ATTENTION["triton"], CPU_CASE)
    assert reason is not None and ("cuda" in reason or "triton" in reason)
