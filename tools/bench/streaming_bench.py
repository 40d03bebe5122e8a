"""Streaming benchmark: our reader and writer against mosaicml-streaming 0.13, in one run.

Builds one local MDS dataset (default 200,000 samples of 2,048 int32 tokens, zstd) with each
library's writer (write MB/s), then reads a fresh copy of the zstd dataset with each library's
StreamingDataset through a torch DataLoader: a full shuffled epoch with 1 and 2 workers (samples/s,
time to first batch (median of `--repeats` cold starts), peak RSS of the main process and of the
largest worker). Each read starts from a fresh copy with no decompressed shards, and runs in
its own subprocess; mosaicml-streaming runs from its isolated install (streaming.testing.mosaic),
never beside ours. Prints a table and writes JSON.

    .venv/bin/python tools/bench/streaming_bench.py                # the full run (~1.6 GB raw)
    .venv/bin/python tools/bench/streaming_bench.py --samples 20000 # a quick one
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WRITE = r"""
import time, numpy as np
columns = {"tokens": "ndarray:int32"}
rng = np.random.default_rng(0)
t0 = time.perf_counter()
with streaming.MDSWriter(out=args["out"], columns=columns, compression="zstd", hashes=["xxh64"]) as w:
    for i in range(args["samples"]):
        w.write({"tokens": rng.integers(0, 50432, args["seq"], dtype=np.int32)})
seconds = time.perf_counter() - t0
result = {"seconds": seconds, "raw_mb": args["samples"] * args["seq"] * 4 / 1e6}
"""

READ = r"""
import resource, time, torch
from torch.utils.data import DataLoader
t0 = time.perf_counter()
ds = streaming.StreamingDataset(local=args["local"], shuffle=True, batch_size=args["batch"])
loader = DataLoader(ds, batch_size=args["batch"], num_workers=args["workers"])
it = iter(loader)
first = next(it)
t_first = time.perf_counter() - t0
n, check = len(first["tokens"]), int(first["tokens"][:, 0].sum())
for batch in (it if args["full"] else ()):
    n += len(batch["tokens"])
    check += int(batch["tokens"][:, 0].sum())
total = time.perf_counter() - t0
result = {
    "samples": n, "seconds": total, "samples_per_s": n / total, "first_batch_s": t_first,
    "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    "checksum": check,
}
"""

ROOT = Path(__file__).resolve().parents[2]


def run_ours(code: str, args: dict, timeout: float = 3600) -> dict:
    """Run a snippet against our `streaming` in a fresh interpreter (as mosaic's runs)."""
    with tempfile.TemporaryDirectory(prefix="bench-ours-") as tmp:
        script = Path(tmp) / "run.py"
        script.write_text(
            "import json, sys\nimport streaming\nargs = json.loads(sys.argv[1])\n"
            + code
            + "\nprint('RESULT ' + json.dumps(result))\n"
        )
        done = subprocess.run(
            [sys.executable, str(script), json.dumps(args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp,
        )
    if done.returncode:
        raise RuntimeError(f"our reader failed:\n{done.stderr[-4000:]}")
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def fresh_copy(src: Path, dst: Path) -> str:
    """A copy of the zstd dataset with no decompressed shards, flushed to disk so that neither
    reader pays for the copy's pending writeback."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    os.sync()
    return str(dst)


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--seq", type=int, default=2048, help="int32 tokens per sample")
    parser.add_argument("--batch", type=int, default=16, help="per-device batch size")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--repeats", type=int, default=3, help="cold starts timed per reader (median)"
    )
    parser.add_argument("--work-dir", help="where datasets go (default: a temporary folder)")
    parser.add_argument("--json", default=str(ROOT / "tools/bench/out/streaming_bench.json"))
    args = parser.parse_args()

    from streaming.testing.mosaic import MosaicStreaming

    mosaic = MosaicStreaming.ensure()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="streaming-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = {"samples": args.samples, "seq": args.seq}
    results: dict = {
        "config": vars(args),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    try:
        print(
            f"writing {args.samples:,} samples x {args.seq} int32 (zstd) with each writer ...",
            flush=True,
        )
        ours_w = run_ours(WRITE, {**sizes, "out": str(work / "ours")})
        theirs_w = mosaic.run(WRITE, timeout=3600, **sizes, out=str(work / "theirs"))
        results["write"] = {"ours": ours_w, "mosaicml": theirs_w}
        rows = []
        for workers in args.workers:
            for name in ("ours", "mosaicml"):
                runs = []
                for repeat in range(args.repeats):  # the first one reads the whole epoch
                    local = fresh_copy(
                        work / "ours", work / "read-copy"
                    )  # both read the same shards
                    job = {
                        "local": local,
                        "batch": args.batch,
                        "workers": workers,
                        "full": repeat == 0,
                    }
                    print(
                        f"reading with {name}, {workers} worker(s), {'full epoch' if repeat == 0 else 'first batch'} ...",
                        flush=True,
                    )
                    runs.append(
                        run_ours(READ, job)
                        if name == "ours"
                        else mosaic.run(READ, timeout=3600, **job)
                    )
                row = {"reader": name, "workers": workers, **runs[0]}
                row["first_batch_runs_s"] = [r["first_batch_s"] for r in runs]
                row["first_batch_s"] = median(row["first_batch_runs_s"])
                rows.append(row)
        results["read"] = rows
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    w = results["write"]
    print(
        f"\nwrite MB/s (raw): ours {w['ours']['raw_mb'] / w['ours']['seconds']:.0f}, "
        f"mosaicml {w['mosaicml']['raw_mb'] / w['mosaicml']['seconds']:.0f}"
    )
    print(
        f"{'reader':10s} {'workers':>7s} {'samples':>9s} {'samples/s':>10s} {'first batch s':>13s} "
        f"{'RSS main MB':>11s} {'RSS worker MB':>13s}"
    )
    for r in rows:
        print(
            f"{r['reader']:10s} {r['workers']:7d} {r['samples']:9,d} {r['samples_per_s']:10,.0f} "
            f"{r['first_batch_s']:13.2f} {r['peak_rss_main_mb']:11.0f} {r['peak_rss_worker_mb']:13.0f}"
        )
    for workers in args.workers:
        ours = next(r for r in rows if r["reader"] == "ours" and r["workers"] == workers)
        theirs = next(r for r in rows if r["reader"] == "mosaicml" and r["workers"] == workers)
        print(
            f"{workers} worker(s): {ours['samples_per_s'] / theirs['samples_per_s']:.2f}x samples/s, "
            f"first batch {ours['first_batch_s'] / theirs['first_batch_s']:.2f}x the time"
        )
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
