"""mosaicml-streaming's `streaming.base.format.index`: `get_index_basename()`."""

from streaming.format import INDEX_NAME

__all__ = ["get_index_basename"]


def get_index_basename() -> str:
    """The name of a dataset's index file: "index.json"."""
    return INDEX_NAME
