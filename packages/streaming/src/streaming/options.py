"""`StreamingDataset` arguments that mosaicml-streaming users bring along, checked at construction.

- `validate_hash`: ours is True (every digest index.json records; the default), False/None (off),
  or, as in mosaicml-streaming, the name of one hash algorithm (only that one is checked). An
  unknown name is an error listing the known ones; a name the data does not record is an error
  when it records others, and a warning when it records none (there is nothing to check).
- Options of mosaicml-streaming that streaming does not implement are accepted only at the value
  that means what streaming does (their defaults, mostly), and refused at construction with a
  message saying what streaming does instead (`check_mosaic_options`), never at iteration.
- `cache_limit` is refused when a pass cannot fit, by mosaicml-streaming's rule
  (`check_cache_limit`): it must exceed the cached indexes' bytes and hold four of the largest shard
  (raw plus compressed). 0 or None means no limit, as in mosaicml-streaming.
- A `pkl` column is refused when the dataset is made, unless `allow_pickle`/`allow_unsafe_types`
  (`check_safe_encodings`), as mosaicml-streaming refuses it, not at the first read.
- `epoch_size` may be written as mosaicml-streaming allows: 1000, "1000", "1.5k", "2M", "1b".
- The UserWarnings mosaicml-streaming gives for settings that work badly, at construction
  (`usage_warnings`): `predownload` below the batch size, fewer samples than canonical nodes,
  a `py1e` shuffle block smaller than a shard (that shard is then not mixed with others).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

from streaming.encodings import get_encoding
from streaming.errors import UnsafeEncodingError
from streaming.format import ShardInfo
from streaming.hashing import HASHES
from streaming.shuffle import SHUFFLES

__all__ = [
    "MOSAIC_OPTIONS",
    "check_cache_limit",
    "check_mosaic_options",
    "check_recorded_hashes",
    "check_safe_encodings",
    "check_shuffle_algo",
    "parse_epoch_size",
    "parse_validate_hash",
    "usage_warnings",
]

# name -> (the values streaming accepts: they mean what it does, what streaming does instead)
MOSAIC_OPTIONS: dict[str, tuple[tuple[Any, ...], str]] = {
    "partition_algo": (
        ("relaxed",),
        "streaming partitions every epoch with its own elastic scheme: the global batches are the "
        "same for any split into nodes, ranks and workers, like mosaicml-streaming's default "
        "'relaxed' (accepted as meaning it); 'orig' is not supported",
    ),
    "batching_method": (
        ("random",),
        "streaming mixes the streams within each global batch, as mosaicml-streaming's default "
        "'random' does; 'stratified', 'per_stream' and 'device_per_stream' are not supported",
    ),
    "stream_name": (
        ("stream",),
        "streaming has one Stream class and no stream registry: pass streams=[Stream(...)]",
    ),
    "stream_config": (
        (None, {}),
        "streaming has one Stream class and no stream registry: pass streams=[Stream(...)]",
    ),
}
_MOSAIC_SHUFFLES = {"py1b", "py1br", "py2s"}


def parse_validate_hash(value: Any) -> bool | str:
    """True (every recorded digest), False (none: also for None and ""), or an algorithm name."""
    if value is None or value is False or value == "":
        return False
    if value is True:
        return True
    if isinstance(value, str):
        if value not in HASHES:
            raise ValueError(
                f"validate_hash={value!r} is not a hash algorithm; expected True (every hash "
                "index.json records), False or None (no check), or one of "
                f"{', '.join(sorted(HASHES))}"
            )
        return value
    raise TypeError(
        f"validate_hash must be True, False, None or a hash algorithm's name, got {value!r}"
    )


def check_recorded_hashes(validate: bool | str, infos: Sequence[ShardInfo], where: str) -> None:
    """A named algorithm must be one the data records: an error if it records others, a warning
    if it records none (its shards are then checked for size and layout only)."""
    if not isinstance(validate, str) or not infos:
        return
    recorded = sorted({algo for info in infos for algo in info.hashes})
    if not recorded:
        warnings.warn(
            f"validate_hash={validate!r}, but the index of {where} records no hashes: its shards "
            "are checked for size and layout only (write them with MDSWriter(hashes=[...]))",
            UserWarning,
            stacklevel=3,
        )
        return
    lacking = sum(validate not in info.hashes for info in infos)
    if lacking:
        raise ValueError(
            f"validate_hash={validate!r}, but {lacking} of the {len(infos)} shards of {where} do "
            f"not record it (recorded: {', '.join(recorded)}); pass one of those, or True to "
            "check every recorded hash"
        )


def check_cache_limit(limit: int, *, index_bytes: int, largest_shard: int) -> None:
    """mosaicml-streaming's floor for `cache_limit`: above the bytes of the remote streams'
    index.json files (they count against it and stay in the cache; mosaicml-streaming counts a
    local dataset's too, which is in no cache here), and at least four of the largest shard, raw
    plus compressed bytes (a shard being decompressed holds both; two in use, two arriving)."""
    if limit <= index_bytes:
        raise ValueError(
            f"cache_limit {limit} bytes is not above the {index_bytes} bytes of the streams' "
            "index.json files, which the cache keeps; raise cache_limit"
        )
    if limit < 4 * largest_shard:
        raise ValueError(
            f"cache_limit {limit} bytes is below four times the largest shard ({largest_shard} "
            "bytes, raw plus compressed), the least a pass needs; raise cache_limit (as high "
            "as the disk allows, to avoid fetching shards again)"
        )


def check_safe_encodings(infos: Sequence[ShardInfo], allow_pickle: bool, where: str) -> None:
    """Refuse a dataset with a column whose decoding runs code from the data (`pkl`), unless
    the reader opted in; names the first such shard and its columns."""
    if allow_pickle:
        return
    for number, info in enumerate(infos):
        unsafe = [
            f"{name!r} ({encoding})"
            for name, encoding in zip(info.column_names, info.column_encodings, strict=True)
            if not get_encoding(encoding).safe
        ]
        if unsafe:
            raise UnsafeEncodingError(
                f"shard {number} ({info.basename}) of {where} has columns {', '.join(unsafe)} "
                "whose decoding runs code from the data (pickle); pass allow_pickle=True (or "
                "mosaicml-streaming's allow_unsafe_types=True) only for data you trust"
            )


def check_shuffle_algo(algo: str) -> None:
    if algo in SHUFFLES:
        return
    known = ", ".join(sorted(SHUFFLES))
    if algo in _MOSAIC_SHUFFLES:
        raise ValueError(
            f"shuffle_algo={algo!r} is a mosaicml-streaming shuffle that streaming does not "
            f"implement; choose one of {known}: 'py1e' (the default) shuffles within windows "
            "around each shard and 'py1s' within fixed blocks, both keeping a canonical node on "
            "few shards at a time as py1b/py1br/py2s do; 'naive' is a uniform permutation"
        )
    raise ValueError(f"unknown shuffle_algo {algo!r}; choose one of {known}")


def check_mosaic_options(**values: Any) -> None:
    """Refuse, naming what streaming does instead, a mosaicml-streaming option at a value that
    streaming cannot honour (see `MOSAIC_OPTIONS`)."""
    for name, value in values.items():
        accepted, instead = MOSAIC_OPTIONS[name]
        if not any(value == ok and type(value) is type(ok) for ok in accepted):
            shown = " or ".join(repr(ok) for ok in accepted)
            raise ValueError(
                f"{name}={value!r} is not supported (only {shown}, mosaicml-streaming's "
                f"default): {instead}"
            )


_ABBREVIATIONS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def parse_epoch_size(value: int | str | None) -> int | None:
    """Samples per epoch from an int or a string such as "1000", "1.5k", "2M", "1b" (as in
    mosaicml-streaming: k, m, b, t are 10**3, 10**6, 10**9, 10**12); None stays None."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        size = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmbtKMBT]?)\s*", value)
        if match is None:
            raise ValueError(
                f"epoch_size {value!r} is not a number of samples; expected e.g. 1000, '1.5k', "
                "'2m', '1b'"
            )
        # cut off, as mosaicml-streaming's number_abbrev_to_int does ("2.3k" is 2299 there)
        size = int(float(match[1]) * _ABBREVIATIONS[match[2].lower()])
    else:
        raise TypeError(f"epoch_size must be an int or a string like '1.5k', got {value!r}")
    if size is not None and size < 0:
        raise ValueError(f"epoch_size must not be negative, got {value!r}")
    return size


def usage_warnings(
    *,
    batch_size: int,
    predownload: int | None,
    epoch_size: int,
    num_canonical_nodes: int,
    num_nodes: int,
    shuffle: bool,
    shuffle_algo: str,
    shuffle_block_size: int,
    max_shard_samples: int,
) -> list[str]:
    """The warnings mosaicml-streaming gives (as UserWarnings) for these settings, in words."""
    out = []
    if predownload is not None and predownload < batch_size:
        out.append(
            f"predownload={predownload} is below batch_size={batch_size}: batches may wait for "
            "their shards; give predownload at least the per-device batch size"
        )
    if epoch_size < num_canonical_nodes or (
        epoch_size == num_canonical_nodes and num_canonical_nodes < num_nodes
    ):
        out.append(
            f"an epoch of {epoch_size} samples over {num_canonical_nodes} canonical nodes: every "
            f"canonical node gets one sample, and the epoch is padded to {num_canonical_nodes} "
            "by repeating samples; check the dataset's size, or lower num_canonical_nodes"
        )
    if shuffle and shuffle_algo == "py1e" and max_shard_samples > shuffle_block_size:
        out.append(
            f"shuffle_block_size={shuffle_block_size} is smaller than the largest shard "
            f"({max_shard_samples} samples): such a shard's samples are shuffled among "
            "themselves only, not with other shards'; give a larger shuffle_block_size"
        )
    return out
