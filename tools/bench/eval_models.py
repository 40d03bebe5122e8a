"""Model factories for `python -m evalkit --model-factory tools.bench.eval_models:<name>` on a GPU.

Random weights (the speed of evaluation does not depend on them): `mpt_1b` is the `mpt_1b` preset
in bf16 on CUDA with our Triton attention, as a training run would leave it.
"""

from __future__ import annotations

__all__ = ["mpt_1b"]


def mpt_1b():
    import torch

    from mpt import MPTForCausalLM, preset

    torch.manual_seed(0)
    config = preset("mpt_1b", attn_impl="triton")
    return MPTForCausalLM(config, device="cuda").to(torch.bfloat16).eval()
