"""Compatibility with mosaicml-streaming 0.13, run in an isolated subprocess (the `mosaic` fixture).

For every compression (and a few size-limit settings), one dataset holds a column of every MDS
encoding, with two or three hash algorithms (all 17 across the cases) and several shards:

- mosaicml-streaming reads the dataset our MDSWriter wrote (recomputing every recorded hash with
  its own hashing first), and we read the one its MDSWriter wrote from the same samples;
- uncompressed, our shards and index.json are byte-identical to its; compressed, our decompressed
  shards are, and index.json is apart from the compressed files' sizes and digests.

All mosaicml work happens in one subprocess for the whole module.
"""

from __future__ import annotations

import io
import json
import os
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from PIL import Image

from streaming.compression import decompress
from streaming.format import INDEX_NAME, parse_index
from streaming.shard import Shard
from streaming.writer import MDSWriter

COLUMNS = {
    "bytes": "bytes",
    "str": "str",
    "naïve_int": "int",  # a non-ASCII name: index.json escapes it the same way
    **{f"n_{t}": t for t in ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32")},
    **{f"n_{t}": t for t in ("int64", "float16", "float32", "float64")},
    "json": "json",
    "nd_any": "ndarray",
    "nd_dtype": "ndarray:int32",
    "nd_fixed": "ndarray:float16:2,3",
    "str_int": "str_int",
    "str_float": "str_float",
    "str_decimal": "str_decimal",
    "jpeg": "jpeg",
    "png": "png",
    "pil": "pil",
    "jpeg_array": "jpeg_array",
    "jpegarray": "jpegarray",
    "list_pil": "list[pil]",
    "list_jpeg": "list[jpeg]",
    "list_png": "list[png]",
    "pkl": "pkl",
}
LOSSY = {"jpeg", "jpeg_array", "jpegarray", "list_jpeg"}  # compare decoded pixels across readers
# (case id, writer options); the hash sets cover every algorithm
CASES = [
    ("none", {"compression": None, "hashes": ["sha1", "xxh64"]}),
    ("zstd", {"compression": "zstd", "hashes": ["md5", "xxh3_64"]}),
    ("zstd7", {"compression": "zstd:7", "hashes": ["blake2b", "sha256", "xxh128"]}),
    ("gz", {"compression": "gz", "hashes": ["sha3_256", "xxh32"]}),
    ("bz2", {"compression": "bz2", "hashes": ["sha224", "sha512", "xxh3_128"]}),
    ("br", {"compression": "br", "hashes": ["blake2s", "sha384"]}),
    ("snappy", {"compression": "snappy", "hashes": ["sha3_224", "sha3_384", "sha3_512"]}),
    ("gz1", {"compression": "gz:1", "hashes": ["sha1"]}),
    ("str-limit", {"compression": None, "hashes": ["xxh64"], "size_limit": "6kb"}),
    ("one-shard", {"compression": None, "hashes": ["md5"], "size_limit": None}),
]
SIZE_LIMIT = 1 << 13  # small, so every case has several shards
NUM_SAMPLES = 24


def _image(rng: np.random.Generator, mode: str = "RGB") -> Image.Image:
    height, width = int(rng.integers(2, 9)), int(rng.integers(2, 9))
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def _jpeg_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG")
    return out.getvalue()


def make_samples(count: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        dims = tuple(int(d) for d in rng.integers(1, 5, size=int(rng.integers(1, 4))))
        if i == 5:
            dims = (300,)  # a dimension above 255: a uint16 shape header
        nd_any = rng.standard_normal(dims).astype(["float32", "int64", "uint8"][i % 3])
        samples.append(
            {
                "bytes": rng.bytes(int(rng.integers(0, 40))),
                "str": "héllo wörld ✓ " * int(rng.integers(0, 4)),
                "naïve_int": int(rng.integers(-(2**62), 2**62)),
                "n_uint8": int(rng.integers(0, 256)),
                "n_uint16": np.uint16(rng.integers(0, 2**16)),
                "n_uint32": int(rng.integers(0, 2**32)),
                "n_uint64": 2**64 - 1 - i,
                "n_int8": -128 + i,
                "n_int16": int(rng.integers(-(2**15), 2**15)),
                "n_int32": np.int32(rng.integers(-(2**31), 2**31)),
                "n_int64": -(2**63) + i,
                "n_float16": 0.5 * i,
                "n_float32": float(rng.standard_normal()),
                "n_float64": float(rng.standard_normal()),
                "json": {"id": i, "tags": ["a", "ü"], "nested": {"x": [1.5, None, True]}},
                "nd_any": nd_any,
                "nd_dtype": rng.integers(
                    -1000, 1000, size=int(rng.integers(1, 50)), dtype=np.int32
                ),
                "nd_fixed": rng.standard_normal((2, 3)).astype(np.float16),
                "str_int": int(rng.integers(-(10**12), 10**12)) * 10**i,
                "str_float": float(rng.standard_normal()),
                "str_decimal": Decimal(f"{i}.{i:03d}10"),
                "jpeg": _image(rng),
                "png": _image(rng, "RGBA"),
                "pil": _image(rng, ["RGB", "L", "RGBA"][i % 3]),
                "jpeg_array": [_jpeg_bytes(_image(rng)) for _ in range(1 + i % 3)],
                "jpegarray": [_jpeg_bytes(_image(rng))],
                "list_pil": [_image(rng) for _ in range(i % 3)],
                "list_jpeg": [_image(rng) for _ in range(1 + i % 2)],
                "list_png": [_image(rng, "L") for _ in range(2)],
                "pkl": {"any": ("python", i), "set": {1, 2}},
            }
        )
    return samples


def normalize(value: Any) -> Any:
    """A comparable form that keeps the type: arrays, numpy scalars and images by their bytes."""
    if isinstance(value, Image.Image):
        return ("image", value.mode, value.size, value.tobytes())
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, np.generic):
        return ("numpy", value.dtype.str, value.tobytes())
    if isinstance(value, dict):
        return {key: normalize(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [normalize(item) for item in value])
    return (type(value).__name__, repr(value))


def read_ours(path: str) -> list[dict[str, Any]]:
    with open(os.path.join(path, INDEX_NAME), "rb") as file:
        infos = parse_index(file.read(), path)
    samples = []
    for info in infos:
        with Shard.open(os.path.join(path, info.basename), info, allow_pickle=True) as shard:
            samples.extend(shard[i] for i in range(len(shard)))
    return samples


def _options(options: dict[str, Any]) -> dict[str, Any]:
    return {"size_limit": SIZE_LIMIT, **options}


@pytest.fixture(scope="module")
def compat(mosaic, tmp_path_factory):
    """Write every case with both writers, and read ours with mosaicml, in one subprocess."""
    root = tmp_path_factory.mktemp("compat")
    samples = make_samples(NUM_SAMPLES, seed=1234)
    samples[7]["bytes"] = os.urandom(3 * SIZE_LIMIT)  # bigger than a shard: gets its own shard
    writes, reads = [], []
    for case, options in CASES:
        ours = str(root / f"ours-{case}")
        with MDSWriter(out=ours, columns=COLUMNS, **_options(options)) as writer:
            for sample in samples:
                writer.write(sample)
        theirs = str(root / f"mosaic-{case}")
        writes.append({"out": theirs, "columns": COLUMNS, "samples": samples, **_options(options)})
        validate = options["hashes"][0]
        reads.append({"path": ours, "validate_hash": validate, "allow_unsafe_types": True})
    mosaic_read = mosaic.batch(writes=writes, reads=reads)
    return {
        "root": root,
        "samples": samples,
        "mosaic_read": dict(zip([case for case, _ in CASES], mosaic_read, strict=True)),
    }


@pytest.mark.parametrize("case", [case for case, _ in CASES])
def test_mosaic_reads_what_we_write(compat, case):
    ours_path = str(compat["root"] / f"ours-{case}")
    theirs = compat["mosaic_read"][case]
    ours = read_ours(ours_path)
    assert len(theirs) == len(ours) == NUM_SAMPLES
    for index, (a, b, original) in enumerate(zip(theirs, ours, compat["samples"], strict=True)):
        assert normalize(a) == normalize(b), f"sample {index}"
        for column in sorted(set(COLUMNS) - LOSSY):
            got, want = b[column], original[column]
            if column.startswith("n_"):  # numeric scalars decode to numpy scalars of the dtype
                assert isinstance(got, np.generic) and got.dtype == np.dtype(COLUMNS[column])
                assert got.tobytes() == np.array(want, got.dtype).tobytes(), (index, column)
            elif column == "pkl":
                assert got == want
            else:
                assert normalize(got) == normalize(want), f"sample {index} column {column}"


@pytest.mark.parametrize("case", [case for case, _ in CASES])
def test_we_read_what_mosaic_writes(compat, case):
    theirs = read_ours(str(compat["root"] / f"mosaic-{case}"))
    ours = read_ours(str(compat["root"] / f"ours-{case}"))
    assert [normalize(s) for s in theirs] == [normalize(s) for s in ours]


def _without_zip_sizes(index: bytes) -> list[dict[str, Any]]:
    """The shards of index.json with only the compressed file's name (its bytes may differ)."""
    shards = json.loads(index)["shards"]
    return [dict(s, zip_data={"basename": s["zip_data"]["basename"]}) for s in shards]


@pytest.mark.parametrize("case", [case for case, _ in CASES])
def test_same_bytes_as_mosaic(compat, case):
    ours, theirs = compat["root"] / f"ours-{case}", compat["root"] / f"mosaic-{case}"
    ours_index = (ours / INDEX_NAME).read_bytes()
    theirs_index = (theirs / INDEX_NAME).read_bytes()
    infos = parse_index(ours_index, str(ours))
    assert sorted(os.listdir(ours)) == sorted(os.listdir(theirs))
    if case in ("one-shard",):
        assert len(infos) == 1
    else:
        assert len(infos) >= 3
    compression = dict(CASES)[case]["compression"]
    if compression is None:
        assert ours_index == theirs_index
        for info in infos:
            assert (ours / info.basename).read_bytes() == (theirs / info.basename).read_bytes()
        return
    # Compressed: the raw shards and everything the index says about them are identical.
    assert _without_zip_sizes(ours_index) == _without_zip_sizes(theirs_index)
    for info in infos:
        ours_raw = decompress(compression, (ours / info.basename).read_bytes())
        theirs_raw = decompress(compression, (theirs / info.basename).read_bytes())
        assert ours_raw == theirs_raw
        assert len(ours_raw) == info.raw_data.bytes


def test_the_subprocess_runs_mosaicml_not_ours(mosaic):
    from streaming.testing.mosaic import MosaicError

    version, path, writer_module = mosaic.run(
        "from streaming import MDSWriter\n"
        "result = [streaming.__version__, streaming.__file__, MDSWriter.__module__]"
    )
    assert version == "0.13.0" and writer_module == "streaming.base.format.mds.writer"
    assert os.path.realpath(path).startswith(os.path.realpath(mosaic.target))
    with pytest.raises(MosaicError, match="ZeroDivisionError"):
        mosaic.run("result = args['x'] / 0", x=1)


@pytest.mark.parametrize("case", ["zstd", "zstd7"])
def test_mosaic_reads_our_zstd_frames_with_their_checksum(compat, case):
    """Our zstd frames carry the content checksum (since 0.1.2); mosaicml-streaming's decoder
    reads them (test_mosaic_reads_what_we_write compares every sample)."""
    import zstandard

    shards = sorted((compat["root"] / f"ours-{case}").glob("*.zstd"))
    assert len(shards) >= 3
    for path in shards:
        assert zstandard.get_frame_parameters(path.read_bytes()).has_checksum
    for path in (compat["root"] / f"mosaic-{case}").glob("*.zstd"):  # theirs have none: read too
        assert not zstandard.get_frame_parameters(path.read_bytes()).has_checksum
    assert len(compat["mosaic_read"][case]) == NUM_SAMPLES
