"""Why fwd+bwd of our attention kernel reads 1.08x FlexAttention in one process and 1.33x in
another (issue 18, item 3): the same calls timed round after round, with the GPU's clocks and
power read at each round, with autotuning off (the per-head-dim defaults) and on (Triton's
autotuner, as `MPTForCausalLM` runs by default), and the configs the autotuner picked.

Each round allocates fresh inputs after a pad of random size (so tensors land at other
addresses), then times triton fwd+bwd, flex fwd+bwd, triton fwd and triton bwd (retained graph)
with triton.testing.do_bench medians. Run it in several fresh processes to see the spread
between them:

    for i in 1 2 3; do python3 tools/bench/attention_spread.py --tag p$i; done   # JSON to $OUT
    python3 tools/bench/attention_spread.py --shapes all --rounds 3 --tag table  # six shapes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from attention_bench import parse_shapes, shape_name
from attention_host import queued
from attention_variants import Ctx, flex_setup

ALL = "8x2048x16x128,4x4096x16x128,2x8192x16x128,16x2048x32x64,4x2048x64x112,1x16384x16x128"


def gpu_state(torch) -> dict:
    """SM clock (MHz), power (W), temperature (C) and NVML's clock-event reasons, now."""
    state = {"sm_mhz": torch.cuda.clock_rate(), "power_w": torch.cuda.power_draw() / 1000}
    state["temp_c"] = torch.cuda.temperature()
    try:
        import pynvml

        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        state["clock_reasons"] = hex(pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle))
    except Exception as err:  # an older pynvml, or none
        state["clock_reasons"] = f"n/a ({type(err).__name__})"
    return state


def median_ms(fn) -> float:
    import triton.testing

    median = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5])
    return float(median if isinstance(median, float) else median[0])  # one quantile: a float


def queued_ms(torch, fn, n: int = 20) -> tuple[float, float]:
    """(GPU ms per call, host ms per call) of `n` calls queued behind a GPU sleep, after one
    untimed call (`attention_host.queued`): the GPU time has no wait for the host in it."""
    fn()
    torch.cuda.synchronize()
    return queued(torch, fn, n)


def one_round(torch, kernels, shape, slopes, flex_fn) -> dict:
    """Fresh inputs at new addresses; the four medians and the GPU's state after them."""
    b, s, h, d = shape
    pad = torch.empty(random.randint(1, 512) << 20, dtype=torch.uint8, device="cuda")
    q, k, v, do = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    qkv = tuple(t.requires_grad_() for t in (q, k, v))
    qt, kt, vt, dot = (t.detach().transpose(1, 2).contiguous() for t in (q, k, v, do))
    qkv_t = tuple(t.requires_grad_() for t in (qt, kt, vt))
    scale = 1 / math.sqrt(d)

    def tri(q, k, v):
        return kernels.flash_alibi_attention(
            q, k, v, slopes, softmax_scale=scale, skip_bits="rounding"
        )

    out = tri(*qkv)
    rec = {
        "q_addr_mod_2mb": q.data_ptr() % (2 << 20),
        "tri_fwdbwd": median_ms(lambda: torch.autograd.grad(tri(*qkv), qkv, do)),
        "flex_fwdbwd": median_ms(lambda: torch.autograd.grad(flex_fn(*qkv_t), qkv_t, dot)),
        "tri_fwd": median_ms(lambda: tri(*qkv)),
        "tri_bwd": median_ms(lambda: torch.autograd.grad(out, qkv, do, retain_graph=True)),
    }
    tri_fb = lambda: torch.autograd.grad(tri(*qkv), qkv, do)  # noqa: E731
    flex_fb = lambda: torch.autograd.grad(flex_fn(*qkv_t), qkv_t, dot)  # noqa: E731
    rec["tri_fwdbwd_queued"], rec["tri_fwdbwd_host"] = queued_ms(torch, tri_fb)
    rec["flex_fwdbwd_queued"], rec["flex_fwdbwd_host"] = queued_ms(torch, flex_fb)
    rec["tri_fwd_queued"], rec["tri_fwd_host"] = queued_ms(torch, lambda: tri(*qkv))
    rec["ratio"] = rec["flex_fwdbwd"] / rec["tri_fwdbwd"]
    rec["ratio_queued"] = rec["flex_fwdbwd_queued"] / rec["tri_fwdbwd_queued"]
    del pad
    return {**rec, **gpu_state(torch)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="8x2048x16x128", help=f"comma-separated, or all ({ALL})")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--autotune", default="off,on", help="off, on, or off,on (in that order)")
    p.add_argument("--tag", default="run")
    args = p.parse_args()
    import torch

    from mpt import alibi_slopes, kernels
    from mpt.kernels import autotuned_configs

    out_dir = Path(os.environ.get("OUT") or "tools/bench/out")
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = parse_shapes(ALL if args.shapes == "all" else args.shapes)
    result = {"device": torch.cuda.get_device_name(), "tag": args.tag, "start": gpu_state(torch)}
    for mode in args.autotune.split(","):
        kernels.set_autotune(mode == "on")
        for shape in shapes:
            name = f"{shape_name(shape)} autotune {mode}"
            slopes = alibi_slopes(shape[2], 8, device="cuda")
            flex_fn = flex_setup(Ctx(shape, "cuda", slopes, 1 / math.sqrt(shape[3])), {})
            t0 = time.perf_counter()
            rounds = [one_round(torch, kernels, shape, slopes, flex_fn) for _ in range(args.rounds)]
            med = {
                k: statistics.median(r[k] for r in rounds)
                for k in (
                    "tri_fwdbwd",
                    "flex_fwdbwd",
                    "tri_fwd",
                    "tri_bwd",
                    "ratio",
                    "tri_fwdbwd_queued",
                    "flex_fwdbwd_queued",
                    "tri_fwdbwd_host",
                    "flex_fwdbwd_host",
                    "ratio_queued",
                )
            }
            configs = autotuned_configs(shape[3], shape[1]) if mode == "on" else {}
            result[name] = {"rounds": rounds, "median": med, "configs": configs}
            result[name]["seconds"] = round(time.perf_counter() - t0, 1)
            ratios = ", ".join(f"{r['ratio']:.2f}" for r in rounds)
            queued_ratios = ", ".join(f"{r['ratio_queued']:.2f}" for r in rounds)
            clocks = sorted({r["sm_mhz"] for r in rounds})
            print(
                f"[{args.tag}] {name}: triton fwd+bwd {med['tri_fwdbwd']:.3f} ms (fwd"
                f" {med['tri_fwd']:.3f}, bwd {med['tri_bwd']:.3f}), flex {med['flex_fwdbwd']:.3f}"
                f" ms, x{med['ratio']:.2f} (rounds {ratios}); queued behind a GPU sleep:"
                f" triton {med['tri_fwdbwd_queued']:.3f} ms (host {med['tri_fwdbwd_host']:.3f}),"
                f" flex {med['flex_fwdbwd_queued']:.3f} ms (host {med['flex_fwdbwd_host']:.3f}),"
                f" x{med['ratio_queued']:.2f} (rounds"
                f" {queued_ratios}); SM MHz {clocks}, power"
                f" {[round(r['power_w']) for r in rounds]} W, reasons"
                f" {sorted({r['clock_reasons'] for r in rounds})}",
                flush=True,
            )
            for key, cfg in configs.items():
                print(f"    {key}: {cfg}", flush=True)
            (out_dir / f"attention_spread_{args.tag}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
