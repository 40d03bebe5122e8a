"""Launch-config sweep of the attention kernels at given shapes, beside compiled FlexAttention.

For each shape (bf16, ALiBi, causal, the kernels as `MPTForCausalLM` runs them: skip "rounding"):
1. the first forward of the process, timed alone before anything else runs at that shape (the
   "slow first forward" of issue 18), then the same forward again;
2. every candidate config of one kernel at a time (the others at their defaults), timed in
   `--rounds` interleaved rounds together with the defaults and flex: fwd for "fwd", the backward
   from a retained graph for "dkdv" and "dq". Each candidate is checked against the defaults'
   output/gradients first (a wrong config is reported, never timed).
Prints, per shape and kernel, the candidates sorted by median time, and the best config's
fwd+bwd against flex. JSON to $OUT/kernel_tune.json.

    python3 tools/bench/kernel_tune.py --shapes 8x2048x16x128 --kernels fwd,dkdv,dq --rounds 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from attention_bench import parse_shapes, shape_name
from attention_variants import Ctx, flex_setup

BLOCKS = {
    "fwd": [(128, 64), (64, 64), (128, 128), (64, 128), (128, 32)],
    "dkdv": [(64, 64), (32, 64), (32, 128), (64, 128), (16, 64), (128, 64), (16, 128)],
    "dq": [(64, 64), (128, 32), (64, 32), (128, 64), (32, 64), (64, 128)],
}
WARPS, STAGES = (4, 8), (2, 3, 4)


def bench_ms(fn, warmup=25, rep=80) -> float:
    import triton.testing

    median = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5])
    return float(median if isinstance(median, float) else median[0])  # one quantile: a float


class ShapeBench:
    """One shape's inputs (BSHD for ours, BHSD for flex), the kernels' reference results, and the
    timed calls: `ours(kernel)` and `flex(kernel)` time the forward for "fwd", else the backward
    from a retained graph; `fwd_bwd` both."""

    def __init__(self, shape, torch, kernels, alibi_slopes):
        b, s, h, d = shape
        self.torch, self.kernels = torch, kernels
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, self.do = (
            torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4)
        )
        self.qkv = tuple(t.requires_grad_() for t in (q, k, v))
        self.slopes, self.scale = alibi_slopes(h, 8, device="cuda"), 1 / math.sqrt(d)
        qt, kt, vt, self.do_t = (
            t.detach().transpose(1, 2).contiguous() for t in (q, k, v, self.do)
        )
        self.qkv_t = tuple(t.requires_grad_() for t in (qt, kt, vt))
        self.flex_fn = flex_setup(Ctx(shape, "cuda", self.slopes, self.scale), {})

    def tri(self, q, k, v):
        return self.kernels.flash_alibi_attention(
            q, k, v, self.slopes, softmax_scale=self.scale, skip_bits="rounding"
        )

    def results(self):
        out = self.tri(*self.qkv)
        return (out.detach(), *self.torch.autograd.grad(out, self.qkv, self.do))

    def _timed(self, fn, qkv, do, kernel):
        if kernel == "fwd":
            return lambda: fn(*qkv)
        out = fn(*qkv)
        return lambda: self.torch.autograd.grad(out, qkv, do, retain_graph=True)

    def ours(self, kernel):
        return bench_ms(self._timed(self.tri, self.qkv, self.do, kernel))

    def flex(self, kernel):
        return bench_ms(self._timed(self.flex_fn, self.qkv_t, self.do_t, kernel))

    def fwd_bwd(self, which):
        fn, qkv, do = (
            (self.tri, self.qkv, self.do)
            if which == "ours"
            else (self.flex_fn, self.qkv_t, self.do_t)
        )
        return bench_ms(lambda: self.torch.autograd.grad(fn(*qkv), qkv, do))


def _force(kernels, kernel, cfg) -> None:
    kernels.reset_kernel_configs()
    if cfg is not None:
        m, n, w, st = cfg
        kernels.set_kernel_config(kernel, block_m=m, block_n=n, num_warps=w, num_stages=st)


def _rel_errs(got, ref) -> float:
    return max(
        ((x.float() - r.float()).norm() / r.float().norm()).item()
        for x, r in zip(got, ref, strict=True)
    )


def sweep_kernel(bench: ShapeBench, kernel: str, args, deadline: float) -> dict:
    """Check every candidate (`args.blocks` x warps x stages, default `BLOCKS[kernel]`) against the defaults' results, then time the good ones, the defaults
    and flex in `args.rounds` interleaved rounds; medians sorted fastest first."""
    kernels = bench.kernels
    _force(kernels, kernel, None)
    ref = bench.results()
    good, bad = [], []
    blocks = args.blocks or BLOCKS[kernel]
    for cfg in [(m, n, w, s) for m, n in blocks for w in args.warps for s in args.stages]:
        _force(kernels, kernel, cfg)
        try:
            err = _rel_errs(bench.results(), ref)
            (good if err < 2e-2 else bad).append((cfg, err))
        except Exception as exc:  # out of resources (shared memory, registers)
            bad.append((cfg, type(exc).__name__))
        if time.monotonic() > deadline:
            break
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        _force(kernels, kernel, None)
        times.setdefault("default", []).append(bench.ours(kernel))
        times.setdefault("flex", []).append(bench.flex(kernel))
        for cfg, _ in good:
            _force(kernels, kernel, cfg)
            times.setdefault(str(cfg), []).append(bench.ours(kernel))
        if time.monotonic() > deadline:
            break
    _force(kernels, kernel, None)
    med = {key: statistics.median(v) for key, v in times.items()}
    return {
        "median_ms": dict(sorted(med.items(), key=lambda kv: kv[1])),
        "wrong_or_failed": [[list(c), e] for c, e in bad],
    }


def _pairs(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in item.split("x")) for item in text.split(",")]


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def warm_gpu(torch, seconds: float) -> list[int]:
    """GEMMs for `seconds`; the SM clock (MHz, NVML) after each half second."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    clocks, start = [], time.monotonic()
    while time.monotonic() - start < seconds:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.5:
            for _ in range(10):
                a @ a
            torch.cuda.synchronize()
        clocks.append(torch.cuda.clock_rate())
    return clocks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", type=parse_shapes, default=parse_shapes("8x2048x16x128"))
    p.add_argument("--kernels", default="fwd,dkdv,dq")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--time-budget", type=float, default=400.0)
    p.add_argument("--blocks", type=_pairs, help="candidate block_m x block_n, e.g. 64x64,128x64")
    p.add_argument("--warps", type=_ints, default=WARPS)
    p.add_argument("--stages", type=_ints, default=STAGES)
    p.add_argument("--warm", type=float, default=0.0, help="seconds of GEMMs before anything")
    args = p.parse_args()
    import torch

    from mpt import alibi_slopes, kernels

    deadline = time.monotonic() + args.time_budget
    out_dir = Path(os.environ.get("OUT") or "tools/bench/out")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"device": torch.cuda.get_device_name(), "shapes": {}}
    kernels.set_autotune(False)
    if args.warm:
        results["warm_clocks_mhz"] = clocks = warm_gpu(torch, args.warm)
        print(f"SM clock during {args.warm:.0f} s of GEMMs: {clocks} MHz", flush=True)
    for shape in args.shapes:
        name = shape_name(shape)
        bench = ShapeBench(shape, torch, kernels, alibi_slopes)
        with torch.no_grad():
            bench.tri(*bench.qkv)  # compiled outside the timing
        torch.cuda.synchronize()
        # the first timed forwards of the process at this shape (the slow-first-forward effect)
        rec: dict = {"first_fwd_ms": [bench.ours("fwd") for _ in range(3)], "kernels": {}}
        rec["clock_mhz_after_first"] = torch.cuda.clock_rate()
        for kernel in args.kernels.split(","):
            rec["kernels"][kernel] = found = sweep_kernel(bench, kernel, args, deadline)
            med = found["median_ms"]
            best = next(k for k in med if k != "flex")
            print(
                f"{name} {kernel}: default {med['default']:.3f} ms, best {best} {med[best]:.3f} ms,"
                f" flex {med['flex']:.3f} ms; {len(found['wrong_or_failed'])} failed/wrong",
                flush=True,
            )
            for key, val in list(med.items())[:8]:
                print(f"    {key:<22} {val:.3f}", flush=True)
            if time.monotonic() > deadline:
                print("time budget reached", flush=True)
                break
        rec["fwdbwd_default_ms"] = ours = bench.fwd_bwd("ours")
        rec["fwdbwd_flex_ms"] = flex = bench.fwd_bwd("flex")
        print(
            f"{name} fwd+bwd default {ours:.3f} ms, flex {flex:.3f} ms ({flex / ours:.2f}x);"
            f" first forwards {[round(t, 3) for t in rec['first_fwd_ms']]} ms",
            flush=True,
        )
        results["shapes"][name] = rec
        (out_dir / "kernel_tune.json").write_text(json.dumps(results, indent=1))
        if time.monotonic() > deadline:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
