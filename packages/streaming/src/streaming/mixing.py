"""How stream weights become each epoch's samples, by mosaicml-streaming's rules.

Per-stream counts (`epoch_counts`, once per dataset), as mosaicml-streaming's
`Stream.apply_weights` derives them:

- relative (every stream sets `proportion`): the proportions are normalized, each stream gets
  `floor(epoch_size * p)` samples, and the few left over go one each to streams picked at random
  from the seed (`epoch_size` defaults to the streams' total);
- none set, with an `epoch_size`: the same, the proportions being the streams' sizes;
- absolute (`repeat`, `choose`, or nothing): `floor(repeat * size)`, `choose`, or the size; an
  `epoch_size` is then an error, as in mosaicml-streaming.

Which samples (`epoch_entries`, each epoch): a stream drawn `k` times its size `n` takes
`k // n` whole passes plus `k % n` samples without replacement, chosen anew each epoch
(`sampling_method="balanced"`) or the same every epoch (`"fixed"`). With
`sampling_granularity=g > 1` the extra samples are taken `g` at a time from one shard: the
shards' runs of `g` samples are picked in a random order until enough are drawn, and within each
shard that many of its samples are chosen (a reader then touches fewer shards).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streaming.stream import Stream

__all__ = ["SAMPLING_METHODS", "epoch_counts", "epoch_entries", "resolved_weights"]

SAMPLING_METHODS = ("balanced", "fixed")


def _weighting(stream: Stream) -> str:
    if stream.proportion is not None:
        return "relative"
    return "absolute" if stream.repeat is not None or stream.choose is not None else "none"


def _split(total: int, proportions: np.ndarray, seed: int) -> np.ndarray:
    """floor(total * p) each (p normalized), the shortfall to streams picked from the seed."""
    if not proportions.sum() > 0:
        raise ValueError(f"stream weights {proportions.tolist()} add up to zero: nothing to draw")
    normalized = proportions / proportions.sum()
    counts = (total * normalized).astype(np.int64)
    shortfall = int(total - counts.sum())
    counts[np.random.default_rng(seed).choice(len(counts), shortfall, False)] += 1
    return counts


def epoch_counts(
    streams: Sequence[Stream], sizes: Sequence[int], epoch_size: int | None, seed: int
) -> np.ndarray:
    """How many samples each stream contributes to one epoch (see the module docstring)."""
    kinds = [_weighting(s) for s in streams]
    if "relative" in kinds and set(kinds) != {"relative"}:
        odd = [
            i for i, kind in enumerate(kinds) if (kind == "relative") != (kinds[0] == "relative")
        ]
        raise ValueError(
            f"streams mix relative and absolute weights (stream {odd[0]} differs from stream "
            "0): either every stream sets proportion, or none does (use repeat/choose, or "
            "nothing)"
        )
    sizes_arr = np.asarray(sizes, np.int64)
    epoch_size = epoch_size or None  # 0 is no epoch size, as in mosaicml-streaming
    if kinds and kinds[0] == "relative":
        total = int(sizes_arr.sum()) if epoch_size is None else epoch_size
        return _split(total, np.array([s.proportion for s in streams], np.float64), seed)
    if set(kinds) == {"none"} and epoch_size is not None:
        return _split(epoch_size, sizes_arr.astype(np.float64), seed)
    if epoch_size is not None:
        absolute = [i for i, kind in enumerate(kinds) if kind == "absolute"]
        raise ValueError(
            f"epoch_size={epoch_size} needs relative weights, but streams {absolute} set "
            "repeat or choose (absolute amounts, which fix the epoch's size themselves); give "
            "every stream a proportion instead, or drop epoch_size"
        )
    counts = np.empty(len(streams), np.int64)
    for i, (stream, size) in enumerate(zip(streams, sizes, strict=True)):
        if stream.choose is not None:
            counts[i] = stream.choose
        elif stream.repeat is not None:
            counts[i] = int(stream.repeat * size)
        else:
            counts[i] = size
    return counts


def resolved_weights(
    streams: Sequence[Stream], sizes: Sequence[int], counts: np.ndarray
) -> list[tuple[float, float, int]]:
    """(proportion, repeat, choose) of each stream once its count is known, as mosaicml-streaming
    fills them in: the proportions normalized as given (relative weights), or the sizes' (no
    weights), or the counts' (absolute weights)."""
    kinds = {_weighting(s) for s in streams}
    if kinds == {"relative"}:
        given = np.array([s.proportion for s in streams], np.float64)
    else:
        given = np.asarray(sizes if kinds == {"none"} else counts, np.float64)
    proportions = given / given.sum() if given.sum() else np.zeros(len(streams))
    return [
        (float(p), float(c / n) if n else 0.0, int(c))
        for p, c, n in zip(proportions, counts, sizes, strict=True)
    ]


def _granule_counts(
    shard_sizes: np.ndarray, extra: int, granularity: int, rng: np.random.Generator
) -> np.ndarray:
    """Per shard, how many of `extra` samples to draw: runs of `granularity` samples of one
    shard (a shard's last run may be shorter) taken in a random order until `extra` are."""
    runs = -(-shard_sizes // granularity)
    run_shard = np.repeat(np.arange(len(shard_sizes)), runs)
    run_size = np.full(len(run_shard), granularity, np.int64)
    has_runs = runs > 0
    run_size[np.cumsum(runs)[has_runs] - 1] = (shard_sizes - (runs - 1) * granularity)[has_runs]
    order = rng.permutation(len(run_shard))
    in_order = run_size[order]
    taken = np.clip(extra - (np.cumsum(in_order) - in_order), 0, in_order)
    counts = np.bincount(run_shard[order], weights=taken, minlength=len(shard_sizes))
    return counts.astype(np.int64)


def epoch_entries(
    counts: np.ndarray,
    shard_sizes: Sequence[np.ndarray],
    seed: int,
    epoch: int,
    *,
    sampling_method: str = "balanced",
    sampling_granularity: int = 1,
) -> list[np.ndarray]:
    """For each stream, the sample indices (within the stream) one epoch draws, sorted within
    each pass (see the module docstring)."""
    out = []
    for i, (count, sizes) in enumerate(zip(counts, shard_sizes, strict=True)):
        size = int(np.sum(sizes))
        passes, extra = divmod(int(count), size) if size else (0, 0)
        parts = [np.tile(np.arange(size, dtype=np.int64), passes)] if passes else []
        if extra:
            key = [seed, 7, i] if sampling_method == "fixed" else [seed, epoch, 7, i]
            rng = np.random.default_rng(key)
            if sampling_granularity == 1:
                chosen = rng.choice(size, extra, replace=False)
            else:
                sizes = np.asarray(sizes, np.int64)
                per_shard = _granule_counts(sizes, extra, sampling_granularity, rng)
                starts = np.cumsum(sizes) - sizes
                chosen = np.concatenate(
                    [
                        start + rng.choice(n, k, replace=False)
                        for start, n, k in zip(starts, sizes, per_shard, strict=True)
                        if k
                    ]
                )
            parts.append(np.sort(chosen).astype(np.int64))
        out.append(np.concatenate(parts) if parts else np.zeros(0, np.int64))
    return out
