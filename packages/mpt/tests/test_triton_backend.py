"""The whole model with attn_impl="triton" against the `torch` backend, on CPU (TRITON_INTERPRET=1).

fp32 everywhere (the interpreter computes in fp32), so logits and gradients agree to ~1e-6; the
tolerances below leave room for the different summation order of the online softmax.

The interpreter's time grows with the programs it runs (batch x heads x 16-row blocks, per layer),
so these model-level tests use 2 layers and at most two 16-row blocks; the kernels' own paths
(three and more blocks, unequal blocks, every head dim and dtype) are test_flash_alibi.py's.
"""

import os

import pytest
import torch

if torch.cuda.is_available():  # keep TRITON_INTERPRET out of a GPU test session
    pytest.skip("interpreter tests run on CPU-only machines", allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (mpt.kernels imports it lazily)
pytest.importorskip("triton", reason="triton is not installed (optional dependency mpt[triton])")


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # other test modules may have removed it


@pytest.mark.parametrize(
    "overrides",
    [{}, {"kv_n_heads": 2}, {"kv_n_heads": 1, "n_heads": 2}, {"attn_skip_bits": "rounding"}],
)
def test_logits_and_gradients_match_the_torch_backend(tiny_mpt, overrides):
    # two 16-row blocks, the second a masked tail; row 0's second document starts at key 16, so
    # its second query block skips key block 0 (the document skip)
    ids = torch.randint(0, 101, (2, 24))
    seq = torch.tensor([[0] * 16 + [1] * 8, [0] * 24])
    results = {}
    for impl in ("triton", "torch"):
        model = tiny_mpt(attn_impl=impl, attn_fallback=None, **overrides).train()
        out = model(ids, sequence_id=seq, labels=ids)
        out.loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results[impl] = (out.logits.detach(), grads)
    torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-5, atol=1e-5)
    # gradients: another summation order (online softmax), compared in the norm
    grad_err = (results["triton"][1] - results["torch"][1]).norm() / results["torch"][1].norm()
    assert float(grad_err) < 1e-5


@pytest.mark.parametrize("qk_ln", [False, True])  # the packed-qkv op and the views op
def test_document_bounds_are_computed_once_per_forward(tiny_mpt, monkeypatch, qk_ln):
    """Every layer and its backward reuse the bounds the backend prepared once per forward; the
    numbers are those of the kernels finding the bounds themselves in every call."""
    import dataclasses

    from mpt.attention import ATTENTION
    from mpt.kernels import _launch, flash_alibi

    calls = []
    real = _launch._doc_bounds

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(_launch, "_doc_bounds", counting)
    monkeypatch.setattr(flash_alibi, "_doc_bounds", counting)
    # Row 0's second document starts at key 16: its query block skips key block 0 (forward and
    # dq) and key block 0's programs stop after query block 0 (dk/dv), so the bounds are used.
    # Two heads of 16: what is counted and compared does not depend on the heads (their handling
    # in the kernels is the test above's and test_flash_alibi.py's), and the interpreter runs
    # half the programs.
    ids = torch.randint(0, 101, (2, 24))
    seq = torch.tensor([[0] * 16 + [1] * 8, [0] * 5 + [1] * 19])
    shape = dict(d_model=32, n_heads=2, n_layers=2)

    def run():
        calls.clear()
        model = tiny_mpt(attn_impl="triton", attn_fallback=None, qk_ln=qk_ln, **shape).train()
        out = model(ids, sequence_id=seq, labels=ids)
        out.loss.backward()
        return len(calls), out.logits.detach(), [p.grad for p in model.parameters()]

    once, logits, grads = run()
    assert once == 1
    unprepared = dataclasses.replace(ATTENTION["triton"], prepare=None)
    monkeypatch.setitem(ATTENTION, "triton", unprepared)
    every, logits2, grads2 = run()
    assert every == 2 * 2  # each layer's forward and backward
    assert torch.equal(logits, logits2)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads2, strict=True))


def test_generation_with_the_decode_kernel_matches_the_torch_backend(tiny_mpt):
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    out = {}
    for impl in ("triton", "torch"):
        model = tiny_mpt(attn_impl=impl, attn_fallback=None, kv_n_heads=2)
        out[impl] = model.generate(prompts, max_new_tokens=6)
    assert torch.equal(out["triton"], out["torch"])


def test_a_head_dim_the_kernel_cannot_serve_is_named(tiny_mpt):
    model = tiny_mpt(attn_impl="triton", attn_fallback=None, d_model=80, n_heads=1)
    with pytest.raises(ValueError, match=r"does not support head dim 80 \(supported: \(16, 32"):
        model(torch.randint(0, 101, (1, 8)))


@pytest.mark.parametrize("qk_ln", [False, True])  # the packed-qkv op and the views op
def test_whole_model_with_packed_documents_compiles_into_one_graph(tiny_mpt, qk_ln):
    """torch.compile(model, fullgraph=True) with sequence ids: the document bounds prepared once
    per forward, the custom ops and their backward trace without a graph break, same numbers."""
    torch._dynamo.reset()
    # One 16-row block with a masked tail and two heads of 16: what is compiled does not depend
    # on the length or the heads, and the kernels' multi-block and multi-head paths are tested
    # eagerly above and in test_flash_alibi.py.
    ids = torch.randint(0, 101, (2, 13))
    seq = torch.tensor([[0] * 6 + [1] * 7, [0] * 13])
    grads = {}
    for compiled in (False, True):
        model = tiny_mpt(
            attn_impl="triton", attn_fallback=None, qk_ln=qk_ln, d_model=32, n_heads=2
        ).train()
        run = torch.compile(model, backend="aot_eager", fullgraph=True) if compiled else model
        out = run(ids, sequence_id=seq, labels=ids)
        out.loss.backward()
        grads[compiled] = (out.loss.detach(), [p.grad for p in model.parameters()])
    torch.testing.assert_close(grads[True][0], grads[False][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(grads[True][1], grads[False][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
