"""Named model shapes: llm-foundry's MPT pretraining sizes and the released MPT-7B and MPT-30B.

Shapes come from llm-foundry's `scripts/train/yamls/pretrain/mpt-*.yaml` (vocab 50368, sequence
2048) and from the released `mosaicml/mpt-7b` and `mosaicml/mpt-30b` configs (vocab 50432; MPT-30B
with an 8192-token context). All use ALiBi, no biases, low-precision LayerNorm and tied embeddings,
so `mpt_7b` has exactly 6,649,286,656 parameters and `mpt_30b` 29,957,200,896.
"""

from __future__ import annotations

from typing import Any

from mpt.config import MPTConfig

__all__ = ["PRESETS", "preset"]

PRESETS: dict[str, dict[str, Any]] = {
    "mpt_125m": dict(d_model=768, n_heads=12, n_layers=12),
    "mpt_350m": dict(d_model=1024, n_heads=16, n_layers=24),
    "mpt_760m": dict(d_model=1536, n_heads=12, n_layers=24),
    "mpt_1b": dict(d_model=2048, n_heads=16, n_layers=24),
    "mpt_3b": dict(d_model=2560, n_heads=20, n_layers=32),
    "mpt_7b": dict(d_model=4096, n_heads=32, n_layers=32, vocab_size=50432),
    "mpt_13b": dict(d_model=5120, n_heads=40, n_layers=40),
    "mpt_30b": dict(d_model=7168, n_heads=64, n_layers=48, vocab_size=50432, max_seq_len=8192),
    "mpt_70b": dict(d_model=8192, n_heads=64, n_layers=80),
}


def preset(name: str, **overrides: Any) -> MPTConfig:
    """The config of a named size, with any field overridden (`preset("mpt_1b", attn_impl="triton")`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown MPT preset {name!r}; known: {', '.join(PRESETS)}")
    return MPTConfig.from_dict(
        {"max_seq_len": 2048, "vocab_size": 50368, **PRESETS[name], **overrides}
    )
