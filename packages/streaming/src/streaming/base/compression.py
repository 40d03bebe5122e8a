"""mosaicml-streaming's `streaming.base.compression`: the codec classes (`Brotli`, `Bzip2`,
`Gzip`, `Snappy`, `Zstandard`, each `Compression(level)` with `.extension`, `.compress`,
`.decompress`) and the helpers `compress`, `decompress`, `get_compressions`, `is_compression`,
`get_compression_extension`, over our codecs (`streaming.compression.CODECS`): the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from streaming.compression import (
    CODECS,
    get_compression_extension,
    get_compressions,
    is_compression,
)
from streaming.compression import compress as _compress
from streaming.compression import decompress as _decompress

__all__ = [
    "Brotli",
    "Bzip2",
    "Compression",
    "Gzip",
    "LevelledCompression",
    "Snappy",
    "Zstandard",
    "compress",
    "decompress",
    "get_compression_extension",
    "get_compressions",
    "is_compression",
]


def compress(algo: str | None, data: bytes) -> bytes:
    """`data` compressed with `algo` ("zstd", "zstd:7", ...); None returns it unchanged."""
    return _compress(algo or None, data)


def decompress(algo: str | None, data: bytes) -> bytes:
    """What `compress(algo, ...)` compressed; None returns `data` unchanged."""
    return _decompress(algo or None, data)


class Compression:
    """One compression family at one level (none for `Snappy`)."""

    extension = ""
    levels: list[int] = []

    def __init__(self, level: int | None = None) -> None:
        codec = CODECS[self.extension]
        self.level = codec.default if level is None else level
        if codec.levels is not None and self.level not in codec.levels:
            raise ValueError(
                f"{self.extension} level {level} is out of range; expected "
                f"{codec.levels.start}..{codec.levels.stop - 1}"
            )

    @classmethod
    def each(cls) -> Iterator[tuple[str, Any]]:
        """(name, instance) of the family and of each of its levels."""
        yield cls.extension, cls()
        for level in cls.levels:
            yield f"{cls.extension}:{level}", cls(level)

    def compress(self, data: bytes) -> bytes:
        return CODECS[self.extension].compress(data, self.level)

    def decompress(self, data: bytes) -> bytes:
        return CODECS[self.extension].decompress(data, None)


class LevelledCompression(Compression):
    """A family with levels."""


class Brotli(LevelledCompression):
    extension = "br"
    levels = list(CODECS["br"].levels or ())


class Bzip2(LevelledCompression):
    extension = "bz2"
    levels = list(CODECS["bz2"].levels or ())


class Gzip(LevelledCompression):
    extension = "gz"
    levels = list(CODECS["gz"].levels or ())


class Snappy(Compression):
    extension = "snappy"


class Zstandard(LevelledCompression):
    extension = "zstd"
    levels = list(CODECS["zstd"].levels or ())
