"""Which epoch each new pass over a dataset reads, agreed by all its dataloader workers.

Workers are separate processes holding copies of the dataset, so the count of passes lives in
shared memory created with the dataset (`multiprocessing` arrays: anonymous, named by nothing,
gone with the processes, so two jobs or two datasets never collide and a crash leaves nothing).

Two ways to start a pass:
- `StreamingDataLoader` calls `begin()` in the main process before it starts its workers; every
  worker then reads the same pass number.
- A plain torch DataLoader cannot tell the dataset, so each worker counts its own passes in its
  slot (`claim(worker)`); all workers of one pass agree as long as the number of workers stays
  the same from pass to pass.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from multiprocessing import context as mp_context

__all__ = ["PassCounter"]

MAX_WORKERS = 512


class PassCounter:
    """Counts passes (iterations) over a dataset across its dataloader workers."""

    def __init__(self) -> None:
        self._make()

    def _make(self) -> None:
        # slots[0]: passes begun through begin(); slots[1 + w]: passes worker w began on its own;
        # slots[-1]: 1 + the last pass whose first batch worker 0 has produced.
        self._slots = mp.get_context("spawn").Array("q", 2 + MAX_WORKERS)

    def begin(self) -> int:
        """Start a pass from the main process; returns its number (0, 1, ...)."""
        with self._slots.get_lock():
            self._slots[0] += 1
            return self._slots[0] - 1

    def claim(self, worker: int) -> int:
        """The pass a worker's new iteration belongs to."""
        if worker >= MAX_WORKERS:
            raise ValueError(
                f"at most {MAX_WORKERS} dataloader workers per rank are supported, got worker {worker}"
            )
        with self._slots.get_lock():
            if self._slots[0]:
                return self._slots[0] - 1
            self._slots[1 + worker] += 1
            return self._slots[1 + worker] - 1

    def first_batch_done(self, n: int) -> None:
        """Worker 0 has produced the first batch of pass n."""
        with self._slots.get_lock():
            self._slots[-1] = max(self._slots[-1], n + 1)

    def wait_first_batch(self, n: int, timeout: float) -> None:
        """Let worker 0 make the first batch of pass n with the whole machine: the loader hands
        batches out in order, so the others' first batches are not needed before it anyway."""
        deadline = time.monotonic() + timeout
        while self._slots[-1] < n + 1 and time.monotonic() < deadline:
            time.sleep(0.002)

    def current(self) -> int:
        """The latest pass begun (-1 before any)."""
        with self._slots.get_lock():
            return (self._slots[0] if self._slots[0] else max(self._slots[1:-1])) - 1

    def reset(self) -> None:
        with self._slots.get_lock():
            for i in range(len(self._slots)):
                self._slots[i] = 0

    def __getstate__(self) -> dict:
        # Shared memory travels only to processes being started (dataloader workers); any other
        # copy (deepcopy, pickling to disk) gets counters of its own.
        if mp_context.get_spawning_popen() is None:
            return {"slots": None}
        return {"slots": self._slots}

    def __setstate__(self, state: dict) -> None:
        if state["slots"] is None:
            self._make()
        else:
            self._slots = state["slots"]
