"""GPU kernel time per training step by category (GEMM, attention, optimizer, fused elementwise,
...) and the top kernels, from torch.profiler: model_bench.py's `--profile`.

This is a script helper, not a package: the scripts put tools/bench on sys.path to import it.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["KERNEL_CATEGORIES", "kernel_category", "kernel_profile"]

# Kernel-name substrings per category, first match wins (CUDA kernel names as the profiler shows).
KERNEL_CATEGORIES = {
    "attention (ours)": (
        "fwd_kernel",
        "dkdv_kernel",
        "dq_kernel",
        "preprocess_kernel",
        "split_kernel",
        "combine_kernel",
        "key_norm_max",
    ),
    "attention (flex)": ("triton_tem_fused", "flex_attention"),
    "attention (other)": ("flash", "fmha", "attention", "softmax_warp"),
    "gemm": (
        "gemm",
        "nvjet",
        "cutlass",
        "xmma",
        "sm90_",
        "sm80_",
        "cublas",
        "splitk",
        "triton_mm",
        "mm_template",
    ),
    "optimizer": ("multi_tensor_apply", "fused_adam", "adam"),
    "embedding / gather-scatter": ("embedding", "index", "scatter", "gather"),
    "cross-entropy": ("nll_loss", "log_softmax", "cross_entropy", "cunn_softmax"),
    "copy / cast / fill": ("memcpy", "memset", "copy", "fill", "cast"),
    "inductor fused (triton)": ("triton_",),
    "aten elementwise / reduce": (
        "elementwise",
        "vectorized",
        "reduce_kernel",
        "layer_norm",
        "gelu",
        "norm",
    ),
}


def kernel_category(name: str) -> str:
    low = name.lower()
    for category, needles in KERNEL_CATEGORIES.items():
        if any(n in low for n in needles):
            return category
    return "other"


def kernel_profile(step: Callable[[], object], steps: int = 2, top: int = 15) -> dict:
    """GPU kernel time per training step by category and the `top` kernels (ms per step).

    Runs `step()` `steps` times under torch.profiler (CUDA activity only); the caller warms up
    first. {"step_ms_kernels": sum, "by_category": {category: ms}, "top": [[name, ms, calls]]}.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = {}
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", None)
        if us is None:
            us = getattr(evt, "self_cuda_time_total", 0.0)
        if not us or str(getattr(evt, "device_type", "")).endswith("CPU"):
            continue
        entry = kernels.setdefault(evt.key, [0.0, 0])
        entry[0] += us / 1e3 / steps
        entry[1] += evt.count // steps
    by_category: dict[str, float] = {}
    for name, (ms, _) in kernels.items():
        cat = kernel_category(name)
        by_category[cat] = by_category.get(cat, 0.0) + ms
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][0])
    by_time = sorted(by_category.items(), key=lambda kv: -kv[1])
    return {
        "step_ms_kernels": round(sum(ms for ms, _ in kernels.values()), 2),
        "by_category": {k: round(v, 2) for k, v in by_time},
        "top": [[name[:120], round(ms, 3), calls] for name, (ms, calls) in ranked[:top]],
    }
