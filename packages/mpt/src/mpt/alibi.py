"""ALiBi slopes exactly as MPT (llm-foundry's `gen_slopes`) and transformers' MPT compute them.

For n heads, take the next power of two N >= n and slopes 2^(-alibi_bias_max * k / N) for
k = 1..N. When n is not a power of two (12, 20 or 40 heads), interleave: the odd-indexed slopes
first, then the even-indexed ones, and keep the first n. The bias of query position i on key j is
-slope * (i - j); transformers writes it as slope * (j - (max_seq_len - 1)), which differs by a
constant per row and so gives the same softmax.
"""

from __future__ import annotations

import math

import torch

__all__ = ["alibi_slopes", "alibi_bias"]


def alibi_slopes(n_heads: int, alibi_bias_max: float = 8, device=None) -> torch.Tensor:
    """The (n_heads,) float32 slopes, in head order."""
    if n_heads < 1:
        raise ValueError(f"n_heads must be positive, got {n_heads}")
    n_pow2 = 2 ** math.ceil(math.log2(n_heads))
    exponents = torch.arange(1, n_pow2 + 1, dtype=torch.float32, device=device)
    slopes = 1.0 / torch.pow(2, exponents * (alibi_bias_max / n_pow2))
    if n_pow2 != n_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
    return slopes


def alibi_bias(slopes: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
    """The (H, q_len, k_len) float32 bias -slope * (pos_i - j), queries aligned to the last keys."""
    pos = torch.arange(k_len - q_len, k_len, device=slopes.device, dtype=torch.float32)
    keys = torch.arange(k_len, device=slopes.device, dtype=torch.float32)
    return slopes.float()[:, None, None] * (keys[None, None, :] - pos[None, :, None])
