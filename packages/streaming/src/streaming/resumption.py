"""`StreamingDataset.state_dict` / `load_state_dict`: where a run is, as a small JSON dict.

    {"epoch", "sample_in_epoch", "num_canonical_nodes", "shuffle_seed",   # both libraries'
     "interleave_chunk",           # ours: how the epoch interleaves canonical nodes
     "initial_physical_nodes"}     # mosaicml-streaming's: nodes of the run's first start

Both optional keys are written; a dict without them (mosaicml-streaming's, or ours before
0.2.0) is read, the chunk then derived from the resumed run's global batch as a new run's is.
mosaicml-streaming reads ours (it ignores the keys it does not know).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streaming.plan import PlanConfig

__all__ = ["OPTIONAL_KEYS", "REQUIRED_KEYS", "ResumeState", "make_state", "read_state"]

REQUIRED_KEYS = frozenset({"epoch", "sample_in_epoch", "num_canonical_nodes", "shuffle_seed"})
OPTIONAL_KEYS = frozenset({"interleave_chunk", "initial_physical_nodes"})


@dataclass(frozen=True, kw_only=True)
class ResumeState:
    epoch: int
    sample_in_epoch: int
    num_canonical_nodes: int
    shuffle_seed: int
    interleave_chunk: int | None = None
    initial_physical_nodes: int | None = None


def make_state(epoch: int, sample: int, plan: PlanConfig, initial_nodes: int) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "sample_in_epoch": sample,
        "num_canonical_nodes": plan.num_canonical_nodes,
        "shuffle_seed": plan.shuffle_seed,
        "interleave_chunk": plan.chunk,
        "initial_physical_nodes": initial_nodes,
    }


def read_state(obj: Any) -> ResumeState:
    """The state a dict records; ValueError naming missing and unknown keys."""
    keys = set(obj) if isinstance(obj, dict) else set()
    missing, unknown = REQUIRED_KEYS - keys, keys - REQUIRED_KEYS - OPTIONAL_KEYS
    if not isinstance(obj, dict) or missing or unknown:
        raise ValueError(
            f"not a StreamingDataset state dict: missing {sorted(missing)}, unknown "
            f"{sorted(unknown)}"
        )
    optional = {key: int(obj[key]) for key in OPTIONAL_KEYS if obj.get(key) is not None}
    return ResumeState(**{key: int(obj[key]) for key in REQUIRED_KEYS}, **optional)
