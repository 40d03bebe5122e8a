"""mosaicml-streaming's `streaming.base.format.mds.encodings` helpers, over our encodings
(`streaming.encodings`): the same bytes for every encoding.

`mds_encode(encoding, obj)` returns `bytes` objects unchanged, as mosaicml-streaming's does (a
value already encoded); `mds_decode`, `get_mds_encoded_size` (None for variable-size encodings)
raise ValueError for an unknown encoding; `is_mds_encoding`, `is_mds_encoding_safe` (False only
for `pkl`, whose decoding runs code) and `get_mds_encodings` (the base names) answer questions.
"""

from __future__ import annotations

from typing import Any

from streaming.encodings import ENCODINGS, get_encoding

__all__ = [
    "get_mds_encoded_size",
    "get_mds_encodings",
    "is_mds_encoding",
    "is_mds_encoding_safe",
    "mds_decode",
    "mds_encode",
]


def get_mds_encodings() -> set[str]:
    """The encodings' base names ("ndarray" also takes ":dtype[:shape]")."""
    return set(ENCODINGS)


def is_mds_encoding(encoding: str) -> bool:
    try:
        get_encoding(encoding)
    except (TypeError, ValueError):
        return False
    return True


def is_mds_encoding_safe(encoding: str) -> bool:
    """False for an encoding whose decoding may run code from the data (`pkl`)."""
    return not is_mds_encoding(encoding) or get_encoding(encoding).safe


def mds_encode(encoding: str, obj: Any) -> bytes:
    if isinstance(obj, bytes):
        return obj
    return get_encoding(encoding).encode(obj)


def mds_decode(encoding: str, data: bytes) -> Any:
    return get_encoding(encoding).decode(memoryview(data))


def get_mds_encoded_size(encoding: str) -> int | None:
    """The fixed size of every value's bytes, or None when it varies."""
    return get_encoding(encoding).size
