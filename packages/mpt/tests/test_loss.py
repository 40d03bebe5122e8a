"""The chunked LM-head loss equals the plain one, in value and in every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mpt import causal_lm_loss, chunked_lm_head_loss


def both(hidden, weight, labels, **kw):
    scale = kw.get("logit_scale")
    logits = F.linear(hidden, weight) * (1.0 if scale is None else scale)
    return causal_lm_loss(logits, labels), chunked_lm_head_loss(hidden, weight, labels, **kw)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
@pytest.mark.parametrize("logit_scale", [None, 0.5])
def test_value_and_gradients_match_the_plain_loss(chunk_size, logit_scale):
    g = torch.Generator().manual_seed(chunk_size)
    hidden = torch.randn(3, 11, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 50, (3, 11), generator=g)
    labels[0, :5] = -100  # a prompt without loss
    plain, chunked = both(hidden, weight, labels, chunk_size=chunk_size, logit_scale=logit_scale)
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-6)
    grads_plain = torch.autograd.grad(plain * 3, (hidden, weight))
    grads_chunked = torch.autograd.grad(chunked * 3, (hidden, weight))
    for a, b in zip(grads_chunked, grads_plain, strict=True):
        assert float((a - b).norm() / b.norm()) < 1e-6  # fp32 sums in another order


def test_no_counted_token_gives_loss_zero_both_ways(tiny_mpt):
    model = tiny_mpt().train()
    ids = torch.randint(0, 101, (2, 6))
    labels = torch.full_like(ids, -100)  # an all-prompt micro-batch
    for return_logits in (True, False):  # was: NaN with the logits, 0 through the chunked path
        model.zero_grad()
        loss = model(ids, labels=labels, return_logits=return_logits).loss
        loss.backward()
        assert float(loss.detach()) == 0.0, return_logits
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_model_loss_without_logits(tiny_mpt):
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[:, :3] = -100
    losses, grads = [], []
    for return_logits in (True, False):
        model = tiny_mpt().train()
        out = model(ids, labels=labels, return_logits=return_logits)
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert (out.logits is None) == (not return_logits)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)
    # fp32 sums in another order: equal to ~1e-7 relative in the norm (single elements near zero
    # can differ more in relative terms, so compare the whole vector)
    assert float((grads[1] - grads[0]).norm() / grads[0].norm()) < 1e-5
    with pytest.raises(ValueError, match="return_logits=False needs labels"):
        tiny_mpt()(ids, return_logits=False)


def test_under_autocast_the_matmuls_run_in_bf16():
    hidden = torch.randn(2, 9, 32, requires_grad=True)
    weight = torch.randn(40, 32, requires_grad=True)
    labels = torch.randint(0, 40, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, chunked = both(hidden, weight, labels, chunk_size=5)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, rtol=2e-2, atol=2e-2)  # bf16 logits in both
    chunked.backward()
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32
