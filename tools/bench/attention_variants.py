"""The attention implementations attention_bench.py times, each a `Spec` whose setup builds
`fn(q, k, v) -> out` outside the timing: our Triton kernel (`mpt.kernels`) in the variants of
`TRITON_VARIANTS`, compiled FlexAttention with an ALiBi `score_mod`, SDPA with an ALiBi bias,
SDPA's FlashAttention without ALiBi (the speed reference) and flash-attn. A setup raises
RuntimeError("unavailable: ...") where its backend cannot run.

This is a script helper, not a package: the scripts put tools/bench on sys.path to import it.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "CORE",
    "TRITON_VARIANTS",
    "Ctx",
    "Spec",
    "default_backends",
    "make_specs",
    "parse_triton_config",
]

CORE = ["triton", "flex", "sdpa_flash_noalibi"]  # timed first, for every shape

# Triton variants: keyword arguments of flash_alibi_attention plus kernel-config knobs.
# "configs" forces launch configs (mpt.kernels.set_kernel_config); autotune=False uses the
# per-head-dim defaults for the kernels not forced. Other configs: --triton-config.
TRITON_VARIANTS: dict[str, dict] = {
    "triton": {},
    "triton_noskip": {"skip_bits": None},
    "triton_skiprounding": {"skip_bits": "rounding"},  # 25 + ceil(log2 S): fp32-rounding level
    "triton_default_cfg": {"autotune": False},
    # what MPTForCausalLM runs: attn_skip_bits "rounding" (MPTConfig's default), default configs
    "triton_model": {"skip_bits": "rounding", "autotune": False},
    # Triton's fused-attention tutorial shapes for the backward (32 query rows per step against
    # 128 keys for dk/dv, 128 rows against 32 keys for dq), and the defaults one stage deeper
    "triton_bwd32x128": {
        "configs": {
            "dkdv": dict(block_m=32, block_n=128, num_warps=4, num_stages=3),
            "dq": dict(block_m=128, block_n=32, num_warps=4, num_stages=3),
        }
    },
    "triton_bwd_stages3": {
        "configs": {
            "dkdv": dict(block_m=64, block_n=64, num_warps=4, num_stages=3),
            "dq": dict(block_m=64, block_n=64, num_warps=4, num_stages=3),
        }
    },
}
OTHERS = ["sdpa", "flash"]


def parse_triton_config(text: str) -> dict:
    """'fwd:block_m=128,block_n=64,num_warps=8,num_stages=3;dq:...' -> {"fwd": {...}, ...}."""
    configs = {}
    for part in filter(None, text.split(";")):
        kernel, _, body = part.partition(":")
        items = (kv.split("=") for kv in body.split(",") if kv)
        configs[kernel.strip()] = {k.strip(): int(v) for k, v in items}
    return configs


@dataclass
class Ctx:
    shape: tuple[int, int, int, int]
    device: str
    slopes: object  # (H,) fp32 tensor
    scale: float
    notes: list[str] = field(default_factory=list)
    backward: bool = True  # False: the backend has no backward here (forward timed alone)
    seq_id: object = None  # (B, S) int64 document ids with --docs N (packed documents), else None


@dataclass
class Spec:
    name: str
    layout: str  # "bshd" (B, S, H, D) contiguous; "bhsd" as SDPA and Flex like them
    setup: Callable[[Ctx, dict], Callable]  # (ctx, opts) -> fn(q, k, v) -> out, built untimed
    alibi: bool = True
    opts: dict = field(default_factory=dict)  # a Triton variant's settings, recorded with it


def triton_setup(ctx: Ctx, opts: dict):
    from mpt import kernels

    if ctx.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("unavailable: Triton on CPU needs TRITON_INTERPRET=1")
    if not kernels.kernels_available():
        raise RuntimeError("unavailable: mpt.kernels cannot run here (no Triton or no CUDA)")
    kernels.reset_kernel_configs()
    kernels.set_autotune(opts.get("autotune", True))
    for kernel, cfg in opts.get("configs", {}).items():
        kernels.set_kernel_config(kernel, **cfg)
    if ctx.device == "cpu":
        ctx.notes.append("interpreter")
    kw = {"skip_bits": opts["skip_bits"]} if "skip_bits" in opts else {}
    if ctx.seq_id is not None:  # bounds built outside the timing, as flex's block mask is
        bounds = kernels.document_bounds(ctx.seq_id, ctx.seq_id)
        kw.update(q_seq_id=ctx.seq_id, k_seq_id=ctx.seq_id, doc_bounds=bounds)

    def fn(q, k, v):
        return kernels.flash_alibi_attention(q, k, v, ctx.slopes, softmax_scale=ctx.scale, **kw)

    return fn


def _causal(b, h, q_idx, kv_idx):
    return kv_idx <= q_idx


@functools.cache
def _compiled_flex():
    """One compiled FlexAttention per process (dynamo compiles it once per shape)."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_setup(ctx: Ctx, opts: dict):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    b, s, h, d = ctx.shape
    ids = ctx.seq_id
    if ids is None:
        block_mask = create_block_mask(_causal, None, None, s, s, device=ctx.device)
    else:  # packed documents: the block mask skips other documents' blocks too

        def same_document(b, h, q, kv):
            return (kv <= q) & (ids[b, q] == ids[b, kv])

        block_mask = create_block_mask(same_document, b, None, s, s, device=ctx.device)
    slopes = ctx.slopes

    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)

    if ctx.device == "cuda":
        run = _compiled_flex()
    else:
        # Eager FlexAttention on CPU has no backward: check and time the forward alone.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        run, ctx.backward = flex_attention, False
        ctx.notes.append("eager, forward only (cpu)")

    def fn(q, k, v):
        return run(q, k, v, score_mod=alibi, block_mask=block_mask, scale=ctx.scale)

    return fn


def sdpa_setup(ctx: Ctx, opts: dict):
    import torch
    import torch.nn.functional as F

    b, s, h, d = ctx.shape
    pos = torch.arange(s, device=ctx.device)
    dist = (pos[None, :] - pos[:, None]).float()  # j - i
    hidden = dist > 0
    if ctx.seq_id is not None:  # packed documents: one bias per batch row
        hidden = hidden | (ctx.seq_id[:, :, None] != ctx.seq_id[:, None, :])  # (B, S, S)
    else:
        hidden = hidden[None]
    bias = torch.empty((hidden.shape[0], h, s, s), device=ctx.device, dtype=torch.bfloat16)
    for i in range(h):  # one head at a time: no fp32 (H, S, S) temporary
        bias[:, i] = (ctx.slopes[i] * dist)[None].masked_fill(hidden, float("-inf"))
    ctx.notes.append(f"bias {bias.numel() * 2 / 2**30:.2f} GiB")

    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=ctx.scale)

    return fn


def sdpa_flash_setup(ctx: Ctx, opts: dict):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if ctx.seq_id is not None:
        raise RuntimeError("unavailable: SDPA's FlashAttention takes no document mask")

    def fn(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=ctx.scale)

    return fn


def flash_setup(ctx: Ctx, opts: dict):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        raise RuntimeError("unavailable: flash_attn is not installed")
    if ctx.seq_id is not None:
        raise RuntimeError("unavailable: flash_attn_func takes no document mask (varlen only)")
    if ctx.device != "cuda":
        raise RuntimeError("unavailable: flash_attn runs on CUDA only")
    from flash_attn import flash_attn_func

    def fn(q, k, v):
        return flash_attn_func(
            q, k, v, softmax_scale=ctx.scale, causal=True, alibi_slopes=ctx.slopes
        )

    return fn


def make_specs(extra_triton: dict | None) -> dict[str, Spec]:
    variants = dict(TRITON_VARIANTS)
    if extra_triton:
        variants["triton_custom"] = {"configs": extra_triton}
    specs = {n: Spec(n, "bshd", triton_setup, opts=o) for n, o in variants.items()}
    specs["flex"] = Spec("flex", "bhsd", flex_setup)
    specs["sdpa"] = Spec("sdpa", "bhsd", sdpa_setup)
    specs["sdpa_flash_noalibi"] = Spec("sdpa_flash_noalibi", "bhsd", sdpa_flash_setup, alibi=False)
    specs["flash"] = Spec("flash", "bshd", flash_setup)
    return specs


def default_backends(specs: dict[str, Spec]) -> list[str]:
    """CORE, the skip variants, the other libraries, then the forced kernel configs."""
    first = [*CORE, "triton_noskip", "triton_skiprounding", *OTHERS]
    return first + [n for n in specs if n not in first]
