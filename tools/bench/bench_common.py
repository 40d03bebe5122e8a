"""What the GPU benchmarks (attention_bench.py, model_bench.py) share.

Each benchmark is a list of variants (keys). `run_variants` starts the script again as a child
process (`subprocess`, with a timeout: what is left of `--time-budget`) to run the keys not done
yet; the child appends one JSON line per finished variant to `<json>.partial.jsonl`, and an
`alarm` of `--variant-timeout` seconds ends it if one variant hangs. An exception inside a variant
(out of memory, an unsupported case) is recorded by the child, which goes on; a child that dies
(crash, hang, a broken CUDA context) costs only the variant it was running, which is recorded
("crashed (exit N)", "timeout"), and a new child takes the rest. Once the budget is spent the
rest are recorded as "skipped: time budget". SIGTERM (`timeout` in gpu_run.sh) stops the run and
keeps what was measured; the script then writes its JSON (`write_json`) and table.

Also here: the environment record and the table format.
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
    "add_common_args",
    "environment",
    "fmt",
    "format_table",
    "is_oom",
    "raise_recompile_limits",
    "resolve",
    "run_child",
    "run_variants",
    "write_json",
]

ROOT = Path(__file__).resolve().parents[2]


def add_common_args(parser: argparse.ArgumentParser, *, variant_timeout: float) -> None:
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None)
    parser.add_argument("--dry-run", action="store_true", help="= --device cpu --quick")
    parser.add_argument("--json", type=Path, help="output JSON (default $OUT/<script>.json)")
    parser.add_argument("--time-budget", type=float, default=540.0, help="seconds for all variants")
    parser.add_argument("--variant-timeout", type=float, default=variant_timeout)
    parser.add_argument("--in-process", action="store_true", help="no child process (debugging)")
    # set by run_variants for the child process: its variants, where results go, when to stop
    parser.add_argument("--child-keys", help=argparse.SUPPRESS)
    parser.add_argument("--child-results", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-deadline", type=float, help=argparse.SUPPRESS)


def resolve(args: argparse.Namespace, name: str) -> str:
    """`--dry-run` means `--device cpu --quick`; no `--device`: cuda when there is one (on the CPU
    the Triton kernels run under the interpreter, set before triton is imported); no `--json`:
    $OUT/<name>.json (tools/bench/out without $OUT; `<name>_cpu.json` on the CPU)."""
    if args.dry_run:
        args.device, args.quick = "cpu", True
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if args.json is None:
        base = Path(os.environ.get("OUT") or ROOT / "tools" / "bench" / "out")
        args.json = base / (
            f"{name}.json" if args.device == "cuda" else f"{name}_{args.device}.json"
        )
    return args.device


# ---- the child: run its variants, one JSON line each ---------------------------------------


def _append(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def _read(path: Path) -> list[dict]:
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill
                records.append(json.loads(line))
    return records


def is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _cuda_broken() -> bool:
    """True once the CUDA context is broken (illegal address, device assert): a new process is
    needed for the variants after it."""
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        torch.cuda.synchronize()
        return torch.ones(1, device="cuda").add_(1).item() != 2.0
    except Exception:
        return True


#: A child's exit code after a broken CUDA context: its variants so far are recorded; restart.
_RESTART = 3


def run_child(args, keys: list[str], run_one: Callable[[str, dict], None], env: dict) -> int:
    """Run `keys` in order until the deadline; `run_one(key, record)` fills `record`."""
    results, deadline = args.child_results, args.child_deadline
    _append(results, {"environment": env})
    for key in keys:
        if time.time() > deadline:
            return 0
        print(f"--- {key}", flush=True)
        t0 = time.time()
        record: dict = {"key": key, "status": "ok"}
        if not args.in_process:  # a hang ends this process (SIGALRM); the parent records it
            signal.alarm(max(1, int(args.variant_timeout)))
        try:
            run_one(key, record)
        except Exception as err:
            record["status"] = "OOM" if is_oom(err) else "error"
            record["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
            traceback.print_exc()
        finally:
            signal.alarm(0)
        record["seconds"] = round(time.time() - t0, 1)
        _append(results, record)
        if record["status"] != "ok" and _cuda_broken():
            print("CUDA context broken; a new process runs the rest", file=sys.stderr)
            return _RESTART
    return 0


# ---- the parent: children until every variant is done --------------------------------------


def _done(records: list[dict]) -> set[str]:
    return {r["key"] for r in records if "key" in r}


def _child(script: str, args, todo: list[str]) -> int | None:
    """Run a child process for `todo`; its exit code, or None when it overran the budget."""
    cmd = [sys.executable, script, *sys.argv[1:], "--child-keys", ",".join(todo)]
    cmd += ["--child-results", str(args.child_results)]
    cmd += ["--child-deadline", str(args.child_deadline)]
    try:
        return subprocess.run(cmd, timeout=args.child_deadline - time.time() + 30).returncode
    except subprocess.TimeoutExpired:
        return None


def _lost_variant(returncode: int | None) -> str:
    """The status of the variant a child was running when it ended with `returncode`."""
    if returncode is None:
        return "skipped: time budget (killed)"
    if returncode == -signal.SIGALRM:
        return "timeout"
    return f"crashed (exit {returncode})"


def _run_all(script: str, args, keys: list[str], make_child) -> None:
    """Children (or this process with --in-process) until every key has a record or time is up."""
    partial = args.child_results
    while True:
        before = _read(partial)
        todo = [k for k in keys if k not in _done(before)]
        if not todo or time.time() > args.child_deadline:
            return
        if args.in_process:
            run_one, env = make_child()
            run_child(args, todo, run_one, env)
            continue
        rc = _child(script, args, todo)
        after = _read(partial)
        running = next((k for k in todo if k not in _done(after)), None)
        if rc in (0, _RESTART) or running is None:
            continue
        if len(after) == len(before):  # no environment record: it failed before any variant
            for key in todo:
                _append(partial, {"key": key, "status": f"not run: the child exits with {rc}"})
            return
        _append(partial, {"key": running, "status": _lost_variant(rc)})


def run_variants(
    script: str,
    args: argparse.Namespace,
    keys: list[str],
    make_child: Callable[[], tuple[Callable[[str, dict], None], dict]],
) -> tuple[dict[str, dict], dict]:
    """Run every key; ({key: record}, environment). `make_child()` gives (run_one, environment)
    in the process that measures."""
    partial = args.json.with_suffix(".partial.jsonl")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.unlink(missing_ok=True)
    args.child_results, args.child_deadline = partial, time.time() + args.time_budget
    old_handler = signal.signal(signal.SIGTERM, signal.default_int_handler)
    missing = "skipped: time budget"
    try:
        _run_all(script, args, keys, make_child)
    except KeyboardInterrupt:
        print("\nstopped; writing what was measured", file=sys.stderr)
        missing = "not run: stopped"
    finally:
        signal.signal(signal.SIGTERM, old_handler)
    records = _read(partial)
    partial.unlink(missing_ok=True)
    results = {r["key"]: r for r in records if "key" in r}
    for key in keys:
        results.setdefault(key, {"key": key, "status": missing})
    envs = [r["environment"] for r in records if "environment" in r]
    return results, envs[-1] if envs else {}


def write_json(args: argparse.Namespace, env: dict, rows: list[dict]) -> Path:
    """{command, args, environment, results: rows} to `args.json`."""
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    payload = {"command": command, "args": vars(args), "environment": env, "results": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(args.json)
    return args.json


# ---- environment, tables, compile limits ---------------------------------------------------


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
    env["gpu"] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, sms=props.multi_processor_count)
        env["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
    return env


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = [" | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def fmt(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def raise_recompile_limits(limit: int = 64) -> None:
    """Let dynamo compile one function for many shapes (or blocks) without falling back to eager."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit", "accumulated_cache_size_limit"):
        with contextlib.suppress(Exception):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit))
