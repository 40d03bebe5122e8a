"""`Array`: indexing a sequence of samples the way mosaicml-streaming's `Array` does.

`array[i]` with an int (negative counts from the end), a slice, a list (of ints or of lists), or
a numpy array of ints gives one item, or a (nested) list of items in the order asked. Subclasses
provide `size` and `get_item(i)` for `0 <= i < size` (raising IndexError otherwise).

One difference, on purpose: a slice means what it means for a Python list (`slice.indices`),
also with a negative step (`array[::-1]` is every item, last first); mosaicml-streaming's slices
agree for positive steps only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streaming.errors import StreamingError

__all__ = ["Array", "IndexTypeError", "sample_indices"]


class IndexTypeError(StreamingError, ValueError, TypeError):
    """An index that is none of int, slice, list or numpy array (mosaicml-streaming raises a
    ValueError; it is a TypeError too)."""


def sample_indices(at: Any, size: int) -> int | list:
    """The index or (nested) list of indices `at` asks for, negative ones counted from the end
    (those below `-size` stay negative: `get_item` refuses them, naming the index)."""
    if isinstance(at, (int, np.integer)):
        at = int(at)
        return at + size if -size <= at < 0 else at
    if isinstance(at, slice):
        return list(range(*at.indices(size)))
    if isinstance(at, (list, np.ndarray)):
        return [sample_indices(sub, size) for sub in at]
    raise IndexTypeError(
        f"cannot index samples with {type(at).__name__} {at!r}; use an int, a slice, a list or "
        "a numpy array of ints"
    )


class Array:
    """A read-only sequence of items indexed as in the module docstring."""

    @property
    def size(self) -> int:
        raise NotImplementedError

    def get_item(self, index: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, at: Any) -> Any:
        return _items(self, sample_indices(at, self.size))


def _items(array: Array, indices: int | list) -> Any:
    if isinstance(indices, int):
        return array.get_item(indices)
    return [_items(array, sub) for sub in indices]
