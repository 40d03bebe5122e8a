"""model_bench.py's measurement of one variant: build the model (an MPT preset, or a baseline),
cast and compile it as its `Mode` says, warm up, then time `--steps` training steps (forward,
backward, optimizer step) with CUDA events, and record tokens/s, MFU, peak memory and the losses.

This is a script helper, not a package: the scripts put tools/bench on sys.path to import it.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass

from bench_common import environment, raise_recompile_limits

__all__ = ["SEQ", "TINY", "Mode", "Step"]

SEQ = 2048
# The tiny shape of --device cpu (and of the baselines there): 4 heads of 16, 2 layers.
TINY = dict(d_model=64, n_heads=4, n_layers=2, vocab_size=256, max_seq_len=64)


@dataclass(frozen=True)
class Mode:
    """A training recipe: the precision, what torch.compile wraps, the kernels' skip threshold."""

    master_weights: bool  # bf16 weights, fp32 masters in MasterWeightAdamW; else fp32 + autocast
    compile: str | None  # None, "blocks" (each of model.blocks()) or "model" (the whole model)
    skip_bits: float | None = None  # MPTConfig.attn_skip_bits; None: its default ("rounding")


# ---- the models ----------------------------------------------------------------------------


def build_mpt(args, model: str, backend: str, mode: Mode, rec: dict):
    import torch

    from mpt import MPTConfig, MPTForCausalLM, preset

    # attn_fallback=None: a backend that cannot serve the case raises instead of timing `torch`.
    overrides = dict(attn_impl=backend, attn_fallback=None)
    if mode.skip_bits is not None:
        overrides["attn_skip_bits"] = mode.skip_bits
    if model == "tiny":
        cfg = MPTConfig(**TINY, **overrides)
    else:
        cfg = preset(model, max_seq_len=SEQ, **overrides)
    torch.manual_seed(0)
    net = MPTForCausalLM(cfg, device=args.device)
    rec["params"] = sum(p.numel() for p in net.parameters())
    rec["flops_per_token"] = net.flops_per_token(cfg.max_seq_len)
    return net, cfg.vocab_size, cfg.max_seq_len


def baseline_shape(args) -> dict:
    if args.device == "cpu":
        return dict(TINY)
    from mpt import preset

    c = preset(args.baseline_shape)
    keys = ("d_model", "n_heads", "n_layers", "vocab_size")
    return {**{k: getattr(c, k) for k in keys}, "max_seq_len": SEQ}


def build_baseline(args, which: str, rec: dict):
    """(net, vocab, seq, flops per token) of a baseline in `args.baseline_shape`."""
    import torch

    shape = baseline_shape(args)
    d, heads, layers = shape["d_model"], shape["n_heads"], shape["n_layers"]
    vocab, seq = shape["vocab_size"], shape["max_seq_len"]
    if which == "gpt_flex":
        from gpt_baseline import GPT

        net = GPT(vocab, d, heads, layers, seq, args.device)
        if not net.flex:
            rec["note"] = "cpu: SDPA + ALiBi bias instead of FlexAttention"
    else:
        from transformers import MptConfig, MptForCausalLM

        sizes = dict(d_model=d, n_heads=heads, n_layers=layers, vocab_size=vocab, max_seq_len=seq)
        alibi = {"alibi": True, "alibi_bias_max": 8}
        cfg = MptConfig(**sizes, expansion_ratio=4, no_bias=True, attn_config=alibi)
        torch.manual_seed(0)
        with torch.device(args.device):
            net = MptForCausalLM(cfg)
        net.train()
    rec["params"] = n = sum(p.numel() for p in net.parameters())  # tied parameters counted once
    return net, vocab, seq, 6.0 * n + 12.0 * layers * d * seq


class Step:
    """Builds, warms up and times one training step's variant (`measure`), in the child process."""

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

    def environment(self) -> dict:
        env = environment(self.args.device)
        return {**env, "peak_flops": self.peak, "peak_note": self.peak_note}

    def fresh(self) -> None:
        torch = self.torch
        gc.collect()
        torch._dynamo.reset()
        if self.args.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def build(self, model: str, backend: str, mode: Mode, rec: dict):
        """(net, vocab, seq, flops per token): the model, in bf16 for the `mp-*` modes."""
        if model == "baseline":
            net, vocab, seq, flops = build_baseline(self.args, backend, rec)
        else:
            net, vocab, seq = build_mpt(self.args, model, backend, mode, rec)
            flops = rec["flops_per_token"]
        if mode.master_weights:
            net = net.to(self.torch.bfloat16)
        return net, vocab, seq, flops

    def compile_and_optimizer(self, net, model: str, mode: Mode):
        """(net compiled as `mode` says, its optimizer)."""
        torch = self.torch
        if mode.compile == "model" or (mode.compile and model == "baseline"):
            net = torch.compile(net)  # the whole model, as a user would
        elif mode.compile == "blocks":
            for block in net.blocks():
                block.compile()
        params = [p for p in net.parameters() if p.requires_grad]
        if mode.master_weights:  # fp32 master copies take the update, the bf16 weights follow
            from composer_lite.optim import MasterWeightAdamW

            return net, MasterWeightAdamW(params, lr=1e-4, weight_decay=0.0, fused=None)
        fused = self.args.device == "cuda"
        return net, torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=fused)

    def train_step(self, net, opt, model: str, backend: str, mode: Mode):
        """`step(ids) -> loss`: forward (autocast to bf16 unless the weights are bf16), backward,
        optimizer step."""
        torch, dev = self.torch, self.args.device

        def step(ids):
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=not mode.master_weights):
                if model != "baseline":
                    loss = net(ids, labels=ids, return_logits=True).loss
                elif backend == "hf_mpt":
                    loss = net(input_ids=ids, labels=ids, use_cache=False).loss
                else:
                    loss = net(ids)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        return step

    def sync(self) -> None:
        if self.args.device == "cuda":
            self.torch.cuda.synchronize()

    def warm_up(self, step, batches, rec: dict) -> list[float]:
        """`--warmup` untimed steps (the first one compiles); their losses."""
        t0 = time.perf_counter()
        losses = []
        for i in range(self.args.warmup):
            losses.append(float(step(batches[i % 4])))
            self.sync()
            if i == 0:
                rec["first_step_s"] = round(time.perf_counter() - t0, 1)
        rec["warmup_s"] = round(time.perf_counter() - t0, 1)
        return losses

    def time_steps(self, step, batches) -> tuple[float, list[float], object]:
        """(seconds, ms of each step, the last loss) of `--steps` steps; CUDA events on the GPU."""
        torch, dev, n = self.torch, self.args.device, self.args.steps
        stamps = []
        if dev == "cuda":
            events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
            events[0].record()
        t1 = time.perf_counter()
        for i in range(n):
            last = step(batches[i % 4])
            if dev == "cuda":
                events[i + 1].record()
            else:
                stamps.append(time.perf_counter())
        self.sync()
        elapsed = time.perf_counter() - t1
        if dev == "cuda":
            step_ms = [a.elapsed_time(b) for a, b in zip(events, events[1:], strict=False)]
        else:
            step_ms = [(b - a) * 1e3 for a, b in zip([t1, *stamps], stamps, strict=False)]
        return elapsed, step_ms, last

    def measure(self, model: str, backend: str, mode: Mode, mb: int, rec: dict) -> None:
        """Build, warm up and time one variant at micro-batch `mb`; the numbers go to `rec`."""
        torch, args = self.torch, self.args
        dev = args.device
        rec["micro_batch"] = mb
        net, vocab, seq, flops = self.build(model, backend, mode, rec)
        rec["seq"] = seq
        g = torch.Generator(device=dev).manual_seed(1)
        batches = [torch.randint(0, vocab, (mb, seq), device=dev, generator=g) for _ in range(4)]
        net, opt = self.compile_and_optimizer(net, model, mode)
        step = self.train_step(net, opt, model, backend, mode)
        losses = self.warm_up(step, batches, rec)
        elapsed, step_ms, last = self.time_steps(step, batches)
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
                from kernel_profile import kernel_profile

                rec["profile"] = kernel_profile(lambda: step(batches[0]))
