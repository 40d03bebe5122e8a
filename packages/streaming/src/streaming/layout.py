"""The streams of a dataset as one sequence of shards: each stream's `index.json` read (fetched
for a remote stream, after claiming its cache folder: `streaming.cacheuse`) and checked as
mosaicml-streaming checks it when a dataset is made, and the sample/shard bookkeeping
mosaicml-streaming exposes on its `StreamingDataset` (`samples_per_shard`, ...), by its names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming.cacheuse import CacheClaim, claim_cache_folder
from streaming.errors import DatasetNotFoundError, EmptyDatasetError
from streaming.format import INDEX_NAME, ShardInfo, parse_index
from streaming.options import check_recorded_hashes, check_safe_encodings
from streaming.stream import Stream

__all__ = ["Layout", "load_index", "load_layout"]


def load_index(stream: Stream, claims: list[CacheClaim]) -> tuple[list[ShardInfo], int]:
    """A stream's shards and its index.json's size in bytes (a remote's is fetched into its
    `local` folder, claimed first and the claim appended to `claims`)."""
    assert stream.folder is not None
    if stream.source is not None:
        from streaming.storage import open_dataset_index

        # Before index.json lands there: the folder may be another remote's cache.
        claims.append(claim_cache_folder(stream.folder, stream.source))
        data = open_dataset_index(stream.source, stream.folder, **stream.storage_options)
        where = f"{stream.source.rstrip('/')}/{INDEX_NAME}"
    else:
        where = os.path.join(stream.folder, INDEX_NAME)
        try:
            with open(where, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise DatasetNotFoundError(
                f"no MDS dataset at {stream.folder}: {where} does not exist"
            ) from None
    return parse_index(data, where), len(data)


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Every shard of the streams, in stream order, with what mosaicml-streaming derives."""

    shards: tuple[tuple[int, ShardInfo], ...]  # (stream index, its index entry)
    num_streams: int
    cached_index_bytes: int  # of the remote streams' index.json files, kept in their caches
    claims: tuple[CacheClaim, ...]  # the remote streams' cache folders, held while in use

    @property
    def samples_per_shard(self) -> np.ndarray:
        return np.array([info.samples for _, info in self.shards], np.int64)

    @property
    def sample_offset_per_shard(self) -> np.ndarray:
        sizes = self.samples_per_shard
        return np.cumsum(sizes) - sizes

    @property
    def stream_per_shard(self) -> np.ndarray:
        return np.array([stream for stream, _ in self.shards], np.int64)

    @property
    def shards_per_stream(self) -> np.ndarray:
        return np.bincount(self.stream_per_shard, minlength=self.num_streams).astype(np.int64)

    @property
    def shard_offset_per_stream(self) -> np.ndarray:
        counts = self.shards_per_stream
        return np.cumsum(counts) - counts

    @property
    def samples_per_stream(self) -> np.ndarray:
        weights = self.samples_per_shard
        per = np.bincount(self.stream_per_shard, weights=weights, minlength=self.num_streams)
        return per.astype(np.int64)

    @property
    def sample_offset_per_stream(self) -> np.ndarray:
        counts = self.samples_per_stream
        return np.cumsum(counts) - counts

    @property
    def largest_shard(self) -> int:
        """Bytes of the largest shard's raw and compressed files together."""
        return max(
            info.raw_data.bytes + (info.zip_data.bytes if info.zip_data else 0)
            for _, info in self.shards
        )

    def bookkeeping(self) -> dict[str, Any]:
        """What mosaicml-streaming's StreamingDataset keeps as attributes, by its names."""
        names = ("samples_per_shard", "sample_offset_per_shard", "stream_per_shard")
        names += ("shards_per_stream", "shard_offset_per_stream")
        names += ("samples_per_stream", "sample_offset_per_stream")
        return {
            "num_streams": self.num_streams,
            "num_shards": len(self.shards),
            **{name: getattr(self, name) for name in names},
        }

    def shard_sizes_per_stream(self) -> list[np.ndarray]:
        sizes, stream_of = self.samples_per_shard, self.stream_per_shard
        return [sizes[stream_of == i] for i in range(self.num_streams)]


def load_layout(streams: Sequence[Stream], *, allow_pickle: bool) -> Layout:
    """Read and check every stream's index (`load_index`): recorded hashes as `validate_hash`
    needs them, `pkl` columns only with `allow_pickle`, and samples in every stream
    (`EmptyDatasetError`, as mosaicml-streaming refuses an empty stream)."""
    shards: list[tuple[int, ShardInfo]] = []
    claims: list[CacheClaim] = []
    cached_index_bytes = 0
    for number, stream in enumerate(streams):
        infos, size = load_index(stream, claims)
        cached_index_bytes += size if stream.source is not None else 0
        where = stream.source or stream.folder
        assert where is not None
        check_recorded_hashes(stream.validate_hash, infos, where)
        check_safe_encodings(infos, allow_pickle, where)
        if not sum(info.samples for info in infos):
            raise EmptyDatasetError(f"no samples to stream: the index of {where} lists no samples")
        shards += [(number, info) for info in infos]
    return Layout(
        shards=tuple(shards),
        num_streams=len(streams),
        cached_index_bytes=cached_index_bytes,
        claims=tuple(claims),
    )
