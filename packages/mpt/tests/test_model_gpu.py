"""The whole model on a CUDA GPU: every available backend against the `torch` reference (bf16).

Skipped on machines without CUDA; run on a lent H100 after `tools/gpu-setup`.
"""

from __future__ import annotations

import pytest
import torch

from mpt import ATTENTION, MPTConfig, MPTForCausalLM
from mpt.attention import Case, why_unsupported

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU; run it on a lent H100 (tools/gpu-setup)",
)

SHAPE = dict(d_model=512, n_heads=8, n_layers=4, vocab_size=1000, max_seq_len=512)


def run(impl: str, ids, seq_id, **overrides):
    torch.manual_seed(0)
    model = MPTForCausalLM(
        MPTConfig(**{**SHAPE, **overrides}, attn_impl=impl, attn_fallback=None), device="cuda"
    )
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(ids, sequence_id=seq_id, labels=ids)
    out.loss.backward()
    grads = torch.cat([p.grad.flatten().float() for p in model.parameters()])
    return out.logits.float(), grads


def rel(x, ref):
    return float((x - ref).norm() / ref.norm())


@pytest.mark.parametrize("overrides", [{}, {"kv_n_heads": 2}, {"d_model": 896, "n_heads": 8}])
@pytest.mark.parametrize("impl", ["triton", "flex", "sdpa", "flash"])
def test_backend_matches_torch_in_bf16(impl, overrides):
    head_dim = overrides.get("d_model", 512) // 8
    case = Case(device="cuda", dtype=torch.bfloat16, head_dim=head_dim, alibi=True, backward=True)
    reason = why_unsupported(ATTENTION[impl], case)
    if reason:
        pytest.skip(f"{impl} {reason}")
    ids = torch.randint(0, 1000, (4, 300), device="cuda")
    seq_id = None
    if impl != "flash":
        seq_id = (torch.arange(300, device="cuda") >= 120).long().expand(4, 300)
    logits, grads = run(impl, ids, seq_id, **overrides)
    ref_logits, ref_grads = run("torch", ids, seq_id, **overrides)
    # bf16 activations through 4 layers: both runs round differently at every layer; errors of a
    # few 1e-3 relative are bf16 rounding, a wrong mask or bias shows up as > 1e-1.
    assert rel(logits, ref_logits) < 2e-2
    assert rel(grads, ref_grads) < 5e-2
