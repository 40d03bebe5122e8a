"""The pretraining MDS layout (DESIGN's contract), shared with llm-foundry.

Each sample is one concatenated sequence of `max_seq_len` tokens. foundry writes the column
`tokens` as `ndarray:int32`, as llm-foundry's `convert_dataset_hf/json` do since v0.8; older
llm-foundry datasets hold the column `bytes` (encoding `bytes`: the token ids' raw int64 bytes,
`np.asarray(ids).tobytes()`), which `tokens_of` reads too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["COLUMNS", "LEGACY_COLUMNS", "LEGACY_DTYPE", "tokens_of"]

COLUMNS = {"tokens": "ndarray:int32"}
LEGACY_COLUMNS = {"bytes": "bytes"}
LEGACY_DTYPE = np.int64  # llm-foundry's ConcatTokensDataset wrote int64 ids as raw bytes


def tokens_of(sample: Mapping[str, Any]) -> np.ndarray:
    """The token ids (int64, 1-D) of a pretraining sample in either layout."""
    if "tokens" in sample:
        return np.asarray(sample["tokens"]).astype(np.int64, copy=False).reshape(-1)
    if "bytes" in sample:
        raw = sample["bytes"]
        if len(raw) % np.dtype(LEGACY_DTYPE).itemsize:
            raise ValueError(
                f"a 'bytes' sample of {len(raw)} bytes is not a whole number of int64 token ids"
            )
        return np.frombuffer(raw, dtype=LEGACY_DTYPE).copy()
    raise KeyError(
        f"not a pretraining sample: columns {sorted(sample)}; expected 'tokens' (ndarray:int32) "
        "or llm-foundry's older 'bytes'"
    )
