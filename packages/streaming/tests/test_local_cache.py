"""A compressed local dataset read without writing into it: a read-only folder, or `cache_dir=`.

Tests may run as root, whom permission bits do not stop. Reading never relies on a write failing:
a folder whose permission bits let nobody write counts as read-only for root too, and every test
checks that nothing in the dataset folder changed (names, sizes, mtimes). Only the case where the
bits allow someone to write but not this process needs a process that is not root.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from streaming import MDSWriter, StreamingDataset
from streaming.cache import CACHE_MARKER
from streaming.cli import main
from streaming.errors import HashMismatchError
from streaming.rawfill import finish_fills
from streaming.stream import Stream, is_read_only, raw_cache_dir


def write(out: Path, count=60, compression="zstd", hashes=("xxh64",)) -> Path:
    with MDSWriter(
        out=str(out),
        columns={"id": "int", "v": "ndarray:int32:3"},
        compression=compression,
        hashes=list(hashes),
        size_limit=300,
    ) as writer:
        for i in range(count):
            writer.write({"id": i, "v": np.full(3, i, np.int32)})
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry of `folder` with its size and mtime: what "nothing was written" compares."""
    stats = {name: os.stat(folder / name) for name in sorted(os.listdir(folder))}
    return {name: (st.st_size, st.st_mtime_ns) for name, st in stats.items()}


def verify(folder: Path) -> subprocess.CompletedProcess[str]:
    """`python -m streaming verify folder` (its `main`, in this process, in the environment the
    test set): exit status, stdout, stderr. It reads every file afresh; the command's entry point
    itself runs in test_cli.py."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["verify", str(folder)])
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(["verify"], code or 0, out.getvalue(), err.getvalue())


def read_all(ds: StreamingDataset) -> list[int]:
    got = [int(s["id"]) for s in ds]
    assert finish_fills(30) == 0
    return got


@pytest.fixture
def home_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


@pytest.fixture
def read_only(tmp_path):
    """A compressed dataset whose folder's permission bits let nobody write (restored after)."""
    out = write(tmp_path / "ds")
    os.chmod(out, 0o555)
    yield out
    os.chmod(out, 0o755)


def test_a_read_only_dataset_is_read_through_a_cache_folder(read_only, home_cache):
    before = snapshot(read_only)
    assert is_read_only(str(read_only))  # for root too: no write bit for anyone
    ds = StreamingDataset(local=str(read_only), shuffle=True, batch_size=4)
    assert sorted(read_all(ds)) == list(range(60))
    assert snapshot(read_only) == before  # nothing written, not even an mtime touched
    copies = Path(raw_cache_dir(str(read_only)))
    assert copies.parent.parent == home_cache  # ~/.cache/streaming/<hash of the path>
    zipped = sorted(n for n in before if n.endswith(".zstd"))
    copied = sorted(n for n in os.listdir(copies) if n.startswith("shard."))
    assert copied == [n[: -len(".zstd")] for n in zipped]
    marker = json.loads((copies / CACHE_MARKER).read_text())
    assert marker == {"kind": "raw copies", "source": os.path.realpath(read_only)}
    # A second reader opens the copies (checked) instead of decompressing again.
    again = StreamingDataset(local=str(read_only), predownload=0)
    opened = {os.path.basename(again._cache.get(i).where) for i in range(len(zipped))}
    assert opened == {n[: -len(".zstd")] for n in zipped}


def test_cache_dir_keeps_the_copies_out_of_a_writable_shared_folder(tmp_path):
    out = write(tmp_path / "shared")
    before = snapshot(out)
    copies = tmp_path / "mine"
    ds = StreamingDataset(local=str(out), cache_dir=str(copies), predownload=0)
    assert read_all(ds) == list(range(60))
    assert snapshot(out) == before
    copied = [n for n in os.listdir(copies) if n.startswith("shard.")]
    assert len(copied) == len([n for n in before if n.endswith(".zstd")])
    with pytest.raises(
        ValueError, match="cache_dir='x' is for a local dataset read without writing"
    ):
        Stream(remote=str(out), local=str(tmp_path / "c"), cache_dir="x")
    with pytest.raises(ValueError, match="give each Stream its own"):
        StreamingDataset(streams=[Stream(local=str(out))], cache_dir=str(copies))


def test_two_datasets_never_share_a_cache_dir(tmp_path):
    a, b = write(tmp_path / "a"), write(tmp_path / "b")
    shared = str(tmp_path / "copies")
    streams = [Stream(local=str(a), cache_dir=shared), Stream(local=str(b), cache_dir=shared)]
    with pytest.raises(ValueError, match="would keep their shards in one folder"):
        StreamingDataset(streams=streams)


def test_cache_limit_holds_the_copies_of_a_local_dataset(tmp_path):
    out = write(tmp_path / "ds", count=200)
    before = snapshot(out)
    copies = tmp_path / "copies"
    shards = json.loads((out / "index.json").read_text())["shards"]
    largest = max(s["raw_data"]["bytes"] + s["zip_data"]["bytes"] for s in shards)
    limit = 4 * largest  # mosaicml's least
    ds = StreamingDataset(
        local=str(out), cache_dir=str(copies), cache_limit=limit, max_open_shards=1
    )
    assert read_all(ds) == list(range(200))
    held = sum(os.path.getsize(copies / n) for n in os.listdir(copies) if n.startswith("shard."))
    assert held <= limit
    assert snapshot(out) == before  # the dataset's own files are never evicted


def test_a_folder_this_process_may_not_write(tmp_path, home_cache):
    """Write bits for others but not for us: read-only to this process alone."""
    if os.geteuid() == 0:
        pytest.skip("root may write any folder; the no-write-bits rule is tested for root too")
    out = write(tmp_path / "ds")
    os.chmod(out, 0o575)
    try:
        assert is_read_only(str(out)) and stat.S_IMODE(os.stat(out).st_mode) & 0o002
        before = snapshot(out)
        assert read_all(StreamingDataset(local=str(out))) == list(range(60))
        assert snapshot(out) == before
    finally:
        os.chmod(out, 0o755)


def test_no_writable_cache_folder_at_all_decompresses_in_memory(read_only, tmp_path, caplog):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")  # no folder can be made under it, even by root
    with caplog.at_level("WARNING", logger="streaming.cache"):
        ds = StreamingDataset(local=str(read_only), cache_dir=str(blocked / "c"), predownload=0)
    assert "every process decompresses the shards it reads in memory" in caplog.text
    before = snapshot(read_only)
    assert read_all(ds) == list(range(60))
    assert snapshot(read_only) == before


def test_verify_checks_the_copies_a_reader_of_a_read_only_dataset_made(read_only, home_cache):
    StreamingDataset(local=str(read_only), predownload=0)[0]
    assert finish_fills(30) == 0
    copies = Path(raw_cache_dir(str(read_only)))
    copy = copies / "shard.00000.mds"
    data = bytearray(copy.read_bytes())
    data[-3] ^= 0x40
    copy.write_bytes(bytes(data))
    assert os.environ["XDG_CACHE_HOME"] == str(home_cache)
    result = verify(read_only)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{copy}: xxh64 of the decompressed copy" in result.stdout
    assert "a reader makes it again from shard.00000.mds.zstd" in result.stdout
    result = verify(copies)
    assert result.returncode == 2
    assert f"verify {os.path.realpath(read_only)} --cache {copies}" in result.stderr


def test_a_read_only_folder_holding_only_decompressed_copies(tmp_path, home_cache):
    """As mosaicml-streaming leaves a folder it read with keep_zip=False: the copies are all
    there is, read (checked) where they are; a damaged one is an error, and is left alone."""
    out = write(tmp_path / "ds")
    assert read_all(StreamingDataset(local=str(out), predownload=0)) == list(range(60))
    for zipped in out.glob("*.zstd"):
        zipped.unlink()
    for kept in out.glob(".*.kept"):
        kept.unlink()  # mosaicml-streaming keeps no digest
    copy = out / "shard.00001.mds"
    data = bytearray(copy.read_bytes())
    data[-2] ^= 0x11
    copy.write_bytes(bytes(data))
    os.chmod(out, 0o555)
    try:
        before = snapshot(out)
        ds = StreamingDataset(local=str(out), predownload=0)
        assert ds[0]["id"] == 0
        with pytest.raises(HashMismatchError, match=f"{copy}: xxh64 of the decompressed copy"):
            ds[int(ds._shard_ends[0])]
        assert snapshot(out) == before
    finally:
        os.chmod(out, 0o755)


def test_remote_equal_to_local_is_a_local_dataset_whose_files_stay(tmp_path):
    """mosaicml-streaming's remote == local: no compressed file is deleted (keep_zip=False) or
    evicted (cache_limit), and the folder is not marked as a cache."""
    out = write(tmp_path / "ds")
    zipped = sorted(p.name for p in out.glob("*.zstd"))
    ds = StreamingDataset(remote=str(out), local=str(out) + "/", cache_limit="1gb", predownload=0)
    assert ds.streams[0].source is None and ds.streams[0].remote == str(out)  # kept, as mosaicml
    assert read_all(ds) == list(range(60))
    assert sorted(p.name for p in out.glob("*.zstd")) == zipped
    assert not (out / CACHE_MARKER).exists()
