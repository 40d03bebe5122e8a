"""`StreamingDataLoader`: a torch DataLoader that records how far it got, for exact resumption.

It counts the samples it has yielded (the real size of each batch, as mosaicml-streaming does: a
rank's last batch of an epoch may be short); `state_dict()` turns that into the dataset's position
(summed over all ranks), and `load_state_dict()` hands it back to the dataset, which then starts
its next pass there, whatever the number of ranks or workers of the resumed run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    from torch.utils.data import DataLoader
except ImportError as err:  # torch is an optional dependency: say how to get it
    raise ModuleNotFoundError(
        "StreamingDataLoader needs torch, which is not installed (or cannot be imported: "
        f"{err}); install it with the torch extra: pip install 'streaming[torch]'",
        name="torch",
    ) from err

from streaming.dataset import StreamingDataset
from streaming.world import World

__all__ = ["StreamingDataLoader", "batch_length"]


def batch_length(batch: Any, default: int) -> int:
    """Samples in a collated batch: the length of its first field (a dict's first value, a
    tuple's first element), of a tensor or array, or of a list of samples; else `default`."""
    if isinstance(batch, Mapping):
        batch = next(iter(batch.values()), None)
    elif isinstance(batch, (list, tuple)) and batch and not isinstance(batch[0], Mapping):
        batch = batch[0]  # (inputs, targets, ...) as default_collate makes of tuple samples
    try:
        return len(batch)
    except TypeError:
        return default


class StreamingDataLoader(DataLoader):
    """A DataLoader over a `StreamingDataset` with `state_dict()` / `load_state_dict()`.

    `batch_size` defaults to the dataset's per-device batch size; giving another is an error
    (the dataset lays out global batches by its own).
    """

    def __init__(self, dataset: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(dataset, StreamingDataset):
            size = kwargs.setdefault("batch_size", dataset.batch_size)
            if size != dataset.batch_size:
                raise ValueError(
                    f"StreamingDataLoader batch_size={size} differs from the dataset's batch_size="
                    f"{dataset.batch_size}; set it once, on the dataset"
                )
        super().__init__(dataset, *args, **kwargs)
        self.num_samples_yielded = 0

    def __iter__(self):
        # Eager, like DataLoader.__iter__: the pass begins (and torch's iterator is made, which
        # may draw from the global RNG) when iter() is called, not at the first batch.
        self.num_samples_yielded = 0
        if isinstance(self.dataset, StreamingDataset):
            self.dataset.begin_pass()
        return self._counted(super().__iter__())

    def _counted(self, batches):
        for batch in batches:
            # batch_size=None: torch hands out single samples, unbatched
            size = 1 if self.batch_size is None else batch_length(batch, self.batch_size)
            self.num_samples_yielded += size
            yield batch

    def state_dict(self) -> dict[str, Any] | None:
        """The dataset's position after the samples yielded so far (None for other datasets)."""
        if not isinstance(self.dataset, StreamingDataset):
            return None
        world = World.detect()
        num_samples = self.num_samples_yielded * world.num_ranks
        if self.dataset.replication is not None:  # each group of replicas read the same ones
            num_samples //= self.dataset.replication
        return self.dataset.state_dict(num_samples, from_beginning=False)

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        if isinstance(self.dataset, StreamingDataset):
            self.dataset.load_state_dict(obj)
        self.num_samples_yielded = 0
        # Persistent workers hold copies of the dataset made before this state: start new ones
        # (they would go on from where they were, ignoring it).
        iterator = getattr(self, "_iterator", None)
        if iterator is not None:
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if callable(shutdown):
                shutdown()
            self._iterator = None
