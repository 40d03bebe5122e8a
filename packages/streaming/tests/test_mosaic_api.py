"""mosaicml-streaming's public API beyond iteration, against mosaicml-streaming 0.13 itself (one
snippet in the session's subprocess): stream weights as it derives and fills them in, indexing
with slices, lists and arrays, the shard bookkeeping and members (`shards`, `num_shards`,
`size`, `prepare_shard`, `evict_shard`, `evict_coldest_shard`, `cache_usage`,
`resample_streams`), `sampling_method="fixed"`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from streaming import MDSWriter, Stream, StreamingDataset

# (name, per stream: (dataset, weight kind, weight) or (dataset, None, None); epoch_size)
MIXES = [
    ("sizes", [("a", None, None), ("b", None, None)], None),
    ("sizes-epoch", [("a", None, None), ("b", None, None)], 77),
    ("proportions", [("a", "proportion", 0.7), ("b", "proportion", 0.3)], 101),
    (
        "proportions-odd",
        [("a", "proportion", 1), ("b", "proportion", 1), ("c", "proportion", 1)],
        50,
    ),
    ("proportions-total", [("a", "proportion", 2), ("b", "proportion", 5)], None),
    ("repeat", [("a", "repeat", 0.55), ("b", "repeat", 2.5)], None),
    ("choose", [("a", "choose", 13), ("b", None, None), ("c", "repeat", 1.5)], None),
]
INDEXES = {
    "int": 7,
    "negative": -1,
    "numpy-int": np.int64(3),
    "slice": slice(2, 10),
    "slice-step": slice(None, None, 3),
    "slice-negative-start": slice(-5, None),
    "slice-beyond": slice(25, 99),
    "list": [1, [2, 3], -2],
    "array": np.array([5, -1, 0]),
    "array-2d": np.array([[1, 2], [3, 4]]),
}
SIZES = {"a": 30, "b": 17, "c": 9}

_MOSAIC = r"""
import os, tempfile, warnings
import numpy as np
from streaming import Stream, StreamingDataset
warnings.simplefilter("ignore")
root = args["root"]
result = {"mixes": {}, "indexes": {}}

def ids(value):
    if isinstance(value, dict):
        return int(value["id"])
    return [ids(v) for v in value]

for name, spec, epoch_size in args["mixes"]:
    streams = [Stream(local=os.path.join(root, ds), **({kind: w} if kind else {}))
               for ds, kind, w in spec]
    dataset = StreamingDataset(streams=streams, epoch_size=epoch_size, batch_size=1,
                               shuffle_seed=args["seed"])
    result["mixes"][name] = {
        "epoch_size": dataset.epoch_size,
        "weights": [[float(s.proportion), float(s.repeat), int(s.choose)] for s in dataset.streams],
    }
    del dataset

dataset = StreamingDataset(local=os.path.join(root, "a"), batch_size=1)
for name, at in args["indexes"].items():
    result["indexes"][name] = ids(dataset[at])
result["bookkeeping"] = {
    "size": dataset.size, "num_samples": dataset.num_samples, "num_shards": dataset.num_shards,
    "shard_samples": [int(s.samples) for s in dataset.shards],
    "samples_per_shard": dataset.samples_per_shard.tolist(),
    "sample_offset_per_shard": dataset.sample_offset_per_shard.tolist(),
}
del dataset

streams = [Stream(local=os.path.join(root, "a"), proportion=0.5),
           Stream(local=os.path.join(root, "b"), proportion=0.5)]
dataset = StreamingDataset(streams=streams, epoch_size=40, batch_size=1, sampling_method="fixed",
                           shuffle=True)
draws = [dataset.resample_streams(epoch) for epoch in (0, 1)]
result["fixed"] = {
    "same": all(np.array_equal(a, b) for a, b in zip(draws[0], draws[1])),
    "units_total": int(draws[0][0].sum()), "ids": len(draws[0][1]),
    "one_stream": len(dataset.resample_streams(0, stream_id=1)[1]),
    "per_stream": dataset.samples_per_stream.tolist(),
    "stream_per_shard": dataset.stream_per_shard.tolist(),
}
del dataset

dataset = StreamingDataset(local=os.path.join(root, "a"), batch_size=1)
next(iter(dataset))
result["state"] = dataset.state_dict(12, True)  # mosaicml's, for ours to read
del dataset
dataset = StreamingDataset(local=os.path.join(root, "a"), batch_size=1)
dataset.load_state_dict(args["our_state"])  # ours, for mosaicml to read
result["resumed_from_ours"] = len([s for s in dataset])
del dataset

local = tempfile.mkdtemp(prefix="api-")
dataset = StreamingDataset(remote=os.path.join(root, "a"), local=local, batch_size=1)
usage = [dataset.cache_usage]
for shard_id in range(dataset.num_shards):
    dataset.prepare_shard(shard_id)
usage.append(dataset.cache_usage)
dataset.evict_shard(0)
usage.append(dataset.cache_usage)
dataset.evict_coldest_shard()
usage.append(dataset.cache_usage)
result["usage"] = usage
result["after_evict"] = ids(dataset[[0, 29]])
del dataset
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    for name, count in SIZES.items():
        base = {"a": 0, "b": 1000, "c": 2000}[name]
        with MDSWriter(out=str(root / name), columns={"id": "int"}, size_limit=160) as writer:
            for i in range(count):
                writer.write({"id": base + i})
    return root


@pytest.fixture(scope="module")
def theirs(mosaic, root):
    ours = StreamingDataset(local=str(root / "a"), batch_size=1).state_dict(12, True)
    args = {"root": str(root), "mixes": MIXES, "indexes": INDEXES, "seed": 31, "our_state": ours}
    return mosaic.call(_MOSAIC, args)


def _ids(value):
    return int(value["id"]) if isinstance(value, dict) else [_ids(v) for v in value]


@pytest.mark.parametrize("name", [m[0] for m in MIXES])
def test_stream_weights_are_derived_and_filled_in_as_mosaic_does(theirs, root, name):
    _, spec, epoch_size = next(m for m in MIXES if m[0] == name)
    streams = [Stream(local=str(root / ds), **({kind: w} if kind else {})) for ds, kind, w in spec]
    ds = StreamingDataset(streams=streams, epoch_size=epoch_size, batch_size=1, shuffle_seed=31)
    got = theirs["mixes"][name]
    assert ds.epoch_size == got["epoch_size"]
    weights = [[s.proportion, s.repeat, s.choose] for s in ds.streams]
    assert [w[2] for w in weights] == [w[2] for w in got["weights"]]
    np.testing.assert_allclose([w[:2] for w in weights], [w[:2] for w in got["weights"]])
    # filled in on the dataset's copies; the Stream objects given are left as they were
    assert [s.choose for s in streams] == [w if k == "choose" else None for _, k, w in spec]


def test_indexing_with_slices_lists_and_arrays_is_mosaics(theirs, root):
    ds = StreamingDataset(local=str(root / "a"), batch_size=1)
    for name, at in INDEXES.items():
        assert _ids(ds[at]) == theirs["indexes"][name], name
    assert _ids(ds[::-1]) == list(range(29, -1, -1))  # Python's meaning (see streaming.array)


def test_shard_bookkeeping_is_mosaics(theirs, root):
    ds = StreamingDataset(local=str(root / "a"), batch_size=1)
    got = theirs["bookkeeping"]
    assert (ds.size, ds.num_samples, ds.num_shards) == (
        got["size"],
        got["num_samples"],
        got["num_shards"],
    )
    assert [s.samples for s in ds.shards] == got["shard_samples"]
    assert ds.samples_per_shard.tolist() == got["samples_per_shard"]
    assert ds.sample_offset_per_shard.tolist() == got["sample_offset_per_shard"]


def test_fixed_sampling_and_resample_streams_as_mosaic(theirs, root):
    streams = [
        Stream(local=str(root / "a"), proportion=0.5),
        Stream(local=str(root / "b"), proportion=0.5),
    ]
    kwargs = dict(streams=streams, epoch_size=40, batch_size=1, shuffle=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fixed = StreamingDataset(sampling_method="fixed", **kwargs)
        balanced = StreamingDataset(**kwargs)
    got = theirs["fixed"]
    draws = [fixed.resample_streams(epoch) for epoch in (0, 1)]
    assert got["same"] and all(np.array_equal(a, b) for a, b in zip(*draws, strict=True))
    assert (int(draws[0][0].sum()), len(draws[0][1])) == (got["units_total"], got["ids"])
    assert len(fixed.resample_streams(0, stream_id=1)[1]) == got["one_stream"]
    assert fixed.samples_per_stream.tolist() == got["per_stream"]
    assert fixed.stream_per_shard.tolist() == got["stream_per_shard"]
    # balanced: the 3 samples b gives beyond its 17 are drawn anew each epoch (was: refused)
    ids = [balanced.resample_streams(epoch)[1] for epoch in range(4)]
    assert any(not np.array_equal(ids[0], other) for other in ids[1:])


def test_prepare_evict_and_cache_usage_count_as_mosaic(theirs, root, tmp_path):
    ds = StreamingDataset(remote=str(root / "a"), local=str(tmp_path / "cache"), batch_size=1)
    usage = [ds.cache_usage]
    for shard_id in range(ds.num_shards):
        ds.prepare_shard(shard_id)
    usage.append(ds.cache_usage)
    ds.evict_shard(0)
    usage.append(ds.cache_usage)
    ds.evict_coldest_shard()
    usage.append(ds.cache_usage)
    assert usage == theirs["usage"]
    assert _ids(ds[[0, 29]]) == theirs["after_evict"] == [0, 29]  # fetched again when read


def test_state_dicts_travel_both_ways(theirs, root):
    """A checkpoint's dataset state from mosaicml resumes ours at the same epoch and sample
    (was: refused, no interleave_chunk), and ours resumes mosaicml's."""
    ds = StreamingDataset(local=str(root / "a"), batch_size=1)
    ds.load_state_dict(theirs["state"])
    assert theirs["state"]["sample_in_epoch"] == 12
    resumed = [int(s["id"]) for s in ds]
    assert resumed == [int(i) for i in ds.epoch_sequence(0)[12:]]
    assert theirs["resumed_from_ours"] == len(resumed) == 18
