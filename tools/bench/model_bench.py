"""MPT's training step on one GPU: tokens/s and MFU per model, attention backend and mode.

Forward + backward + AdamW step of mpt_125m, mpt_350m and mpt_1b at sequence 2048 in bf16 for
each attention backend (issue 5, part 7), with two baselines measured in the same run: transformers' MptForCausalLM (1B shape, micro-batch 2,
eager) and a plain PyTorch GPT of the same shape compiled with torch.compile, using FlexAttention
with an ALiBi score_mod (micro-batch 8; gpt_baseline.py).

    tools/gpu-setup && python3 tools/bench/model_bench.py           # the default list, in order
    python3 tools/bench/model_bench.py --quick                       # mpt_1b triton/flex + GPT
    python3 tools/bench/model_bench.py --models mpt_1b --backends triton --modes compile,mp-compile
    .venv/bin/python tools/bench/model_bench.py --dry-run            # tiny model on the CPU

Modes (`MODES`, recorded per row): `amp` fp32 weights + torch.autocast(bf16), as the trainer
runs; `compile` the same with torch.compile on each block (model.blocks()); `compile-model`
torch.compile of the whole model (embedding, head and loss too), as the GPT gets; `mp-*` bf16
weights with fp32 master weights and AdamW states (composer_lite's MasterWeightAdamW: FSDP2's
param_dtype=bf16 mixed precision on one GPU, as llm-foundry trains MPT); `mp-compile-model-exact`
the ALiBi skip at exact fp32 underflow (2^-150) instead of MPTConfig's default "rounding". The
baselines run in the mode their key names (the GPT compiles the whole model in every compile
mode). `--profile` adds each variant's GPU kernel time per step by category (kernel_profile.py).
MFU = flops_per_token (6*N + 12*L*d*T, N all parameters) * tokens/s / the GPU's dense bf16 peak
from composer_lite's table; an unknown GPU gets no MFU. A variant that runs out of memory is
recorded and retried at half the micro-batch. Each variant starts from a fresh state (new model,
caches emptied, peak memory reset) in a child process (bench_common.py) that a crash ends alone.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    add_common_args,
    fmt,
    format_table,
    is_oom,
    resolve,
    run_child,
    run_variants,
    write_json,
)
from model_step import Mode, Step

MODELS = ["mpt_125m", "mpt_350m", "mpt_1b"]
BACKENDS = ["triton", "flex", "sdpa", "torch"]
MICRO_BATCH = {"mpt_125m": 16, "mpt_350m": 12, "mpt_1b": 8, "tiny": 2}
# The `torch` backend keeps an S x S score tensor per layer for the backward: start lower.
TORCH_MICRO_BATCH = {"mpt_125m": 8, "mpt_350m": 4, "mpt_1b": 2, "tiny": 2}
MODES = {
    "amp": Mode(master_weights=False, compile=None),
    "compile": Mode(master_weights=False, compile="blocks"),
    "compile-model": Mode(master_weights=False, compile="model"),
    "mp-compile": Mode(master_weights=True, compile="blocks"),
    "mp-compile-model": Mode(master_weights=True, compile="model"),
    "mp-compile-model-exact": Mode(master_weights=True, compile="model", skip_bits=150.0),
}
BASELINES = {"gpt_flex": ("compile", 8), "hf_mpt": ("amp", 2)}  # mode, micro-batch


def default_variants(models, backends, modes, baselines, baseline_modes=None) -> list[str]:
    """Keys "model|backend|mode", most important first, so that a time-budget cut drops the least
    useful rows."""
    models = sorted(models, key=["tiny", *MODELS].index)
    big = models[-1] if models else None  # the largest asked for: mpt_1b, the target, by default
    baseline_modes = baseline_modes or {}
    if modes is None:  # the target's rows first, then every model x backend in the best mode
        best = "mp-compile-model"
        order = [(big, "triton", best), ("baseline", "gpt_flex", "compile")]
        order += [("baseline", "gpt_flex", "mp-compile"), (big, "flex", best)]
        order += [("baseline", "hf_mpt", "amp"), (big, "triton", "compile")]
        order += [(big, "triton", "compile-model"), (big, "triton", "mp-compile-model-exact")]
        order += [(m, b, best) for m in reversed(models) for b in ("triton", "flex", "sdpa")]
        order += [(m, "torch", best) for m in reversed(models)]
        order += [(big, "triton", mode) for mode in ("mp-compile", "amp")]
    else:  # the largest model, the baselines, the other models
        order = [(m, b, mode) for m in reversed(models) for b in backends for mode in modes]
        n = len(backends) * len(modes)
        order[n:n] = [
            ("baseline", b, m) for b in baselines for m in baseline_modes.get(b, [BASELINES[b][0]])
        ]
    keys = []
    for model, backend, mode in order:
        if model == "baseline":
            wanted = backend in baselines
        else:
            wanted = model in models and backend in backends
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


# ---- one variant ---------------------------------------------------------------------------


def run_variant(step: Step, key: str, rec: dict) -> None:
    """Measure the variant `key` ("model|backend|mode", "#N" for the round of --repeat), halving
    the micro-batch after an out-of-memory error."""
    model, backend, mode_name = key.split("#")[0].split("|")
    rec.update(model=model, backend=backend, mode=mode_name)
    args = step.args
    if model == "baseline":
        mb = args.baseline_micro_batch or BASELINES[backend][1]
        rec["model"] = f"{backend} ({args.baseline_shape if args.device == 'cuda' else 'tiny'})"
    else:
        mb = micro_batch_for(args, model, backend)
    rec["oom_at"] = []
    while True:
        step.fresh()
        try:
            step.measure(model, backend, MODES[mode_name], mb, rec)
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
    step.fresh()


# ---- report --------------------------------------------------------------------------------


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


def _row(key: str, r: dict, loss_ref: float | None) -> list:
    """One table row; `loss_ref`: the median first-step loss of the rows that should match it."""
    model, backend, mode = key.split("|")
    note = r["status"] if r["status"] != "ok" else ""
    if r.get("oom_at"):
        note += f" OOM at mb {r['oom_at']}"
    if r.get("note"):
        note += f" [{r['note']}]"
    if r.get("error"):
        note += f" {r['error'][:90]}"
    loss = r.get("loss_first")
    if loss is not None and loss_ref is not None and abs(loss - loss_ref) > 0.02:
        note = f"LOSS DIFFERS from the other backends ({loss_ref:.3f}); " + note
    mfu = r.get("mfu")
    return [
        r.get("model", model),
        backend,
        mode,
        r.get("micro_batch", "-"),
        fmt(r.get("tokens_per_s"), ",.0f"),
        fmt(mfu and 100 * mfu, ".1f"),
        fmt(r.get("step_ms_median"), ".1f"),
        fmt(r.get("peak_gb"), ".1f"),
        fmt(loss, ".4f"),
        fmt(r.get("first_step_s"), ".1f"),
        note.strip(),
    ]


def _precision(mode: str) -> str:
    return "mp" if MODES[mode].master_weights else "amp"


def _ratios(results: dict[str, dict]) -> list[str]:
    """Our largest model with triton against the baselines measured in the same run."""
    gpts = [r for k, r in results.items() if k.startswith("baseline|gpt_flex")]
    gpt = next(
        (r for r in gpts if r["key"] == "baseline|gpt_flex|compile"), gpts[0] if gpts else {}
    )
    hf = next((r for k, r in results.items() if k.startswith("baseline|hf_mpt")), {})
    ours = [r for k, r in results.items() if "|triton|" in k and r.get("tokens_per_s")]
    big = max(ours, key=lambda r: r.get("params", 0), default=None)
    if big is None:
        return []
    lines = []
    same = [r for r in ours if r["model"] == big["model"]]
    for name, base in (("compiled GPT + FlexAttention", gpt), ("transformers MPT", hf)):
        if base.get("tokens_per_s"):
            # the target compares equal micro-batches when there are such rows (the GPT's 8)
            pool = [r for r in same if r.get("micro_batch") == base.get("micro_batch")]
            best = max(pool if base is gpt and pool else same, key=lambda r: r["tokens_per_s"])
            ratio = best["tokens_per_s"] / base["tokens_per_s"]
            goal = " (target >= 1.1x)" if base is gpt else ""
            ours_is = f"{best['model']} triton/{best['mode']} mb {best.get('micro_batch')}"
            theirs = f"{name} ({base['mode']}, mb {base.get('micro_batch')})"
            lines.append(f"{ours_is}: {ratio:.2f}x the {theirs} tokens/s{goal}")
    for base in gpts:  # the same precision and compile mode on both sides
        # the GPT compiles the whole model in every compile mode: X matches X and X-model
        mine = [r for r in same if r["mode"] in (base["mode"], base["mode"] + "-model")]
        if base.get("tokens_per_s") and mine:
            top = max(mine, key=lambda r: r["tokens_per_s"])
            ratio = top["tokens_per_s"] / base["tokens_per_s"]
            lines.append(
                f"{big['model']} triton/{top['mode']}: {ratio:.2f}x the compiled GPT"
                f" + FlexAttention in the same precision ({base['mode']})"
            )
    return lines


def report(results: dict[str, dict], keys: list[str], env: dict) -> str:
    results, keys = merge_rounds(results, keys)
    # The first step's loss is taken on the initial weights (seed 0) and the first batch (seed 1):
    # one model at one micro-batch and precision gives the same loss with every backend.
    losses: dict[tuple, list[float]] = {}
    for key in keys:
        r = results[key]
        if r.get("loss_first") is not None and not key.startswith("baseline"):
            group = (r["model"], _precision(r["mode"]), r["micro_batch"])
            losses.setdefault(group, []).append(r["loss_first"])
    rows = []
    for key in keys:
        r = results[key]
        group = (r.get("model"), _precision(key.split("|")[2]), r.get("micro_batch"))
        ref = statistics.median(losses[group]) if group in losses else None
        rows.append(_row(key, r, ref))
    peak = env.get("peak_flops")
    head = f"device: {env.get('gpu') or env.get('device')}  torch {env.get('torch')}  "
    head += f"triton {env.get('triton')}  peak {fmt(peak and peak / 1e12, '.1f')} TFLOP/s"
    head += f"  ({env['peak_note']})" if env.get("peak_note") else ""
    headers = ["model", "backend", "mode", "mb", "tokens/s", "MFU %", "step ms", "peak GB"]
    headers += ["loss step 1", "1st step s", "status / note"]
    lines = [head, format_table(headers, rows), *_ratios(results)]
    for key in keys:
        prof = results[key].get("profile")
        if prof:
            cats = ", ".join(f"{c} {ms:.1f}" for c, ms in prof["by_category"].items())
            lines.append(f"\nkernels of {key}: {prof['step_ms_kernels']:.1f} ms/step: {cats}")
            lines += [f"  {ms:8.3f} ms x{calls:<4} {name}" for name, ms, calls in prof["top"]]
    return "\n".join(lines)


# ---- command line --------------------------------------------------------------------------


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    """The options and the variant keys they ask for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, variant_timeout=420)
    parser.add_argument(
        "--quick", action="store_true", help="mpt_1b triton/flex (mp-compile-model) + GPT baseline"
    )
    parser.add_argument("--models", default=None, help=f"comma-separated, of {MODELS}")
    parser.add_argument("--backends", default=None, help=f"comma-separated, of {BACKENDS}")
    modes_help = f"comma-separated, of {list(MODES)}; default: a fixed priority list"
    parser.add_argument("--modes", default=None, help=modes_help)
    parser.add_argument("--baselines", default=None, help="gpt_flex,hf_mpt (default) or none")
    gpt_help = "modes for the gpt_flex baseline, e.g. compile,mp-compile (default compile)"
    parser.add_argument("--baseline-modes", default=None, help=gpt_help)
    parser.add_argument("--baseline-shape", default="mpt_1b", help="preset the baselines copy")
    parser.add_argument("--baseline-micro-batch", type=int, default=None)
    parser.add_argument("--micro-batch", default=None, help="N for all, or mpt_1b=8,mpt_125m=16")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3)")
    repeat_help = "rounds of the whole list, interleaved; rows show the median"
    parser.add_argument("--repeat", type=int, default=1, help=repeat_help)
    profile_help = "GPU kernel time per step by category and the top kernels (cuda)"
    parser.add_argument("--profile", action="store_true", help=profile_help)
    args = parser.parse_args()
    cpu = resolve(args, "model_bench") == "cpu"
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
    known = {
        "models": [*MODELS, "tiny"],
        "backends": BACKENDS,
        "modes": list(MODES),
        "baselines": list(BASELINES),
    }
    given = {"models": models, "backends": backends, "modes": modes or [], "baselines": baselines}
    for name, names in given.items():
        bad = [x for x in names if x not in known[name]]
        if bad:
            parser.error(f"unknown {name} {bad}; known: {known[name]}")
    baseline_modes = {}
    if args.baseline_modes:
        baseline_modes["gpt_flex"] = args.baseline_modes.split(",")
        bad = [m for m in baseline_modes["gpt_flex"] if m not in MODES or not MODES[m].compile]
        if bad:
            parser.error(f"--baseline-modes {bad}: the GPT baseline runs compiled modes only")
    keys = default_variants(models, backends, modes, baselines, baseline_modes)
    if args.repeat > 1:  # whole rounds, interleaved: drift on the machine hits every variant alike
        keys = [f"{k}#{r}" for r in range(1, args.repeat + 1) for k in keys]
    return args, keys


def child(args) -> tuple:
    """(run_one, environment) in the process that measures."""
    step = Step(args)
    return functools.partial(run_variant, step), step.environment()


def main() -> int:
    args, keys = parse_args()
    if args.child_keys:
        return run_child(args, args.child_keys.split(","), *child(args))
    results, env = run_variants(__file__, args, keys, functools.partial(child, args))
    out = write_json(args, env, [results[k] for k in keys])
    print()
    print(report(results, keys, env))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
