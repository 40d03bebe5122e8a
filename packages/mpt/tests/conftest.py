"""Shared fixtures of the mpt suite: tiny configs and models built in the test."""

from __future__ import annotations

import pytest
import torch

from mpt import MPTConfig, MPTForCausalLM

TINY = dict(d_model=64, n_heads=4, n_layers=2, vocab_size=101, max_seq_len=64)


@pytest.fixture
def tiny_config():
    """`tiny_config(**overrides)` -> a small MPTConfig (4 heads of 16, 2 layers, vocab 101)."""

    def make(**overrides) -> MPTConfig:
        return MPTConfig(**{**TINY, **overrides})

    return make


@pytest.fixture
def tiny_mpt(tiny_config):
    """`tiny_mpt(seed=0, **overrides)` -> an fp32 MPTForCausalLM in eval mode on CPU."""

    def make(seed: int = 0, **overrides) -> MPTForCausalLM:
        torch.manual_seed(seed)
        return MPTForCausalLM(tiny_config(**overrides)).eval()

    return make
