"""mosaicml-streaming's `streaming.base.array`: `Array`, indexing by int, slice, list, array."""

from streaming.array import Array

__all__ = ["Array"]
