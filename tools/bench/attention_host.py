"""Host (CPU) time of one eager call of our attention op, and where it goes (issue 18, item 3).

With calls queued behind a GPU sleep, the host issues them all before the GPU starts: the host's
time per call is its issue time alone, and the GPU's time per call has no wait for the host in it.
A call whose issue time exceeds its GPU time is host-bound in eager mode (do_bench then times the
host). Timed, at each shape, with autotuning off (the defaults) and on (as the model runs):
our fwd, fwd+bwd through q, k, v and through the fused qkv (the model's path), and flex fwd+bwd.
`launchers_fwd_bwd` runs the launchers alone (no autograd, no checks): the floor.
`--profile` adds a cProfile of the fwd+bwd calls (top functions by own time and by cumulative
time), to see which layer (torch.library, autograd, Triton's launcher and autotuner, our
launchers) the time is spent in.

    python3 tools/bench/attention_host.py --tag new --profile        # JSON and profiles to $OUT
    PYTHONPATH=/path/to/old/mpt/src python3 tools/bench/attention_host.py --tag old
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from attention_bench import parse_shapes, shape_name
from attention_variants import Ctx, flex_setup


def queued(torch, fn, n: int) -> tuple[float, float]:
    """(GPU ms per call, host ms per call) of `n` calls issued while the GPU sleeps."""
    start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
    torch.cuda.synchronize()
    torch.cuda._sleep(int(2e9 * 0.05 + n * 4e6))  # ~50 ms + 2 ms a call at ~2 GHz
    start.record()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t0) * 1e3 / n
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n, host


def timed(torch, fn, n: int, rounds: int) -> dict:
    """Medians over `rounds` of `queued`, after warm-up calls (the first calls' times too)."""
    first = [queued(torch, fn, 1)[1] for _ in range(3)]
    fn()
    runs = [queued(torch, fn, n) for _ in range(rounds)]
    gpu = statistics.median(r[0] for r in runs)
    host = statistics.median(r[1] for r in runs)
    return {"gpu_ms": gpu, "host_ms": host, "host_over_gpu": host / gpu, "first_host_ms": first}


def profile(torch, fn, n: int, top: int) -> str:
    """cProfile of `n` calls (queued behind a GPU sleep): the top functions by tottime, cumtime."""
    fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(int(2e9 * 0.05 + n * 8e6))
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue()


def make_calls(torch, kernels, alibi_slopes, shape, skip, breakdown: bool = False) -> dict:
    """The timed calls at `shape` (bf16): {label: fn}, on fresh inputs. `breakdown` adds the
    pieces between the launchers alone and the API's fwd+bwd."""
    b, s, h, d = shape
    slopes = alibi_slopes(h, 8, device="cuda")
    scale = 1 / math.sqrt(d)
    flex_fn = flex_setup(Ctx(shape, "cuda", slopes, scale), {})
    q, k, v, do = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    qkv = tuple(t.requires_grad_() for t in (q, k, v))
    fused = torch.cat([q, k, v], dim=2).reshape(b, s, 3 * h * d).detach().requires_grad_()
    qkv_t = tuple(t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    do_t = do.transpose(1, 2).contiguous()
    attn = kernels.flash_alibi_attention
    packed = kernels.flash_alibi_attention_packed

    def fwd():
        with torch.no_grad():
            attn(q, k, v, slopes, softmax_scale=scale, skip_bits=skip)

    def fwd_bwd():
        torch.autograd.grad(attn(*qkv, slopes, softmax_scale=scale, skip_bits=skip), qkv, do)

    def packed_fwd_bwd():
        out = packed(fused, slopes, h, softmax_scale=scale, skip_bits=skip)
        torch.autograd.grad(out, fused, do)

    def flex_fwd_bwd():
        torch.autograd.grad(flex_fn(*qkv_t), qkv_t, do_t)

    from mpt.kernels._launch import KernelArgs, _backward_impl, _forward_impl

    bits = 25.0 + math.ceil(math.log2(s)) if skip == "rounding" else skip
    args = KernelArgs(slopes.float().contiguous(), scale, None, None, bits)

    def launchers_fwd_bwd():  # the floor: the launchers alone, no autograd, no input checks
        with torch.no_grad():
            _backward_impl(do, q, k, v, _forward_impl(q, k, v, args), args)

    calls = {
        "fwd": fwd,
        "fwd_bwd": fwd_bwd,
        "packed_fwd_bwd": packed_fwd_bwd,
        "flex_fwd_bwd": flex_fwd_bwd,
        "launchers_fwd_bwd": launchers_fwd_bwd,
    }
    if breakdown:
        calls.update(breakdown_calls(torch, attn, qkv, do, slopes, scale, skip, args))
    return calls


def breakdown_calls(torch, attn, qkv, do, slopes, scale, skip, args) -> dict:
    """fwd with autograd recording (no backward); fwd+bwd with the autograd engine's device
    threads off (the backward runs on the calling thread); a bare autograd.Function around the
    launchers (no input checks); a trivial autograd.Function (the engine's own cost here)."""
    from mpt.kernels._launch import ForwardOutputs, _backward_impl, _forward_impl

    class Bare(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            fwd = _forward_impl(q, k, v, args)
            ctx.save_for_backward(q, k, v, *fwd)
            return fwd.out

        @staticmethod
        def backward(ctx, dout):
            q, k, v, *outputs = ctx.saved_tensors
            return _backward_impl(dout, q, k, v, ForwardOutputs(*outputs), args)

    class Trivial(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            return q.new_empty(q.shape)

        @staticmethod
        def backward(ctx, dout):
            return dout, dout, dout

    def fwd_grad():
        attn(*qkv, slopes, softmax_scale=scale, skip_bits=skip)

    def fwd_bwd_one_thread():
        with torch.autograd.set_multithreading_enabled(False):
            torch.autograd.grad(attn(*qkv, slopes, softmax_scale=scale, skip_bits=skip), qkv, do)

    return {
        "fwd_grad": fwd_grad,
        "fwd_bwd_one_thread": fwd_bwd_one_thread,
        "bare_function_fwd_bwd": lambda: torch.autograd.grad(Bare.apply(*qkv), qkv, do),
        "trivial_function_fwd_bwd": lambda: torch.autograd.grad(Trivial.apply(*qkv), qkv, do),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="8x2048x16x128,1x2048x16x128,4x2048x64x112")
    p.add_argument("--calls", type=int, default=20, help="calls queued per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--autotune", default="off,on")
    p.add_argument("--skip-bits", default="rounding", help="'rounding' (the model's), a number")
    p.add_argument(
        "--profile", action="store_true", help="cProfile fwd+bwd (first shape, each mode)"
    )
    p.add_argument("--breakdown", action="store_true", help="time the pieces too (see make_calls)")
    p.add_argument("--tag", default="run")
    args = p.parse_args()
    import torch

    import mpt
    from mpt import alibi_slopes, kernels

    out_dir = Path(os.environ.get("OUT") or "tools/bench/out")
    out_dir.mkdir(parents=True, exist_ok=True)
    skip = args.skip_bits if args.skip_bits == "rounding" else float(args.skip_bits)
    result = {"device": torch.cuda.get_device_name(), "tag": args.tag, "mpt": mpt.__file__}
    result["torch"], result["triton"] = torch.__version__, __import__("triton").__version__
    for mode in args.autotune.split(","):
        kernels.set_autotune(mode == "on")
        for i, shape in enumerate(parse_shapes(args.shapes)):
            calls = make_calls(torch, kernels, alibi_slopes, shape, skip, args.breakdown)
            name = f"{shape_name(shape)} autotune {mode}"
            rec = {}
            for label, fn in calls.items():
                rec[label] = timed(torch, fn, args.calls, args.rounds)
            rec["ratio_gpu"] = rec["flex_fwd_bwd"]["gpu_ms"] / rec["fwd_bwd"]["gpu_ms"]
            result[name] = rec
            print(
                f"[{args.tag}] {name}: "
                + "; ".join(
                    f"{label} gpu {r['gpu_ms']:.3f} host {r['host_ms']:.3f} ms"
                    f" (x{r['host_over_gpu']:.2f}; first {', '.join(f'{t:.2f}' for t in r['first_host_ms'])})"
                    for label, r in rec.items()
                    if isinstance(r, dict)
                )
                + f"; flex/ours on the GPU x{rec['ratio_gpu']:.2f}",
                flush=True,
            )
            if args.profile and i == 0:
                text = profile(torch, calls["packed_fwd_bwd"], 50, 45)
                path = out_dir / f"attention_host_{args.tag}_{mode}.prof.txt"
                path.write_text(text)
                print(f"[{args.tag}] profile of 50 packed fwd+bwd -> {path}", flush=True)
            del calls
    (out_dir / f"attention_host_{args.tag}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
