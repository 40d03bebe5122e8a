"""A remote stream's cache folder (`streaming.cacheuse`): claimed while a dataset reads it,
taken over from a remote nobody reads any more, and a shard deleted from it mid-epoch is
fetched again from the remote."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

from streaming import MDSWriter, StreamingDataset
from streaming.errors import CacheConflictError


def _write(out: Path, ids) -> Path:
    with MDSWriter(out=str(out), columns={"id": "int"}, size_limit=100) as writer:
        for i in ids:
            writer.write({"id": i})
    return out


def _ids(dataset) -> list[int]:
    return [int(sample["id"]) for sample in dataset]


def test_a_folder_another_remote_left_is_taken_over_not_served(tmp_path):
    """Two remotes whose shards have the same names and sizes (no hashes): the second reads its
    own samples, not the first's files (was: served them)."""
    first = _write(tmp_path / "first", range(40))
    second = _write(tmp_path / "second", range(1000, 1040))
    cache = tmp_path / "cache"
    reader = StreamingDataset(remote=str(first), local=str(cache), batch_size=1, predownload=1)
    assert _ids(reader) == list(range(40))
    with pytest.raises(CacheConflictError, match=f"{cache} is the cache of {first}"):
        StreamingDataset(remote=str(second), local=str(cache), batch_size=1)
    del reader
    gc.collect()
    reader = StreamingDataset(remote=str(second), local=str(cache), batch_size=1, predownload=1)
    assert _ids(reader) == list(range(1000, 1040))


def test_two_datasets_of_one_remote_share_its_folder(tmp_path):
    src = _write(tmp_path / "src", range(30))
    one = StreamingDataset(remote=str(src), local=str(tmp_path / "c"), batch_size=1)
    two = StreamingDataset(remote=str(src) + "/", local=str(tmp_path / "c"), batch_size=1)
    assert _ids(one) == _ids(two) == list(range(30))


def test_a_shard_deleted_mid_epoch_is_fetched_again(tmp_path):
    src = _write(tmp_path / "src", range(60))
    cache = tmp_path / "cache"
    ds = StreamingDataset(
        remote=str(src), local=str(cache), batch_size=1, predownload=1, max_open_shards=1
    )
    samples = iter(ds)
    got = [int(next(samples)["id"]) for _ in range(10)]
    shards = [n for n in os.listdir(cache) if n.startswith("shard.") and n.endswith(".mds")]
    assert len(shards) >= 2
    for name in shards:
        os.remove(cache / name)
    got += [int(s["id"]) for s in samples]
    assert got == list(range(60))
    assert int(ds[0]["id"]) == 0  # shard 0, closed and deleted, is fetched again as well
