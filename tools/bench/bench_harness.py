"""Variant isolation for the benchmarks in tools/bench (attention_bench.py, model_bench.py).

A benchmark script's supervisor (`supervise`) runs the script again as a worker (`--_worker LOG`);
the worker (`worker_loop`) appends one JSON line to LOG when a variant starts and one when it is
done. A crash, a hang past `variant_timeout`, a broken CUDA context or running out of the time
budget ends the worker; the supervisor records that variant ("crashed (worker exit code N)",
"timeout", "skipped: time budget", "interrupted"), starts a new worker for the rest, and gives up
once three workers have finished nothing. SIGTERM (e.g. from `timeout`) stops the run and keeps
what was measured. An exception inside a variant is recorded ("OOM" or "error") and the worker
goes on. `on_progress` lets the script rewrite its JSON (`write_json`, atomic) after each variant.

Also shared: the harness's command-line options (`add_harness_args`), where the JSON goes
(`default_json`), the environment record, and the table formatting of the final report.
This is a script helper, not a package: the scripts put tools/bench on sys.path to import it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "ROOT",
    "add_harness_args",
    "append_log",
    "cuda_usable",
    "default_json",
    "environment",
    "finished",
    "fmt",
    "format_table",
    "is_oom",
    "kernel_profile",
    "last_meta",
    "raise_recompile_limits",
    "read_log",
    "resolve_device",
    "run_all",
    "supervise",
    "worker_loop",
    "write_json",
]

ROOT = Path(__file__).resolve().parents[2]


def add_harness_args(parser: argparse.ArgumentParser, *, variant_timeout: float) -> None:
    parser.add_argument("--json", type=Path, help="output JSON (default $OUT/<script>.json)")
    parser.add_argument("--time-budget", type=float, default=540.0, help="seconds for all variants")
    parser.add_argument("--variant-timeout", type=float, default=variant_timeout)
    parser.add_argument("--in-process", action="store_true", help="no worker process (debugging)")
    parser.add_argument("--_worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_deadline", type=float, help=argparse.SUPPRESS)


def resolve_device(args: argparse.Namespace) -> str:
    """`--dry-run` means `--device cpu --quick`; no `--device`: cuda when there is one. On the CPU
    the Triton kernels run under the interpreter (set before triton is imported)."""
    if args.dry_run:
        args.device, args.quick = "cpu", True
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return args.device


def default_json(name: str, device: str) -> Path:
    out = os.environ.get("OUT")
    base = Path(out) if out else ROOT / "tools" / "bench" / "out"
    return base / (f"{name}.json" if device == "cuda" else f"{name}_{device}.json")


def read_log(path: Path) -> list[dict]:
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill
                records.append(json.loads(line))
    return records


def append_log(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()


def finished(records: list[dict]) -> dict[str, dict]:
    """{key: its "done" record} of the variants finished so far."""
    return {r["key"]: r for r in records if r.get("event") == "done"}


def _running(records: list[dict]) -> dict | None:
    done = finished(records)
    started = [r for r in records if r.get("event") == "start" and r["key"] not in done]
    return started[-1] if started else None


class _Stop(Exception):
    """SIGTERM (e.g. from `timeout`): stop the worker, keep what was measured."""


def supervise(
    script: str,
    argv: list[str],
    keys: list[str],
    log: Path,
    *,
    variant_timeout: float,
    deadline: float,
    on_progress: Callable[[dict[str, dict], dict], None],
) -> tuple[dict[str, dict], dict]:
    """Run workers until every key is done; returns ({key: result}, meta written by the workers)."""

    def stop(signum, frame):
        raise _Stop(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, stop)
    idle_starts, seen = 0, -1
    try:
        while True:
            records = read_log(log)
            done = finished(records)
            todo = [k for k in keys if k not in done]
            if not todo:
                break
            if time.time() > deadline:
                for k in todo:
                    append_log(log, {"key": k, "event": "done", "status": "skipped: time budget"})
                break
            if len(done) == seen:  # the last worker finished nothing
                idle_starts += 1
                if idle_starts >= 3:
                    for k in todo:
                        rec = {"key": k, "event": "done", "status": "error: workers keep failing"}
                        append_log(log, rec)
                    break
            seen = len(done)
            cmd = [
                sys.executable,
                script,
                *argv,
                "--_worker",
                str(log),
                "--_deadline",
                str(deadline),
            ]
            proc = subprocess.Popen(cmd)
            reported = len(done)
            try:
                while proc.poll() is None:
                    time.sleep(0.5)
                    records = read_log(log)
                    if len(finished(records)) != reported:
                        reported = len(finished(records))
                        on_progress(finished(records), last_meta(records))
                    run = _running(records)
                    late = run is not None and time.time() - run["t"] > variant_timeout
                    if late or time.time() > deadline + 30:
                        proc.kill()
                        proc.wait()
                        if run is not None:
                            why = "timeout" if late else "skipped: time budget (killed)"
                            append_log(log, {"key": run["key"], "event": "done", "status": why})
            except (_Stop, KeyboardInterrupt):
                proc.kill()
                proc.wait()
                run = _running(read_log(log))
                if run is not None:
                    append_log(log, {"key": run["key"], "event": "done", "status": "interrupted"})
                raise
            run = _running(read_log(log))
            if run is not None:  # the worker died inside a variant
                status = f"crashed (worker exit code {proc.returncode})"
                append_log(log, {"key": run["key"], "event": "done", "status": status})
    except (_Stop, KeyboardInterrupt) as err:
        print(f"\nstopped ({err or 'interrupt'}); writing what was measured", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, old)
    records = read_log(log)
    done = finished(records)
    for k in keys:
        done.setdefault(k, {"key": k, "status": "not run"})
    return done, last_meta(records)


def run_all(
    script: str,
    args: argparse.Namespace,
    keys: list[str],
    name: str,
    make_worker: Callable[[], tuple[Callable[[str, dict], None], dict]],
    rows_of: Callable[[dict[str, dict]], list[dict]],
) -> tuple[dict[str, dict], dict, Path]:
    """The supervisor side of a benchmark's main(): runs every key in workers (or in this process
    with --in-process), rewrites the JSON after each variant and at the end (`complete` true only
    then), and returns ({key: result}, environment, JSON path). `make_worker()` gives the
    in-process (run_one, meta); `rows_of(results)` the JSON's result rows."""
    out = args.json or default_json(name, args.device)
    log = out.with_suffix(".partial.jsonl")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    deadline = time.time() + args.time_budget
    payload = {"command": " ".join([Path(script).name, *sys.argv[1:]]), "args": vars(args)}

    def save(results: dict[str, dict], env: dict, final: bool = False) -> None:
        write_json(
            out, {**payload, "environment": env, "complete": final, "results": rows_of(results)}
        )

    if args.in_process:
        run_one, meta = make_worker()
        worker_loop(keys, run_one, log, deadline, meta)
        results, env = finished(read_log(log)), last_meta(read_log(log))
    else:
        results, env = supervise(
            script, sys.argv[1:], keys, log, variant_timeout=args.variant_timeout,
            deadline=deadline, on_progress=save,
        )  # fmt: skip
    save(results, env, final=True)
    log.unlink(missing_ok=True)
    return results, env, out


def last_meta(records: list[dict]) -> dict:
    """The meta record the last worker wrote (environment and the like); {} if none."""
    metas = [r for r in records if r.get("event") == "meta"]
    return metas[-1]["meta"] if metas else {}


def is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def cuda_usable() -> bool:
    """False once the CUDA context is broken (illegal address, device assert): restart needed."""
    import torch

    if not torch.cuda.is_available():
        return True
    try:
        torch.cuda.synchronize()
        return torch.ones(1, device="cuda").add_(1).item() == 2.0
    except Exception:
        return False


def worker_loop(
    keys: list[str], run_one: Callable[[str, dict], None], log: Path, deadline: float, meta: dict
) -> int:
    """Run the keys not yet done; `run_one(key, record)` fills `record` (kept on an exception)."""
    import torch

    append_log(log, {"event": "meta", "meta": meta})
    done = finished(read_log(log))
    for key in keys:
        if key in done:
            continue
        if time.time() > deadline:
            append_log(log, {"key": key, "event": "done", "status": "skipped: time budget"})
            continue
        append_log(log, {"key": key, "event": "start", "t": time.time()})
        print(f"--- {key}", flush=True)
        t0 = time.time()
        record: dict = {"status": "ok"}
        try:
            run_one(key, record)
        except Exception as err:
            record["status"] = "OOM" if is_oom(err) else "error"
            record["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
            traceback.print_exc()
        record.update(key=key, event="done", seconds=round(time.time() - t0, 1))
        append_log(log, record)
        if record["status"] != "ok" and torch.cuda.is_available():
            if not cuda_usable():
                print("CUDA context broken; the supervisor restarts the worker", file=sys.stderr)
                return 3
            torch.cuda.empty_cache()
    return 0


def raise_recompile_limits(limit: int = 64) -> None:
    """Let dynamo compile one function for many shapes (or blocks) without falling back to eager."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit", "accumulated_cache_size_limit"):
        with contextlib.suppress(Exception):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit))


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)


def environment(device: str) -> dict:
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, sms=props.multi_processor_count)
        env["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
    else:
        env["gpu"] = None
    return env


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = [" | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def fmt(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


# Kernel-name substrings per category, first match wins (CUDA kernel names as the profiler shows).
KERNEL_CATEGORIES = [
    ("attention (ours)", ("fwd_kernel", "dkdv_kernel", "dq_kernel", "preprocess_kernel",
                          "split_kernel", "combine_kernel", "key_norm_max")),
    ("attention (flex)", ("triton_tem_fused", "flex_attention")),
    ("attention (other)", ("flash", "fmha", "attention", "softmax_warp")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "sm80_", "cublas", "splitk", "triton_mm",
              "mm_template")),
    ("optimizer", ("multi_tensor_apply", "fused_adam", "adam")),
    ("embedding / gather-scatter", ("embedding", "index", "scatter", "gather")),
    ("cross-entropy", ("nll_loss", "log_softmax", "cross_entropy", "cunn_softmax")),
    ("copy / cast / fill", ("memcpy", "memset", "copy", "fill", "cast")),
    ("inductor fused (triton)", ("triton_",)),
    ("aten elementwise / reduce", ("elementwise", "vectorized", "reduce_kernel", "layer_norm",
                                   "gelu", "norm")),
]  # fmt: skip


def kernel_category(name: str) -> str:
    low = name.lower()
    for category, needles in KERNEL_CATEGORIES:
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
    return {
        "step_ms_kernels": round(sum(ms for ms, _ in kernels.values()), 2),
        "by_category": {
            k: round(v, 2) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])
        },
        "top": [[name[:120], round(ms, 3), calls] for name, (ms, calls) in ranked[:top]],
    }
