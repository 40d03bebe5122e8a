"""mosaicml-streaming's writers of the `json` and `xsv` (csv, tsv) shard formats, which streaming
does not write or read: each name exists so that code importing it imports unchanged, and making
one raises `UnsupportedFormatError` saying what to use instead (`MDSWriter`, whose `str`, `int`,
`float64` and `json` columns hold the same values; MDS is what mosaicml-streaming and LLM
tooling read fastest). A dataset whose index lists such shards is refused when it is read
(`IndexFormatError` naming the shard's format).
"""

from __future__ import annotations

from typing import Any

from streaming.errors import StreamingError

__all__ = ["CSVWriter", "JSONWriter", "TSVWriter", "UnsupportedFormatError", "XSVWriter"]


class UnsupportedFormatError(StreamingError, NotImplementedError):
    """A mosaicml-streaming shard format that streaming does not write or read."""


class _SplitWriter:
    format = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        columns = kwargs.get("columns") or {}
        mds = {name: {"float": "float64"}.get(enc, enc) for name, enc in dict(columns).items()}
        raise UnsupportedFormatError(
            f"{type(self).__name__} writes mosaicml-streaming's {self.format!r} shards, which "
            "streaming does not write or read; write MDS shards instead, with the same values: "
            f"MDSWriter(out=..., columns={mds!r})"
        )


class JSONWriter(_SplitWriter):
    format = "json"


class XSVWriter(_SplitWriter):
    format = "xsv"


class CSVWriter(_SplitWriter):
    format = "csv"


class TSVWriter(_SplitWriter):
    format = "tsv"
