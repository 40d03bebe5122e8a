"""The MDS format module: index.json parsing and dumping, names, sizes and the shard layout."""

from __future__ import annotations

import copy
import json
import struct

import pytest

from streaming.errors import IndexFormatError, ShardCorruptError, UnsafePathError
from streaming.format import (
    FORMAT_VERSION,
    INDEX_NAME,
    FileInfo,
    ShardInfo,
    check_basename,
    dump_index,
    encode_sample,
    encode_shard,
    encode_shard_config,
    parse_index,
    parse_size,
    read_shard_table,
    shard_basenames,
)

SHARD = {
    "column_encodings": ["ndarray:int32", "str", "int"],
    "column_names": ["a", "b", "c"],
    "column_sizes": [None, None, 8],
    "compression": "zstd",
    "format": "mds",
    "hashes": ["sha1", "xxh64"],
    "raw_data": {
        "basename": "shard.00000.mds",
        "bytes": 958,
        "hashes": {"sha1": "1d", "xxh64": "88"},
    },
    "samples": 13,
    "size_limit": 1000,
    "version": 2,
    "zip_data": {
        "basename": "shard.00000.mds.zstd",
        "bytes": 413,
        "hashes": {"sha1": "1c", "xxh64": "72"},
    },
}
# What mosaicml-streaming 0.13 writes for that shard (json.dump, sort_keys=True, no newline).
INDEX_TEXT = (
    '{"shards": [{"column_encodings": ["ndarray:int32", "str", "int"], "column_names": ["a", "b", '
    '"c"], "column_sizes": [null, null, 8], "compression": "zstd", "format": "mds", "hashes": '
    '["sha1", "xxh64"], "raw_data": {"basename": "shard.00000.mds", "bytes": 958, "hashes": '
    '{"sha1": "1d", "xxh64": "88"}}, "samples": 13, "size_limit": 1000, "version": 2, "zip_data": '
    '{"basename": "shard.00000.mds.zstd", "bytes": 413, "hashes": {"sha1": "1c", "xxh64": "72"}}}],'
    ' "version": 2}'
)


def index_with(**changes):
    shard = copy.deepcopy(SHARD)
    for key, value in changes.items():
        if value is KeyError:
            del shard[key]
        else:
            shard[key] = value
    return json.dumps({"shards": [shard], "version": 2})


def test_constants_and_names():
    assert FORMAT_VERSION == 2 and INDEX_NAME == "index.json"
    assert shard_basenames(0, None) == ("shard.00000.mds", None)
    assert shard_basenames(7, "zstd:7") == ("shard.00007.mds", "shard.00007.mds.zstd")
    assert shard_basenames(123456, "gz") == ("shard.123456.mds", "shard.123456.mds.gz")


def test_parse_and_dump_are_byte_exact():
    shards = parse_index(INDEX_TEXT.encode(), "ds/index.json")
    assert len(shards) == 1
    info = shards[0]
    assert info.basename == "shard.00000.mds.zstd" and info.stored is info.zip_data
    assert info.column_sizes == (None, None, 8) and info.size_limit == 1000
    assert dump_index(shards) == INDEX_TEXT.encode()
    assert parse_index(INDEX_TEXT, "str input") == shards
    assert ShardInfo.from_json(info.to_json(), where="x") == info


def test_uncompressed_basename_is_raw():
    info = parse_index(index_with(compression=None, zip_data=None), "x")[0]
    assert info.basename == "shard.00000.mds" and info.stored is info.raw_data


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"shards": [], "version": 3}', "version 3"),
        ('{"shards": []}', "version None"),
        ('{"shards": [], "version": "2"}', "version '2'"),
        (index_with(version=1), "version 1"),
        (index_with(format="json"), "'json'"),
        ("[1, 2]", "expected a JSON object"),
        ("{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ('{"version": 2}', "'shards'"),
        (index_with(samples=KeyError), "missing keys ['samples']"),
        (index_with(extra=1), "unknown keys ['extra']"),
        (index_with(compression=None), "zip_data must be present exactly when compression"),
        (index_with(zip_data=None), "zip_data must be present exactly when compression"),
        (index_with(compression="lz4"), "unknown compression 'lz4'"),
        (index_with(column_sizes=[None, None, None]), "column 'c' (int) has size None, expected 8"),
        (index_with(column_encodings=["ndarray:int32", "str", "nope"]), "unknown MDS encoding"),
        (index_with(column_names=["a", "a", "c"]), "unique column names"),
        (index_with(samples=-1), "samples must be an integer"),
        (index_with(samples=True), "samples must be an integer"),
        (index_with(raw_data={"basename": "x", "bytes": 1}), "keys basename, bytes, hashes"),
        (
            index_with(raw_data={"basename": "x", "bytes": 1, "hashes": {"crc": "0"}}),
            "unknown hash",
        ),
    ],
)
def test_bad_index_is_rejected_naming_where(text, needle):
    with pytest.raises(IndexFormatError) as err:
        parse_index(text, "s3://bucket/ds/index.json")
    assert "s3://bucket/ds/index.json" in str(err.value)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    "basename",
    [
        "../shard.00000.mds",
        "a/../../etc/passwd",
        "/etc/passwd",
        "\\\\server\\x",
        "C:\\x.mds",
        "a\\..\\b",
    ],
)
def test_unsafe_basenames_are_rejected(basename):
    for key in ("raw_data", "zip_data"):
        file = dict(SHARD[key], basename=basename)
        with pytest.raises(UnsafePathError, match="relative path inside") as err:
            parse_index(index_with(**{key: file}), "ds/index.json")
        assert "ds/index.json" in str(err.value) and isinstance(err.value, IndexFormatError)


def test_safe_basenames():
    for name in ("shard.00000.mds", "train/shard.00000.mds", "a..b.mds"):
        assert check_basename(name, "x") == name
    with pytest.raises(IndexFormatError):
        check_basename("", "x")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (1 << 26, 1 << 26),
        (None, None),
        (0, None),
        ("", None),
        ("64mb", 64 << 20),
        ("64MB", 64 << 20),
        (" 100kb ", 100 << 10),
        ("1.5kb", 1536),
        ("10b", 10),
        ("123", 123),
        ("2 gb", 2 << 30),
        (1000.7, 1000),
    ],
)
def test_parse_size(given, expected):
    assert parse_size(given) == expected


@pytest.mark.parametrize("given", ["64 mib", "mb", "-1", "1e3", "4gb", 1 << 32, -5, True, [1]])
def test_parse_size_rejects(given):
    with pytest.raises((ValueError, TypeError)):
        parse_size(given)


def test_shard_layout_round_trip():
    config = encode_shard_config(
        column_encodings=["str", "int"],
        column_names=["s", "x"],
        column_sizes=[None, 8],
        compression=None,
        hashes=[],
        size_limit=None,
    )
    samples = [
        encode_sample([b"ab", struct.pack("<q", 5)], [None, 8]),
        encode_sample([b"", struct.pack("<q", -1)], [None, 8]),
    ]
    assert samples[0] == struct.pack("<I", 2) + b"ab" + struct.pack("<q", 5)
    data = encode_shard(samples, config)
    head = 4 + 4 * 3 + len(config)
    assert data[:4] == struct.pack("<I", 2)
    offsets = struct.unpack_from("<3I", data, 4)
    assert offsets == (head, head + 14, head + 26) and len(data) == head + 26
    assert data[16:head] == config
    info = ShardInfo(
        column_encodings=("str", "int"),
        column_names=("s", "x"),
        column_sizes=(None, 8),
        compression=None,
        hashes=(),
        raw_data=FileInfo(basename="s", bytes=len(data), hashes={}),
        zip_data=None,
        samples=2,
        size_limit=None,
    )
    assert info.config_bytes() == config
    assert read_shard_table(data, info=info, where="w").tolist() == list(offsets)


def test_shard_table_rejects_bad_layouts():
    config = encode_shard_config(
        column_encodings=["bytes"],
        column_names=["b"],
        column_sizes=[None],
        compression=None,
        hashes=[],
        size_limit=None,
    )
    data = encode_shard([b"\x01\x00\x00\x00x", b"\x00\x00\x00\x00"], config)
    info = ShardInfo(
        column_encodings=("bytes",),
        column_names=("b",),
        column_sizes=(None,),
        compression=None,
        hashes=(),
        raw_data=FileInfo(basename="s", bytes=len(data), hashes={}),
        zip_data=None,
        samples=2,
        size_limit=None,
    )
    read_shard_table(data, info=info, where="w")
    bad_count = struct.pack("<I", 3) + data[4:]
    swapped = bytearray(data)
    swapped[4:8], swapped[8:12] = data[8:12], data[4:8]
    other = info.__class__(**{**info.__dict__, "column_names": ("c",)})
    for blob, inf, needle in [
        (bad_count, info, "holds 3 samples"),
        (data[:-1], info, "offset table is inconsistent"),
        (data + b"\x00", info, "offset table is inconsistent"),
        (bytes(swapped), info, "not in increasing order"),
        (data, other, "embedded column_names"),
        (b"\x00" * 4, info, "too short"),
    ]:
        with pytest.raises(ShardCorruptError, match="where") as err:
            read_shard_table(blob, info=inf, where="where")
        assert needle in str(err.value)
