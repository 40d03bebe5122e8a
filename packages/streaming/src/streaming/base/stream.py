"""mosaicml-streaming's `streaming.base.stream`: `Stream`."""

from streaming.stream import Stream

__all__ = ["Stream"]
