"""Causal ALiBi attention on one GPU: our Triton kernel and its variants against other backends.

bf16; the other backends are compiled FlexAttention, SDPA with an ALiBi bias, SDPA's
FlashAttention without ALiBi and flash-attn (issue 5, part 5; attention_variants.py). Forward,
backward and both, TFLOP/s with FlashAttention's convention.

    tools/gpu-setup && python3 tools/bench/attention_bench.py            # every shape and backend
    python3 tools/bench/attention_bench.py --shapes 8x2048x16x128 --backends triton,flex --quick
    .venv/bin/python tools/bench/attention_bench.py --dry-run            # tiny shapes on the CPU

FLOPs: causal forward = 2*B*H*S^2*D (4*B*H*S^2*D / 2), backward 2.5x, forward+backward 3.5x.
Every backend's output and gradients are first compared with a float64 reference on batch row 0
(relative error ||x - ref|| / ||ref||; above the tolerance the row is flagged WRONG). Timing:
triton.testing.do_bench medians on fresh random bf16 inputs; backward alone from a retained graph
(or fwd+bwd minus fwd where that fails). The (shape, backend) variants run in a child process
(bench_common.py): one that crashes or hangs costs only its own row; the JSON ($OUT/
attention_bench.json by default) and the table are written at the end.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_variants import CORE, Ctx, Spec, default_backends, make_specs, parse_triton_config
from bench_common import (
    add_common_args,
    environment,
    fmt,
    format_table,
    raise_recompile_limits,
    resolve,
    run_child,
    run_variants,
    write_json,
)

SHAPES = [(8, 2048, 16, 128), (4, 4096, 16, 128), (2, 8192, 16, 128), (16, 2048, 32, 64)]
SHAPES += [(4, 2048, 64, 112)]
QUICK_SHAPES = [(8, 2048, 16, 128), (4, 2048, 64, 112)]
CPU_SHAPES = [(2, 64, 2, 64), (1, 40, 1, 112)]  # 40: not a multiple of the 16-row blocks
TOL_OUT, TOL_GRAD = 1e-2, 2e-2  # bf16 inputs and outputs: errors of a few 1e-3 are rounding


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = text.strip().lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"shape must be BxSxHxD (e.g. 8x2048x16x128), got {text!r}"
        )
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    return [parse_shape(x) for x in text.split(",")]


def shape_name(shape) -> str:
    return "x".join(map(str, shape))


def attn_flops(shape) -> float:
    b, s, h, d = shape
    return 2.0 * b * h * s * s * d  # causal forward, FlashAttention's convention


def doc_ids(batch: int, seq: int, docs: int, device):
    """(batch, seq) int64 ids of `docs` packed documents of unequal lengths (the same per row)."""
    import torch

    # boundaries at uneven fractions of the sequence, so documents do not align with blocks
    cuts = torch.tensor([(n * n + n) / (docs * docs + docs) for n in range(1, docs)])
    bounds = (cuts * seq).long().to(device)
    ids = torch.bucketize(torch.arange(seq, device=device), bounds, right=True)
    return ids.expand(batch, seq).contiguous()


class Bench:
    """Inputs, references and timings of one process (inputs of one shape are kept at a time)."""

    def __init__(self, args, specs: dict[str, Spec]) -> None:
        import torch

        raise_recompile_limits()  # compiled FlexAttention: one compile per shape
        torch.backends.cuda.matmul.allow_tf32 = False  # the float64 reference stays float64
        self.args, self.specs, self.torch = args, specs, torch
        self.device = args.device
        self._shape, self._inputs, self._refs = None, {}, {}

    # -- inputs and references ---------------------------------------------------------------
    def inputs(self, shape, layout: str):
        torch = self.torch
        if shape != self._shape:
            self._shape, self._inputs, self._refs = shape, {}, {}
            if self.device == "cuda":
                torch.cuda.empty_cache()
        if layout not in self._inputs:
            g = torch.Generator(device=self.device).manual_seed(hash(shape) % 2**31)
            q, k, v, do = (
                torch.randn(shape, device=self.device, dtype=torch.bfloat16, generator=g)
                for _ in range(4)
            )  # (B, S, H, D), fresh random values (never zeros)
            if layout == "bhsd":
                q, k, v, do = (t.transpose(1, 2).contiguous() for t in (q, k, v, do))
            q, k, v = (t.requires_grad_() for t in (q, k, v))
            self._inputs[layout] = (q, k, v, do)
        return self._inputs[layout]

    def reference(self, shape, alibi: bool, slopes, scale: float):
        """float64 out, dq, dk, dv of batch row 0, (1, S, H, D), computed a few heads at a time."""
        torch = self.torch
        if alibi not in self._refs:
            q, k, v, do = (t.detach()[:1] for t in self.inputs(shape, "bshd"))
            _, s, h, d = shape
            dev = self.device
            pos = torch.arange(s, device=dev, dtype=torch.float64)
            dist = pos[None, :] - pos[:, None]  # j - i
            mask = dist > 0
            if self.args.docs:
                ids0 = doc_ids(1, s, self.args.docs, dev)[0]
                mask = mask | (ids0[:, None] != ids0[None, :])
            chunk = max(1, int(2**28 // (s * s)))  # ~2 GiB of float64 scores per chunk
            outs, grads = [], []
            for h0 in range(0, h, chunk):
                sl = slice(h0, min(h, h0 + chunk))
                qc, kc, vc = (
                    t[:, :, sl].transpose(1, 2).double().requires_grad_() for t in (q, k, v)
                )
                scores = qc @ kc.transpose(-1, -2) * scale  # (1, h, S, S)
                if alibi:
                    scores = scores + slopes[sl].double()[:, None, None] * dist
                probs = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
                out = probs @ vc
                out.backward(do[:, :, sl].transpose(1, 2).double())
                outs.append(out.detach())
                grads.append([t.grad for t in (qc, kc, vc)])
                del scores, probs, out
            out = torch.cat(outs, 1).transpose(1, 2)
            dq, dk, dv = (torch.cat([g[i] for g in grads], 1).transpose(1, 2) for i in range(3))
            self._refs[alibi] = (out, dq, dk, dv)
        return self._refs[alibi]

    # -- timing --------------------------------------------------------------------------------
    def warm_gpu(self, seconds: float = 1.0) -> None:
        """Once per process: keep the GPU busy for a second so clocks are up before the first timing
        (the first forward of a fresh run read 0.63 ms where its fwd+bwd minus bwd said 0.40)."""
        if getattr(self, "_warmed", False):
            return
        torch = self.torch
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(10):
                a @ a
            torch.cuda.synchronize()
        self._warmed = True

    def time_ms(self, fn, rec: dict, name: str) -> float:
        """Median ms of `fn` (the 20th and 80th percentiles go to `rec` as the spread)."""
        if self.device == "cuda":
            import triton.testing

            self.warm_gpu()
            warm, rep = (25, 60) if self.args.quick else (100, 300)
            q = triton.testing.do_bench(fn, warmup=warm, rep=rep, quantiles=[0.2, 0.5, 0.8])
        else:
            fn()
            times = []
            for _ in range(1 if self.args.quick else 5):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            times.sort()
            n = len(times) - 1
            q = [times[n // 5], statistics.median(times), times[n - n // 5]]
        rec[f"{name}_p20_p80"] = [float(q[0]), float(q[2])]
        return float(q[1])

    def run(self, key: str, rec: dict) -> None:
        torch = self.torch
        sname, name = key.split("|")
        shape, spec = parse_shape(sname), self.specs[name]
        b, s, h, d = shape
        rec.update(shape=sname, backend=name, B=b, S=s, H=h, D=d, alibi=spec.alibi)
        if spec.opts:
            rec["triton_opts"] = spec.opts
        from mpt import alibi_slopes

        slopes = alibi_slopes(h, 8, device=self.device)
        ctx = Ctx(shape, self.device, slopes, 1 / math.sqrt(d))
        if self.args.docs:
            ctx.seq_id = doc_ids(b, s, self.args.docs, self.device)
            rec["docs"] = self.args.docs
        q, k, v, do = self.inputs(shape, spec.layout)
        ref = self.reference(shape, spec.alibi, slopes, ctx.scale)
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated() if self.device == "cuda" else 0
        try:
            fn = spec.setup(ctx, spec.opts)
        except RuntimeError as err:
            if str(err).startswith("unavailable"):
                rec["status"] = str(err)
                return
            raise
        finally:
            rec["note"] = ", ".join(ctx.notes)
        if not ctx.backward:
            q, k, v = (t.detach() for t in (q, k, v))
        self.check(key, fn, ctx, (q, k, v, do), spec.layout, ref, base_mem, rec)
        if name.startswith("triton") and self.device == "cuda":  # the autotuner's choices
            from mpt.kernels import autotuned_configs

            rec["triton_configs"] = autotuned_configs(d, s)
        self.time_variant(fn, ctx, (q, k, v, do), attn_flops(shape), rec)

    def check(self, key, fn, ctx: Ctx, tensors, layout: str, ref, base_mem: int, rec: dict):
        """The first call (it also compiles or autotunes), its peak memory, and its errors against
        the float64 reference; a row above the tolerance is flagged `wrong`."""
        torch = self.torch
        q, k, v, do = tensors
        t0 = time.perf_counter()
        out = fn(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), do) if ctx.backward else ()
        if self.device == "cuda":
            torch.cuda.synchronize()
        rec["first_call_s"] = round(time.perf_counter() - t0, 2)
        if self.device == "cuda":  # a training step's fwd+bwd (or fwd) memory, before timing
            rec["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
            rec["extra_gb"] = rec["peak_gb"] - base_mem / 2**30  # beyond inputs and reference
        bshd = [x.transpose(1, 2) if layout == "bhsd" else x for x in (out, *grads)]
        errs = [rel_err(x[:1], r) for x, r in zip(bshd, ref, strict=False)]
        for field, err in zip(("err_out", "err_dq", "err_dk", "err_dv"), errs, strict=False):
            rec[field] = err
        wrong = not (errs[0] <= TOL_OUT and max(errs[1:], default=0) <= TOL_GRAD)  # NaN: wrong
        rec["wrong"] = wrong
        if wrong:
            print(f"!!! {key}: WRONG against the float64 reference: {errs}", flush=True)

    def time_variant(self, fn, ctx: Ctx, tensors, flops: float, rec: dict) -> None:
        """Forward (with autograd, as in training), forward+backward, and backward alone."""
        torch = self.torch
        q, k, v, do = tensors
        rec["fwd_ms"] = self.time_ms(lambda: fn(q, k, v), rec, "fwd")
        rec["fwd_tflops"] = flops / rec["fwd_ms"] / 1e9
        if not ctx.backward:
            return

        def fwd_bwd():
            torch.autograd.grad(fn(q, k, v), (q, k, v), do)

        def bwd():  # from the graph of `out`, kept
            torch.autograd.grad(out, (q, k, v), do, retain_graph=True)

        rec["fwdbwd_ms"] = self.time_ms(fwd_bwd, rec, "fwdbwd")
        try:
            out = fn(q, k, v)
            rec["bwd_ms"] = self.time_ms(bwd, rec, "bwd")
            rec["bwd_method"] = "retained graph"
        except Exception as err:  # e.g. a compiled backward that frees its saved tensors
            rec["bwd_ms"] = rec["fwdbwd_ms"] - rec["fwd_ms"]
            rec["bwd_method"] = f"fwd+bwd - fwd ({type(err).__name__})"
        out = None
        rec["bwd_tflops"] = 2.5 * flops / rec["bwd_ms"] / 1e9 if rec["bwd_ms"] > 0 else None
        rec["fwdbwd_tflops"] = 3.5 * flops / rec["fwdbwd_ms"] / 1e9


def rel_err(x, ref) -> float:
    x = x.detach().double()
    return float((x - ref).norm() / ref.norm())


# -- report --------------------------------------------------------------------------------------


def add_ratios(results: dict[str, dict]) -> None:
    for r in results.values():
        if "shape" not in r:
            r["shape"], r["backend"] = r["key"].split("|")
        for base, col in (("flex", "vs_flex"), ("sdpa_flash_noalibi", "vs_sdpa_flash")):
            ref = results.get(f"{r['shape']}|{base}", {})
            ok = r.get("fwdbwd_ms") and ref.get("fwdbwd_ms")
            r[col] = ref["fwdbwd_ms"] / r["fwdbwd_ms"] if ok else None


def _row(r: dict) -> list:
    errs = [r.get(f"err_{x}") for x in ("out", "dq", "dk", "dv")]
    err = max((e for e in errs if e is not None), default=None)
    notes = [r["status"]] if r["status"] != "ok" else []
    if r.get("wrong"):
        notes.insert(0, "WRONG vs float64 reference;")
    if not r.get("alibi", True):
        notes.append("(no ALiBi)")
    if r.get("note"):
        notes.append(f"[{r['note']}]")
    if r.get("error"):
        notes.append(r["error"][:80])
    times = [fmt(r.get(f), ".3f") for f in ("fwd_ms", "bwd_ms", "fwdbwd_ms")]
    rates = [fmt(r.get(f), ".0f") for f in ("fwd_tflops", "fwdbwd_tflops")]
    ratios = [fmt(r.get("vs_flex")), fmt(r.get("vs_sdpa_flash"))]
    tail = [fmt(err, ".1e"), fmt(r.get("peak_gb"), ".1f"), " ".join(notes)]
    return [r["shape"], r["backend"], *times, *rates, *ratios, *tail]


def _acceptance(results: dict[str, dict], sname: str) -> str | None:
    """Issue 5's acceptance at one shape: >= 1.1x flex, > 1x SDPA's FlashAttention."""
    r = results.get(f"{sname}|triton")
    if not r or r.get("vs_flex") is None:
        return None
    timed = [
        x
        for x in results.values()
        if x["shape"] == sname and x["backend"].startswith("triton") and x.get("fwdbwd_ms")
    ]
    best = max((x for x in timed if not x.get("wrong")), key=lambda x: x["vs_flex"] or 0, default=r)
    ok = r["vs_flex"] >= 1.1 and (r.get("vs_sdpa_flash") or 0) > 1 and not r.get("wrong")
    return (
        f"acceptance {sname}: triton {r['vs_flex']:.2f}x flex, "
        f"{fmt(r.get('vs_sdpa_flash'))}x sdpa-flash-noalibi -> {'MET' if ok else 'NOT MET'}"
        f"; best triton variant {best['backend']} {fmt(best.get('vs_flex'))}x flex"
    )


def report(results: dict[str, dict], keys: list[str], env: dict) -> str:
    headers = ["shape BxSxHxD", "backend", "fwd ms", "bwd ms", "f+b ms", "fwd TF/s", "f+b TF/s"]
    headers += ["x flex", "x sdpa-fa", "max err", "peak GB", "status / note"]
    rows = [_row(results[key]) for key in keys]
    device = env.get("gpu") or env.get("device")
    versions = f"torch {env.get('torch')}  triton {env.get('triton')}  cuda {env.get('cuda')}"
    lines = [f"device: {device}  {versions}", format_table(headers, rows)]
    for sname in dict.fromkeys(results[k]["shape"] for k in keys):
        line = _acceptance(results, sname)
        if line:
            lines.append(line)
    wrong = [k for k in keys if results[k].get("wrong")]
    if wrong:
        lines.append("!!! WRONG RESULTS (check before trusting any time): " + ", ".join(wrong))
    return "\n".join(lines)


def parse_args() -> tuple[argparse.Namespace, dict[str, Spec], list[str], list[str]]:
    """(options, specs, the keys in the order they run, the keys in the table's order)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, variant_timeout=300)
    parser.add_argument("--quick", action="store_true", help="fewer shapes, shorter timing")
    shapes_help = "comma-separated BxSxHxD, e.g. 8x2048x16x128,2x8192x16x128"
    parser.add_argument("--shapes", type=parse_shapes, help=shapes_help)
    parser.add_argument("--backends", default=None, help="comma-separated; default: all")
    config_help = "adds variant triton_custom, e.g. 'fwd:block_m=128,block_n=64,num_warps=8,"
    config_help += "num_stages=3;dq:block_m=64,...' (kernels: fwd, dkdv, dq)"
    parser.add_argument("--triton-config", default=None, help=config_help)
    docs_help = "pack N documents per sequence (ids for the kernels, a document block mask for "
    docs_help += "flex, a bias for sdpa); TFLOP/s still count the whole causal sequence, so they "
    docs_help += "read as effective rates"
    parser.add_argument("--docs", type=int, default=0, help=docs_help)
    args = parser.parse_args()
    resolve(args, "attention_bench")
    specs = make_specs(parse_triton_config(args.triton_config) if args.triton_config else None)
    backends = args.backends.split(",") if args.backends else default_backends(specs)
    unknown = [b for b in backends if b not in specs]
    if unknown:
        parser.error(f"unknown backends {unknown}; known: {', '.join(specs)}")
    if args.shapes:
        shapes = args.shapes
    elif args.device == "cpu":
        shapes = CPU_SHAPES
    else:
        shapes = QUICK_SHAPES if args.quick else SHAPES
    # Core backends over every shape first, so a time budget cut keeps the acceptance table.
    core = [b for b in backends if b in CORE]
    rest = [b for b in backends if b not in CORE]
    keys = [f"{shape_name(s)}|{b}" for group in (core, rest) for s in shapes for b in group]
    shown = [f"{shape_name(s)}|{b}" for s in shapes for b in backends]
    return args, specs, keys, shown


def main() -> int:
    args, specs, keys, shown = parse_args()
    if args.child_keys:
        bench = Bench(args, specs)
        return run_child(args, args.child_keys.split(","), bench.run, environment(args.device))
    results, env = run_variants(
        __file__, args, keys, lambda: (Bench(args, specs).run, environment(args.device))
    )
    results = {k: dict(v) for k, v in results.items()}
    add_ratios(results)
    out = write_json(args, env, [results[k] for k in shown])
    print()
    print(report(results, shown, env))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
