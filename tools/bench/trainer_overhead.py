"""Trainer overhead: time per step under the Trainer (default callbacks and logger on) against a hand-written
PyTorch loop doing the same work, in one run on the CPU, interleaved so both see the same machine.

    .venv/bin/python tools/bench/trainer_overhead.py            # prints a table, writes JSON

The model (composer_lite.testing.TinyLM, 4 blocks of width 256, vocab 512) takes ~50 ms a step
on a 2-core CPU with batches of 16 x 128 tokens, above the 20 ms the target asks for.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def make(seed: int = 0):
    from composer_lite.testing import TinyLM

    torch.manual_seed(seed)
    model = TinyLM(vocab=512, dim=256, n_layers=4)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def data(steps: int, batch: int, seq: int):
    from composer_lite.testing import random_lm_batch

    return [random_lm_batch(batch, seq, vocab=512, seed=i) for i in range(steps)]


def hand_loop(batches) -> list[float]:
    model, opt = make()
    stamps = []
    for batch in batches:
        loss = model.loss(model(batch), batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def trainer_loop(batches) -> list[float]:
    from composer_lite import Callback, Trainer

    stamps: list[float] = []

    class Clock(Callback):  # step to step, everything the loop does in between included
        def batch_end(self, state, logger):
            stamps.append(time.perf_counter())

    class Loader(list):
        batch_size = len(batches[0]["input_ids"])

    model, opt = make()
    trainer = Trainer(
        model,
        Loader(batches),
        opt,
        max_duration=f"{len(batches)}ba",
        callbacks=[Clock()],
        handle_signals=False,
    )
    trainer.fit()
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of each loop")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--json", default=str(ROOT / "tools/bench/out/trainer_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    batches = data(args.steps, args.batch, args.seq)
    hand, trained = [], []
    for _ in range(args.rounds):
        hand += hand_loop(batches)[5:]  # the first steps warm up allocators and kernels
        trained += trainer_loop(batches)[5:]
    h, t = statistics.median(hand), statistics.median(trained)
    result = {
        "hand_ms": h * 1e3,
        "trainer_ms": t * 1e3,
        "overhead": t / h - 1,
        "steps_each": len(hand),
        "config": vars(args),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"{'loop':10s} {'median ms/step':>15s}")
    print(f"{'hand':10s} {h * 1e3:15.2f}\n{'trainer':10s} {t * 1e3:15.2f}")
    print(f"overhead: {100 * (t / h - 1):+.1f}% over {len(hand)} steps each (target < 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
