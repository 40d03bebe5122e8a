"""Packing short finetuning examples into rows of `max_seq_len` tokens.

`pack(lengths, capacity)` is best-fit decreasing: the examples, longest first, each go into the
open row with the least room that still fits it (a new row when none does). It is deterministic
and linear-logarithmic in the number of examples; rows come back in the order they were opened.

`packed_row(examples, capacity, pad_id)` concatenates one row's examples and pads it to
`capacity`: `input_ids` (pad id at the end), `labels` (-100 at the end), and `sequence_id` (0, 1,
... per example, the padding a segment of its own), so attention and loss stay inside each
example (`mpt` honours `sequence_id`; each example's first label is already -100).

Packing efficiency is the share of a row's capacity that holds example tokens.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from foundry.data.sft import IGNORE, Tokenized

__all__ = ["efficiency", "pack", "packed_row"]


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of the examples of each row (best-fit decreasing); every length <= capacity."""
    if any(n > capacity or n < 1 for n in lengths):
        bad = next(n for n in lengths if n > capacity or n < 1)
        raise ValueError(f"an example of {bad} tokens cannot go into rows of {capacity}")
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        at = bisect.bisect_left(room, (lengths[i], -1))
        if at == len(room):
            rows.append([i])
            free, row = capacity - lengths[i], len(rows) - 1
        else:
            free, row = room.pop(at)
            rows[row].append(i)
            free -= lengths[i]
        if free > 0:
            bisect.insort(room, (free, row))
    return rows


def packed_row(examples: Sequence[Tokenized], capacity: int, pad_id: int) -> dict[str, np.ndarray]:
    """One packed row (int32 columns of `capacity` tokens)."""
    ids = np.full(capacity, pad_id, dtype=np.int32)
    labels = np.full(capacity, IGNORE, dtype=np.int32)
    seq = np.full(capacity, len(examples), dtype=np.int32)
    at = 0
    for k, example in enumerate(examples):
        n = len(example.input_ids)
        ids[at : at + n] = example.input_ids
        labels[at : at + n] = example.labels
        seq[at : at + n] = k
        at += n
    assert at <= capacity, f"{at} tokens packed into a row of {capacity}"
    return {"input_ids": ids, "labels": labels, "sequence_id": seq}


def efficiency(tokens: int, rows: int, capacity: int) -> float:
    """Example tokens / row capacity (1.0: no padding)."""
    return tokens / (rows * capacity) if rows else 0.0
