"""mosaicml-streaming's `streaming.base.format.mds`: `MDSWriter`."""

from streaming.writer import MDSWriter

__all__ = ["MDSWriter"]
