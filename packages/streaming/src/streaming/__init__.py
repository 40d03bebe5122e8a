"""streaming: deterministic, elastic streaming datasets over MDS shards.

A drop-in for mosaicml-streaming: the same MDS format (version 2), the same public names (also
under `streaming.base`, its import paths); the differences are listed in the README. `MDSWriter` writes shards locally or to an object store; `StreamingDataset` reads them back
in a global order that does not depend on how the work is split over nodes, ranks and dataloader
workers, and resumes mid-epoch; `StreamingDataLoader` (torch) records how far it got.
"""

from __future__ import annotations

from typing import Any

from streaming.dataset import StreamingDataset
from streaming.local import LocalDataset
from streaming.splitformats import CSVWriter, JSONWriter, TSVWriter, XSVWriter
from streaming.stream import Stream
from streaming.world import World
from streaming.writer import MDSWriter

__version__ = "0.2.1"
__all__ = [
    "CSVWriter",
    "JSONWriter",
    "LocalDataset",
    "MDSWriter",
    "Stream",
    "StreamingDataLoader",
    "StreamingDataset",
    "TSVWriter",
    "World",
    "XSVWriter",
]


def __getattr__(name: str) -> Any:
    # StreamingDataLoader needs torch, an optional dependency: import it only when asked for
    # (without torch, the import raises ModuleNotFoundError saying to install streaming[torch]).
    if name == "StreamingDataLoader":
        from streaming.dataloader import StreamingDataLoader

        return StreamingDataLoader
    raise AttributeError(f"module 'streaming' has no attribute {name!r}")
