"""Triton kernels of `mpt`: causal ALiBi FlashAttention (forward, backward, decode).

Triton is optional: importing this package never imports it; the kernels import it when they
first run and raise a clear ImportError when it is missing. `kernels_available()` says whether
they can run here (Triton importable, and CUDA or TRITON_INTERPRET=1).
"""

from .flash_alibi import (
    SUPPORTED_HEAD_DIMS,
    document_bounds,
    flash_alibi_attention,
    flash_alibi_attention_packed,
    flash_alibi_decode,
    flash_alibi_forward,
    kernels_available,
    reset_kernel_configs,
    set_autotune,
    set_kernel_config,
    supported_head_dim,
)

__all__ = [
    "SUPPORTED_HEAD_DIMS",
    "document_bounds",
    "flash_alibi_attention",
    "flash_alibi_attention_packed",
    "flash_alibi_decode",
    "flash_alibi_forward",
    "kernels_available",
    "reset_kernel_configs",
    "set_autotune",
    "set_kernel_config",
    "supported_head_dim",
]
