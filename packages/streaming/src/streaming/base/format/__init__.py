"""mosaicml-streaming's `streaming.base.format`: the writers, `get_index_basename`, and the
index's `FileInfo`."""

from streaming.base.format.index import get_index_basename
from streaming.format import FileInfo
from streaming.splitformats import CSVWriter, JSONWriter, TSVWriter, XSVWriter
from streaming.writer import MDSWriter

__all__ = [
    "CSVWriter",
    "FileInfo",
    "JSONWriter",
    "MDSWriter",
    "TSVWriter",
    "XSVWriter",
    "get_index_basename",
]
