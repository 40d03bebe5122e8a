"""Built-in callbacks: monitors, gradient clipping, EMA, early stopping, progress, guards.

    from composer_lite.callbacks import EMA, GradClip, SpeedMonitor
    Trainer(model, loader, optimizer, max_duration="1ep",
            callbacks=[GradClip(max_norm=1.0), EMA(decay=0.999), SpeedMonitor(window=20)])

`default_callbacks(config)` is what the Trainer adds unless told not to: the guard (and the hang
watchdog when `config.hang_timeout` is set) from `guard_callbacks`, then the speed and LR
monitors and the progress bar. Callbacks run in the order given, at every event.
"""

from __future__ import annotations

from typing import Any

from composer_lite.callbacks.early_stopping import EarlyStopping
from composer_lite.callbacks.ema import EMA
from composer_lite.callbacks.gpu_peaks import GPU_PEAKS, GpuPeak, peak_flops_for
from composer_lite.callbacks.grad_clip import GradClip, clip_grad_norm
from composer_lite.callbacks.guards import POLICIES, Guard, HangWatchdog, TrainingDivergedError
from composer_lite.callbacks.lr_monitor import LRMonitor, learning_rates
from composer_lite.callbacks.memory_monitor import MemoryMonitor, memory_metrics
from composer_lite.callbacks.progress import ProgressBar
from composer_lite.callbacks.speed_monitor import SpeedMonitor
from composer_lite.core import Callback

__all__ = [
    "EMA",
    "GPU_PEAKS",
    "POLICIES",
    "EarlyStopping",
    "GpuPeak",
    "GradClip",
    "Guard",
    "HangWatchdog",
    "LRMonitor",
    "MemoryMonitor",
    "ProgressBar",
    "SpeedMonitor",
    "TrainingDivergedError",
    "clip_grad_norm",
    "default_callbacks",
    "guard_callbacks",
    "learning_rates",
    "memory_metrics",
    "monitor_callbacks",
    "peak_flops_for",
]


def guard_callbacks(config: Any) -> list[Callback]:
    """The guard built from `config.guard`, and a HangWatchdog if `config.hang_timeout` is set."""
    callbacks: list[Callback] = [Guard(config.guard)]
    if getattr(config, "hang_timeout", None) is not None:
        callbacks.append(HangWatchdog(config.hang_timeout))
    return callbacks


def monitor_callbacks(config: Any = None) -> list[Callback]:
    """SpeedMonitor, LRMonitor and ProgressBar, in that order."""
    return [SpeedMonitor(), LRMonitor(), ProgressBar()]


def default_callbacks(config: Any) -> list[Callback]:
    """What a run gets unless `config.default_callbacks` is off: guards, then monitors."""
    return [*guard_callbacks(config), *monitor_callbacks(config)]
