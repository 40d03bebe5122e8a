"""MemoryMonitor: CUDA memory of this rank's device, as the caching allocator sees it.

At BATCH_END (every `interval` batches) it adds, in GiB: `memory/allocated`, `memory/reserved`,
`memory/peak_allocated`, `memory/peak_reserved`, and `memory/alloc_retries` (how often the
allocator had to free its cache and retry: a sign of fragmentation near the limit). Peaks are
since the previous report when `reset_peaks` (the default), so each report shows its own window.
On a device without CUDA memory statistics (CPU) it reports nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from composer_lite.core import Callback, Logger, State

__all__ = ["MemoryMonitor", "memory_metrics"]

_GIB = float(1 << 30)


def memory_metrics(stats: Mapping[str, Any]) -> dict[str, float]:
    """Metrics from a `torch.cuda.memory_stats()` dict (missing counters read as 0)."""

    def gib(key: str) -> float:
        return float(stats.get(key, 0)) / _GIB

    return {
        "memory/allocated": gib("allocated_bytes.all.current"),
        "memory/reserved": gib("reserved_bytes.all.current"),
        "memory/peak_allocated": gib("allocated_bytes.all.peak"),
        "memory/peak_reserved": gib("reserved_bytes.all.peak"),
        "memory/alloc_retries": float(stats.get("num_alloc_retries", 0)),
    }


class MemoryMonitor(Callback):
    """Reports this rank's CUDA memory every `interval` batches (rank 0's, through the loggers)."""

    def __init__(self, *, interval: int = 1, reset_peaks: bool = True) -> None:
        if not (isinstance(interval, int) and interval >= 1):
            raise ValueError(f"MemoryMonitor interval must be a positive int, got {interval!r}")
        self.interval, self.reset_peaks = interval, reset_peaks

    def batch_end(self, state: State, logger: Logger) -> None:
        if state.device.type != "cuda" or state.timestamp.batch % self.interval:
            return
        state.metrics.update(memory_metrics(torch.cuda.memory_stats(state.device)))
        if self.reset_peaks:
            torch.cuda.reset_peak_memory_stats(state.device)
