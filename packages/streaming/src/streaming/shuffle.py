"""Shuffling algorithms: the order of one epoch's samples, laid out as canonical-node ranges.

Every algorithm takes the epoch's samples as `spans` (runs of consecutive epoch positions that come
from one shard, in dataset order) and returns `order`, a permutation of `range(total)`, arranged so
that canonical node `c` owns `order[bounds[c]:bounds[c + 1]]` with `bounds = canonical_bounds(...)`.
The block shuffles keep each canonical node on a fixed set of shards for the whole run (good for
caches) and only mix samples within windows of about `block_size`, so a reader touches few shards
at a time. Choose one with `SHUFFLES[name]`.

- `naive`: a uniform permutation of the whole epoch; best mixing, no locality.
- `py1s`: shards shuffled once per run and dealt to canonical nodes; each epoch, the shard pieces
  of a node are reordered and samples are shuffled within fixed blocks of `block_size`.
- `py1e`: like `py1s`, but each shard piece's samples are scattered uniformly over a window of
  `max(len, block_size)` positions centred on it, so there are no hard block boundaries.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "SHUFFLES",
    "canonical_bounds",
    "no_shuffle",
    "shuffle_naive",
    "shuffle_py1e",
    "shuffle_py1s",
]

ShuffleFn = Callable[[np.ndarray, int, int, int, int], np.ndarray]


def canonical_bounds(total: int, num_canonical_nodes: int) -> np.ndarray:
    """Start of each canonical node's range, plus `total` at the end (ranges differ by at most 1)."""
    return (np.arange(num_canonical_nodes + 1, dtype=np.int64) * total) // num_canonical_nodes


def _expand(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate `range(s, s + n)` for each (s, n), vectorized."""
    lengths = lengths.astype(np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(lengths)
    shift = np.repeat(starts.astype(np.int64) - (ends - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


def _cut(
    starts: np.ndarray, lengths: np.ndarray, cuts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut consecutive pieces (concatenated in order) at the positions `cuts` of the concatenation.

    Returns the new pieces' starts and lengths, and the index of the range between cuts that each
    new piece falls in.
    """
    ends = np.cumsum(lengths)
    points = np.unique(np.concatenate([ends - lengths, ends, cuts]))
    points = points[(points >= 0) & (points <= ends[-1])] if len(ends) else points
    piece_lo = points[:-1]
    piece_len = np.diff(points)
    owner = np.searchsorted(ends, piece_lo, side="right")  # which original piece
    new_starts = starts[owner] + (piece_lo - (ends[owner] - lengths[owner]))
    node = np.searchsorted(cuts, piece_lo, side="right") - 1
    keep = piece_len > 0
    return new_starts[keep], piece_len[keep], node[keep]


def _deal_pieces(spans: np.ndarray, nodes: int, seed: int, epoch: int):
    """Shuffle the shard spans once per run, cut them at canonical-node bounds, and reorder each
    node's pieces anew each epoch. Returns (starts, lengths, node of each piece, bounds)."""
    run_rng = np.random.default_rng([seed, 0x5EED])
    perm = run_rng.permutation(len(spans))
    starts, lengths = spans[perm, 0], spans[perm, 1] - spans[perm, 0]
    total = int(lengths.sum())
    bounds = canonical_bounds(total, nodes)
    starts, lengths, node = _cut(starts, lengths, bounds)
    epoch_rng = np.random.default_rng([seed, epoch, 1])
    order = np.lexsort((epoch_rng.random(len(starts)), node))
    return starts[order], lengths[order], node[order], bounds


def no_shuffle(spans: np.ndarray, nodes: int, seed: int, epoch: int, block_size: int) -> np.ndarray:
    """Dataset order: canonical node c reads the c-th contiguous range."""
    total = int((spans[:, 1] - spans[:, 0]).sum()) if len(spans) else 0
    return np.arange(total, dtype=np.int64)


def shuffle_naive(
    spans: np.ndarray, nodes: int, seed: int, epoch: int, block_size: int
) -> np.ndarray:
    total = int((spans[:, 1] - spans[:, 0]).sum()) if len(spans) else 0
    return np.random.default_rng([seed, epoch, 2]).permutation(total).astype(np.int64)


def shuffle_py1s(
    spans: np.ndarray, nodes: int, seed: int, epoch: int, block_size: int
) -> np.ndarray:
    starts, lengths, _, bounds = _deal_pieces(spans, nodes, seed, epoch)
    ids = _expand(starts, lengths)
    # Blocks restart at each canonical node's range so no block straddles two nodes.
    pos = np.arange(len(ids), dtype=np.int64)
    node_of_pos = np.searchsorted(bounds, pos, side="right") - 1
    block = (node_of_pos << 32) + (pos - bounds[node_of_pos]) // max(block_size, 1)
    rng = np.random.default_rng([seed, epoch, 3])
    return ids[np.lexsort((rng.random(len(ids)), block))]


def shuffle_py1e(
    spans: np.ndarray, nodes: int, seed: int, epoch: int, block_size: int
) -> np.ndarray:
    starts, lengths, node, bounds = _deal_pieces(spans, nodes, seed, epoch)
    ids = _expand(starts, lengths)
    piece_pos = np.cumsum(lengths) - lengths  # where each piece lands before scattering
    # Each piece's samples scatter uniformly over a window of max(len, block_size) positions
    # centred on it, slid (and, if need be, shrunk) to stay inside its canonical node's range.
    node_lo, node_hi = bounds[node], bounds[node + 1]
    width = np.minimum(np.maximum(lengths, block_size), node_hi - node_lo).astype(np.float64)
    lo = np.clip(piece_pos + (lengths - width) / 2, node_lo, node_hi - width)
    rng = np.random.default_rng([seed, epoch, 4])
    keys = np.repeat(lo, lengths) + rng.random(len(ids)) * np.repeat(width, lengths)
    return ids[np.argsort(keys, kind="stable")]


SHUFFLES: dict[str, ShuffleFn] = {
    "naive": shuffle_naive,
    "py1s": shuffle_py1s,
    "py1e": shuffle_py1e,
}
