"""mosaicml-streaming's import paths and helpers, against mosaicml-streaming 0.13 itself: one
code (`PROBE`), importing only `streaming.base...` names as a user's code would, runs in both
interpreters, and the answers must agree (compression, hashing and MDS encoding helpers,
`streaming.base.util`, `MDSWriter.get_config` / `flush_shard`, `Stream(split=...)`,
`LocalDataset`, `merge_index`).
"""

from __future__ import annotations

import os
import warnings

import pytest

from streaming import MDSWriter

PROBE = r"""
import json, os, shutil, tempfile, warnings
from decimal import Decimal
import numpy as np

def probe(root):
    warnings.simplefilter("ignore")
    from streaming.base import LocalDataset, MDSWriter, Stream, StreamingDataset
    from streaming.base.compression import (Zstandard, compress, decompress,
        get_compression_extension, get_compressions, is_compression)
    from streaming.base.format import get_index_basename
    from streaming.base.format.mds.encodings import (get_mds_encoded_size, get_mds_encodings,
        is_mds_encoding, is_mds_encoding_safe, mds_decode, mds_encode)
    from streaming.base.hashing import get_hash, get_hashes, is_hash
    from streaming.base.util import (bytes_to_int, clean_stale_shared_memory, get_list_arg,
        merge_index, number_abbrev_to_int)

    out = {}
    names = ["zstd", "zstd:7", "zstd:23", "gz:0", "br:11", "bz2:0", "snappy", "snappy:1", "x"]
    out["compressions"] = sorted(get_compressions())
    out["is_compression"] = [is_compression(n) for n in names]
    out["extension"] = [get_compression_extension(n) for n in ("gz:5", "zstd", "br:3")]
    data = bytes(range(256)) * 40
    out["roundtrip"] = [decompress(a, compress(a, data)) == data for a in ("zstd:5", "gz", "bz2",
                                                                          "br", "snappy")]
    out["zstandard"] = decompress("zstd", Zstandard(9).compress(data)) == data
    out["hashes"] = sorted(get_hashes())
    out["is_hash"] = [is_hash(n) for n in ("xxh64", "sha1", "md4", "shake_128", "crc32")]
    out["hash"] = [get_hash(a, b"mosaic") for a in ("xxh64", "sha256", "xxh3_128")]
    encodings = ["int", "str", "ndarray:int32:4", "ndarray", "float16", "pkl", "json",
                 "list[png]", "jpegarray", "nope"]
    out["mds_encodings"] = sorted(get_mds_encodings())
    out["is_mds_encoding"] = [is_mds_encoding(e) for e in encodings]
    out["safe"] = [is_mds_encoding_safe(e) for e in ("int", "pkl", "json")]
    out["sizes"] = [get_mds_encoded_size(e) for e in encodings[:-1]]
    values = [("int", -7), ("str", "héllo"), ("float64", 2.5), ("ndarray:int32:4",
              np.arange(4, dtype=np.int32)), ("json", {"a": [1, 2]}), ("str_decimal",
              Decimal("1.25")), ("bytes", b"raw")]
    out["encoded"] = [mds_encode(e, v) for e, v in values]
    out["decoded"] = [repr(mds_decode(e, mds_encode(e, v))) for e, v in values]
    out["bytes_to_int"] = [bytes_to_int(v) for v in ("64mb", "1.5kb", "4000", "4000b", 123)]
    out["abbrev"] = [number_abbrev_to_int(v) for v in ("1.5k", "2m", "1b", "7", 42)]
    out["list_arg"] = [get_list_arg("a,b"), get_list_arg("")]
    out["clean"] = clean_stale_shared_memory()
    out["index_basename"] = get_index_basename()

    work = tempfile.mkdtemp(prefix="base-")
    with MDSWriter(out=os.path.join(work, "w"), columns={"id": "int", "s": "str"},
                   compression="zstd", hashes=["xxh64"], max_workers=2, progress_bar=False) as w:
        out["config"] = w.get_config()
        for i in range(3):
            w.write({"id": i, "s": "x" * i})
        w.flush_shard()
        for i in range(3, 5):
            w.write({"id": i, "s": "y"})
    index = json.load(open(os.path.join(work, "w", "index.json")))
    out["flushed"] = [s["samples"] for s in index["shards"]]

    stream = Stream(local=root, split="a")
    out["stream"] = [stream.local, stream.split, stream.remote]
    ids = lambda samples: [int(s["id"]) for s in samples]
    out["split_read"] = ids(StreamingDataset(local=root, split="a", batch_size=1))
    streams = [Stream(local=root), Stream(local=root, split="b")]
    defaulted = StreamingDataset(streams=streams, split="a", batch_size=1)
    out["split_default"] = [s.split for s in defaulted.streams]
    out["split_default_ids"] = ids(defaulted)
    local = LocalDataset(os.path.join(root, "b"))
    out["local"] = [len(local), local.size, ids(local[0:3]), ids(local[[-1]])]
    local = LocalDataset(root, split="a")
    out["local_split"] = ids(local[:])

    merged = os.path.join(work, "merged")
    shutil.copytree(os.path.join(root, "parts"), merged)
    merge_index(merged)
    out["merged_root"] = json.load(open(os.path.join(merged, "index.json")))["shards"]
    out["merged_root_ids"] = ids(StreamingDataset(local=merged, batch_size=1))
    listed = os.path.join(work, "listed")
    shutil.copytree(os.path.join(root, "parts"), listed)
    parts = [os.path.join(listed, p, "index.json") for p in ("part1", "part0")]
    merge_index(parts, listed)
    out["merged_list"] = json.load(open(os.path.join(listed, "index.json")))["shards"]
    out["merged_list_ids"] = ids(StreamingDataset(local=listed, batch_size=1))
    return out
"""


def _write(out, ids, **options):
    with MDSWriter(out=str(out), columns={"id": "int"}, size_limit=100, **options) as writer:
        for i in ids:
            writer.write({"id": i})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    _write(root / "a", range(10))
    _write(root / "b", range(100, 107), compression="zstd")
    _write(root / "index-holder", range(200, 205))
    os.replace(root / "index-holder" / "index.json", root / "index.json")  # root itself: a dataset
    for name in os.listdir(root / "index-holder"):
        os.replace(root / "index-holder" / name, root / name)
    os.rmdir(root / "index-holder")
    _write(root / "parts" / "part0", range(300, 306))
    _write(root / "parts" / "part1", range(400, 404), compression="zstd")
    return root


def _probe(root):
    namespace: dict = {}
    exec(compile(PROBE, "<probe>", "exec"), namespace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return namespace["probe"](str(root))


@pytest.fixture(scope="module")
def answers(mosaic, root):
    theirs = mosaic.call(PROBE + "\nresult = probe(args)\n", str(root))
    return theirs, _probe(root)


def test_streaming_base_imports_and_helpers_answer_as_mosaic(answers):
    theirs, ours = answers
    assert ours.keys() == theirs.keys()
    # One difference, on purpose: mosaicml's flush_shard() keeps the flushed samples cached, so
    # they are written again in the next shard; ours starts a new shard.
    assert (theirs.pop("flushed"), ours.pop("flushed")) == ([3, 5], [3, 2])
    different = {key: (theirs[key], ours[key]) for key in theirs if theirs[key] != ours[key]}
    assert not different, different


def test_the_json_and_xsv_writers_say_what_to_use_instead(tmp_path):
    from streaming import CSVWriter, JSONWriter, TSVWriter, XSVWriter
    from streaming.splitformats import UnsupportedFormatError

    for cls in (JSONWriter, CSVWriter, TSVWriter, XSVWriter):
        with pytest.raises(UnsupportedFormatError, match=r"MDSWriter\(out=\.\.\., columns=") as e:
            cls(out=str(tmp_path / "x"), columns={"a": "str", "b": "float"})
        assert isinstance(e.value, NotImplementedError) and "'float64'" in str(e.value)
    assert not (tmp_path / "x").exists()
