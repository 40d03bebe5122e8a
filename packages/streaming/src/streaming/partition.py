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

Padding follows mosaicml-streaming's rule for how much (`padded_end`): an epoch of `E` samples is
first rounded up to a multiple of the canonical nodes (`T = C * ceil(E / C)`, mosaicml's even rows
per canonical node), then to a multiple of the ranks (`N * ceil(T / N)`), so that every rank reads
as many samples; nothing is padded to whole global batches. On one device with one canonical node
an epoch is exactly its `E` samples. The last global batch may hold fewer than `G` samples (a
multiple of `N`: each rank's last batch is then partial, and `drop_last` drops it). Positions past
`E` repeat the epoch's first samples (`position % E`). So every split reads the same global
batches up to the epoch's end; only how much padding follows depends on the number of ranks, as
it does in mosaicml-streaming.
"""

from __future__ import annotations

import numpy as np

from streaming.shuffle import canonical_bounds

__all__ = [
    "interleave_canonical",
    "num_global_batches",
    "padded_end",
    "rank_worker_positions",
]


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


def padded_end(epoch_len: int, num_canonical_nodes: int, num_ranks: int, start: int = 0) -> int:
    """Where the reading of an epoch of `epoch_len` samples ends, padding included, when it
    starts at position `start` (mosaicml-streaming's amount of padding; see the module docstring).

    Invariants: `end - start` is a multiple of `num_ranks`; `end >= epoch_len` unless
    `start >= end`; the padding `end - max(start, epoch_len)` is below `num_canonical_nodes +
    num_ranks`. A `start` at or past the rounded epoch leaves nothing to read (`end == start`).
    """
    if epoch_len < 0 or num_canonical_nodes < 1 or num_ranks < 1 or start < 0:
        raise ValueError(
            f"padded_end needs epoch_len >= 0, num_canonical_nodes >= 1, num_ranks >= 1 and "
            f"start >= 0; got {epoch_len}, {num_canonical_nodes}, {num_ranks}, {start}"
        )
    rounded = num_canonical_nodes * -(-epoch_len // num_canonical_nodes)
    remaining = max(rounded - start, 0)
    return start + num_ranks * -(-remaining // num_ranks)


def num_global_batches(start: int, end: int, global_batch: int) -> int:
    """Global batches between positions `start` and `end` (the last one may be partial)."""
    return -(-max(end - start, 0) // global_batch)


def rank_worker_positions(
    *,
    start: int,
    end: int,
    global_batch: int,
    rank: int,
    num_ranks: int,
    worker: int,
    num_workers: int,
) -> np.ndarray:
    """Positions in the padded epoch sequence (`[start, end)`, see `padded_end`) that one worker
    of one rank yields, in order: its batches of `global_batch / num_ranks` positions, the last
    batch of the rank (global batch `num_global_batches - 1`) shorter when the last global batch
    is partial. Shape (positions,); `position % epoch_len` is the caller's job.
    """
    if global_batch % num_ranks:
        raise ValueError(f"global batch {global_batch} is not divisible by {num_ranks} ranks")
    if (end - start) % num_ranks:
        raise ValueError(f"{end - start} positions do not divide over {num_ranks} ranks")
    per_device = global_batch // num_ranks
    full, tail = divmod(end - start, global_batch)
    batches = np.arange(worker, full, num_workers)
    base = start + batches * global_batch + rank * per_device
    positions = (base[:, None] + np.arange(per_device, dtype=np.int64)[None, :]).reshape(-1)
    if tail and full % num_workers == worker:  # the partial last global batch is this worker's
        share = tail // num_ranks
        last = start + full * global_batch + rank * share + np.arange(share, dtype=np.int64)
        positions = np.concatenate([positions, last])
    return positions.astype(np.int64, copy=False)
