"""`LocalDataset`: a map-style dataset over an MDS dataset in a local folder, mosaicml-streaming's
name for it. `len()`, `size`, `get_item(i)` and `dataset[...]` (ints, slices, lists, numpy
arrays: `streaming.array`); compressed shards are read through their decompressed copies, as a
`StreamingDataset` of the folder reads them. With torch installed it is a
`torch.utils.data.Dataset`.

A difference, on purpose: a `pkl` column is refused unless `allow_unsafe_types=True` (decoding
it runs code from the data); mosaicml-streaming's LocalDataset decodes it unasked.
"""

from __future__ import annotations

from typing import Any

from streaming.array import Array
from streaming.dataset import StreamingDataset

try:
    from torch.utils.data import Dataset

    _BASES: tuple[type, ...] = (Array, Dataset)
except ImportError:  # torch is optional
    _BASES = (Array,)

__all__ = ["LocalDataset"]


class LocalDataset(*_BASES):
    """The samples of the MDS dataset in `local` (or its `split` sub-folder), by index."""

    def __init__(
        self, local: str, split: str | None = None, *, allow_unsafe_types: bool = False
    ) -> None:
        self.local = local
        self.split = split or ""
        self._dataset = StreamingDataset(
            local=local, split=split or None, batch_size=1, allow_unsafe_types=allow_unsafe_types
        )
        self.shards = self._dataset.shards
        self.num_samples = self._dataset.num_samples

    def __len__(self) -> int:
        return self.num_samples

    @property
    def size(self) -> int:
        return self.num_samples

    def get_item(self, sample_id: int) -> dict[str, Any]:
        return self._dataset.get_item(sample_id)

    def __getitem__(self, at: Any) -> Any:
        return Array.__getitem__(self, at)
