"""Reading one shard: access, zero-copy decoding, and every way a shard can be bad."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import numpy as np
import pytest

from streaming.compression import decompress
from streaming.errors import (
    HashMismatchError,
    ShardCorruptError,
    ShardTruncatedError,
    UnsafeEncodingError,
)
from streaming.format import INDEX_NAME, ShardInfo, parse_index
from streaming.shard import Shard
from streaming.writer import MDSWriter

COLUMNS = {"tokens": "ndarray:int32", "text": "str", "id": "int", "w": "float32"}


def sample(i: int) -> dict:
    return {"tokens": np.arange(i, i + 8, dtype=np.int32), "text": f"s{i}", "id": i, "w": i / 2}


def write(out, count=20, compression=None, hashes=("sha256", "xxh64"), columns=COLUMNS, make=None):
    make = make or sample
    with MDSWriter(
        out=str(out),
        columns=columns,
        compression=compression,
        hashes=list(hashes),
        size_limit=1 << 20,
    ) as writer:
        for i in range(count):
            writer.write(make(i))
    return parse_index((out / INDEX_NAME).read_bytes(), str(out))


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_read_samples(tmp_path, compression):
    (info,) = write(tmp_path / "ds", compression=compression)
    with Shard.open(str(tmp_path / "ds" / info.basename), info) as shard:
        assert len(shard) == 20 and shard.nbytes == info.raw_data.bytes
        sample = shard[3]
        assert sample["text"] == "s3" and sample["id"] == 3 and sample["w"] == np.float32(1.5)
        assert (
            sample["tokens"].tolist() == list(range(3, 11)) and sample["tokens"].dtype == np.int32
        )
        assert shard[-1]["id"] == 19
        assert bytes(shard.get_raw(3)).endswith(np.float32(1.5).tobytes())
        with pytest.raises(IndexError, match="sample 20 out of range"):
            shard[20]
        with pytest.raises(IndexError):
            shard[-21]


def test_arrays_are_writable_copies_that_survive_close(tmp_path):
    for compression in (None, "zstd"):
        (info,) = write(tmp_path / str(compression), compression=compression)
        shard = Shard.open(str(tmp_path / str(compression) / info.basename), info)
        tokens = shard[5]["tokens"]
        assert tokens.flags.writeable and tokens.flags.owndata  # not a view that pins the shard
        shard.close()
        shard.close()  # twice is fine
        assert tokens.tolist() == list(range(5, 13))
        with pytest.raises(ValueError, match="closed"):
            shard[0]


def test_open_a_decompressed_copy_and_from_bytes(tmp_path):
    (info,) = write(tmp_path / "ds", compression="br")
    stored = (tmp_path / "ds" / info.basename).read_bytes()
    raw_path = tmp_path / info.raw_data.basename  # as mosaicml-streaming leaves it in a cache
    raw_path.write_bytes(decompress("br", stored))
    with Shard.open(str(raw_path), info) as shard:
        assert shard[7]["id"] == 7
    with Shard.from_bytes(stored, info, where="memory") as shard:
        assert shard[8]["text"] == "s8"
        assert shard.get_raw_shard() == raw_path.read_bytes()


def test_missing_file(tmp_path):
    (info,) = write(tmp_path / "ds")
    with pytest.raises(FileNotFoundError):
        Shard.open(str(tmp_path / "nope.mds"), info)


@pytest.mark.parametrize("compression", [None, "zstd", "gz"])
def test_flipped_byte_fails_the_hash_naming_the_shard(tmp_path, compression):
    (info,) = write(tmp_path / "ds", compression=compression)
    path = tmp_path / "ds" / info.basename
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(HashMismatchError) as err:
        Shard.open(str(path), info)
    message = str(err.value)
    assert info.basename in message and "sha256" in message and "index.json records" in message


def test_raw_hashes_are_checked_after_decompressing_when_no_compressed_hash(tmp_path):
    """The compressed bytes' hashes vouch for the raw bytes (decompression is deterministic);
    without them, the raw hashes are checked after decompressing."""
    (info,) = write(tmp_path / "ds", compression="zstd")
    raw = replace(info.raw_data, hashes={"xxh64": "0" * 16})
    zip_no_hash = replace(info.zip_data, hashes={})
    bad = replace(info, raw_data=raw, zip_data=zip_no_hash)
    with pytest.raises(HashMismatchError, match=f"xxh64 of {info.raw_data.basename}"):
        Shard.open(str(tmp_path / "ds" / info.basename), bad)
    vouched = ShardInfo(**{**info.__dict__, "raw_data": raw})
    assert len(Shard.open(str(tmp_path / "ds" / info.basename), vouched)) == info.samples


def test_verify_false_skips_hashes(tmp_path):
    (info,) = write(tmp_path / "ds", hashes=("sha1",))
    path = tmp_path / "ds" / info.basename
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the last sample's float
    path.write_bytes(bytes(data))
    with Shard.open(str(path), info, verify=False) as shard:
        assert shard[0]["id"] == 0


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_truncated_shard(tmp_path, compression):
    (info,) = write(tmp_path / "ds", compression=compression)
    path = tmp_path / "ds" / info.basename
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.truncate(size - 10)
    with pytest.raises(ShardTruncatedError) as err:
        Shard.open(str(path), info)
    assert str(path) in str(err.value) and f"{size - 10} bytes" in str(err.value)
    assert f"expects {size}" in str(err.value)
    with pytest.raises(ShardTruncatedError):
        Shard.from_bytes(path.read_bytes(), info)


def test_longer_shard(tmp_path):
    (info,) = write(tmp_path / "ds")
    path = tmp_path / "ds" / info.basename
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(ShardCorruptError, match="expects"):
        Shard.open(str(path), info)


def test_bad_layout_without_hashes(tmp_path):
    (info,) = write(tmp_path / "ds", hashes=())
    path = tmp_path / "ds" / info.basename
    data = bytearray(path.read_bytes())
    data[0] = 21  # sample count
    path.write_bytes(bytes(data))
    with pytest.raises(ShardCorruptError, match="holds 21 samples, but index.json says 20"):
        Shard.open(str(path), info)
    data[0] = 20
    data[8:12] = (10**6).to_bytes(4, "little")  # offset of sample 1 past the end
    path.write_bytes(bytes(data))
    with pytest.raises(ShardCorruptError, match="not in increasing order"):
        Shard.open(str(path), info)


def test_sample_that_does_not_decode(tmp_path):
    columns = {"j": "json"}
    (info,) = write(tmp_path / "ds", columns=columns, hashes=(), make=lambda i: {"j": [i]})
    path = tmp_path / "ds" / info.basename
    data = bytearray(path.read_bytes())
    data[-2] = ord("}")  # "[19]" -> "[1}]"
    path.write_bytes(bytes(data))
    with Shard.open(str(path), info) as shard:
        assert shard[0]["j"] == [0]
        with pytest.raises(
            ShardCorruptError, match="sample 19 column 'j' \\(json\\) does not decode"
        ):
            shard[19]


def test_pickle_needs_opt_in(tmp_path):
    columns = {"p": "pkl", "x": "int"}
    (info,) = write(tmp_path / "ds", columns=columns, make=lambda i: {"p": {"i": i}, "x": i})
    path = str(tmp_path / "ds" / info.basename)
    with Shard.open(path, info) as shard:  # opening and checking hashes is safe
        assert len(shard.get_raw(0)) > 8
        unsafe = "column 'p' is encoded as 'pkl'.*allow_pickle=True"
        with pytest.raises(UnsafeEncodingError, match=unsafe):
            shard[0]
    with Shard.open(path, info, allow_pickle=True) as shard:
        assert shard[4] == {"p": {"i": 4}, "x": 4}


def test_many_open_shards_are_cheap(tmp_path):
    infos = write(tmp_path / "ds", count=3)
    copies = []
    for i in range(50):
        dst = tmp_path / f"copy{i}"
        shutil.copy(tmp_path / "ds" / infos[0].basename, dst)
        copies.append(Shard.open(str(dst), infos[0]))
    assert sum(s[2]["id"] for s in copies) == 100
    for shard in copies:
        shard.close()
    assert len(os.listdir(tmp_path)) == 51


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_pickled_shards_reopen(tmp_path, compression):
    import pickle

    (info,) = write(tmp_path / "ds", compression=compression)
    with Shard.open(str(tmp_path / "ds" / info.basename), info) as shard:
        copy = pickle.loads(pickle.dumps(shard))
    assert copy[9]["text"] == "s9" and len(copy) == 20
    copy.close()
    with pytest.raises(ValueError, match="closed"):
        pickle.dumps(copy)
