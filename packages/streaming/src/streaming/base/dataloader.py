"""mosaicml-streaming's `streaming.base.dataloader`: `StreamingDataLoader` (needs torch)."""

from streaming.dataloader import StreamingDataLoader

__all__ = ["StreamingDataLoader"]
