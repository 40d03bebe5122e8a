"""The random number generators of one process, captured and restored for bitwise resumption.

`capture_rng()` returns Python's `random`, numpy's global generator, torch's CPU generator and,
when CUDA is in use, every visible GPU's generator; `restore_rng(state)` puts them back. Each rank
saves its own (the Trainer passes them to `CheckpointManager.save` as `rank_objects`).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng"]

_KEYS = ("python", "numpy", "torch", "cuda")


def capture_rng() -> dict[str, Any]:
    """The states of python `random`, numpy, torch CPU and (if initialized) CUDA generators."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()  # one ByteTensor per visible device
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what `capture_rng` returned; generators absent from `state` are left as they are.

    CUDA states are restored for the devices both the save and this process have (a process that
    sees fewer GPUs than the saver restores the first ones).
    """
    if not isinstance(state, dict) or set(state) - set(_KEYS):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"expected an RNG state from capture_rng() with keys {_KEYS}, got {got}")
    if "python" in state:
        random.setstate(_as_tuples(state["python"]))
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)


def _as_tuples(value: Any) -> Any:
    """`random.setstate` wants tuples; a state that went through JSON comes back as lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(item) for item in value)
    return value
