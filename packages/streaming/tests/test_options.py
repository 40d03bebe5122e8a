"""mosaicml-streaming's arguments: validate_hash as an algorithm name, and the options streaming
does not implement, each answered at construction with what streaming does instead."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from streaming import MDSWriter, Stream, StreamingDataset
from streaming.errors import HashMismatchError
from streaming.options import MOSAIC_OPTIONS, parse_epoch_size


def write(out: Path, hashes=("sha1", "xxh64"), compression=None, count=30) -> Path:
    with MDSWriter(
        out=str(out),
        columns={"id": "int", "x": "ndarray:int32:2"},
        hashes=list(hashes),
        compression=compression,
        size_limit=200,
    ) as writer:
        for i in range(count):
            writer.write({"id": i, "x": np.array([i, -i], np.int32)})
    return out


def spoil_digest(out: Path, algo: str) -> None:
    """index.json records a wrong `algo` digest for shard 0 (its stored and raw file)."""
    index = json.loads((out / "index.json").read_text())
    for key in ("raw_data", "zip_data"):
        if index["shards"][0][key]:
            index["shards"][0][key]["hashes"][algo] = "0" * 16
    (out / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_validate_hash_names_the_one_algorithm_to_check(tmp_path, compression):
    out = write(tmp_path / "d", compression=compression)
    spoil_digest(out, "xxh64")
    ds = StreamingDataset(local=str(out), validate_hash="sha1", predownload=0)
    assert [ds[i]["id"] for i in range(30)] == list(range(30))  # sha1 only: the xxh64 is not read
    for checks_xxh64 in ("xxh64", True):
        ds = StreamingDataset(local=str(tmp_path / "d"), validate_hash=checks_xxh64, predownload=0)
        with pytest.raises(HashMismatchError, match="xxh64 of shard.00000"):
            ds[0]
    for off in (False, None, ""):
        ds = StreamingDataset(local=str(out), validate_hash=off, predownload=0)
        assert ds[0]["id"] == 0


def test_validate_hash_rejects_unknown_names_at_construction(tmp_path):
    out = write(tmp_path / "d")
    with pytest.raises(ValueError, match=r"validate_hash='bogus' is not a hash algorithm; .*sha1"):
        StreamingDataset(local=str(out), validate_hash="bogus")
    with pytest.raises(ValueError, match="validate_hash='SHA1' is not a hash algorithm"):
        Stream(local=str(out), validate_hash="SHA1")
    with pytest.raises(TypeError, match="validate_hash must be"):
        StreamingDataset(local=str(out), validate_hash=3)


def test_a_hash_the_data_does_not_record(tmp_path):
    out = write(tmp_path / "d", hashes=("xxh64",))
    unrecorded = r"validate_hash='sha1', but 30 of the 30 shards .* do not record it"
    with pytest.raises(ValueError, match=unrecorded + r" \(recorded: xxh64\)"):
        StreamingDataset(local=str(out), validate_hash="sha1")
    bare = write(tmp_path / "bare", hashes=())
    with pytest.warns(
        UserWarning, match="validate_hash='sha1', but the index of .* records no hashes"
    ):
        ds = StreamingDataset(local=str(bare), validate_hash="sha1")
    assert [s["id"] for s in ds] == list(range(30))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default (True) says nothing about data without hashes
        StreamingDataset(local=str(bare))


def test_a_streams_own_validate_hash_and_keep_zip_win(tmp_path):
    a, b = write(tmp_path / "a"), write(tmp_path / "b", compression="zstd")
    spoil_digest(a, "xxh64")
    streams = [
        Stream(local=str(a), validate_hash="sha1"),
        Stream(remote=str(b), local=str(tmp_path / "c"), keep_zip=True),
    ]
    ds = StreamingDataset(streams=streams, validate_hash="xxh64", predownload=0)
    assert [s["id"] for s in ds] == list(range(30)) * 2
    assert [s.validate_hash for s in ds.streams] == ["sha1", "xxh64"]
    assert list((tmp_path / "c").glob("*.zstd"))  # kept


ACCEPTED = [(name, ok) for name, (accepted, _) in MOSAIC_OPTIONS.items() for ok in accepted]
UNSUPPORTED_BATCHING = "'stratified', 'per_stream' and 'device_per_stream' are not supported"


@pytest.mark.parametrize(("name", "value"), ACCEPTED)
def test_mosaic_options_at_values_that_mean_what_we_do_are_accepted(tmp_path, name, value):
    out = write(tmp_path / "d")
    ds = StreamingDataset(local=str(out), **{name: value})
    assert ds[3]["id"] == 3


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("partition_algo", "orig", "its own elastic scheme"),
        ("batching_method", "stratified", UNSUPPORTED_BATCHING),
        ("batching_method", "per_stream", "mixes the streams within each global batch"),
        ("stream_name", "my_stream", "no stream registry"),
        ("stream_config", {"x": 1}, "no stream registry"),
    ],
)
def test_mosaic_options_we_do_not_implement_are_refused_at_construction(
    tmp_path, name, value, says
):
    out = write(tmp_path / "d")
    with pytest.raises(ValueError, match=f"{name}={value!r} is not supported") as err:
        StreamingDataset(local=str(out), **{name: value})
    assert says in str(err.value)


@pytest.mark.parametrize("algo", ["py1b", "py1br", "py2s"])
@pytest.mark.parametrize("shuffle", [True, False])
def test_mosaic_shuffles_are_refused_at_construction(tmp_path, algo, shuffle):
    out = write(tmp_path / "d")
    not_ours = (
        f"shuffle_algo='{algo}' is a mosaicml-streaming shuffle that streaming does not "
        "implement; choose one of naive, py1e, py1s"
    )
    with pytest.raises(ValueError, match=not_ours):
        StreamingDataset(local=str(out), shuffle=shuffle, shuffle_algo=algo)
    with pytest.raises(ValueError, match="unknown shuffle_algo 'py9'"):
        StreamingDataset(local=str(out), shuffle=shuffle, shuffle_algo="py9")


def test_an_unknown_keyword_is_still_a_type_error(tmp_path):
    out = write(tmp_path / "d")
    with pytest.raises(TypeError, match="unexpected keyword argument 'partition_algorithm'"):
        StreamingDataset(local=str(out), partition_algorithm="orig")


def test_epoch_size_and_batch_size_as_mosaicml_writes_them(tmp_path):
    sizes = [parse_epoch_size(v) for v in (None, 7, "7", "1.5k", "2M", "1b", " 3k ")]
    assert sizes == [None, 7, 7, 1500, 2_000_000, 10**9, 3000]
    for bad in ("many", "1kb", "-3"):
        with pytest.raises(ValueError, match="epoch_size"):
            parse_epoch_size(bad)
    out = write(tmp_path / "d")
    ds = StreamingDataset(local=str(out), epoch_size="0.06k", batch_size=None)
    assert ds.epoch_size == 60 and ds.batch_size == 1
    assert sorted(s["id"] for s in ds) == sorted(list(range(30)) * 2)
