"""mosaicml-streaming's `streaming.base.format.mds.writer`: `MDSWriter`."""

from streaming.writer import MDSWriter

__all__ = ["MDSWriter"]
