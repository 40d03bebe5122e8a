"""Compression names, levels and round trips; hash algorithm names and digests."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import sys

import pytest
import xxhash
import zstandard

from streaming.compression import (
    CODECS,
    check_compression,
    compress,
    compression_extension,
    decompress,
    decompress_stream,
    parse_compression,
)
from streaming.hashing import HASHES, check_hash_names, get_hash

DATA = b"".join(i.to_bytes(4, "little") for i in range(5000)) + b"mds" * 1000


@pytest.mark.parametrize(
    ("algo", "expected"),
    [("zstd", ("zstd", 3)), ("zstd:22", ("zstd", 22)), ("gz", ("gz", 9)), ("gz:0", ("gz", 0))]
    + [("bz2", ("bz2", 9)), ("bz2:1", ("bz2", 1)), ("br", ("br", 11)), ("br:0", ("br", 0))]
    + [("snappy", ("snappy", 0))],
)
def test_names_and_default_levels_match_mosaicml(algo, expected):
    assert parse_compression(algo) == expected
    assert compression_extension(algo) == expected[0]


BAD_LEVELS = ["zstd:0", "zstd:23", "zstd:07", "zstd:-1", "zstd:", "gz:10", "bz2:0", "br:12"]


@pytest.mark.parametrize("algo", [*BAD_LEVELS, "snappy:1", "lz4", "ZSTD", "gz:x", "zstd :3"])
def test_invalid_names_are_rejected(algo):
    with pytest.raises(ValueError, match="compression"):
        parse_compression(algo)


def test_every_level_round_trips():
    for family, codec in CODECS.items():
        levels = [None] if codec.levels is None else [None, *codec.levels]
        for level in levels:
            algo = family if level is None else f"{family}:{level}"
            packed = compress(algo, DATA)
            assert decompress(algo, packed, size=len(DATA)) == DATA, algo
            assert decompress(algo, packed) == DATA, algo
    assert compress(None, DATA) == DATA and decompress(None, DATA) == DATA


def test_standard_tools_read_our_output():
    """What mosaicml-streaming calls to decompress reads our files (zstd: any zstd decoder)."""
    assert gzip.decompress(compress("gz:5", DATA)) == DATA
    assert bz2.decompress(compress("bz2", DATA)) == DATA
    assert zstandard.ZstdDecompressor().decompress(compress("zstd", DATA)) == DATA


def test_gzip_output_is_reproducible():
    assert compress("gz", DATA) == compress("gz", DATA)  # mtime 0, so zip hashes are stable


def test_zstd_frames_without_content_size_decompress():
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(DATA)
    assert decompress("zstd", frame, size=len(DATA)) == DATA


@pytest.mark.parametrize("algo", ["zstd", "zstd:1", "zstd:7", "zstd:22"])
def test_zstd_frames_carry_their_content_checksum(algo):
    frame = compress(algo, DATA)
    params = zstandard.get_frame_parameters(frame)
    assert params.has_checksum and params.content_size == len(DATA)


def _stream(algo, data):
    out = bytearray()
    size = decompress_stream(algo, data, lambda chunk: out.extend(chunk))
    assert size == len(out)
    return bytes(out)


def test_old_zstd_frames_still_read():
    """Frames without a checksum (mosaicml-streaming's, ours before 0.1.2) or without a content
    size read both at once and piece by piece (as the reader does; it reads across frames too)."""
    plain = zstandard.ZstdCompressor(level=3).compress(DATA)
    assert not zstandard.get_frame_parameters(plain).has_checksum
    bare = zstandard.ZstdCompressor(write_content_size=False, write_checksum=False).compress(DATA)
    for frame in (plain, bare):
        assert decompress("zstd", frame, size=len(DATA)) == DATA
        assert _stream("zstd", frame) == DATA
    assert _stream("zstd", plain + compress("zstd", DATA)) == DATA + DATA


def test_a_damaged_zstd_frame_fails_instead_of_decoding_wrong():
    noise = bytes((i * 7919 + (i >> 3) * 104729) % 256 for i in range(50_000))  # kept as literals
    ours = bytearray(compress("zstd", noise))
    old = bytearray(zstandard.ZstdCompressor().compress(noise))  # no checksum
    for frame in (ours, old):
        frame[len(frame) // 2] ^= 0x20
    assert decompress("zstd", bytes(old)) != noise  # without the checksum: silently wrong
    with pytest.raises(zstandard.ZstdError, match="checksum"):
        decompress("zstd", bytes(ours), size=len(noise))
    with pytest.raises(zstandard.ZstdError, match="checksum"):
        _stream("zstd", bytes(ours))


def test_check_compression():
    assert check_compression(None) is None and check_compression("") is None
    assert check_compression("zstd:7") == "zstd:7"
    with pytest.raises(TypeError):
        check_compression(7)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("family", "module", "pip_name"),
    [("br", "brotli", "brotli"), ("snappy", "snappy", "python-snappy")],
)
def test_missing_module_says_what_to_install(monkeypatch, family, module, pip_name):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import <module>` fail
    with pytest.raises(ModuleNotFoundError, match=f"pip install {pip_name}"):
        check_compression(family)
    with pytest.raises(ModuleNotFoundError, match=module):
        decompress(family, b"x")


def test_hash_names_are_mosaicmls():
    """mosaicml-streaming's rule: hashlib's attributes among algorithms_available (no shake_*)
    and xxhash's algorithms."""
    theirs = {
        a
        for a in hashlib.algorithms_available
        if hasattr(hashlib, a) and not a.startswith("shake_")
    }
    theirs |= set(xxhash.algorithms_available)
    assert set(HASHES) == theirs
    expected = {"md5", "sha1", "sha224", "sha256", "sha384", "sha512", "blake2b", "blake2s"}
    expected |= {"sha3_224", "sha3_256", "sha3_384", "sha3_512"}
    expected |= {"xxh32", "xxh64", "xxh128", "xxh3_64", "xxh3_128"}
    assert set(HASHES) == expected


def test_digests():
    assert get_hash("sha1", b"abc") == "a9993e364706816aba3e25717850c26c9cd0d89d"
    assert get_hash("xxh64", b"abc") == "44bc2cf5ad770999"
    assert get_hash("xxh32", memoryview(b"abc")) == xxhash.xxh32(b"abc").hexdigest()
    for algo in HASHES:
        module = xxhash if algo.startswith("xxh") else hashlib
        assert get_hash(algo, DATA) == getattr(module, algo)(DATA).hexdigest()


def test_unknown_hash_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown hash algorithm 'crc32'.*sha1.*xxh64"):
        get_hash("crc32", b"")
    with pytest.raises(ValueError, match="unknown hash algorithm 'shake_128'"):
        check_hash_names(["shake_128"])


def test_check_hash_names():
    assert check_hash_names(None) == [] and check_hash_names([]) == []
    assert check_hash_names(("sha1", "xxh64")) == ["sha1", "xxh64"]
    with pytest.raises(ValueError, match="sorted"):
        check_hash_names(["xxh64", "sha1"])
    with pytest.raises(ValueError, match="unique"):
        check_hash_names(["sha1", "sha1"])
    with pytest.raises(TypeError):
        check_hash_names("sha1")  # type: ignore[arg-type]
