"""README's table "What happens with damaged input", row by row: each row id names a scenario here.

`test_the_table_and_the_scenarios_agree` keeps the README and this file in step: every row of the
table has a scenario and every scenario a row, so the table states only what a test holds true.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from streaming import MDSWriter, StreamingDataset
from streaming.compression import decompress
from streaming.errors import (
    HashMismatchError,
    IndexFormatError,
    RemoteNotFoundError,
    ShardCorruptError,
    ShardTruncatedError,
    UnsafePathError,
)
from streaming.rawfill import finish_fills

README = Path(__file__).resolve().parent.parent / "README.md"
COLUMNS = {"id": "int", "blob": "bytes"}


def write(out: Path, count=40, compression="zstd", hashes=("xxh64",), offset=0, **columns) -> Path:
    """`count` samples of an id and 24 random-looking bytes (zstd keeps those as raw literals,
    so a changed byte there decodes silently unless something checks it)."""
    cols = columns or COLUMNS

    def sample(i):
        blob = bytes((i * 37 + k * 101 + offset) % 251 for k in range(24))
        return {"id": i + offset, "blob": blob} if cols is COLUMNS else {"j": [i]}

    with MDSWriter(
        out=str(out),
        columns=cols,
        compression=compression,
        hashes=list(hashes),
        size_limit=400,
        exist_ok=True,
    ) as writer:
        for i in range(count):
            writer.write(sample(i))
    return out


def first(out: Path, suffix: str = "") -> Path:
    """The first shard file of `out` whose name ends with `suffix` (".mds", ".zstd", ...)."""
    return (
        out / sorted(n for n in os.listdir(out) if n.startswith("shard.") and n.endswith(suffix))[0]
    )


def flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) - 6 if at is None else at  # default: inside the last sample's id
    data[at] ^= 0x55
    path.write_bytes(bytes(data))


def truncate(path: Path, by: int = 7) -> None:
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size - by)


def edit_index(out: Path, change: Callable[[dict], None]) -> None:
    index = json.loads((out / "index.json").read_text())
    change(index)
    (out / "index.json").write_text(json.dumps(index))


def ids(ds: StreamingDataset) -> list[int]:
    """Every sample's id, in order; then waits for the raw copies being written to land."""
    got = [int(ds[i]["id"]) for i in range(ds.num_samples)]
    assert finish_fills(30) == 0
    return got


def reread(**kwargs) -> StreamingDataset:
    """A new dataset (as a new process would make): nothing checked or open yet."""
    return StreamingDataset(predownload=0, **kwargs)


# -- the stored shard files --------------------------------------------------------------------


def flipped_byte(tmp_path, caplog):
    for compression in (None, "zstd"):
        out = write(tmp_path / str(compression), compression=compression, hashes=("sha1", "xxh64"))
        flip(first(out, ".zstd" if compression else ".mds"))
        ds = StreamingDataset(local=str(out), predownload=0)
        differs = r"sha1 of shard\.00000\.mds\S* is \w+, but index\.json records \w+"
        with pytest.raises(HashMismatchError, match=differs):
            ds[0]
        assert ds[ds.num_samples - 1]["id"] == 39  # the other shards are fine


def zstd_checksum(tmp_path, caplog):
    out = write(tmp_path / "d", hashes=())
    flip(first(out, ".zstd"), at=first(out, ".zstd").stat().st_size // 2)
    ds = StreamingDataset(local=str(out), predownload=0)
    bad_frame = r"shard\.00000\.mds\.zstd: cannot decompress with zstd: .*checksum"
    with pytest.raises(ShardCorruptError, match=bad_frame):
        ds[0]  # no sample of the shard is served: readers wait for the whole, checked shard
    assert finish_fills(30) == 0 and not (out / "shard.00000.mds").exists()


def truncated_local(tmp_path, caplog):
    for compression in (None, "zstd"):
        out = write(tmp_path / str(compression), compression=compression)
        path = first(out, ".zstd" if compression else ".mds")
        size = path.stat().st_size
        truncate(path)
        ds = StreamingDataset(local=str(out), predownload=0)
        with pytest.raises(ShardTruncatedError, match=f"{path}.*{size - 7} bytes.*expects {size}"):
            ds[0]


def longer(tmp_path, caplog):
    out = write(tmp_path / "d", compression=None, hashes=())
    path = first(out, ".mds")
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ShardCorruptError, match=f"{path}: shard is .* bytes, index.json expects"):
        StreamingDataset(local=str(out), predownload=0)[0]


def layout(tmp_path, caplog):
    out = write(tmp_path / "d", compression=None, hashes=())
    path = first(out, ".mds")
    data = bytearray(path.read_bytes())
    data[0] += 1  # the sample count
    path.write_bytes(bytes(data))
    with pytest.raises(ShardCorruptError, match=f"{path}: holds .* samples, but index.json says"):
        StreamingDataset(local=str(out), predownload=0)[0]


def embedded_config(tmp_path, caplog):
    out = write(tmp_path / "d", compression=None, hashes=())
    path = first(out, ".mds")
    path.write_bytes(path.read_bytes().replace(b'"blob"', b'"blab"', 1))
    with pytest.raises(ShardCorruptError, match=f"{path}: embedded column_names"):
        StreamingDataset(local=str(out), predownload=0)[0]


def sample_bytes(tmp_path, caplog):
    out = write(tmp_path / "d", compression=None, hashes=(), j="json")
    path = first(out, ".mds")
    data = bytearray(path.read_bytes())
    data[-2] = ord("}")  # the last sample's "[n]" no longer parses
    path.write_bytes(bytes(data))
    ds = StreamingDataset(local=str(out), predownload=0)
    assert ds[0]["j"] == [0]  # the shard opens; only the bad sample fails, when it is read
    last = int(ds._shard_ends[0]) - 1
    undecodable = f"sample {last} column 'j' \\(json\\) does not decode"
    with pytest.raises(ShardCorruptError, match=undecodable):
        ds[last]


def undetected(tmp_path, caplog):
    out = write(tmp_path / "d", compression=None, hashes=())
    flip(first(out, ".mds"))  # a byte of the last sample's id: any 8 bytes are a valid int
    ds = StreamingDataset(local=str(out), predownload=0)
    last = int(ds._shard_ends[0]) - 1
    assert ds[last]["id"] != last  # served, and wrong


# -- a remote stream's cache ---------------------------------------------------------------------


def truncated_cache(tmp_path, caplog):
    for compression in (None, "zstd"):
        src = write(tmp_path / f"src-{compression}", compression=compression)
        cache = tmp_path / f"cache-{compression}"
        cache.mkdir()
        name = first(src, ".zstd" if compression else ".mds").name
        (cache / name).write_bytes((src / name).read_bytes()[:-7])  # a cached copy cut short
        with caplog.at_level(logging.WARNING, logger="streaming.shardcache"):
            ds = StreamingDataset(remote=str(src), local=str(cache), predownload=0)
            assert ids(ds) == list(range(40))  # was: ShardTruncatedError, the run failed
        assert f"shard {name} in the cache {cache} is damaged" in caplog.text
        assert "fetching it again" in caplog.text


def damaged_cache(tmp_path, caplog):
    src = write(tmp_path / "src", compression=None)
    name = first(src, ".mds").name
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(src / name, cache / name)
    flip(cache / name)
    with caplog.at_level(logging.WARNING, logger="streaming.shardcache"):
        ds = StreamingDataset(remote=str(src), local=str(cache), predownload=0)
        assert ids(ds) == list(range(40))
    assert "fetching it again" in caplog.text
    flip(src / name)  # the remote's own copy is bad too: an error, after one more fetch
    other = tmp_path / "cache2"
    other.mkdir()
    shutil.copy(src / name, other / name)
    ds = StreamingDataset(remote=str(src), local=str(other), predownload=0)
    with pytest.raises(HashMismatchError, match=f"{name}.*also after fetching it again from {src}"):
        ds[0]


# -- the decompressed (raw) copies the cache keeps ------------------------------------------------


def raw_copy_damaged(tmp_path, caplog):
    out = write(tmp_path / "d")  # raw hashes recorded
    assert ids(StreamingDataset(local=str(out), predownload=0)) == list(range(40))
    raw = first(out, ".mds")
    flip(raw)
    with caplog.at_level(logging.WARNING, logger="streaming.shardcache"):
        assert ids(reread(local=str(out))) == list(range(40))  # was: the damaged copy served
    assert (
        f"{raw}: xxh64 of the decompressed copy" in caplog.text and "making it again" in caplog.text
    )
    assert raw.read_bytes() == decompress("zstd", first(out, ".zstd").read_bytes())


def raw_copy_damaged_kept(tmp_path, caplog):
    out = write(tmp_path / "d", hashes=())  # no hash in index.json: the digest kept of the copy
    assert ids(StreamingDataset(local=str(out), predownload=0)) == list(range(40))
    raw = first(out, ".mds")
    assert (out / f".{raw.name}.kept").exists()
    flip(raw)
    with caplog.at_level(logging.WARNING, logger="streaming.shardcache"):
        assert ids(reread(local=str(out))) == list(range(40))
    assert "differs from what was decompressed into it" in caplog.text


def raw_copy_damaged_no_zip(tmp_path, caplog):
    src = write(tmp_path / "src")
    cache = tmp_path / "cache"
    ds = StreamingDataset(remote=str(src), local=str(cache), predownload=0)
    assert ids(ds) == list(range(40))
    assert not list(cache.glob("*.zstd"))  # keep_zip=False: only the raw copies are cached
    raw = first(cache, ".mds")
    flip(raw)
    with caplog.at_level(logging.WARNING, logger="streaming.shardcache"):
        assert ids(reread(remote=str(src), local=str(cache))) == list(range(40))
    assert "making it again" in caplog.text  # fetched again and decompressed


def raw_copy_truncated(tmp_path, caplog):
    out = write(tmp_path / "d")
    assert ids(StreamingDataset(local=str(out), predownload=0)) == list(range(40))
    truncate(first(out, ".mds"))
    with caplog.at_level(logging.WARNING, logger="streaming.shardcache"):
        assert ids(reread(local=str(out))) == list(range(40))
    assert "shard is truncated" in caplog.text and "making it again" in caplog.text


def raw_copy_stale(tmp_path, caplog):
    out, cache = write(tmp_path / "d", hashes=()), tmp_path / "copies"
    ds = StreamingDataset(local=str(out), cache_dir=str(cache), predownload=0)
    assert ids(ds) == list(range(40))
    write(out, hashes=(), offset=1000)  # the dataset is rewritten; the copies are of the old one
    with caplog.at_level(logging.WARNING, logger="streaming.shardcache"):
        assert ids(reread(local=str(out), cache_dir=str(cache))) == list(range(1000, 1040))
    assert "was made from another shard.00000.mds.zstd" in caplog.text


def raw_copy_only(tmp_path, caplog):
    out = write(tmp_path / "d")
    assert ids(StreamingDataset(local=str(out), predownload=0)) == list(range(40))
    for zipped in out.glob("*.zstd"):
        zipped.unlink()  # the decompressed copies are all that is left of the dataset
    raw = first(out, ".mds")
    flip(raw)
    ds = reread(local=str(out))
    no_source = f"{raw}: .*no compressed file to make it again from"
    with pytest.raises(HashMismatchError, match=no_source):
        ds[0]
    assert raw.exists()  # the only copy is not deleted
    assert ds[ds.num_samples - 1]["id"] == 39


def raw_hash_only(tmp_path, caplog):
    out = write(tmp_path / "d")

    def only_raw_hashes(index):
        for shard in index["shards"]:
            shard["zip_data"]["hashes"] = {}
        index["shards"][0]["raw_data"]["hashes"]["xxh64"] = "0" * 16

    edit_index(out, only_raw_hashes)
    ds = StreamingDataset(local=str(out), predownload=0)
    with pytest.raises(HashMismatchError, match="xxh64 of shard.00000.mds is"):
        ds[0]  # before any sample of the shard is served
    assert finish_fills(30) == 0 and not (out / "shard.00000.mds").exists()


# -- index.json and missing files ---------------------------------------------------------------


def index_json(tmp_path, caplog):
    out = write(tmp_path / "d")
    (out / "index.json").write_text('{"shards": [')
    with pytest.raises(IndexFormatError, match=f"{out / 'index.json'}: not valid JSON"):
        StreamingDataset(local=str(out))


def index_version(tmp_path, caplog):
    out = write(tmp_path / "d")
    edit_index(out, lambda index: index.update(version=3))
    with pytest.raises(
        IndexFormatError, match="index format version 3 is not supported; expected 2"
    ):
        StreamingDataset(local=str(out))


def unsafe_path(tmp_path, caplog):
    out = write(tmp_path / "d", compression=None)
    edit_index(out, lambda index: index["shards"][0]["raw_data"].update(basename="../x.mds"))
    with pytest.raises(UnsafePathError, match="'../x.mds' must be a relative path inside"):
        StreamingDataset(local=str(out))


def missing_local(tmp_path, caplog):
    out = write(tmp_path / "d")
    first(out, ".zstd").unlink()
    with pytest.raises(FileNotFoundError, match=f"shard shard.00000.mds.zstd of {out} is missing"):
        StreamingDataset(local=str(out), predownload=0)[0]


def missing_remote(tmp_path, caplog):
    src = write(tmp_path / "src")
    first(src, ".zstd").unlink()
    ds = StreamingDataset(remote=str(src), local=str(tmp_path / "cache"), predownload=0)
    with pytest.raises(RemoteNotFoundError, match=f"{src}/shard.00000.mds.zstd"):
        ds[0]


def missing_index_remote(tmp_path, caplog):
    no_index = f"no index.json at {tmp_path / 'nothing'}/index.json"
    with pytest.raises(RemoteNotFoundError, match=no_index):
        StreamingDataset(remote=str(tmp_path / "nothing"), local=str(tmp_path / "cache"))


SCENARIOS = {
    name.replace("_", "-"): scenario
    for name, scenario in list(globals().items())
    if callable(scenario)
    and getattr(scenario, "__module__", None) == __name__
    and name not in {"write", "first", "flip", "truncate", "edit_index", "ids", "reread"}
}


def readme_rows() -> list[str]:
    """The row ids (`` `id` `` in the last column) of the README's damaged-input table."""
    text = README.read_text()
    section = text.split("## What happens with damaged input", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\|.*\| `([a-z0-9-]+)` \|$", section, re.M)


def test_the_table_and_the_scenarios_agree():
    rows = readme_rows()
    assert len(rows) == len(set(rows)), "a row id appears twice"
    assert sorted(rows) == sorted(SCENARIOS)


@pytest.mark.parametrize("row", sorted(SCENARIOS))
def test_damaged_input(row, tmp_path, caplog):
    SCENARIOS[row](tmp_path, caplog)
