"""ProgressBar: one console line of progress, without tqdm.

On rank 0 only. When the stream is a terminal, the line is redrawn in place (at most every
`refresh` seconds, and at the last batch); otherwise (a log file, a pipe) a plain line is
printed every `interval` batches, so logs stay readable. The line shows the step out of the
total, the loss, tokens per second and an ETA:

    [  120/1000]  12.0%  loss 3.2104  tok/s 48.1k  ETA 0:12:05
"""

from __future__ import annotations

import sys
import time
from typing import IO

from composer_lite.core import Callback, Logger, State
from composer_lite.time import TimeUnit

__all__ = ["ProgressBar", "format_duration"]


def format_duration(seconds: float) -> str:
    """`H:MM:SS` (or `?` when unknown)."""
    if not seconds >= 0 or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.1f}"


class ProgressBar(Callback):
    """Console progress on rank 0.

    stream:   where to write (default: sys.stderr at the time of writing).
    interval: batches between lines when the stream is not a terminal.
    refresh:  least seconds between redraws on a terminal.
    tty:      force terminal (True) or plain-line (False) output; None: ask the stream.
    """

    def __init__(
        self,
        *,
        stream: IO[str] | None = None,
        interval: int = 50,
        refresh: float = 0.2,
        tty: bool | None = None,
    ) -> None:
        if not (isinstance(interval, int) and interval >= 1):
            raise ValueError(f"ProgressBar interval must be a positive int, got {interval!r}")
        self._stream, self.interval, self.refresh, self._tty = stream, interval, refresh, tty
        self._start_time = 0.0
        self._start_fraction = 0.0
        self._start_tokens = 0
        self._last_draw = 0.0
        self._drawn = False  # a line is on screen without its newline
        self._printed = -1  # the batch of the last plain line

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stderr

    def _is_tty(self) -> bool:
        if self._tty is not None:
            return self._tty
        isatty = getattr(self.stream, "isatty", None)
        return bool(callable(isatty) and isatty())

    # -- events -----------------------------------------------------------------------------
    def fit_start(self, state: State, logger: Logger) -> None:
        self._start_time = time.perf_counter()
        self._start_fraction = _fraction(state)
        self._start_tokens = state.timestamp.token

    def batch_end(self, state: State, logger: Logger) -> None:
        if not state.is_main:
            return
        last = _fraction(state) >= 1.0
        now = time.perf_counter()
        if self._is_tty():
            if last or now - self._last_draw >= self.refresh:
                self._write("\r" + self.line(state) + "\x1b[K")
                self._drawn, self._last_draw = True, now
        elif last or state.timestamp.batch % self.interval == 0:
            self._write(self.line(state) + "\n")
            self._printed = state.timestamp.batch

    def eval_end(self, state: State, logger: Logger) -> None:
        if state.is_main and state.eval_metrics:
            values = "  ".join(f"{k} {v:.4f}" for k, v in sorted(state.eval_metrics.items()))
            self._end_line()
            self._write(f"[eval @ batch {state.timestamp.batch}]  {values}\n")

    def fit_end(self, state: State, logger: Logger) -> None:
        """End the line on a terminal; elsewhere, print the final state if not yet printed."""
        if not state.is_main:
            return
        if self._is_tty():
            self._end_line()
        elif self._printed != state.timestamp.batch:
            self._write(self.line(state) + "\n")
            self._printed = state.timestamp.batch

    # -- the line ---------------------------------------------------------------------------
    def line(self, state: State) -> str:
        """The progress line for the current state (no newline)."""
        ts, total = state.timestamp, _total_batches(state)
        fraction = _fraction(state, total)
        step = f"[{ts.batch:>{len(str(total))}d}/{total}]" if total else f"[{ts.batch}]"
        parts = [step, f"{100 * fraction:5.1f}%"]
        step_loss = state.step.loss if state.step is not None else None
        loss = state.metrics.get("loss/train/total", step_loss)
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        elapsed = time.perf_counter() - self._start_time
        if elapsed > 0:
            parts.append(f"tok/s {_si((ts.token - self._start_tokens) / elapsed)}")
        done = fraction - self._start_fraction
        eta = elapsed * (1.0 - fraction) / done if done > 0 else float("inf")
        parts.append(f"ETA {format_duration(eta)}")
        return "  ".join(parts)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _end_line(self) -> None:
        if self._drawn:
            self._write("\n")
            self._drawn = False


def _total_batches(state: State) -> int | None:
    """The run's length in batches when it can be known: a 'ba' duration, or epochs of a sized
    dataloader (samples and tokens give a percentage only)."""
    duration = state.max_duration
    if duration.unit is TimeUnit.BATCH:
        return int(duration.value)
    if duration.unit is TimeUnit.EPOCH:
        try:
            return int(duration.value) * len(state.train_dataloader)  # type: ignore[arg-type]
        except (TypeError, NotImplementedError):
            return None
    return None


def _fraction(state: State, total: int | None = None) -> float:
    """How much of the run is done, by batches when the total is known (finer than epochs)."""
    total = total if total is not None else _total_batches(state)
    done = (
        state.timestamp.batch / total if total else state.timestamp.fraction_of(state.max_duration)
    )
    return min(done, 1.0)
