"""SpeedMonitor: throughput (batches, samples, tokens per second) and MFU over a sliding window.

Each batch is timed from BATCH_START to BATCH_END (forward, backward, optimizer step; not the
wait for data, evaluation or checkpoints), and the rates are totals over the last `window`
batches divided by their time, so one slow batch does not swing them. The first `skip_first`
batches of each fit (default 1: the step that compiles the model, autotunes kernels and fills
the allocator's cache, which can take a minute where later steps take half a second) report only
`time/batch_seconds`: in the window they would understate the rate for `window` batches. Samples are the global
count the Trainer puts in `state.step.samples`; tokens are the tokens the model processed,
samples x sequence length (`state.step.seq_len`), as composer and llm-foundry count them, or the
Trainer's count of tokens read (`state.step.tokens`) when the batch has no (B, T) input_ids.

MFU (llm-foundry's definition): `flops_per_token(seq_len)` of the model (forward + backward)
times the processed tokens per second of one device (prompt and padding tokens are computed on
too, so loss tokens would undercount), over the device's dense bf16 peak from
`gpu_peaks.GPU_PEAKS` (or `peak_flops` when given). On CPU, MFU is not reported; on a GPU the
table does not know, FIT_START raises naming the device.

Metrics: `throughput/{batches,samples,tokens}_per_sec` (all ranks),
`throughput/device/{samples,tokens,flops}_per_sec` (one device), `throughput/device/mfu`,
`time/batch_seconds` (the last batch).
"""

from __future__ import annotations

import math
import time
from collections import deque

import torch

from composer_lite.callbacks.gpu_peaks import peak_flops_for
from composer_lite.core import Callback, Logger, State, StepResult

__all__ = ["SpeedMonitor"]

# What a batch counts when no step was measured (a State driven by hand): nothing.
_NO_STEP = StepResult(
    loss=math.nan, grad_norm=math.nan, tokens=0, loss_tokens=0, samples=0, seq_len=None
)


class SpeedMonitor(Callback):
    """Throughput and MFU over the last `window` batches.

    window:      batches in the sliding window (>= 1).
    peak_flops:  FLOP/s of one device to measure MFU against, for hardware the table lacks.
    skip_first:  batches at the start of each fit kept out of the window (>= 0).
    synchronize: wait for CUDA work at BATCH_END (off by default: that wait would leave the GPU
                 idle while the host prepares the next step). A batch's time runs from the end
                 of the one before (data loading and logging included); the host never runs more
                 than a step ahead of the GPU, so the window's average is the true rate.
    """

    def __init__(
        self,
        *,
        window: int = 20,
        peak_flops: float | None = None,
        skip_first: int = 1,
        synchronize: bool = False,
    ) -> None:
        if not (isinstance(window, int) and window >= 1):
            raise ValueError(f"SpeedMonitor window must be a positive int, got {window!r}")
        if not (isinstance(skip_first, int) and skip_first >= 0):
            raise ValueError(f"SpeedMonitor skip_first must be an int >= 0, got {skip_first!r}")
        if peak_flops is not None and not peak_flops > 0:
            raise ValueError(f"peak_flops must be positive FLOP/s, got {peak_flops!r}")
        self.window, self.peak_flops, self.synchronize = window, peak_flops, synchronize
        self.skip_first = skip_first
        self._to_skip = skip_first  # batches of this fit still to keep out of the window
        # One entry per batch: (seconds, samples, tokens, model FLOPs or None), all ranks.
        self._batches: deque[tuple[float, int, int, float | None]] = deque(maxlen=window)
        self._started: float | None = None
        self._peak: float | None = None

    def fit_start(self, state: State, logger: Logger) -> None:
        self._batches.clear()
        self._to_skip = self.skip_first
        self._peak = None
        if state.device.type == "cuda" and callable(_flops_fn(state)):
            self._peak = self.peak_flops or peak_flops_for(torch.cuda.get_device_name(state.device))

    def batch_start(self, state: State, logger: Logger) -> None:
        if self._started is None:  # the first batch, or the first after an eval or a checkpoint
            self._started = time.perf_counter()

    def batch_end(self, state: State, logger: Logger) -> None:
        if self._started is None:
            return
        if self.synchronize and state.device.type == "cuda":
            torch.cuda.synchronize(state.device)
        now = time.perf_counter()
        seconds, self._started = now - self._started, now
        self._end_of_batch(state, seconds)

    def eval_start(self, state: State, logger: Logger) -> None:
        self._started = None  # evaluation time is not training time

    def checkpoint(self, state: State, logger: Logger) -> None:
        self._started = None

    def _end_of_batch(self, state: State, seconds: float) -> None:
        state.metrics["time/batch_seconds"] = seconds
        if self._to_skip > 0:
            self._to_skip -= 1
            return
        step = state.step or _NO_STEP
        samples, seq_len, flops_per_token = step.samples, step.seq_len, _flops_fn(state)
        tokens = samples * seq_len if seq_len else step.tokens
        flops = (
            float(flops_per_token(seq_len)) * tokens
            if callable(flops_per_token) and seq_len
            else None
        )
        self._batches.append((seconds, samples, tokens, flops))
        state.metrics.update(self._rates(state.world_size, state.device.type))

    def _rates(self, world_size: int, device_type: str) -> dict[str, float]:
        seconds = sum(b[0] for b in self._batches)
        if seconds <= 0:
            return {}
        samples = sum(b[1] for b in self._batches) / seconds
        tokens = sum(b[2] for b in self._batches) / seconds
        out = {
            "throughput/batches_per_sec": len(self._batches) / seconds,
            "throughput/samples_per_sec": samples,
            "throughput/tokens_per_sec": tokens,
            "throughput/device/samples_per_sec": samples / world_size,
            "throughput/device/tokens_per_sec": tokens / world_size,
        }
        if all(b[3] is not None for b in self._batches):
            flops = sum(b[3] for b in self._batches) / seconds / world_size  # one device
            out["throughput/device/flops_per_sec"] = flops
            if device_type == "cuda" and self._peak:
                out["throughput/device/mfu"] = flops / self._peak
        return out


def _flops_fn(state: State):
    return getattr(state.model, "flops_per_token", None)
