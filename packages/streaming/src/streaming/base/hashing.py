"""mosaicml-streaming's `streaming.base.hashing`: `get_hash`, `get_hashes`, `is_hash`."""

from streaming.hashing import get_hash, get_hashes, is_hash

__all__ = ["get_hash", "get_hashes", "is_hash"]
