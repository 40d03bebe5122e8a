"""Triton kernels of `mpt`: causal ALiBi FlashAttention (forward, backward, decode).

Triton is optional: importing this package never imports it; the kernels import it when they
first run and raise a clear ImportError when it is missing. `kernels_available()` says whether
they can run here (Triton importable, and CUDA or TRITON_INTERPRET=1).
"""

from . import flash_alibi as _flash_alibi
from .flash_alibi import *  # noqa: F403  (the public API is flash_alibi.__all__)

__all__ = list(_flash_alibi.__all__)
