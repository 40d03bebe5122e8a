"""What `python -m streaming verify` checks of one shard: every file a reader would serve it from.

A shard may be present as its stored file (compressed or not) and, when compressed, as a
decompressed (raw) copy that the cache made. A reader serves the raw copy when one is present and
passes its check (`streaming.rawcopy`), else the stored file. So verify checks both, each the way
a reader does (size, layout, the digests index.json records, or the digest kept of a raw copy),
and says per shard:

    ok            what a reader would serve is whole (`by_hash`: vouched for by a digest, else
                  checked for size and layout only, when nothing is recorded to compare with);
    damaged       a file is bad; the message names it and says what a reader does about it
                  (makes the raw copy again from the compressed file, fetches the shard again,
                  or nothing, when there is nothing to make it from);
    not cached    nothing of it in a cache folder (one a reader marked, see `streaming.cache`):
                  a cache holds only what was read, and a reader fetches the rest;
    missing       nothing of it in a dataset folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from streaming.errors import ShardCorruptError
from streaming.format import ShardInfo
from streaming.rawcopy import Trust, check_raw_copy
from streaming.shard import Shard, selected_hashes

__all__ = ["ShardReport", "verify_shard"]


@dataclass
class ShardReport:
    """The verdict on one shard (see the module docstring)."""

    basename: str
    problems: list[str] = field(default_factory=list)  # damaged or missing files
    checked: list[str] = field(default_factory=list)  # "file: how it was checked"
    by_hash: bool = False  # what a reader serves is vouched for by a digest
    not_cached: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems and not self.not_cached

    def status(self) -> str:
        if self.problems:
            return "BAD: " + "; ".join(self.problems)
        if self.not_cached:
            return "not cached"
        how = "" if self.by_hash else " (sizes and layout only: no hash to check against)"
        return "ok" + how


def verify_shard(
    info: ShardInfo,
    *,
    folder: str,
    raw_folder: str | None,
    cache_of: str | None = None,
    fetch: Callable[[ShardInfo], str] | None = None,
) -> ShardReport:
    """Check the files of shard `info`: its stored file in `folder`, its raw copy in
    `raw_folder`. `cache_of`: the remote (or dataset) that `folder` caches, if it is a cache;
    `fetch(info)` fetches a shard that is absent into `folder` (verifying a remote dataset)."""
    report = ShardReport(info.basename)
    stored = os.path.join(folder, info.basename)
    raw = None
    if info.zip_data is not None and raw_folder is not None:
        raw = os.path.join(raw_folder, info.raw_data.basename)
    has_raw = raw is not None and os.path.exists(raw)
    if not has_raw and not os.path.exists(stored) and fetch is not None:
        stored = fetch(info)
    stored_ok = None
    if os.path.exists(stored):
        stored_ok = _check_stored(report, stored, info, cache_of)
    if raw is not None and has_raw:
        # a local dataset's copies name the compressed file they came from (see rawcopy)
        origin = stored if stored_ok is not None and cache_of is None else None
        _check_raw(report, raw, info, origin, stored_ok, cache_of)
    if stored_ok is None and not has_raw:
        if cache_of is not None:
            report.not_cached = True
        else:
            report.problems.append(f"missing: {stored} does not exist")
    return report


def _check_stored(report: ShardReport, path: str, info: ShardInfo, cache_of: str | None) -> bool:
    try:
        Shard.open(path, info, verify=True).close()
    except (ShardCorruptError, OSError) as err:
        again = " (a reader fetches it again)" if cache_of is not None else ""
        report.problems.append(f"{err}{again}")
        return False
    hashed = bool(selected_hashes(info.stored, True)) or bool(selected_hashes(info.raw_data, True))
    report.by_hash = report.by_hash or hashed
    report.checked.append(f"{path}: {'hashes' if hashed else 'size and layout'}")
    return True


def _check_raw(
    report: ShardReport,
    path: str,
    info: ShardInfo,
    stored: str | None,
    stored_ok: bool | None,
    cache_of: str | None,
) -> None:
    try:
        with Shard.open(path, info, verify=False):  # size and layout
            pass
        trust = check_raw_copy(path, info, True, stored)
    except (ShardCorruptError, OSError) as err:
        if stored_ok:
            fix = f"a reader makes it again from {info.basename}"
        elif cache_of is not None:
            fix = "a reader fetches the shard again"
        else:
            fix = "a reader cannot replace it: no good compressed file to make it from"
        report.problems.append(f"{err} ({fix})")
        return
    if trust is Trust.NONE and stored_ok:  # a reader makes a checked copy from the stored file
        report.checked.append(f"{path}: no digest to check it against (a reader makes it again)")
        return
    report.by_hash = report.by_hash or trust is not Trust.NONE
    how = {
        Trust.INDEX: "hashes",
        Trust.KEPT: "the digest kept of it",
        Trust.NONE: "size and layout",
    }
    report.checked.append(f"{path}: {how[trust]}")
