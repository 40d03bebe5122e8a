"""Elastic determinism, computed without processes: every split of the work into
nodes x ranks x dataloader workers reads the same sequence of global batches."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.mixing import epoch_counts, epoch_entries
from streaming.partition import (
    interleave_canonical,
    num_global_batches,
    padded_end,
    rank_worker_positions,
)
from streaming.plan import PlanConfig, epoch_sequence
from streaming.shuffle import SHUFFLES, canonical_bounds
from streaming.stream import Stream


def simulate(
    seq: np.ndarray,
    global_batch: int,
    nodes: int,
    ranks_per_node: int,
    workers: int,
    canonical: int = 1,
    start: int = 0,
):
    """The global batches a job of this shape reads, assembled the way torch's DataLoader and
    the ranks would: each worker's positions in batches of the per-device size (its last one
    may be short), rank batch t from worker t % W; global batch t concatenates the ranks'."""
    num_ranks = nodes * ranks_per_node
    epoch_len = len(seq)
    end = padded_end(epoch_len, canonical, num_ranks, start)
    total = num_global_batches(start, end, global_batch)
    per_device = global_batch // num_ranks
    ranks = []
    for rank in range(num_ranks):
        per_worker = []
        for w in range(workers):
            positions = rank_worker_positions(
                start=start,
                end=end,
                global_batch=global_batch,
                rank=rank,
                num_ranks=num_ranks,
                worker=w,
                num_workers=workers,
            )
            per_worker.append(
                [positions[i : i + per_device] for i in range(0, len(positions), per_device)]
            )
        ranks.append([per_worker[t % workers][t // workers] for t in range(total)])
    return [
        seq[np.concatenate([ranks[k][t] for k in range(num_ranks)]) % epoch_len]
        for t in range(total)
    ]


def assert_same_up_to_the_epoch_end(got, reference, epoch_len, global_batch, start=0):
    """Both read the same global batches wherever they lie within the epoch; only the padding
    after it may differ (its amount depends on the number of ranks)."""
    whole = max(0, (epoch_len - start) // global_batch)  # batches that end within the epoch
    assert len(got) >= whole and len(reference) >= whole
    for a, b in zip(got[:whole], reference[:whole], strict=True):
        np.testing.assert_array_equal(a, b)
    # the batch the epoch ends in agrees on its part within the epoch
    if len(got) > whole and len(reference) > whole:
        inside = epoch_len - start - whole * global_batch
        np.testing.assert_array_equal(got[whole][:inside], reference[whole][:inside])


def splits(global_batch: int, max_ranks: int = 16):
    """(nodes, ranks per node, workers) with nodes * ranks dividing the global batch."""
    for nodes, ranks, workers in itertools.product([1, 2, 4], [1, 2, 3, 8], [1, 2, 4]):
        if nodes * ranks <= max_ranks and global_batch % (nodes * ranks) == 0:
            yield nodes, ranks, workers


def two_stream_sequence(seed, epoch, algo, canonical, global_batch, block=16):
    streams = [Stream(local="/a", proportion=0.7), Stream(local="/b", proportion=0.3)]
    shard_sizes = [np.array([13, 13, 13, 5]), np.array([9, 9, 4])]
    counts = epoch_counts(streams, [44, 22], epoch_size=101, seed=seed)
    config = PlanConfig(
        num_canonical_nodes=canonical,
        chunk=max(1, global_batch // canonical),
        shuffle=True,
        shuffle_algo=algo,
        shuffle_seed=seed,
        shuffle_block_size=block,
    )
    return epoch_sequence(shard_sizes, counts, config, epoch), counts


@pytest.mark.parametrize("algo", sorted(SHUFFLES))
@pytest.mark.parametrize("canonical,global_batch", [(1, 12), (4, 24), (8, 24), (3, 6)])
def test_every_split_reads_the_same_global_batches(algo, canonical, global_batch):
    seq, counts = two_stream_sequence(
        seed=17, epoch=2, algo=algo, canonical=canonical, global_batch=global_batch
    )
    assert len(seq) == 101 == counts.sum()
    reference = simulate(seq, global_batch, 1, 1, 1, canonical)
    tried = 0
    for nodes, ranks, workers in splits(global_batch):
        got = simulate(seq, global_batch, nodes, ranks, workers, canonical)
        assert_same_up_to_the_epoch_end(got, reference, 101, global_batch)
        num_ranks = nodes * ranks
        flat = np.concatenate(got)
        # Each epoch entry appears once; the padding (mosaicml-streaming's amount: up to a
        # multiple of the canonical nodes, then of the ranks) repeats the epoch's start.
        assert len(flat) == num_ranks * -(-(canonical * -(-101 // canonical)) // num_ranks)
        np.testing.assert_array_equal(flat[:101], seq)
        np.testing.assert_array_equal(flat[101:], seq[: len(flat) - 101])
        assert all(len(b) == global_batch for b in got[:-1])
        assert len(got[-1]) % num_ranks == 0 and 0 < len(got[-1]) <= global_batch
        tried += 1
    assert tried >= 6


def test_one_device_reads_exactly_the_epoch():
    """On one device with one canonical node nothing is padded, for any batch and workers."""
    seq = np.arange(101)[::-1].copy()
    for per_device, workers in itertools.product([1, 4, 7, 101, 200], [1, 2, 3]):
        got = simulate(seq, per_device, 1, 1, workers)
        np.testing.assert_array_equal(np.concatenate(got), seq)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.lists(st.integers(1, 30), min_size=1, max_size=5), min_size=2, max_size=3),
    weights=st.lists(st.floats(0.1, 5.0), min_size=3, max_size=3),
    epoch_size=st.integers(1, 300),
    seed=st.integers(0, 2**31 - 1),
    epoch=st.integers(0, 5),
    canonical=st.integers(1, 9),
    per_device=st.integers(1, 5),
    algo=st.sampled_from(sorted(SHUFFLES)),
    block=st.integers(1, 40),
)
def test_property_elastic_determinism(
    sizes, weights, epoch_size, seed, epoch, canonical, per_device, algo, block
):
    streams = [
        Stream(local=f"/s{i}", proportion=w)
        for i, w in zip(range(len(sizes)), weights, strict=False)
    ]
    shard_sizes = [np.array(s) for s in sizes]
    counts = epoch_counts(streams, [sum(s) for s in sizes], epoch_size, seed)
    assert counts.sum() == epoch_size
    global_batch = per_device * 12  # divisible by 1, 2, 3, 4, 6, 12 ranks
    config = PlanConfig(
        num_canonical_nodes=canonical,
        chunk=max(1, global_batch // canonical),
        shuffle=True,
        shuffle_algo=algo,
        shuffle_seed=seed,
        shuffle_block_size=block,
    )
    seq = epoch_sequence(shard_sizes, counts, config, epoch)
    # The epoch holds exactly what the weights ask of each stream.
    offsets = np.cumsum([0] + [sum(s) for s in sizes])
    per_stream = np.searchsorted(offsets, seq, side="right") - 1
    np.testing.assert_array_equal(np.bincount(per_stream, minlength=len(sizes)), counts)
    reference = simulate(seq, global_batch, 1, 1, 1, canonical)
    for nodes, ranks, workers in [
        (1, 12, 4),
        (4, 3, 1),
        (2, 2, 3),
        (3, 4, 2),
        (12, 1, 1),
        (1, 1, 5),
    ]:
        got = simulate(seq, global_batch, nodes, ranks, workers, canonical)
        assert_same_up_to_the_epoch_end(got, reference, epoch_size, global_batch)
        flat = np.concatenate(got)
        assert len(flat) == padded_end(epoch_size, canonical, nodes * ranks)
        np.testing.assert_array_equal(flat, seq[np.arange(len(flat)) % epoch_size])


@settings(max_examples=200, deadline=None)
@given(
    epoch_len=st.integers(0, 500),
    canonical=st.integers(1, 70),
    num_ranks=st.integers(1, 40),
    start=st.integers(0, 600),
)
def test_property_padded_end(epoch_len, canonical, num_ranks, start):
    end = padded_end(epoch_len, canonical, num_ranks, start)
    rounded = canonical * -(-epoch_len // canonical)
    assert (end - start) % num_ranks == 0 and end >= start
    if start < rounded:
        assert end >= rounded >= epoch_len  # nothing of the epoch is left out
        assert end - rounded < num_ranks and rounded - epoch_len < canonical
    else:
        assert end == start


@settings(max_examples=40, deadline=None)
@given(
    total=st.integers(0, 200),
    canonical=st.integers(1, 12),
    chunk=st.integers(1, 9),
    seed=st.integers(0, 100),
)
def test_interleave_is_a_permutation(total, canonical, chunk, seed):
    order = np.random.default_rng(seed).permutation(total)
    out = interleave_canonical(order, canonical, chunk)
    assert sorted(out.tolist()) == list(range(total))


@pytest.mark.parametrize("algo", sorted(SHUFFLES))
def test_shuffles_are_permutations_and_keep_canonical_ranges(algo):
    spans = np.array([[0, 40], [40, 70], [70, 71], [71, 130]])
    for canonical in (1, 3, 8):
        order = SHUFFLES[algo](spans, canonical, 5, 1, 16)
        assert sorted(order.tolist()) == list(range(130))
        assert not np.array_equal(order, np.arange(130))
        if algo != "naive":
            # The assignment of samples to canonical nodes is fixed over the run (cache-friendly).
            bounds = canonical_bounds(130, canonical)
            other = SHUFFLES[algo](spans, canonical, 5, 2, 16)
            for c in range(canonical):
                lo, hi = bounds[c], bounds[c + 1]
                assert set(order[lo:hi]) == set(other[lo:hi])
            assert not np.array_equal(order, other)


def test_block_shuffles_keep_locality():
    """With small blocks, a window of consecutive reads touches few shards."""
    sizes = np.full(64, 100)
    ends = np.cumsum(sizes)
    spans = np.stack([ends - sizes, ends], axis=1)
    for algo in ("py1s", "py1e"):
        order = SHUFFLES[algo](spans, 1, 3, 0, 100)
        shard = np.searchsorted(ends, order, side="right")
        windows = [len(set(shard[i : i + 100])) for i in range(0, 6400, 100)]
        assert max(windows) <= 4, (algo, max(windows))
    shard = np.searchsorted(ends, SHUFFLES["naive"](spans, 1, 3, 0, 100), side="right")
    assert np.mean([len(set(shard[i : i + 100])) for i in range(0, 6400, 100)]) > 30


def test_locality_of_physical_nodes():
    """With G % C == 0 and C % P == 0, each physical node reads only its canonical nodes' ranges."""
    total, canonical, global_batch = 960, 8, 32
    order = np.arange(total)
    seq = interleave_canonical(order, canonical, global_batch // canonical)
    bounds = canonical_bounds(total, canonical)
    for nodes in (1, 2, 4, 8):
        per_node = global_batch // nodes
        for node in range(nodes):
            positions = np.concatenate(
                [
                    np.arange(
                        b * global_batch + node * per_node, b * global_batch + (node + 1) * per_node
                    )
                    for b in range(total // global_batch)
                ]
            )
            owners = set((np.searchsorted(bounds, seq[positions], side="right") - 1).tolist())
            assert owners == set(range(node * canonical // nodes, (node + 1) * canonical // nodes))


def test_resuming_at_any_position_continues_the_same_sequence():
    seq, _ = two_stream_sequence(seed=3, epoch=0, algo="py1e", canonical=4, global_batch=12)
    full = np.concatenate(simulate(seq, 12, 1, 2, 2, canonical=4))
    for start in (12, 36, 84, 97):
        for nodes, ranks, workers in [(1, 1, 1), (2, 3, 2), (1, 4, 3)]:
            got = simulate(seq, 12, nodes, ranks, workers, canonical=4, start=start)
            resumed = np.concatenate(got)
            assert len(resumed) == padded_end(101, 4, nodes * ranks, start) - start
            within = 101 - start  # the rest of the epoch is the same; the padding is the ranks'
            np.testing.assert_array_equal(resumed[:within], full[start:101])


def test_mixing_rules():
    """Counts as mosaicml-streaming derives them (test_mosaic_api compares with it itself)."""
    a, b = Stream(local="/a", repeat=2), Stream(local="/b", choose=3)
    np.testing.assert_array_equal(epoch_counts([a, b], [10, 20], None, 0), [20, 3])
    with pytest.raises(ValueError, match="epoch_size=46 needs relative weights, but streams"):
        epoch_counts([a, b], [10, 20], 46, 0)  # was: rescaled to 46
    floor = Stream(local="/c", repeat=0.55)
    np.testing.assert_array_equal(epoch_counts([floor], [10], None, 0), [5])  # was: round, 6
    plain = [Stream(local="/a"), Stream(local="/b")]
    np.testing.assert_array_equal(epoch_counts(plain, [10, 20], None, 0), [10, 20])
    np.testing.assert_array_equal(epoch_counts(plain, [10, 20], 0, 0), [10, 20])  # 0: unset
    assert epoch_counts(plain, [10, 20], 31, 0).sum() == 31
    with pytest.raises(ValueError, match="mix relative and absolute"):
        epoch_counts([Stream(local="/a", proportion=1), b], [10, 20], None, 0)
    with pytest.raises(ValueError, match="at most one of proportion, repeat, choose"):
        Stream(local="/a", proportion=1, repeat=2)
    with pytest.raises(ValueError, match="non-negative"):
        Stream(local="/a", choose=-1)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=6),
    count=st.integers(0, 200),
    granularity=st.integers(1, 12),
    seed=st.integers(0, 1000),
    fixed=st.booleans(),
)
def test_property_sampling(sizes, count, granularity, seed, fixed):
    """A stream's draw: whole passes plus distinct extra samples; `fixed` draws the same each
    epoch; with granularity g, at most one shard gets a number of extras that is not a whole
    number of its runs of g (runs taken whole, the last one cut)."""
    sizes = np.array(sizes)
    if sizes.sum() == 0:
        return
    method = "fixed" if fixed else "balanced"
    draws = [
        epoch_entries(
            np.array([count]),
            [sizes],
            seed,
            epoch,
            sampling_method=method,
            sampling_granularity=granularity,
        )[0]
        for epoch in (0, 1)
    ]
    total = int(sizes.sum())
    passes, extra = divmod(count, total)
    for drawn in draws:
        assert len(drawn) == count
        np.testing.assert_array_equal(drawn[: passes * total], np.tile(np.arange(total), passes))
        tail = drawn[passes * total :]
        assert len(set(tail.tolist())) == extra and np.all(np.diff(tail) > 0)
        ends = np.cumsum(sizes)
        per_shard = np.bincount(np.searchsorted(ends, tail, side="right"), minlength=len(sizes))
        short = sizes % granularity  # a shard's last run, if shorter
        whole = (per_shard % granularity == 0) | (
            (short > 0) & (per_shard >= short) & ((per_shard - short) % granularity == 0)
        )
        assert (~whole).sum() <= 1, (per_shard, sizes)
    if fixed:
        np.testing.assert_array_equal(draws[0], draws[1])


@pytest.mark.parametrize("algo", sorted(SHUFFLES))
def test_shuffles_mix_well_when_the_block_covers_the_data(algo):
    """With blocks as large as the dataset, reading order is unrelated to dataset order."""
    sizes = np.full(8, 2500)
    ends = np.cumsum(sizes)
    spans = np.stack([ends - sizes, ends], axis=1)
    for canonical in (1, 2):
        order = SHUFFLES[algo](spans, canonical, 11, 0, 1 << 18)
        bounds = canonical_bounds(len(order), canonical)
        for c in range(canonical):
            part = order[bounds[c] : bounds[c + 1]].astype(np.float64)
            rank_corr = np.corrcoef(np.arange(len(part)), part)[0, 1]
            assert abs(rank_corr) < 0.1, (algo, canonical, rank_corr)
            # and consecutive reads rarely come from consecutive samples
            assert np.mean(np.abs(np.diff(part)) == 1) < 0.01
