"""mpt: the MPT model for one device, with Triton ALiBi FlashAttention kernels.

`MPTConfig` and the named `PRESETS`, `MPTForCausalLM` (forward with packed-document and padding
masks, KV-cache generation), pluggable attention backends (`mpt.attention.ATTENTION`), our Triton
kernels (`mpt.kernels`, needs the `[triton]` extra) and Hugging Face interop (`mpt.hf`, needs
`[hf]`).
"""

from mpt.alibi import alibi_slopes
from mpt.attention import ATTENTION
from mpt.cache import KVCache
from mpt.config import MPTConfig
from mpt.generate import generate
from mpt.loss import causal_lm_loss, chunked_lm_head_loss
from mpt.model import MPTForCausalLM, MPTOutput
from mpt.presets import PRESETS, preset

__version__ = "0.1.3"
__all__ = [
    "ATTENTION",
    "KVCache",
    "MPTConfig",
    "MPTForCausalLM",
    "MPTOutput",
    "PRESETS",
    "alibi_slopes",
    "causal_lm_loss",
    "chunked_lm_head_loss",
    "generate",
    "preset",
]
