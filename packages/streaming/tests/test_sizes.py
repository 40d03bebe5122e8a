"""One byte-size parser (`streaming.sizes`) for every setting, reading sizes as mosaicml-streaming
does: `size_limit` and `cache_limit` agree on every string, and both match mosaicml-streaming's
`bytes_to_int` (from a table here, and live in the isolated mosaicml-streaming)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streaming import MDSWriter, StreamingDataset
from streaming.format import parse_size
from streaming.sizes import parse_bytes

# (value, bytes as mosaicml-streaming 0.13's bytes_to_int reads it): units are powers of 1024
MOSAIC_VALUES = [
    ("1000", 1000),
    ("1000b", 1000),
    ("1000B", 1000),
    ("64kb", 65_536),
    ("64KB", 65_536),
    ("64Kb", 65_536),
    (" 64 kb ", 65_536),
    ("64mb", 67_108_864),
    ("64 MB", 67_108_864),
    ("1.5kb", 1536),
    (".5kb", 512),
    ("1.5gb", 1_610_612_736),
    ("3gb", 3 << 30),
    ("2tb", 2 << 40),
    ("1pb", 1 << 50),
    ("1eb", 1 << 60),
    ("1zb", 1 << 70),
    ("1yb", 1 << 80),
    ("0", 0),
    ("0kb", 0),
    (1000, 1000),
    (1000.7, 1000),
]
# strings mosaicml-streaming refuses (ValueError), and so do we
MOSAIC_REFUSES = ["mb", "b", "k", "64k", "64m", "64mib", "2GiB", "1,000", "-1", "1e3", "ten", ""]


@pytest.mark.parametrize(("value", "expected"), MOSAIC_VALUES)
def test_parse_bytes_reads_what_mosaicml_reads(value, expected):
    assert parse_bytes(value) == expected


@pytest.mark.parametrize("value", MOSAIC_REFUSES)
def test_parse_bytes_refuses_what_mosaicml_refuses(value):
    with pytest.raises(ValueError, match="is not a size; expected a number of bytes"):
        parse_bytes(value, setting="cache_limit")


def test_an_iec_unit_is_refused_with_the_unit_to_write():
    with pytest.raises(ValueError, match="'64mib'.*write 'mb' for 'mib'"):
        parse_bytes("64mib", setting="size_limit")


@pytest.mark.parametrize("value", [True, False, None, [1], b"64mb"])
def test_parse_bytes_refuses_what_is_not_a_size(value):
    with pytest.raises(TypeError, match="must be a number of bytes or a string like '64mb'"):
        parse_bytes(value)


@pytest.mark.parametrize("value", [-1, -0.5, float("nan"), float("inf")])
def test_parse_bytes_refuses_negative_and_non_finite_numbers(value):
    with pytest.raises(ValueError, match="must be a number of bytes >= 0"):
        parse_bytes(value)


def test_forms_mosaicml_refuses_that_have_an_obvious_meaning():
    assert parse_bytes("1.5") == 1  # a fraction of a byte is cut off
    assert parse_bytes("1.5b") == 1
    assert parse_bytes("64 b") == 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sizes") / "ds"
    with MDSWriter(out=str(out), columns={"id": "int"}) as writer:
        for i in range(4):
            writer.write({"id": i})
    return out


AGREEING = ["64mb", "64MB", " 64 kb ", "1.5kb", "2gb", "4000", "4000b", "3.75gb", 65_536, 1e6]


@pytest.mark.parametrize("value", AGREEING, ids=repr)
def test_size_limit_and_cache_limit_read_a_size_alike(dataset, tmp_path, value):
    writer = MDSWriter(out=str(tmp_path / "out"), columns={"id": "int"}, size_limit=value)
    writer.abort()
    reader = StreamingDataset(local=str(dataset), cache_limit=value, predownload=0)
    assert writer.size_limit == reader.cache_limit == parse_bytes(value)


@pytest.mark.parametrize("value", ["64mib", "mb", "-1", "1e3"])
def test_size_limit_and_cache_limit_refuse_a_size_alike(dataset, tmp_path, value):
    with pytest.raises(ValueError, match="size_limit .* is not a size"):
        MDSWriter(out=str(tmp_path / "out"), columns={"id": "int"}, size_limit=value)
    with pytest.raises(ValueError, match="cache_limit .* is not a size"):
        StreamingDataset(local=str(dataset), cache_limit=value)


def test_cache_limit_64mb_is_64_mib(dataset):
    reader = StreamingDataset(local=str(dataset), cache_limit="64mb", predownload=0)
    assert reader.cache_limit == 67_108_864  # 64,000,000 before 0.1.3


def test_size_limit_keeps_its_own_range():
    assert parse_size("0kb") is None and parse_size("") is None  # falsy: one shard
    with pytest.raises(ValueError, match=r"size_limit must be in \[0, 2\*\*32\)"):
        parse_size("4gb")


_MOSAIC_BYTES_TO_INT = """
from streaming.base.util import bytes_to_int
result = []
for value in args["values"]:
    try:
        result.append(bytes_to_int(value))
    except ValueError:
        result.append("ValueError")
"""


def test_mosaicml_streaming_reads_sizes_as_we_do(mosaic):
    values = [value for value, _ in MOSAIC_VALUES] + MOSAIC_REFUSES
    theirs = mosaic.run(_MOSAIC_BYTES_TO_INT, values=values)
    ours = []
    for value in values:
        try:
            ours.append(parse_bytes(value))
        except ValueError:
            ours.append("ValueError")
    assert dict(zip(map(repr, values), ours, strict=True)) == dict(
        zip(map(repr, values), theirs, strict=True)
    )
