"""`streaming.base`: mosaicml-streaming's import paths, so that code written against it imports
unchanged (`from streaming.base import MDSWriter`, `streaming.base.util.clean_stale_shared_memory`,
`streaming.base.format.mds.encodings`, ...). Each module re-exports ours; what mosaicml-streaming
has there and we do not is listed, with why, in the package README's compatibility table.
"""

from __future__ import annotations

from typing import Any

from streaming.base.format import CSVWriter, JSONWriter, MDSWriter, TSVWriter, XSVWriter
from streaming.dataset import StreamingDataset
from streaming.local import LocalDataset
from streaming.stream import Stream

__all__ = [
    "CSVWriter",
    "JSONWriter",
    "LocalDataset",
    "MDSWriter",
    "Stream",
    "StreamingDataLoader",
    "StreamingDataset",
    "TSVWriter",
    "XSVWriter",
]


def __getattr__(name: str) -> Any:
    if name == "StreamingDataLoader":  # needs torch: imported only when asked for
        from streaming.dataloader import StreamingDataLoader

        return StreamingDataLoader
    raise AttributeError(f"module 'streaming.base' has no attribute {name!r}")
