"""mosaicml-streaming's `streaming.base.dataset`: `StreamingDataset`."""

from streaming.dataset import StreamingDataset

__all__ = ["StreamingDataset"]
