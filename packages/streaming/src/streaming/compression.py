"""Shard compression, named and levelled as mosaicml-streaming names them in `index.json`.

A dataset's `compression` is `None`, a family (`"zstd"`, `"gz"`, `"bz2"`, `"br"`, `"snappy"`) or
`"family:level"` (`"zstd:7"`). The string is recorded verbatim in `index.json`, and the family is
the compressed shard's filename extension (`shard.00000.mds.zstd`). A family alone means its
default level, as in mosaicml-streaming:

| family | module (pip package)              | levels | default |
| ------ | --------------------------------- | ------ | ------- |
| zstd   | zstandard (a hard dependency)     | 1..22  | 3       |
| gz     | gzip (standard library)           | 0..9   | 9       |
| bz2    | bz2 (standard library)            | 1..9   | 9       |
| br     | brotli (`streaming[brotli]`)      | 0..11  | 11      |
| snappy | snappy (`streaming[snappy]`)      | none   |         |

Compressed bytes may differ from mosaicml-streaming's (we use `zstandard`, not `zstd`, and gzip
with a zero mtime so output is reproducible); decompressed bytes are identical, and either side
reads the other's files. zstd frames are written with their content checksum (a standard frame
flag every zstd decoder honours, mosaicml-streaming's included), so a damaged frame fails to
decompress even when index.json records no hash; frames without one (mosaicml-streaming's, ours
before 0.1.2) still read.
"""

from __future__ import annotations

import bz2
import gzip
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "get_compression_extension",
    "get_compressions",
    "is_compression",
    "CODECS",
    "Codec",
    "check_compression",
    "compress",
    "compression_extension",
    "decompress",
    "decompress_stream",
    "parse_compression",
]


def _module(name: str, pip_name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ModuleNotFoundError(
            f"compression needs the Python module {name!r}, which is not installed; "
            f"install it with `pip install {pip_name}`"
        ) from err


def _zstd_compress(data: Any, level: int) -> bytes:
    zstandard = _module("zstandard", "zstandard")
    # The checksum (4 bytes a frame) lets the decoder catch damage that would decode silently.
    return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(data)


def _zstd_decompress(data: Any, size: int | None) -> bytes:
    zstandard = _module("zstandard", "zstandard")
    # max_output_size lets frames written without a content size decompress too.
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=size or 0)


def _br_compress(data: Any, level: int) -> bytes:
    return _module("brotli", "brotli").compress(bytes(data), quality=level)


def _br_decompress(data: Any, size: int | None) -> bytes:
    return _module("brotli", "brotli").decompress(bytes(data))


def _snappy_compress(data: Any, level: int) -> bytes:
    return _module("snappy", "python-snappy").compress(bytes(data))


def _snappy_decompress(data: Any, size: int | None) -> bytes:
    return bytes(_module("snappy", "python-snappy").decompress(bytes(data)))


@dataclass(frozen=True, kw_only=True)
class Codec:
    """One compression family: its levels, default level and functions."""

    levels: range | None  # None: the family takes no level
    default: int  # the level that the bare family name means (ignored without levels)
    compress: Callable[[Any, int], bytes]
    decompress: Callable[[Any, int | None], bytes]  # (data, expected size or None)


CODECS: dict[str, Codec] = {
    "br": Codec(levels=range(0, 12), default=11, compress=_br_compress, decompress=_br_decompress),
    "bz2": Codec(
        levels=range(1, 10),
        default=9,
        compress=lambda data, level: bz2.compress(data, level),
        decompress=lambda data, size: bz2.decompress(data),
    ),
    "gz": Codec(
        levels=range(0, 10),
        default=9,
        # mtime=0: the same shard always compresses to the same bytes (and zip hashes).
        compress=lambda data, level: gzip.compress(data, level, mtime=0),
        decompress=lambda data, size: gzip.decompress(data),
    ),
    "snappy": Codec(
        levels=None, default=0, compress=_snappy_compress, decompress=_snappy_decompress
    ),
    "zstd": Codec(
        levels=range(1, 23), default=3, compress=_zstd_compress, decompress=_zstd_decompress
    ),
}


def _expected() -> str:
    forms = []
    for name, codec in CODECS.items():
        if codec.levels is None:
            forms.append(name)
        else:
            forms.append(f"{name}[:{codec.levels.start}..{codec.levels.stop - 1}]")
    return ", ".join(forms)


def parse_compression(algo: str) -> tuple[str, int]:
    """Split `"family[:level]"` into (family, level), applying the family's default level.

    Only the spellings mosaicml-streaming accepts are valid (`"zstd:7"`, not `"zstd:07"`).
    """
    if not isinstance(algo, str):
        raise TypeError(f"compression must be a string such as 'zstd' or None, got {algo!r}")
    family, sep, level_text = algo.partition(":")
    codec = CODECS.get(family)
    if codec is None:
        raise ValueError(f"unknown compression {algo!r}; expected one of {_expected()}")
    if not sep:
        return family, codec.default
    if codec.levels is None:
        raise ValueError(f"compression {family!r} takes no level, got {algo!r}")
    if not level_text.isdigit() or str(int(level_text)) != level_text:
        raise ValueError(f"compression level in {algo!r} must be a plain integer")
    level = int(level_text)
    if level not in codec.levels:
        raise ValueError(
            f"compression level {level} of {family!r} is out of range; expected "
            f"{codec.levels.start}..{codec.levels.stop - 1}"
        )
    return family, level


def get_compressions() -> set[str]:
    """Every compression name a writer takes: each family, and each family:level."""
    names = set(CODECS)
    for family, codec in CODECS.items():
        names |= {f"{family}:{level}" for level in codec.levels or ()}
    return names


def is_compression(algo: str | None) -> bool:
    """Whether `algo` names a compression (mosaicml-streaming's helper; None is not one)."""
    return isinstance(algo, str) and algo in get_compressions()


def get_compression_extension(algo: str) -> str:
    """The filename extension of shards compressed with `algo`; ValueError if it is none."""
    if not is_compression(algo):
        raise ValueError(f"{algo!r} is not a compression; expected one of {_expected()}")
    return parse_compression(algo)[0]


def compression_extension(algo: str) -> str:
    """The filename extension of shards compressed with `algo` (its family name)."""
    return parse_compression(algo)[0]


def check_compression(algo: str | None) -> str | None:
    """Validate a writer's `compression` and check that its module is importable.

    Returns the value to record in `index.json` (`None` for no compression; `""` counts as none).
    """
    if not algo:
        return None
    family, level = parse_compression(algo)
    CODECS[family].compress(b"", level)  # raises ModuleNotFoundError naming what to install
    return algo


def compress(algo: str | None, data: Any) -> bytes:
    """Compress `data` (bytes-like) with `algo`; `None` returns the bytes unchanged."""
    if algo is None:
        return bytes(data)
    family, level = parse_compression(algo)
    return CODECS[family].compress(data, level)


def decompress(algo: str | None, data: Any, *, size: int | None = None) -> bytes:
    """Decompress `data` that `compress(algo, ...)` made; `size` is the expected result size."""
    if algo is None:
        return bytes(data)
    family, _ = parse_compression(algo)
    return CODECS[family].decompress(data, size)


_CHUNK = 1 << 20  # output bytes per step of an incremental decompression


def decompress_stream(
    algo: str,
    data: Any,
    write: Callable[[memoryview], None],
    consumed: Callable[[int], None] | None = None,
) -> int:
    """Decompress `data` (bytes-like, e.g. a memory map of the compressed file) and pass the
    output to `write` piece by piece (about a megabyte at a time), so a reader can use the start
    of a shard while the rest is still being decompressed, and the caller can pause between
    pieces. `consumed(n)` is told when the first n input bytes are no longer needed (to drop them
    from memory). zstd, gz and bz2 go incrementally; br and snappy decompress at once.
    Returns the decompressed size.
    """
    family, _ = parse_compression(algo)
    view = memoryview(data)
    if family == "zstd":
        return _zstd_stream(view, write, consumed)
    if family == "gz":
        import zlib

        stepper = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif family == "bz2":
        stepper = bz2.BZ2Decompressor()
    else:
        out = decompress(algo, view)
        write(memoryview(out))
        return len(out)
    total, step = 0, _CHUNK // 4
    for begin in range(0, len(view), step):
        out = stepper.decompress(view[begin : begin + step])
        if out:
            write(memoryview(out))
            total += len(out)
        if consumed is not None:
            consumed(min(begin + step, len(view)))
    if family == "gz" and not stepper.eof:
        raise ValueError("compressed data ends before the end of its gzip stream")
    return total


class _Source:
    """A file-like view of compressed bytes that reports how far it has been read."""

    def __init__(self, view: memoryview, consumed: Callable[[int], None] | None) -> None:
        self.view, self.pos, self.consumed = view, 0, consumed

    def read(self, size: int = -1) -> memoryview:
        end = len(self.view) if size < 0 else min(len(self.view), self.pos + size)
        piece, self.pos = self.view[self.pos : end], end
        if self.consumed is not None and self.pos > _CHUNK // 4:
            self.consumed(self.pos - _CHUNK // 4)  # keep the last piece: the decoder may hold it
        return piece


def _zstd_stream(
    view: memoryview, write: Callable[[memoryview], None], consumed: Callable[[int], None] | None
) -> int:
    zstandard = _module("zstandard", "zstandard")
    buf = memoryview(bytearray(_CHUNK // 2))
    total = 0
    source = _Source(view, consumed)
    with zstandard.ZstdDecompressor().stream_reader(
        source, read_size=_CHUNK // 4, read_across_frames=True
    ) as reader:
        while n := reader.readinto(buf):
            write(buf[:n])
            total += n
    return total
