"""Next-token cross-entropy, plain and fused with the LM head in chunks.

`causal_lm_loss(logits, labels)` is the plain form: the mean cross-entropy of each position's
logits against the next token's label, over the labels that are not `ignore_index`.

`chunked_lm_head_loss(hidden, weight, labels)` gives the same value without ever holding the
(B, T, vocab) logits: it walks the tokens in chunks, computes each chunk's logits, loss and the
gradients of the hidden states and of the head's weight, and keeps only those gradients. For a
50k vocabulary at 16k tokens per micro-batch that saves the bf16 logits, their fp32 copy and their
gradient (~6.6 GB), so larger micro-batches fit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["causal_lm_loss", "chunked_lm_head_loss", "shift_labels"]


def shift_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """(B, T) targets for each position: the next position's label, `ignore_index` at the end."""
    targets = torch.full_like(labels, ignore_index)
    targets[:, :-1] = labels[:, 1:]
    return targets


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
    """Mean next-token cross-entropy; `labels` (B, T) aligned with the inputs, -100 where no loss.

    A batch with no counted token (all prompt, or T = 1) has loss 0 and zero gradients, not NaN,
    as in `chunked_lm_head_loss`."""
    targets = labels[:, 1:].reshape(-1)
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    total = F.cross_entropy(flat, targets, ignore_index=ignore_index, reduction="sum")
    return total / (targets != ignore_index).sum().clamp(min=1)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """loss = mean CE(hidden @ weight.T * scale, targets); gradients computed chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, scale, chunk_size, ignore_index, compute_dtype):
        # hidden (N, d), weight (V, d), targets (N,)
        count = (targets != ignore_index).sum().clamp(min=1).to(torch.float32)
        need_grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        w = weight.to(compute_dtype)
        grad_hidden = torch.empty_like(hidden, dtype=compute_dtype)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size].to(compute_dtype)  # (n, d)
            t = targets[start : start + chunk_size]
            logits = (h @ w.t()).float() * scale  # (n, V)
            keep = t != ignore_index
            safe = torch.where(keep, t, 0)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            total += torch.where(keep, lse - picked, 0.0).sum()
            if not need_grads:
                continue
            # d loss / d logits = (softmax - onehot) / count on kept rows, 0 elsewhere
            grad = torch.softmax(logits, dim=-1)
            grad.scatter_add_(1, safe[:, None], torch.full_like(picked[:, None], -1.0))
            grad *= (keep.float() * scale / count)[:, None]
            grad = grad.to(compute_dtype)
            grad_hidden[start : start + chunk_size] = grad @ w
            grad_weight += (grad.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        return (
            (grad_hidden * grad_loss).to(hidden_dtype),
            (grad_weight * grad_loss).to(weight_dtype),
            None,
            None,
            None,
            None,
            None,
        )


def chunked_lm_head_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    logit_scale: float | None = None,
    chunk_size: int = 4096,
    ignore_index: int = -100,
) -> torch.Tensor:
    """`causal_lm_loss(F.linear(hidden, weight) * logit_scale, labels)` without the full logits.

    hidden (B, T, d), weight (vocab, d), labels (B, T) aligned with the inputs. Under autocast the
    matmuls run in the autocast dtype (as `F.linear` would) and the softmax in fp32.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    kind = hidden.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else hidden.dtype
    targets = shift_labels(labels, ignore_index).reshape(-1)
    flat = hidden.reshape(-1, hidden.shape[-1])
    scale = 1.0 if logit_scale is None else float(logit_scale)
    with torch.autocast(kind, enabled=False):
        return _ChunkedLinearCrossEntropy.apply(
            flat, weight, targets, scale, chunk_size, ignore_index, dtype
        )
