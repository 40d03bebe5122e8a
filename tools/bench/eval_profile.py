"""Where evalkit's time goes with `mpt_1b` on one GPU: per task its wall time, the model's
forwards and their tokens; Python's profile of the run; torch.profiler's ops by CUDA and CPU time.

    python3 tools/bench/eval_profile.py --only boolq,mmlu,copa,hellaswag --limit 100

The tasks run three times in one process: first untimed (Triton compiles each kernel variant),
then timed with cProfile (top functions by own time), then under torch.profiler (CPU and CUDA
activity: the ops' self times, and the GPU's busy time against the wall time). `mpt_1b` has
random weights (`eval_models.py`); DATA is a copy of ../shared/data (the machine has none).
Writes eval_profile.json to --out ($OUT, else tools/bench/out).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))


def run_tasks(model, args, stats: dict) -> dict:
    """One evaluation of the chosen tasks; per task its seconds, forwards and tokens."""
    from evalkit.evaluate import EvalConfig, Evaluator
    from evalkit.loading import load_tokenizer

    data = Path(args.data)
    config = EvalConfig(
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        limit=args.limit,
        labels=tuple(args.only.split(",")) if args.only else None,
    )
    tokenizer = load_tokenizer(data / "tokenizers/gpt-neox-20b/tokenizer.json")
    tasks = data / "eval/yamls/tasks_seed_table.yaml"
    evaluator = Evaluator(tokenizer, tasks, data_root=data / "eval/icl", config=config)
    stats.clear()
    started = time.perf_counter()
    results = evaluator.run(model, name="mpt_1b")
    wall = time.perf_counter() - started
    per_task = {name: {"seconds": round(t.seconds, 2)} for name, t in results.tasks.items()}
    return {"wall_s": round(wall, 2), "tasks": per_task, "forwards": dict(stats)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default="boolq,mmlu,copa,hellaswag", help="task labels")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-batch-tokens", type=int, default=131072)
    p.add_argument("--data", default=os.environ.get("DATA", "tools/bench/out/shared-data"))
    p.add_argument("--out", default=os.environ.get("OUT", "tools/bench/out"))
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()

    import torch
    from eval_models import mpt_1b

    import mpt

    model = mpt_1b()
    stats: dict = {}

    def count(module, inputs, kwargs):
        ids = inputs[0] if inputs else kwargs["input_ids"]
        shape = "x".join(map(str, ids.shape))
        cached = kwargs.get("past_key_values") is not None
        key = f"{'cache' if cached else 'plain'} {shape}"
        stats[key] = stats.get(key, 0) + 1

    model.register_forward_pre_hook(count, with_kwargs=True)
    report = {"device": torch.cuda.get_device_name(), "mpt": mpt.__file__, "args": vars(args)}
    report["untimed"] = run_tasks(model, args, stats)
    print("untimed (compiles):", json.dumps(report["untimed"]["tasks"]), flush=True)

    profiler = cProfile.Profile()
    profiler.enable()
    report["timed"] = run_tasks(model, args, stats)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.top)
    report["cprofile"] = text.getvalue()
    print("timed:", json.dumps(report["timed"], indent=1))
    print(report["cprofile"])

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        report["profiled"] = run_tasks(model, args, stats)
    events = prof.key_averages()
    cuda_us = sum(e.self_device_time_total for e in events)
    report["gpu_busy_s"] = round(cuda_us / 1e6, 3)
    for key in ("self_cuda_time_total", "self_cpu_time_total"):
        table = events.table(sort_by=key, row_limit=args.top, max_name_column_width=60)
        report[key] = table
        print(table)
    print(
        f"profiled run: wall {report['profiled']['wall_s']} s, "
        f"GPU busy {report['gpu_busy_s']} s (sum of kernel self times)"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_profile.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
