"""Attention backends for MPT, chosen by name from a plain dict (`ATTENTION`).

`torch` is the reference math, `sdpa` PyTorch's scaled_dot_product_attention with an ALiBi bias,
`flex` FlexAttention with an ALiBi score_mod, `flash` flash-attn with `alibi_slopes`, `triton` our
kernels (mpt.kernels). `mpt.attention.base` says what they compute and how one is chosen.
"""

from mpt.attention.backends import ATTENTION, score_bias, visible_mask
from mpt.attention.base import AttentionMeta, Backend, Capabilities, Case, resolve, why_unsupported

__all__ = [
    "ATTENTION",
    "AttentionMeta",
    "Backend",
    "Capabilities",
    "Case",
    "resolve",
    "score_bias",
    "visible_mask",
    "why_unsupported",
]
