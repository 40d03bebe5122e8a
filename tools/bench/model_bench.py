"""Training step of MPT on one GPU (issue 5, part 7): forward + backward + AdamW step of mpt_125m,
mpt_350m and mpt_1b at sequence 2048 in bf16 for each attention backend, tokens/s and MFU, with
two baselines measured in the same run: transformers' MptForCausalLM (1B shape, micro-batch 2,
eager) and a plain PyTorch GPT of the same shape compiled with torch.compile, using FlexAttention
with an ALiBi score_mod (micro-batch 8).

    tools/gpu-setup && python3 tools/bench/model_bench.py           # the default list, in order
    python3 tools/bench/model_bench.py --quick                       # mpt_1b triton/flex + GPT
    python3 tools/bench/model_bench.py --models mpt_1b --backends triton --modes compile,bf16-compile
    .venv/bin/python tools/bench/model_bench.py --device cpu --quick # tiny model on the CPU

Modes (recorded per row): `amp` fp32 weights + torch.autocast(bf16), as the trainer runs;
`compile` amp + torch.compile on each block (model.blocks()); `bf16` / `bf16-compile` pure bf16
weights and optimizer; `mp-*` bf16 weights with fp32 master weights and AdamW states (FSDP2's
param_dtype=bf16 mixed precision on one GPU); `compile-attn-eager` compile per block with the
attention call left out of the graphs; `compile-model` torch.compile of the whole model
(embedding, head and loss too), as the GPT gets; `*-autotune` inductor's max-autotune (GEMM
templates) without CUDA graphs. The baselines run in the mode their key names (the GPT compiles
the whole model in every compile mode). `--profile` adds each variant's GPU kernel time per step
by category (GEMM, attention, optimizer, fused elementwise, ...) and its top kernels.
MFU = flops_per_token (6*N + 12*L*d*T, N all parameters) * tokens/s / the GPU's dense bf16 peak
from composer_lite's table; an unknown GPU gets no MFU. A variant that runs out of memory is
recorded and retried at half the micro-batch. Each variant starts from a fresh state (new model,
caches emptied, peak memory reset) in a worker process that a supervisor restarts after a crash.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_harness import (
    add_harness_args,
    environment,
    fmt,
    format_table,
    is_oom,
    kernel_profile,
    raise_recompile_limits,
    resolve_device,
    run_all,
    worker_loop,
)

MODELS = ["mpt_125m", "mpt_350m", "mpt_1b"]
BACKENDS = ["triton", "flex", "sdpa", "torch"]
MICRO_BATCH = {"mpt_125m": 16, "mpt_350m": 12, "mpt_1b": 8, "tiny": 2}
SEQ = 2048
# The `torch` backend keeps an S x S score tensor per layer for the backward: start lower.
TORCH_MICRO_BATCH = {"mpt_125m": 8, "mpt_350m": 4, "mpt_1b": 2, "tiny": 2}
MODES = {  # amp: fp32 weights + autocast(bf16); bf16: bf16 weights, no autocast
    "amp": dict(bf16=False, compile=False),
    "compile": dict(bf16=False, compile=True),
    "bf16": dict(bf16=True, compile=False),
    "bf16-compile": dict(bf16=True, compile=True),
    "compile-attn-eager": dict(bf16=False, compile=True, attn_eager=True),
    "compile-model": dict(bf16=False, compile=True, whole=True),  # torch.compile(model), loss too
    # per-block compile + the chunked LM-head loss (no (B, T, vocab) logits held)
    "compile-chunked": dict(bf16=False, compile=True, chunked=True),
    "bf16-compile-chunked": dict(bf16=True, compile=True, chunked=True),
    # mp: bf16 working weights, fp32 master weights and AdamW states (composer_lite's
    # MasterWeightAdamW, fused); the mixed precision FSDP2's MixedPrecisionPolicy(param_dtype=bf16,
    # reduce_dtype=fp32) gives (and llm-foundry trains MPT with): activations and the residual
    # stream in bf16, updates in fp32.
    "mp-compile": dict(bf16=True, master=True, compile=True),
    "mp-compile-model": dict(bf16=True, master=True, compile=True, whole=True),
    "mp-compile-chunked": dict(bf16=True, master=True, compile=True, chunked=True),
    # the same at micro-batch 12 (fits in 80 GB: 45.9 GB at 8), the optimizer amortized over more
    "mp-compile-model-mb12": dict(bf16=True, master=True, compile=True, whole=True, micro_batch=12),
    # the ALiBi skip at exact fp32 underflow (2^-150) instead of the model's default "rounding"
    "mp-compile-model-exact": dict(
        bf16=True, master=True, compile=True, whole=True, skip_bits=150.0
    ),
    # the same with inductor's GEMM autotuning (Triton templates, epilogue fusion)
    "mp-compile-autotune": dict(bf16=True, master=True, compile=True, autotune=True),
    "compile-autotune": dict(bf16=False, compile=True, autotune=True),
}
# The tiny shape of --device cpu (and of the baselines there): 4 heads of 16, 2 layers.
TINY = dict(d_model=64, n_heads=4, n_layers=2, vocab_size=256, max_seq_len=64)
BASELINES = {"gpt_flex": ("compile", 8), "hf_mpt": ("amp", 2)}  # mode, micro-batch


def default_variants(models, backends, modes, baselines, baseline_modes=None) -> list[str]:
    """Most important first, so that a time-budget cut drops the least useful rows."""
    models = sorted(models, key=["tiny", *MODELS].index)
    big = models[-1] if models else None  # the largest asked for: mpt_1b, the target, by default
    order: list[tuple[str, str, str]] = []
    baseline_modes = baseline_modes or {}
    if modes is None:  # the target's rows first, then every model x backend in the best mode
        best = "mp-compile-model"
        order += [(big, "triton", best), ("baseline", "gpt_flex", "compile"),
                  ("baseline", "gpt_flex", "mp-compile"), (big, "flex", best),
                  ("baseline", "hf_mpt", "amp"), (big, "triton", "compile"),
                  (big, "triton", "compile-model"), (big, "triton", "mp-compile-model-exact")]  # fmt: skip
        order += [(m, b, best) for m in reversed(models) for b in ("triton", "flex", "sdpa")]
        order += [(m, "torch", best) for m in reversed(models)]
        order += [(big, "triton", mode) for mode in ("mp-compile", "mp-compile-chunked", "amp",
                                                     "bf16-compile", "compile-attn-eager")]  # fmt: skip
    else:  # the largest model, the baselines, the other models
        order += [(m, b, mode) for m in reversed(models) for b in backends for mode in modes]
        n = len(backends) * len(modes)
        order[n:n] = [
            ("baseline", b, m) for b in baselines for m in baseline_modes.get(b, [BASELINES[b][0]])
        ]
    keys = []
    for model, backend, mode in order:
        wanted = (
            backend in baselines if model == "baseline" else model in models and backend in backends
        )
        key = f"{model}|{backend}|{mode}"
        if model is not None and wanted and key not in keys:
            keys.append(key)
    return keys


def micro_batch_for(args, model: str, backend: str) -> int:
    if args.micro_batch:
        given = dict(kv.split("=") for kv in args.micro_batch.split(",") if "=" in kv)
        if model in given:
            return int(given[model])
        if args.micro_batch.isdigit():
            return int(args.micro_batch)
    table = TORCH_MICRO_BATCH if backend == "torch" else MICRO_BATCH
    return table.get(model, 2)


# -- the models ----------------------------------------------------------------------------------


def mpt_config(args, model: str, **overrides):
    from mpt import MPTConfig, preset

    if model == "tiny":
        return MPTConfig(**TINY, **overrides)
    return preset(model, max_seq_len=SEQ, **overrides)


def build_mpt(args, model: str, backend: str, mode: dict, rec: dict):
    import torch

    from mpt import MPTForCausalLM
    from mpt.attention import ATTENTION

    impl = backend
    if mode.get("attn_eager"):  # the same backend, hidden from dynamo (a graph break per layer)
        impl = f"{backend}__eager"
        base = ATTENTION[backend]
        packed = base.packed and torch.compiler.disable(base.packed)
        ATTENTION[impl] = dataclasses.replace(
            base, name=impl, fn=torch.compiler.disable(base.fn), packed=packed
        )
    # attn_fallback=None: a backend that cannot serve the case raises instead of timing `torch`.
    extra = {"attn_skip_bits": mode["skip_bits"]} if "skip_bits" in mode else {}
    cfg = mpt_config(args, model, attn_impl=impl, attn_fallback=None, **extra)
    torch.manual_seed(0)
    net = MPTForCausalLM(cfg, device=args.device)
    rec["params"] = sum(p.numel() for p in net.parameters())
    rec["flops_per_token"] = net.flops_per_token(cfg.max_seq_len)
    return net, cfg.vocab_size, cfg.max_seq_len


def gpt_classes():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        """Pre-LN block: fused qkv, attention, GELU MLP x4; no biases."""

        def __init__(self, d: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.ln1, self.ln2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
            self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
            self.up, self.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

        def forward(self, x, attend):
            b, t, d = x.shape
            qkv = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, Dh)
            y = attend(q, k, v).transpose(1, 2).reshape(b, t, d)
            x = x + self.proj(y)
            return x + self.down(F.gelu(self.up(self.ln2(x))))

    class GPT(nn.Module):
        """A plain GPT with ALiBi through FlexAttention's score_mod (SDPA + bias on CPU)."""

        def __init__(self, vocab: int, d: int, heads: int, layers: int, seq: int, device) -> None:
            super().__init__()
            from mpt import alibi_slopes

            self.wte = nn.Embedding(vocab, d, device=device)
            self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers)).to(device)
            self.ln_f = nn.LayerNorm(d, bias=False, device=device)
            self.register_buffer("slopes", alibi_slopes(heads, 8, device=device))
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=0.02)
            self.flex = torch.device(device).type == "cuda"
            if self.flex:
                from torch.nn.attention.flex_attention import create_block_mask

                self.block_mask = create_block_mask(
                    lambda b, h, q, kv: kv <= q, None, None, seq, seq, device=device
                )
            else:  # eager FlexAttention has no backward on CPU
                pos = torch.arange(seq, device=device)
                dist = (pos[None, :] - pos[:, None]).float()
                bias = self.slopes[:, None, None] * dist
                self.bias = bias.masked_fill(dist > 0, float("-inf"))[None]

        def forward(self, ids):  # (B, T) -> mean next-token loss
            from torch.nn.attention.flex_attention import flex_attention

            slopes = self.slopes

            def alibi(score, b, h, q_idx, kv_idx):
                return score + slopes[h] * (kv_idx - q_idx)

            def attend(q, k, v):
                if self.flex:
                    return flex_attention(q, k, v, score_mod=alibi, block_mask=self.block_mask)
                return F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias.to(q.dtype))

            x = self.wte(ids)
            for block in self.blocks:
                x = block(x, attend)
            logits = F.linear(self.ln_f(x), self.wte.weight)  # tied embedding
            return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())

    return GPT


def shape_of(args) -> dict:
    if args.device == "cpu":
        return dict(TINY)
    from mpt import preset

    c = preset(args.baseline_shape)
    return dict(d_model=c.d_model, n_heads=c.n_heads, n_layers=c.n_layers,
                vocab_size=c.vocab_size, max_seq_len=SEQ)  # fmt: skip


def count_flops(net, shape: dict) -> float:
    n = sum(p.numel() for p in net.parameters())  # shared (tied) parameters counted once
    return 6.0 * n + 12.0 * shape["n_layers"] * shape["d_model"] * shape["max_seq_len"]


# -- one variant -----------------------------------------------------------------------------------


class Runner:
    def __init__(self, args) -> None:
        import torch

        self.args, self.torch = args, torch
        self.peak, self.peak_note = None, None
        if args.device == "cuda":
            name = torch.cuda.get_device_name()
            try:
                from composer_lite.callbacks import peak_flops_for

                self.peak = peak_flops_for(name)
            except Exception as err:  # unknown GPU (ValueError) or composer_lite missing
                self.peak_note = f"no MFU: {type(err).__name__}: {err}"
        else:
            self.peak_note = "no MFU on cpu"
        raise_recompile_limits()  # 24 blocks compiled one by one must not hit the limit

    def meta(self) -> dict:
        return {
            **environment(self.args.device),
            "peak_flops": self.peak,
            "peak_note": self.peak_note,
        }

    def fresh(self) -> None:
        torch = self.torch
        gc.collect()
        torch._dynamo.reset()
        if self.args.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def run(self, key: str, rec: dict) -> None:
        model, backend, mode_name = key.split("#")[0].split("|")  # "#N": the round (--repeat)
        rec.update(model=model, backend=backend, mode=mode_name)
        if model == "baseline":
            mb = self.args.baseline_micro_batch or BASELINES[backend][1]
            rec["model"] = (
                f"{backend} ({self.args.baseline_shape if self.args.device == 'cuda' else 'tiny'})"
            )
        else:
            mb = MODES[mode_name].get("micro_batch") or micro_batch_for(self.args, model, backend)
        rec["oom_at"] = []
        while True:
            self.fresh()
            try:
                self.measure(model, backend, MODES[mode_name], mb, rec)
                break
            except ValueError as err:  # the model's resolve(): the backend cannot serve this case
                if "cannot serve" not in str(err):
                    raise
                rec["status"] = f"unsupported: {err}"
                break
            except Exception as err:
                if not is_oom(err) or mb == 1:
                    raise
                rec["oom_at"].append(mb)
                print(f"OOM at micro-batch {mb}; retrying at {mb // 2}", flush=True)
            mb //= 2  # outside the except block: the failed attempt's frames are gone
        self.fresh()

    def measure(self, model: str, backend: str, mode: dict, mb: int, rec: dict) -> None:
        torch, args = self.torch, self.args
        dev = args.device
        rec["micro_batch"] = mb
        amp = not mode["bf16"]
        if model == "baseline":
            net, vocab, seq, flops = self.build_baseline(backend, rec)
        else:
            net, vocab, seq = build_mpt(args, model, backend, mode, rec)
            flops = rec["flops_per_token"]
        rec["seq"] = seq
        if mode["bf16"]:
            net = net.to(torch.bfloat16)
        g = torch.Generator(device=dev).manual_seed(1)
        batches = [torch.randint(0, vocab, (mb, seq), device=dev, generator=g) for _ in range(4)]

        def loss_of(ids):
            if model != "baseline":
                return net(ids, labels=ids, return_logits=not mode.get("chunked")).loss
            if backend == "hf_mpt":
                return net(input_ids=ids, labels=ids, use_cache=False).loss
            return net(ids)

        if mode["compile"]:
            options = {"mode": "max-autotune-no-cudagraphs"} if mode.get("autotune") else {}
            if model == "baseline" or mode.get("whole"):
                net = torch.compile(net, **options)  # the whole model, as a user would
            else:
                for block in net.blocks():
                    block.compile(**options)
        fused = dev == "cuda"
        params = [p for p in net.parameters() if p.requires_grad]
        if mode.get("master"):  # fp32 master copies take the update, the bf16 weights follow
            from composer_lite.optim import MasterWeightAdamW

            opt = MasterWeightAdamW(params, lr=1e-4, weight_decay=0.0, fused=None)
        else:
            opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=fused)

        def step(ids):
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
                loss = loss_of(ids)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        def sync():
            if dev == "cuda":
                torch.cuda.synchronize()

        t0 = time.perf_counter()
        losses = []
        for i in range(args.warmup):  # the first step compiles
            losses.append(float(step(batches[i % 4])))
            sync()
            if i == 0:
                rec["first_step_s"] = round(time.perf_counter() - t0, 1)
        rec["warmup_s"] = round(time.perf_counter() - t0, 1)
        stamps = []
        if dev == "cuda":
            events = [torch.cuda.Event(enable_timing=True) for _ in range(args.steps + 1)]
            events[0].record()
        t1 = time.perf_counter()
        for i in range(args.steps):
            last = step(batches[i % 4])
            if dev == "cuda":
                events[i + 1].record()
            else:
                stamps.append(time.perf_counter())
        sync()
        elapsed = time.perf_counter() - t1
        if dev == "cuda":
            step_ms = [a.elapsed_time(b) for a, b in zip(events, events[1:], strict=False)]
        else:
            step_ms = [(b - a) * 1e3 for a, b in zip([t1, *stamps], stamps, strict=False)]
        losses.append(float(last))
        rec.update(loss_first=losses[0], loss_last=losses[-1])
        if not all(math.isfinite(x) for x in losses):
            raise FloatingPointError(f"non-finite loss {losses}")
        tokens = args.steps * mb * seq
        rec["tokens_per_s"] = tokens / elapsed
        rec["step_ms_median"] = statistics.median(step_ms)
        rec["tokens_per_s_median"] = mb * seq / (rec["step_ms_median"] / 1e3)
        rec["flops_per_token"] = flops
        rec["mfu"] = flops * rec["tokens_per_s"] / self.peak if self.peak else None
        if dev == "cuda":
            rec["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
            if args.profile:
                rec["profile"] = kernel_profile(lambda: step(batches[0]))

    def build_baseline(self, which: str, rec: dict):
        torch, args = self.torch, self.args
        shape = shape_of(args)
        if which == "gpt_flex":
            GPT = gpt_classes()
            net = GPT(shape["vocab_size"], shape["d_model"], shape["n_heads"], shape["n_layers"],
                      shape["max_seq_len"], args.device)  # fmt: skip
            if not net.flex:
                rec["note"] = "cpu: SDPA + ALiBi bias instead of FlexAttention"
        else:
            from transformers import MptConfig, MptForCausalLM

            cfg = MptConfig(
                d_model=shape["d_model"], n_heads=shape["n_heads"], n_layers=shape["n_layers"],
                vocab_size=shape["vocab_size"], max_seq_len=shape["max_seq_len"],
                expansion_ratio=4, no_bias=True, attn_config={"alibi": True, "alibi_bias_max": 8},
            )  # fmt: skip
            torch.manual_seed(0)
            with torch.device(args.device):
                net = MptForCausalLM(cfg)
            net.train()
        rec["params"] = sum(p.numel() for p in net.parameters())
        return net, shape["vocab_size"], shape["max_seq_len"], count_flops(net, shape)


# -- report ----------------------------------------------------------------------------------------


def merge_rounds(results: dict[str, dict], keys: list[str]) -> tuple[dict[str, dict], list[str]]:
    """Variants run in several rounds (`--repeat`, keys "KEY#N"): one row each, with the median
    tokens/s (and MFU) of the rounds that ran and every round's value in the note."""
    order = list(dict.fromkeys(k.split("#")[0] for k in keys))
    if len(order) == len(keys):
        return results, keys
    merged = {}
    for base in order:
        runs = [results[k] for k in keys if k.split("#")[0] == base]
        ok = sorted((r for r in runs if r.get("tokens_per_s")), key=lambda r: r["tokens_per_s"])
        if not ok:
            merged[base] = {**runs[0], "key": base}
            continue
        mid = ok[(len(ok) - 1) // 2]
        rec = {**mid, "key": base, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in ok)}
        if mid.get("mfu"):
            rec["mfu"] = mid["mfu"] * rec["tokens_per_s"] / mid["tokens_per_s"]
        rec["step_ms_median"] = statistics.median(r["step_ms_median"] for r in ok)
        each = ", ".join(f"{r['tokens_per_s']:,.0f}" for r in ok)
        rounds = f"median of {len(ok)}/{len(runs)} rounds: {each}"
        rec["note"] = "; ".join(x for x in (mid.get("note"), rounds) if x)
        merged[base] = rec
    return merged, order


def report(results: dict[str, dict], keys: list[str], env: dict) -> str:
    results, keys = merge_rounds(results, keys)
    headers = ["model", "backend", "mode", "mb", "tokens/s", "MFU %", "step ms", "peak GB",
               "loss step 1", "1st step s", "status / note"]  # fmt: skip
    # The first step's loss is taken on the initial weights (seed 0) and the first batch (seed 1):
    # one model at one micro-batch and precision gives the same loss with every backend.
    checks: dict[tuple, list[float]] = {}
    for r in results.values():
        if r.get("loss_first") is not None and not r["key"].startswith("baseline"):
            group = (r["model"], "bf16" in r["mode"], r["micro_batch"])
            checks.setdefault(group, []).append(r["loss_first"])
    rows = []
    for key in keys:
        r = results[key]
        model, backend, mode = key.split("|")
        note = r["status"] if r["status"] != "ok" else ""
        if r.get("oom_at"):
            note += f" OOM at mb {r['oom_at']}"
        if r.get("note"):
            note += f" [{r['note']}]"
        if r.get("error"):
            note += f" {r['error'][:90]}"
        lc = r.get("loss_first")
        group = (r.get("model"), "bf16" in mode, r.get("micro_batch"))
        if lc is not None and group in checks:
            ref = statistics.median(checks[group])
            if abs(lc - ref) > 0.02:
                note = f"LOSS DIFFERS from the other backends ({ref:.3f}); " + note
        mfu = r.get("mfu")
        rows.append([r.get("model", model), backend, mode, r.get("micro_batch", "-"),
                     fmt(r.get("tokens_per_s"), ",.0f"), fmt(mfu and 100 * mfu, ".1f"),
                     fmt(r.get("step_ms_median"), ".1f"), fmt(r.get("peak_gb"), ".1f"),
                     fmt(lc, ".4f"), fmt(r.get("first_step_s"), ".1f"), note.strip()])  # fmt: skip
    lines = [f"device: {env.get('gpu') or env.get('device')}  torch {env.get('torch')}  "
             f"triton {env.get('triton')}  peak {fmt(env.get('peak_flops') and env['peak_flops'] / 1e12, '.1f')} TFLOP/s"
             f"{'  (' + env['peak_note'] + ')' if env.get('peak_note') else ''}",
             format_table(headers, rows)]  # fmt: skip
    gpts = [r for k, r in results.items() if k.startswith("baseline|gpt_flex")]
    gpt = next(
        (r for r in gpts if r["key"] == "baseline|gpt_flex|compile"), gpts[0] if gpts else {}
    )
    hf = next((r for k, r in results.items() if k.startswith("baseline|hf_mpt")), {})
    ours = [r for k, r in results.items() if "|triton|" in k and r.get("tokens_per_s")]
    big = max(ours, key=lambda r: r.get("params", 0), default=None)
    if big is not None:
        same = [r for r in ours if r["model"] == big["model"]]
        for name, base in (("compiled GPT + FlexAttention", gpt), ("transformers MPT", hf)):
            if base.get("tokens_per_s"):
                # the target compares equal micro-batches when there are such rows (the GPT's 8)
                pool = [r for r in same if r.get("micro_batch") == base.get("micro_batch")]
                best = max(pool if base is gpt and pool else same, key=lambda r: r["tokens_per_s"])
                ratio = best["tokens_per_s"] / base["tokens_per_s"]
                goal = " (target >= 1.1x)" if base is gpt else ""
                lines.append(f"{best['model']} triton/{best['mode']} mb {best.get('micro_batch')}: "
                             f"{ratio:.2f}x the {name} ({base['mode']}, mb {base.get('micro_batch')})"
                             f" tokens/s{goal}")  # fmt: skip
        for base in gpts:  # the same precision and compile mode on both sides
            # the GPT compiles the whole model in every compile mode: X matches X and X-model
            mine = [r for r in same if r["mode"] in (base["mode"], base["mode"] + "-model")]
            if base.get("tokens_per_s") and mine:
                top = max(mine, key=lambda r: r["tokens_per_s"])
                ratio = top["tokens_per_s"] / base["tokens_per_s"]
                lines.append(f"{big['model']} triton/{top['mode']}: {ratio:.2f}x the compiled GPT"
                             f" + FlexAttention in the same precision ({base['mode']})")  # fmt: skip
    for key in keys:
        prof = results[key].get("profile")
        if prof:
            cats = ", ".join(f"{c} {ms:.1f}" for c, ms in prof["by_category"].items())
            lines.append(f"\nkernels of {key}: {prof['step_ms_kernels']:.1f} ms/step: {cats}")
            lines += [f"  {ms:8.3f} ms x{calls:<4} {name}" for name, ms, calls in prof["top"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None)
    parser.add_argument(
        "--quick", action="store_true", help="mpt_1b triton/flex (mp-compile-model) + GPT baseline"
    )
    parser.add_argument("--dry-run", action="store_true", help="= --device cpu --quick")
    parser.add_argument("--models", default=None, help=f"comma-separated, of {MODELS}")
    parser.add_argument("--backends", default=None, help=f"comma-separated, of {BACKENDS}")
    parser.add_argument("--modes", default=None, help=f"comma-separated, of {list(MODES)}; "
                        "given: every model x backend x mode; default: a fixed priority list")  # fmt: skip
    parser.add_argument("--baselines", default=None, help="gpt_flex,hf_mpt (default) or none")
    parser.add_argument("--baseline-modes", default=None,
                        help="modes for the gpt_flex baseline, e.g. compile,mp-compile (default compile)")  # fmt: skip
    parser.add_argument("--baseline-shape", default="mpt_1b", help="preset the baselines copy")
    parser.add_argument("--baseline-micro-batch", type=int, default=None)
    parser.add_argument("--micro-batch", default=None, help="N for all, or mpt_1b=8,mpt_125m=16")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of the whole list, interleaved; rows show the median")  # fmt: skip
    parser.add_argument("--profile", action="store_true",
                        help="GPU kernel time per step by category and the top kernels (cuda)")  # fmt: skip
    add_harness_args(parser, variant_timeout=420)
    args = parser.parse_args()
    cpu = resolve_device(args) == "cpu"
    args.steps = args.steps or (3 if cpu else 5 if args.quick else 10)
    args.warmup = args.warmup or (2 if args.quick or cpu else 3)
    models = args.models.split(",") if args.models else (["tiny"] if cpu else MODELS)
    backends = args.backends.split(",") if args.backends else BACKENDS
    modes = args.modes.split(",") if args.modes else (["amp"] if cpu else None)
    baselines = list(BASELINES) if args.baselines is None else args.baselines.split(",")
    baselines = [b for b in baselines if b != "none"]
    if args.quick and not cpu:
        models = args.models.split(",") if args.models else ["mpt_1b"]
        backends = args.backends.split(",") if args.backends else ["triton", "flex"]
        modes = modes or ["mp-compile-model"]
        baselines = baselines if args.baselines else ["gpt_flex"]
    for name, given, known in (("models", models, [*MODELS, "tiny"]), ("backends", backends, BACKENDS),
                               ("modes", modes or [], list(MODES)), ("baselines", baselines, list(BASELINES))):  # fmt: skip
        bad = [x for x in given if x not in known]
        if bad:
            parser.error(f"unknown {name} {bad}; known: {known}")
    baseline_modes = {}
    if args.baseline_modes:
        baseline_modes["gpt_flex"] = args.baseline_modes.split(",")
        bad = [m for m in baseline_modes["gpt_flex"] if m not in MODES or not MODES[m]["compile"]]
        if bad:
            parser.error(f"--baseline-modes {bad}: the GPT baseline runs compiled modes only")
    keys = default_variants(models, backends, modes, baselines, baseline_modes)
    if args.repeat > 1:  # whole rounds, interleaved: drift on the machine hits every variant alike
        keys = [f"{k}#{r}" for r in range(1, args.repeat + 1) for k in keys]

    if args._worker:
        runner = Runner(args)
        return worker_loop(keys, runner.run, args._worker, args._deadline, runner.meta())

    def worker():
        runner = Runner(args)
        return runner.run, runner.meta()

    results, env, out = run_all(
        __file__, args, keys, "model_bench", worker, lambda res: [res[k] for k in keys if k in res]
    )
    print()
    print(report(results, keys, env))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
