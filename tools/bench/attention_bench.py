"""Causal ALiBi attention on one GPU, bf16: our Triton kernel (and its variants) against compiled
FlexAttention, SDPA with an ALiBi bias, SDPA's FlashAttention without ALiBi and flash-attn
(issue 5, part 5). Forward, backward and both, TFLOP/s with FlashAttention's convention.

    tools/gpu-setup && python3 tools/bench/attention_bench.py            # every shape and backend
    python3 tools/bench/attention_bench.py --shapes 8x2048x16x128 --backends triton,flex --quick
    .venv/bin/python tools/bench/attention_bench.py --device cpu --quick  # tiny shapes on the CPU

FLOPs: causal forward = 2*B*H*S^2*D (4*B*H*S^2*D / 2), backward 2.5x, forward+backward 3.5x.
Every backend's output and gradients are first compared with a float64 reference on batch row 0
(relative error ||x - ref|| / ||ref||; above the tolerance the row is flagged WRONG). Timing:
triton.testing.do_bench medians on fresh random bf16 inputs; backward alone from a retained graph
(or fwd+bwd minus fwd where that fails). Each (shape, backend) runs in a worker process that a
supervisor restarts after a crash or hang, so one failing variant never stops the others; results
go to `--json` ($OUT/attention_bench.json by default) after every variant, and a table last.

The worker/supervisor harness, shared with model_bench.py, is bench_harness.py.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_harness import (
    add_harness_args,
    environment,
    fmt,
    format_table,
    raise_recompile_limits,
    resolve_device,
    run_all,
    worker_loop,
)

# --------------------------------------------------------------------------------------------
# The attention benchmark
# --------------------------------------------------------------------------------------------

SHAPES = [(8, 2048, 16, 128), (4, 4096, 16, 128), (2, 8192, 16, 128), (16, 2048, 32, 64),
          (4, 2048, 64, 112)]  # fmt: skip
QUICK_SHAPES = [(8, 2048, 16, 128), (4, 2048, 64, 112)]
CPU_SHAPES = [(2, 64, 2, 64), (1, 40, 1, 112)]  # 40: not a multiple of the 16-row blocks
CORE = ["triton", "flex", "sdpa_flash_noalibi"]  # timed first, for every shape
TOL_OUT, TOL_GRAD = 1e-2, 2e-2  # bf16 inputs and outputs: errors of a few 1e-3 are rounding

# Triton variants: keyword arguments of flash_alibi_attention plus kernel-config knobs.
# "configs" forces launch configs (mpt.kernels.set_kernel_config); autotune=False uses the
# per-head-dim defaults for the kernels not forced.
TRITON_VARIANTS: dict[str, dict] = {
    "triton": {},
    "triton_noskip": {"skip_bits": None},
    "triton_skip40": {"skip_bits": 40.0},
    "triton_skiprounding": {"skip_bits": "rounding"},  # 25 + ceil(log2 S): fp32-rounding level
    "triton_default_cfg": {"autotune": False},
    # what MPTForCausalLM runs: attn_skip_bits "rounding" (MPTConfig's default), default configs
    "triton_model": {"skip_bits": "rounding", "autotune": False},
    "triton_fwd128x128": {
        "configs": {"fwd": dict(block_m=128, block_n=128, num_warps=8, num_stages=2)}
    },
    "triton_bwd64x128": {
        "configs": {
            "dkdv": dict(block_m=64, block_n=128, num_warps=8, num_stages=2),
            "dq": dict(block_m=128, block_n=64, num_warps=8, num_stages=2),
        }
    },
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
OPTIONAL = ["flex_autotune"]  # not in the default list: max-autotune compile takes minutes


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = text.strip().lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"shape must be BxSxHxD (e.g. 8x2048x16x128), got {text!r}"
        )
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


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
    layout: str  # "bshd" (B, S, H, D) contiguous; "bhsd" as SDPA/Flex like; "qkv" model views
    setup: Callable[[Ctx], Callable]  # -> fn(q, k, v) -> out, built outside the timing
    alibi: bool = True
    opts: dict | None = None  # a Triton variant's settings, recorded with its results


def _triton_setup(opts: dict):
    def setup(ctx: Ctx):
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

    return setup


_FLEX: dict[str, Callable] = {}


def _flex_setup(mode: str | None):
    def setup(ctx: Ctx):
        import torch
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        b, s, h, d = ctx.shape
        ids = ctx.seq_id
        if ids is None:
            block_mask = create_block_mask(
                lambda b, h, q, kv: kv <= q, None, None, s, s, device=ctx.device
            )
        else:  # packed documents: the block mask skips other documents' blocks too
            block_mask = create_block_mask(
                lambda b, h, q, kv: (kv <= q) & (ids[b, q] == ids[b, kv]),
                b, None, s, s, device=ctx.device,
            )  # fmt: skip
        slopes = ctx.slopes

        def alibi(score, b, h, q_idx, kv_idx):
            return score + slopes[h] * (kv_idx - q_idx)

        if ctx.device == "cuda":
            key = mode or "default"
            if key not in _FLEX:
                _FLEX[key] = torch.compile(flex_attention, dynamic=False, mode=mode)
            run = _FLEX[key]
        else:
            # Eager FlexAttention on CPU has no backward: check and time the forward alone.
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            run, ctx.backward = flex_attention, False
            ctx.notes.append("eager, forward only (cpu)")

        def fn(q, k, v):
            return run(q, k, v, score_mod=alibi, block_mask=block_mask, scale=ctx.scale)

        return fn

    return setup


def _sdpa_setup(ctx: Ctx):
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


def _sdpa_flash_setup(ctx: Ctx):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if ctx.seq_id is not None:
        raise RuntimeError("unavailable: SDPA's FlashAttention takes no document mask")

    def fn(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=ctx.scale)

    return fn


def _flash_setup(ctx: Ctx):
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
    specs = {n: Spec(n, "bshd", _triton_setup(o), opts=o) for n, o in variants.items()}
    # The model's layout: q, k, v are views of the fused qkv projection (B, S, 3, H, D).
    specs["triton_qkv"] = Spec("triton_qkv", "qkv", _triton_setup({}), opts={"layout": "qkv"})
    specs["flex"] = Spec("flex", "bhsd", _flex_setup(None))
    specs["flex_autotune"] = Spec(
        "flex_autotune", "bhsd", _flex_setup("max-autotune-no-cudagraphs")
    )
    specs["sdpa"] = Spec("sdpa", "bhsd", _sdpa_setup)
    specs["sdpa_flash_noalibi"] = Spec("sdpa_flash_noalibi", "bhsd", _sdpa_flash_setup, alibi=False)
    specs["flash"] = Spec("flash", "bshd", _flash_setup)
    return specs


def default_backends(specs: dict[str, Spec]) -> list[str]:
    """CORE, the skip variants, the other libraries, then the forced kernel configs."""
    first = [*CORE, "triton_noskip", "triton_skiprounding", "triton_skip40", *OTHERS]
    return first + [n for n in specs if n not in first and n not in OPTIONAL]


class Bench:
    """Inputs, references and timings of one worker (inputs of one shape are kept at a time)."""

    def __init__(self, args, specs: dict[str, Spec]) -> None:
        import torch

        raise_recompile_limits()  # compiled FlexAttention: one compile per shape
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
            if layout == "qkv":  # strided views of one (B, S, 3, H, D) tensor, as the model has
                q, k, v = torch.stack([q, k, v], dim=2).requires_grad_().unbind(2)
            else:
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
        """Once per worker: keep the GPU busy for a second so clocks are up before the first timing
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
        if spec.opts is not None:
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
            fn = spec.setup(ctx)
        except RuntimeError as err:
            if str(err).startswith("unavailable"):
                rec["status"] = str(err)
                return
            raise
        finally:
            rec["note"] = ", ".join(ctx.notes)

        def to_bshd(t):
            return t.transpose(1, 2) if spec.layout == "bhsd" else t

        if not ctx.backward:
            q, k, v = (t.detach() for t in (q, k, v))
        # correctness (the first call also compiles / autotunes)
        t0 = time.perf_counter()
        out = fn(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), do) if ctx.backward else ()
        if self.device == "cuda":
            torch.cuda.synchronize()
        rec["first_call_s"] = round(time.perf_counter() - t0, 2)
        if self.device == "cuda":  # a training step's fwd+bwd (or fwd) memory, before timing
            rec["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
            rec["extra_gb"] = rec["peak_gb"] - base_mem / 2**30  # beyond inputs and reference
        errs = [rel_err(to_bshd(x)[:1], r) for x, r in zip((out, *grads), ref, strict=False)]
        for name, err in zip(("err_out", "err_dq", "err_dk", "err_dv"), errs, strict=False):
            rec[name] = err
        wrong = not (errs[0] <= TOL_OUT and max(errs[1:], default=0) <= TOL_GRAD)  # NaN: wrong
        rec["wrong"] = wrong
        if wrong:
            print(f"!!! {key}: WRONG against the float64 reference: {errs}", flush=True)
        del out, grads
        rec.update(self._record_triton_configs(name, s, d))

        # timing: forward (with autograd, as in training), backward, both
        rec["fwd_ms"] = self.time_ms(lambda: fn(q, k, v), rec, "fwd")
        flops = attn_flops(shape)
        rec["fwd_tflops"] = flops / rec["fwd_ms"] / 1e9
        if not ctx.backward:
            return

        def fwd_bwd():
            torch.autograd.grad(fn(q, k, v), (q, k, v), do)

        rec["fwdbwd_ms"] = self.time_ms(fwd_bwd, rec, "fwdbwd")
        try:
            out = fn(q, k, v)
            rec["bwd_ms"] = self.time_ms(
                lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), rec, "bwd"
            )
            rec["bwd_method"] = "retained graph"
        except Exception as err:  # e.g. a compiled backward that frees its saved tensors
            rec["bwd_ms"] = rec["fwdbwd_ms"] - rec["fwd_ms"]
            rec["bwd_method"] = f"fwd+bwd - fwd ({type(err).__name__})"
        out = None
        rec["bwd_tflops"] = 2.5 * flops / rec["bwd_ms"] / 1e9 if rec["bwd_ms"] > 0 else None
        rec["fwdbwd_tflops"] = 3.5 * flops / rec["fwdbwd_ms"] / 1e9

    def _record_triton_configs(self, name: str, s: int, d: int) -> dict:
        """The autotuner's choices so far (best effort: reads mpt.kernels' private cache)."""
        if not name.startswith("triton") or self.device != "cuda":
            return {}
        try:
            from mpt.kernels._configs import _autotuned, _block_d, _bucket

            found = {}
            for kernel in ("fwd", "dkdv", "dq"):
                tuner = _autotuned(kernel, _block_d(d))
                for tkey, cfg in getattr(tuner, "cache", {}).items():
                    if tuple(tkey[:3]) == (d, _bucket(s), _bucket(s)):  # this shape
                        found[f"{kernel} {tkey}"] = str(cfg)
            return {"triton_configs": found}
        except Exception as err:
            return {"triton_configs": f"unreadable: {err}"}


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


def report(results: dict[str, dict], keys: list[str], env: dict) -> str:
    headers = ["shape BxSxHxD", "backend", "fwd ms", "bwd ms", "f+b ms", "fwd TF/s", "f+b TF/s",
               "x flex", "x sdpa-fa", "max err", "peak GB", "status / note"]  # fmt: skip
    rows = []
    for key in keys:
        r = results[key]
        errs = [r.get(f"err_{x}") for x in ("out", "dq", "dk", "dv")]
        err = max((e for e in errs if e is not None), default=None)
        note = r["status"] if r["status"] != "ok" else ""
        if r.get("wrong"):
            note = "WRONG vs float64 reference; " + note
        if not r.get("alibi", True):
            note += (" " if note else "") + "(no ALiBi)"
        if r.get("note"):
            note += (" " if note else "") + f"[{r['note']}]"
        if r.get("error"):
            note += f" {r['error'][:80]}"
        rows.append([r["shape"], r["backend"], fmt(r.get("fwd_ms"), ".3f"),
                     fmt(r.get("bwd_ms"), ".3f"), fmt(r.get("fwdbwd_ms"), ".3f"),
                     fmt(r.get("fwd_tflops"), ".0f"), fmt(r.get("fwdbwd_tflops"), ".0f"),
                     fmt(r.get("vs_flex")), fmt(r.get("vs_sdpa_flash")), fmt(err, ".1e"),
                     fmt(r.get("peak_gb"), ".1f"), note.strip()])  # fmt: skip
    lines = [f"device: {env.get('gpu') or env.get('device')}  torch {env.get('torch')}  "
             f"triton {env.get('triton')}  cuda {env.get('cuda')}", format_table(headers, rows)]  # fmt: skip
    shapes = list(dict.fromkeys(results[k]["shape"] for k in keys))
    for sname in shapes:  # the acceptance of issue 5: >= 1.1x flex, > 1x SDPA's FlashAttention
        r = results.get(f"{sname}|triton")
        if not r or r.get("vs_flex") is None:
            continue
        best = max(
            (x for x in results.values() if x["shape"] == sname and x["backend"].startswith("triton")
             and x.get("fwdbwd_ms") and not x.get("wrong")),
            key=lambda x: x["vs_flex"] or 0, default=r,
        )  # fmt: skip
        ok = r["vs_flex"] >= 1.1 and (r.get("vs_sdpa_flash") or 0) > 1 and not r.get("wrong")
        lines.append(
            f"acceptance {sname}: triton {r['vs_flex']:.2f}x flex, "
            f"{fmt(r.get('vs_sdpa_flash'))}x sdpa-flash-noalibi -> {'MET' if ok else 'NOT MET'}"
            f"; best triton variant {best['backend']} {fmt(best.get('vs_flex'))}x flex"
        )
    wrong = [k for k in keys if results[k].get("wrong")]
    if wrong:
        lines.append("!!! WRONG RESULTS (check before trusting any time): " + ", ".join(wrong))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None)
    parser.add_argument("--quick", action="store_true", help="fewer shapes, shorter timing")
    parser.add_argument("--dry-run", action="store_true", help="= --device cpu --quick")
    parser.add_argument("--shapes", type=lambda s: [parse_shape(x) for x in s.split(",")],
                        help="comma-separated BxSxHxD, e.g. 8x2048x16x128,2x8192x16x128")  # fmt: skip
    parser.add_argument("--backends", default=None, help="comma-separated; default: all but "
                        + ",".join(OPTIONAL))  # fmt: skip
    parser.add_argument("--triton-config", default=None, help="adds variant triton_custom, e.g. "
                        "'fwd:block_m=128,block_n=64,num_warps=8,num_stages=3;dq:block_m=64,...'")  # fmt: skip
    parser.add_argument("--docs", type=int, default=0, help="pack N documents per sequence (ids "
                        "for the kernels, a document block mask for flex, a bias for sdpa); TFLOP/s still count "
                        "the whole causal sequence, so they read as effective rates")  # fmt: skip
    add_harness_args(parser, variant_timeout=300)
    args = parser.parse_args()
    resolve_device(args)
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

    if args._worker:
        import torch

        bench = Bench(args, specs)
        meta = environment(args.device)
        torch.backends.cuda.matmul.allow_tf32 = False  # the float64 reference stays float64
        return worker_loop(keys, bench.run, args._worker, args._deadline, meta)

    def rows_of(results: dict[str, dict]) -> list[dict]:
        results = {k: dict(v) for k, v in results.items()}
        add_ratios(results)
        return [results[k] for k in shown if k in results]

    results, env, out = run_all(
        __file__,
        args,
        keys,
        "attention_bench",
        lambda: (Bench(args, specs).run, environment(args.device)),
        rows_of,
    )
    results = {k: dict(v) for k, v in results.items()}
    add_ratios(results)
    print()
    print(report(results, shown, env))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
