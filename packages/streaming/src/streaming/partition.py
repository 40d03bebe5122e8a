"""The global sample sequence of an epoch, and which part of it each rank and worker reads.

Elastic determinism comes from one rule: the sequence of *global* batches depends only on the
seed, the number of canonical nodes `C` and the global batch size `G`, never on how the work is
split. Global batch `b` is `sequence[b*G:(b+1)*G]`; rank `k` (of `N`, with per-device batch
`B = G / N`) reads its slice `[k*B, (k+1)*B)` of every global batch; dataloader worker `w` (of `W`)
of that rank produces the rank's batches `t` with `t % W == w`, which is exactly the order in
which torch's DataLoader takes batches from its workers.

The sequence itself interleaves the canonical nodes' ranges (see `streaming.shuffle`) in chunks of
`q = max(1, G // C)` samples: with `G % C == 0`, every global batch holds one chunk of each
canonical node, so a physical node whose ranks read a contiguous `G / P` slice reads only its own
canonical nodes' shards whenever `C % P == 0` or `P % C == 0`.

An epoch of `E` samples is padded to a whole number of global batches by repeating its first
samples (`position % E`), the same way for every split.
"""

from __future__ import annotations

import numpy as np

from streaming.shuffle import canonical_bounds

__all__ = ["interleave_canonical", "num_global_batches", "rank_worker_positions"]


def interleave_canonical(order: np.ndarray, num_canonical_nodes: int, chunk: int) -> np.ndarray:
    """Round-robin over the canonical ranges of `order`, `chunk` samples at a time.

    `order` holds canonical node c's samples at `order[bounds[c]:bounds[c+1]]`. Ranges differ in
    length by at most one; the missing tail slots are skipped, so the result is a permutation of
    `order`.
    """
    total = len(order)
    if total == 0:
        return order.copy()
    nodes = num_canonical_nodes
    bounds = canonical_bounds(total, nodes)
    lengths = np.diff(bounds)
    rounds = -(-int(lengths.max()) // chunk)
    width = rounds * chunk
    # grid[c, j] = j-th sample of canonical node c, or -1 past its end.
    col = np.arange(width, dtype=np.int64)
    grid_pos = bounds[:-1, None] + col[None, :]
    valid = col[None, :] < lengths[:, None]
    # (C, rounds, chunk) -> (rounds, C, chunk): chunk r of every node, node by node.
    flat_pos = grid_pos.reshape(nodes, rounds, chunk).transpose(1, 0, 2).reshape(-1)
    flat_valid = valid.reshape(nodes, rounds, chunk).transpose(1, 0, 2).reshape(-1)
    return order[flat_pos[flat_valid]]


def num_global_batches(epoch_len: int, global_batch: int, start: int = 0) -> int:
    """Global batches that remain in an epoch of `epoch_len` samples from position `start`."""
    remaining = max(epoch_len - start, 0)
    return -(-remaining // global_batch)


def rank_worker_positions(
    *,
    epoch_len: int,
    start: int,
    global_batch: int,
    rank: int,
    num_ranks: int,
    worker: int,
    num_workers: int,
) -> np.ndarray:
    """Positions in the (padded) epoch sequence that one worker of one rank yields, in order.

    Shape (batches of this worker, per-device batch). Positions past the epoch's end wrap around to
    its beginning (`position % epoch_len` is the caller's job), which is the padding.
    """
    if global_batch % num_ranks:
        raise ValueError(f"global batch {global_batch} is not divisible by {num_ranks} ranks")
    per_device = global_batch // num_ranks
    batches = np.arange(worker, num_global_batches(epoch_len, global_batch, start), num_workers)
    base = start + batches * global_batch + rank * per_device
    return base[:, None] + np.arange(per_device, dtype=np.int64)[None, :]
