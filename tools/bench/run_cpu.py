"""`make bench`: the CPU benchmarks, one after the other, each printing its table and JSON.

    .venv/bin/python tools/bench/run_cpu.py              # all: trainer overhead, streaming
    .venv/bin/python tools/bench/run_cpu.py streaming    # one of them

The streaming benchmark writes ~3.3 GB (two 200k-sample datasets) into a temporary folder and
takes ~15 minutes on a 2-core machine; run it when nothing else runs. GPU benchmarks run on a lent
machine instead: see tools/bench/README.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["BENCHES", "main"]

HERE = Path(__file__).resolve().parent
BENCHES = {
    "trainer": [HERE / "trainer_overhead.py"],
    "streaming": [HERE / "streaming_bench.py", "--repeats", "5"],
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"=== {name} ===", flush=True)
        rc = subprocess.call([sys.executable, *map(str, BENCHES[name])])
        if rc:
            failed.append(f"{name} (exit {rc})")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
