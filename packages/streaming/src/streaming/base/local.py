"""mosaicml-streaming's `streaming.base.local`: `LocalDataset`."""

from streaming.local import LocalDataset

__all__ = ["LocalDataset"]
