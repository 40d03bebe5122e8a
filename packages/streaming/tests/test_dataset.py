"""StreamingDataset over real MDS shards: order, mixing, elasticity, resumption, caching."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from streaming import MDSWriter, Stream, StreamingDataLoader, StreamingDataset
from streaming.partition import num_global_batches, padded_end
from streaming.rawfill import _track_fill, _untrack_fill, finish_fills

COLUMNS = {"id": "int", "tokens": "ndarray:int32:4"}


def least_cache_limit(out: Path) -> int:
    """The smallest cache_limit StreamingDataset accepts for the dataset at `out` (mosaicml's
    rule): four of the largest shard (raw plus compressed), and more than index.json's bytes."""
    shards = json.loads((out / "index.json").read_text())["shards"]
    raw = [s["raw_data"]["bytes"] for s in shards]
    zipped = [(s.get("zip_data") or {}).get("bytes", 0) for s in shards]
    largest = max(r + z for r, z in zip(raw, zipped, strict=True))
    return max(4 * largest, (out / "index.json").stat().st_size + 1)


def write_dataset(out: Path, ids: range, compression=None, size_limit=200) -> Path:
    with MDSWriter(
        out=str(out),
        columns=COLUMNS,
        compression=compression,
        hashes=["xxh64"],
        size_limit=size_limit,
    ) as w:
        for i in ids:
            w.write({"id": i, "tokens": np.arange(i, i + 4, dtype=np.int32)})
    return out


@pytest.fixture(scope="module")
def two_streams(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    a = write_dataset(root / "a", range(0, 57), compression="zstd")
    b = write_dataset(root / "b", range(1000, 1023))
    return a, b


def make(two_streams, **kwargs):
    a, b = two_streams
    streams = [Stream(local=str(a), proportion=0.6), Stream(local=str(b), proportion=0.4)]
    defaults = dict(
        streams=streams,
        epoch_size=71,
        shuffle=True,
        shuffle_block_size=8,
        num_canonical_nodes=4,
        shuffle_seed=5,
    )
    defaults.update(kwargs)
    return StreamingDataset(**defaults)


def set_world(monkeypatch, rank: int, num_ranks: int, per_node: int | None = None):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(num_ranks))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(per_node or num_ranks))


def ids_of(batch) -> list[int]:
    return [int(x) for x in batch["id"]]


def global_batches(
    two_streams, monkeypatch, num_ranks: int, workers: int, global_batch: int = 12, **kwargs
):
    """Run every rank's DataLoader (real worker processes) and assemble the global batches."""
    per_rank = []
    for rank in range(num_ranks):
        set_world(monkeypatch, rank, num_ranks)
        ds = make(two_streams, batch_size=global_batch // num_ranks, **kwargs)
        loader = DataLoader(ds, batch_size=ds.batch_size, num_workers=workers)
        per_rank.append([ids_of(b) for b in loader])
    assert len({len(r) for r in per_rank}) == 1
    return [sum((per_rank[k][t] for k in range(num_ranks)), []) for t in range(len(per_rank[0]))]


def test_reads_every_sample_in_order_without_shuffle(tmp_path):
    out = write_dataset(tmp_path / "d", range(30))
    ds = StreamingDataset(local=str(out), batch_size=4)
    assert ds.num_samples == 30 and len(ds) == 30  # one device: nothing padded (as mosaicml)
    got = [s["id"] for s in ds]
    assert got == list(range(30))
    assert ds[7]["id"] == 7 and ds[-1]["id"] == 29
    np.testing.assert_array_equal(ds[7]["tokens"], np.arange(7, 11, dtype=np.int32))
    with pytest.raises(IndexError, match="sample 30 out of range for a dataset of 30 samples"):
        ds[30]


def test_weighted_streams_give_their_proportions(two_streams):
    ds = make(two_streams, batch_size=71)
    ids = [s["id"] for s in ds]
    assert len(ids) == 72  # 71 rounded up to a multiple of the 4 canonical nodes, as mosaicml does
    assert ids[71] == ids[0] and len(ds) == 71  # the padding repeats the start; len omits it
    ids = ids[:71]
    # floor(71 * 0.4) = 28 from b, floor(71 * 0.6) = 42 from a, the one left to either (as
    # mosaicml-streaming draws it); each dataset.streams[i] has its count filled in.
    assert [s.choose for s in ds.streams] in ([43, 28], [42, 29])
    assert sum(i >= 1000 for i in ids) == ds.streams[1].choose
    assert len(set(i for i in ids if i >= 1000)) == 23  # 28 drawn from 23: all of them, some twice


def test_global_batches_are_identical_for_every_split(two_streams, monkeypatch):
    reference = global_batches(two_streams, monkeypatch, num_ranks=1, workers=0)
    # 71 samples rounded up to a multiple of the 4 canonical nodes (and of 1, 2, 3, 4, 6 ranks)
    assert len(reference) == num_global_batches(0, padded_end(71, 4, 1), 12) == 6
    flat = sum(reference, [])
    ds = make(two_streams, batch_size=12)
    assert flat[:71] == [ds[int(i)]["id"] for i in ds.epoch_sequence(0)]
    assert flat[71:] == flat[:1]  # padding repeats the epoch's start
    for num_ranks, workers in [(2, 2), (3, 1), (4, 3), (6, 2)]:
        assert global_batches(two_streams, monkeypatch, num_ranks, workers) == reference, (
            num_ranks,
            workers,
        )


def test_epochs_differ_and_plain_dataloader_advances_epochs(two_streams):
    ds = make(two_streams, batch_size=6)
    loader = DataLoader(ds, batch_size=6, num_workers=2)
    first = [ids_of(b) for b in loader]
    second = [ids_of(b) for b in loader]
    assert first != second
    fresh = make(two_streams, batch_size=6)
    assert [ids_of(b) for b in DataLoader(fresh, batch_size=6, num_workers=1)] == first


def test_resume_mid_epoch_with_other_ranks_and_workers(two_streams, monkeypatch):
    set_world(monkeypatch, 0, 1)
    ds = make(two_streams, batch_size=12)
    uninterrupted = [ids_of(b) for b in StreamingDataLoader(ds, num_workers=2)]
    ds = make(two_streams, batch_size=12)
    loader = StreamingDataLoader(ds, num_workers=2)
    seen = []
    for batch in loader:
        seen.append(ids_of(batch))
        if len(seen) == 2:
            break
    state = loader.state_dict()
    assert state == json.loads(json.dumps(state)) and state["sample_in_epoch"] == 24
    # Resume on 3 ranks with 2 workers each; global batches continue exactly.
    per_rank = []
    for rank in range(3):
        set_world(monkeypatch, rank, 3)
        resumed = make(two_streams, batch_size=4)
        rl = StreamingDataLoader(resumed, num_workers=2)
        rl.load_state_dict(state)
        per_rank.append([ids_of(b) for b in rl])
    rest = [sum((per_rank[k][t] for k in range(3)), []) for t in range(len(per_rank[0]))]
    assert seen + rest == uninterrupted


def test_resume_skips_without_reading_skipped_samples(two_streams, monkeypatch):
    from streaming import shard as shard_module

    ds = make(two_streams, batch_size=4)
    total_shards = len(ds._shards)
    ds.load_state_dict(
        {
            "epoch": 0,
            "sample_in_epoch": 64,
            "num_canonical_nodes": 4,
            "shuffle_seed": 5,
            "interleave_chunk": 1,
        }
    )
    opened = []
    real_open = shard_module.Shard.open
    monkeypatch.setattr(
        shard_module.Shard,
        "open",
        classmethod(lambda cls, *a, **k: opened.append(a[0]) or real_open(*a, **k)),
    )
    samples = [s["id"] for s in ds]
    # Positions 64..71 remain (two global batches of 4, the last padded with the epoch's start).
    sequence = ds.epoch_sequence(0)
    assert samples == [make(two_streams)[int(sequence[p % 71])]["id"] for p in range(64, 72)]
    assert len(set(opened)) <= 8 < total_shards


def test_state_dict_at_epoch_end_resumes_next_epoch(two_streams):
    ds = make(two_streams, batch_size=71)
    ds.load_state_dict(
        {
            "epoch": 3,
            "sample_in_epoch": 71,
            "num_canonical_nodes": 4,
            "shuffle_seed": 5,
            "interleave_chunk": 17,
        }
    )
    assert ds.state_dict(0, from_beginning=False)["epoch"] == 4
    expected = make(two_streams, batch_size=71).epoch_sequence(4)
    padded = expected[np.arange(72) % 71]  # rounded up to a multiple of the 4 canonical nodes
    assert [s["id"] for s in ds] == [make(two_streams)[int(i)]["id"] for i in padded]


def test_resume_on_another_node_count_keeps_the_default_shuffle_block(tmp_path, monkeypatch):
    """The default shuffle block size follows the canonical node count: a run resumed on fewer
    nodes takes the checkpoint's count, and with it the block size the first run shuffled with."""
    out = write_dataset(tmp_path / "d", range(1))
    index = json.loads((out / "index.json").read_text())
    shard = index["shards"][0]
    # 5,000,000 samples listed (only the order is computed; no shard is read): the default block
    # is 262,144 on 16 canonical nodes and 500,000 on 8, and both are below a node's 312,500
    # samples (a shuffle window never spans more than one canonical node's range).
    index["shards"] = [
        dict(shard, samples=50_000, raw_data=dict(shard["raw_data"], basename=f"s.{i}.mds"))
        for i in range(100)
    ]
    (out / "index.json").write_text(json.dumps(index))
    set_world(monkeypatch, 0, 16, per_node=1)  # 16 nodes of one rank
    first = StreamingDataset(local=str(out), batch_size=4, shuffle=True)
    state = first.state_dict(num_samples=64 * 100, from_beginning=True)
    set_world(monkeypatch, 0, 8, per_node=1)  # resumed on 8 nodes, same global batch
    resumed = StreamingDataset(local=str(out), batch_size=8, shuffle=True)
    resumed.load_state_dict(state)
    assert resumed.num_canonical_nodes == 16
    np.testing.assert_array_equal(resumed.epoch_sequence(0), first.epoch_sequence(0))


def test_bad_state_dict_is_rejected(two_streams):
    with pytest.raises(ValueError, match=r"missing \[.num_canonical_nodes.*unknown \[.bogus.\]"):
        make(two_streams).load_state_dict({"epoch": 0, "sample_in_epoch": 0, "bogus": 1})


def test_missing_local_dataset_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no MDS dataset at {tmp_path}"):
        StreamingDataset(local=str(tmp_path))


def test_works_without_torch(tmp_path):
    out = write_dataset(tmp_path / "d", range(10))
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from streaming import StreamingDataset\n"
        f"ds = StreamingDataset(local={str(out)!r}, batch_size=5, shuffle=True)\n"
        "assert not [c for c in type(ds).__mro__ if c.__module__.startswith('torch')]\n"
        "print(sorted(s['id'] for s in ds), ds[3]['id'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{list(range(10))} 3"


_BLOCK_TORCH = """
import importlib.abc, sys
class BlockTorch(importlib.abc.MetaPathFinder):  # as if torch were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, BlockTorch())
"""


@pytest.mark.parametrize("blocker", ["meta_path", "sys_modules"])
def test_the_dataloader_without_torch_says_to_install_the_torch_extra(tmp_path, blocker):
    block = _BLOCK_TORCH if blocker == "meta_path" else "import sys; sys.modules['torch'] = None\n"
    code = block + (
        "import streaming\n"
        "try:\n"
        "    from streaming import StreamingDataLoader\n"
        "except ModuleNotFoundError as err:\n"
        "    print(err.name, '|', err)\n"
        "from streaming import StreamingDataset, MDSWriter\n"  # the rest works without torch
        "print('torch' in sys.modules and sys.modules['torch'] is not None)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    name, message = result.stdout.splitlines()[0].split(" | ", 1)
    assert name == "torch"
    assert "StreamingDataLoader needs torch" in message
    assert "pip install 'streaming[torch]'" in message
    assert result.stdout.splitlines()[1] == "False"


def _read_ids(remote: str, cache: str, out: Path) -> None:
    ds = StreamingDataset(remote=remote, local=cache, shuffle=True, batch_size=8)
    out.write_text(json.dumps(sorted(s["id"] for s in ds)))


def test_two_processes_share_one_remote_cache(tmp_path, s3_bucket):
    remote = f"{s3_bucket}/ds"
    write_dataset(tmp_path / "src", range(40), compression="zstd", size_limit=150)
    from streaming.storage import Uploader

    up = Uploader(remote)
    for name in sorted(os.listdir(tmp_path / "src")):
        up.upload(str(tmp_path / "src" / name), name)
    up.wait()
    up.close()
    cache = tmp_path / "cache"
    # Two processes forked from this one, as a data loader forks its workers (nothing imported
    # again); each makes its own client, and multiprocessing's exit waits for its raw fills.
    fork = multiprocessing.get_context("fork")
    outs = [tmp_path / f"ids{i}.json" for i in range(2)]
    procs = [fork.Process(target=_read_ids, args=(remote, str(cache), out)) for out in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p, out in zip(procs, outs, strict=True):
        assert p.exitcode == 0, p.exitcode
        assert json.loads(out.read_text()) == list(range(40))
    leftovers = [n for n in os.listdir(cache) if not (n == "index.json" or n.startswith("shard."))]
    # lock files, the digests kept of the raw copies, the marker naming the remote: no temp file
    kept = (".lock", ".kept", ".streaming-cache")
    assert not [n for n in leftovers if not n.endswith(kept)], leftovers


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_a_shard_evicted_by_another_process_before_it_opens_is_fetched_again(
    tmp_path, monkeypatch, compression
):
    """Another worker's cache_limit may delete a file between our fetching and opening it."""
    import streaming.storage

    out = write_dataset(tmp_path / "src", range(30), compression=compression, size_limit=150)
    real, evicted = streaming.storage.download, []

    def download_then_lose_it(url, path, **kwargs):
        result = real(url, path, **kwargs)
        if not evicted:  # the first fetched file goes at once, as another process's evict would
            evicted.append(path)
            os.remove(path)
        return result

    monkeypatch.setattr(streaming.storage, "download", download_then_lose_it)
    ds = StreamingDataset(remote=str(out), local=str(tmp_path / "cache"), predownload=0)
    assert [s["id"] for s in ds] == list(range(30))  # was: FileNotFoundError
    assert evicted


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_workers_sharing_a_small_cache_never_lose_a_shard_to_each_others_eviction(
    tmp_path, compression
):
    """Each worker evicts for the shared cache_limit; none may delete a file another worker has
    just fetched and not opened yet (was: FileNotFoundError in a worker)."""
    out = write_dataset(tmp_path / "src", range(600), compression=compression, size_limit=300)
    ds = StreamingDataset(
        remote=str(out),
        local=str(tmp_path / "cache"),
        cache_limit=least_cache_limit(out),
        batch_size=4,
        shuffle=True,
    )
    loader = StreamingDataLoader(ds, num_workers=3, collate_fn=lambda b: [s["id"] for s in b])
    assert sorted(i for batch in loader for i in batch) == list(range(600))


def test_cache_limit_evicts_least_recently_used(tmp_path, s3_bucket):
    remote = f"{s3_bucket}/ds"
    write_dataset(tmp_path / "src", range(60), size_limit=120)
    from streaming.storage import Uploader

    up = Uploader(remote)
    for name in sorted(os.listdir(tmp_path / "src")):
        up.upload(str(tmp_path / "src" / name), name)
    up.wait()
    up.close()
    shard_bytes = max(
        os.path.getsize(tmp_path / "src" / n)
        for n in os.listdir(tmp_path / "src")
        if n.startswith("shard")
    )
    index_bytes = (tmp_path / "src" / "index.json").stat().st_size
    limit = index_bytes + 4 * shard_bytes + shard_bytes // 2  # index.json counts, and stays
    ds = StreamingDataset(
        remote=remote,
        local=str(tmp_path / "cache"),
        cache_limit=limit,
        max_open_shards=1,
        predownload=0,
    )
    assert [s["id"] for s in ds] == list(range(60))
    cached = [
        n
        for n in os.listdir(tmp_path / "cache")
        if n.startswith("shard.") and not n.endswith(".lock")
    ]
    held = sum(os.path.getsize(tmp_path / "cache" / n) for n in cached)
    assert held + index_bytes <= limit and len(cached) <= 4  # was: 4 + index_bytes // shard_bytes
    assert len(cached) < len([n for n in os.listdir(tmp_path / "src") if n.startswith("shard.")])
    assert os.path.exists(tmp_path / "cache" / "index.json")
    with pytest.raises(ValueError, match=f"cache_limit {index_bytes} bytes is not above the"):
        StreamingDataset(remote=remote, local=str(tmp_path / "cache2"), cache_limit=index_bytes)


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_cache_limit_holds_with_the_default_max_open_shards(tmp_path, compression):
    """Files of open shards are evicted too (they read through their descriptors): the limit
    holds with the default 64 open shards, not only once more shards than that are open."""
    src = write_dataset(tmp_path / "src", range(60), compression=compression, size_limit=120)
    stored = sorted(n for n in os.listdir(src) if n.startswith("shard."))
    assert 20 < len(stored) < 64
    limit = least_cache_limit(src) + max(os.path.getsize(src / n) for n in stored)
    cache = tmp_path / "cache"
    ds = StreamingDataset(remote=str(src), local=str(cache), cache_limit=limit)
    assert [s["id"] for s in ds] == list(range(60))
    assert finish_fills(30) == 0  # the last raw files landed, and were followed by an eviction
    cached = [n for n in os.listdir(cache) if n.startswith("shard.") and not n.endswith(".lock")]
    # Nothing is being prepared any more, so nothing is spared beyond the limit.
    assert sum(os.path.getsize(cache / n) for n in cached) <= limit, cached


def test_spawned_workers_agree_on_the_epoch(two_streams):
    """Workers started with spawn share the pass counter too (it travels with the dataset)."""
    ds = make(two_streams, batch_size=6)
    loader = DataLoader(ds, batch_size=6, num_workers=2, multiprocessing_context="spawn")
    first = [ids_of(b) for b in loader]
    second = [ids_of(b) for b in loader]
    reference = make(two_streams, batch_size=6)
    assert first == [ids_of(b) for b in DataLoader(reference, batch_size=6)]
    assert second == [ids_of(b) for b in DataLoader(reference, batch_size=6)]


def upload_dataset(src: Path, remote: str) -> None:
    from streaming.storage import Uploader

    with Uploader(remote) as up:
        for name in sorted(os.listdir(src)):
            up.upload(str(src / name), name)


def test_predownload_fetches_ahead_in_the_background(tmp_path, s3_bucket):
    import time

    remote = f"{s3_bucket}/ds"
    write_dataset(tmp_path / "src", range(100), compression="zstd", size_limit=120)
    upload_dataset(tmp_path / "src", remote)
    cache = tmp_path / "cache"
    ds = StreamingDataset(remote=remote, local=str(cache), predownload=30, keep_zip=True)
    it = iter(ds)
    assert [next(it)["id"] for _ in range(30)] == list(range(30))
    # The look-ahead window has grown to 29 samples by now: samples up to 58 are asked for.
    shard_of = np.searchsorted(ds._shard_ends, np.arange(100), side="right")
    wanted = {ds._shards[int(s)][1].basename for s in shard_of[30:59]}
    deadline = time.time() + 20
    while time.time() < deadline and not wanted <= set(os.listdir(cache)):
        time.sleep(0.05)
    assert wanted <= set(os.listdir(cache))  # fetched before the reader got there
    assert len(wanted) >= 4
    later = {ds._shards[int(s)][1].basename for s in shard_of[75:]}
    assert not later & set(os.listdir(cache))  # but not the whole dataset
    assert [s["id"] for s in it] == list(range(30, 100))


def test_corrupt_compressed_shard_is_named_and_leaves_no_raw_file(tmp_path):
    from streaming.errors import HashMismatchError, ShardTruncatedError

    out = write_dataset(tmp_path / "d", range(40), compression="zstd", size_limit=150)
    names = sorted(n for n in os.listdir(out) if n.endswith(".zstd"))
    data = bytearray((out / names[1]).read_bytes())
    data[len(data) // 2] ^= 0x10
    (out / names[1]).write_bytes(bytes(data))
    (out / names[2]).write_bytes((out / names[2]).read_bytes()[:-5])
    ds = StreamingDataset(local=str(out), predownload=0)
    first = ds._shard_ends[0]
    assert ds[0]["id"] == 0
    with pytest.raises(HashMismatchError, match=f"xxh64 of {names[1]}"):
        ds[int(first)]
    with pytest.raises(ShardTruncatedError, match=names[2]):
        ds[int(ds._shard_ends[1])]
    # shard 0 is read while it is still being decompressed (a growing temp file); let that finish
    assert finish_fills(60) == 0
    raw_files = [n for n in os.listdir(out) if n.endswith(".mds")]
    assert names[1][: -len(".zstd")] not in raw_files and names[2][: -len(".zstd")] not in raw_files
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_exit_waits_for_the_raw_files_being_written(tmp_path):
    """A process that exits right after its read still leaves whole raw files and no temp file."""
    out = write_dataset(tmp_path / "d", range(300), compression="zstd", size_limit=100_000)
    code = (
        "import time\nfrom streaming import StreamingDataset, compression, shard\n"
        "compression._CHUNK = 256  # a slow, many-step decompression: still running at exit\n"
        "append = shard.GrowingRaw.append\n"
        "shard.GrowingRaw.append = lambda raw, chunk: (time.sleep(0.001), append(raw, chunk))\n"
        f"ds = StreamingDataset(local={str(out)!r}, predownload=0)\n"
        "print(ds[0]['id'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
    names = os.listdir(out)
    zipped = sorted(n for n in names if n.endswith(".mds.zstd"))
    assert zipped and zipped[0][: -len(".zstd")] in names  # shard 0's raw file, whole
    assert not [n for n in names if n.endswith(".tmp")], names


def test_finish_fills_waits_and_says_what_is_left(caplog):
    go = threading.Event()

    def fill():
        try:
            go.wait(30)
        finally:
            _untrack_fill()

    _track_fill(threading.Thread(target=fill, daemon=True, name="streaming-decompress"))
    with caplog.at_level("WARNING", logger="streaming.rawfill"):
        assert finish_fills(0.05) == 1
    assert "1 shard decompression(s) still running at exit" in caplog.text
    go.set()
    assert finish_fills(10) == 0


def test_readers_wait_only_for_the_bytes_they_need(tmp_path, monkeypatch):
    """A shard being decompressed is readable at once; samples come out right whatever the order."""
    out = write_dataset(tmp_path / "d", range(300), compression="zstd", size_limit=100_000)
    from streaming import compression

    monkeypatch.setattr(compression, "_CHUNK", 256)  # many small steps
    ds = StreamingDataset(local=str(out), predownload=0)
    order = np.random.default_rng(0).permutation(300)
    assert [ds[int(i)]["id"] for i in order] == order.tolist()
    import time

    deadline = time.time() + 20  # the raw file lands once the background write is synced
    while time.time() < deadline and not os.path.exists(out / "shard.00000.mds"):
        time.sleep(0.05)
    assert os.path.exists(out / "shard.00000.mds")


def test_worker_forked_during_a_decompression_prepares_the_shard_itself(tmp_path, monkeypatch):
    """A worker forked while the main process is still decompressing a shard does not inherit
    the half-written shard (nor the pending work, locks or gate) whose threads it lacks."""
    import time

    from streaming import compression, shard

    out = write_dataset(tmp_path / "d", range(300), compression="zstd", size_limit=100_000)
    monkeypatch.setattr(compression, "_CHUNK", 256)  # ~65 steps of 128 bytes: about 0.7 s
    append = shard.GrowingRaw.append
    monkeypatch.setattr(
        shard.GrowingRaw, "append", lambda raw, chunk: (time.sleep(0.01), append(raw, chunk))
    )
    ds = StreamingDataset(local=str(out), batch_size=10)
    assert ds[0]["id"] == 0  # the shard is open, its raw file still being written
    assert not os.path.exists(out / "shard.00000.mds")
    loader = DataLoader(
        ds, batch_size=10, num_workers=1, multiprocessing_context="fork", timeout=20
    )
    assert sorted(int(i) for b in loader for i in b["id"]) == list(range(300))
    assert ds[299]["id"] == 299  # the main process's shard is unaffected


def test_missing_remote_index_and_missing_remote_shard_name_the_url(tmp_path, s3_bucket):
    from streaming.errors import RemoteNotFoundError
    from streaming.storage import delete_object

    with pytest.raises(RemoteNotFoundError, match=f"{s3_bucket}/nothing/index.json"):
        StreamingDataset(remote=f"{s3_bucket}/nothing", local=str(tmp_path / "c0"))
    remote = f"{s3_bucket}/ds"
    write_dataset(tmp_path / "src", range(30), size_limit=150)
    upload_dataset(tmp_path / "src", remote)
    delete_object(f"{remote}/shard.00001.mds")
    ds = StreamingDataset(remote=remote, local=str(tmp_path / "c1"), predownload=0)
    assert ds[0]["id"] == 0
    with pytest.raises(RemoteNotFoundError, match=f"{remote}/shard.00001.mds"):
        ds[int(ds._shard_ends[0])]


def test_two_datasets_in_one_process_over_one_folder_do_not_collide(two_streams):
    a, b = make(two_streams, batch_size=4), make(two_streams, batch_size=4, shuffle_seed=99)
    ia, ib = iter(a), iter(b)
    got_a, got_b = [], []
    for _ in range(a.epoch_size):  # interleaved reads, separate pass counters and shard caches
        got_a.append(next(ia)["id"])
        got_b.append(next(ib)["id"])
    assert got_a == [s["id"] for s in make(two_streams, batch_size=4)][: a.epoch_size]
    assert (
        got_b == [s["id"] for s in make(two_streams, batch_size=4, shuffle_seed=99)][: b.epoch_size]
    )
    assert got_a != got_b


def test_other_workers_wait_for_worker_zeros_first_batch_but_never_stall(tmp_path):
    import time

    from streaming.iteration import PassCounter

    counter = PassCounter()
    start = time.monotonic()
    counter.wait_first_batch(0, timeout=0.2)  # nobody marks it: gives up after the timeout
    assert 0.15 < time.monotonic() - start < 2
    counter.first_batch_done(0)
    start = time.monotonic()
    counter.wait_first_batch(0, timeout=5)
    assert time.monotonic() - start < 0.1
    # Worker 0 with a single batch (16 samples, 2 workers of batch 8) releases worker 1 at once.
    out = write_dataset(tmp_path / "d", range(16))
    ds = StreamingDataset(local=str(out), batch_size=8)
    start = time.monotonic()
    got = [ids_of(b) for b in DataLoader(ds, batch_size=8, num_workers=2)]
    assert got == [list(range(8)), list(range(8, 16))]
    assert time.monotonic() - start < 8


def test_cache_limit_is_checked_against_decompressed_shards(tmp_path):
    """mosaicml's floor: four of the largest shard, its raw and compressed bytes together."""
    out = write_dataset(tmp_path / "src", range(60), compression="zstd", size_limit=600)
    shards = json.loads((out / "index.json").read_text())["shards"]
    largest = max(s["raw_data"]["bytes"] + s["zip_data"]["bytes"] for s in shards)
    zipped = max(s["zip_data"]["bytes"] for s in shards)
    least = least_cache_limit(out)
    assert least == 4 * largest > 4 * zipped  # counting only the stored file lets less through
    with pytest.raises(ValueError, match="below four times the largest shard"):
        StreamingDataset(remote=str(out), local=str(tmp_path / "c"), cache_limit=least - 1)
    StreamingDataset(remote=str(out), local=str(tmp_path / "c"), cache_limit=least)


def test_load_state_dict_reaches_persistent_workers(tmp_path):
    out = write_dataset(tmp_path / "d", range(40))

    def ids(loader, limit=None):
        got = []
        for batch in loader:
            got += batch["id"].tolist()
            if limit and len(got) >= limit:
                break
        return got

    first = StreamingDataLoader(StreamingDataset(local=str(out), batch_size=4, shuffle=False))
    assert ids(first, 8) == list(range(8))
    state = first.state_dict()
    ds = StreamingDataset(local=str(out), batch_size=4, shuffle=False)
    loader = StreamingDataLoader(ds, num_workers=1, persistent_workers=True)
    assert ids(loader) == list(range(40))  # the workers exist now
    loader.load_state_dict(state)
    assert ids(loader) == list(range(8, 40))  # was: from 0 again, the workers never saw it


def test_with_only_raw_hashes_no_sample_is_served_before_its_shard_is_checked(tmp_path):
    from streaming.errors import HashMismatchError

    out = tmp_path / "d"
    with MDSWriter(
        out=str(out), columns={"id": "int"}, compression="zstd", hashes=["xxh64"], size_limit=2000
    ) as writer:
        for i in range(40):
            writer.write({"id": i})
    index = json.loads((out / "index.json").read_text())
    for shard in index["shards"]:
        shard["zip_data"]["hashes"] = {}  # only the raw file's hash is recorded ...
    index["shards"][0]["raw_data"]["hashes"]["xxh64"] = "0" * 16  # ... and it does not match
    (out / "index.json").write_text(json.dumps(index))
    ds = StreamingDataset(local=str(out), predownload=0)
    with pytest.raises(HashMismatchError, match="shard.00000.mds"):
        ds[0]  # was: served (the check came after readers started, and only warned)
    assert finish_fills(30) == 0
    assert not (out / "shard.00000.mds").exists()  # no raw file from a shard that failed it
