"""Checkpoints where they live: manifests, completeness, listing, deleting and the `latest` pointer.

Every function takes a location that is a local path or an object-store URL (`s3://...`) and
works the same on both; object-store calls go through `streaming.storage` with its retries. None
of them is collective.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from composer_lite.checkpoint.format import (
    LATEST_NAME,
    MANIFEST_NAME,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    IncompleteCheckpointError,
    Manifest,
)
from streaming.errors import RemoteNotFoundError
from streaming.storage import (
    delete_object,
    is_remote,
    join_url,
    list_objects,
    local_path_of,
    read_bytes,
    upload_bytes,
)
from streaming.storage import write_bytes_atomic as atomic_write_bytes

__all__ = [
    "check_files",
    "complete_checkpoints",
    "delete_checkpoint",
    "fsync_folder",
    "location_key",
    "normalize_location",
    "read_manifest",
    "read_pointer",
    "walk_files",
    "write_bytes_atomic",
    "write_pointer",
]

log = logging.getLogger(__name__)

_THREADS = 8  # parallel requests when reading many manifests or deleting many objects


def read_manifest(location: str, options: dict[str, Any]) -> Manifest:
    """The checked manifest of the checkpoint at `location`; a clear error if there is none."""
    try:
        if is_remote(location):
            data = read_bytes(join_url(location, MANIFEST_NAME), **options)
        else:
            if not os.path.exists(location):
                raise CheckpointNotFoundError(
                    f"no checkpoint at {location!r}: the path does not exist"
                )
            if not os.path.isdir(location):
                raise CheckpointNotFoundError(
                    f"{location!r} is a file; expected a checkpoint folder (with {MANIFEST_NAME})"
                )
            with open(os.path.join(location, MANIFEST_NAME), "rb") as file:
                data = file.read()
    except (FileNotFoundError, RemoteNotFoundError) as err:
        if isinstance(err, CheckpointNotFoundError):
            raise
        raise _no_manifest_error(location, options) from None
    return Manifest.from_json(data, location)


def _no_manifest_error(location: str, options: dict[str, Any]) -> Exception:
    if is_remote(location) and not list_objects(_prefix(location), **options):
        return CheckpointNotFoundError(f"no checkpoint at {location}: nothing is stored there")
    inside = complete_checkpoints(location, options)
    if inside:
        return IncompleteCheckpointError(
            f"{location} is a save folder, not a checkpoint: it has no {MANIFEST_NAME} of its "
            f"own; its newest complete checkpoint is {inside[0][0]} (load that, or resume with "
            "autoresume=True and this folder as save_folder)"
        )
    return IncompleteCheckpointError(
        f"checkpoint {location} is incomplete: it has no {MANIFEST_NAME}, which a save writes "
        "last, so its save did not finish (the job stopped between writing the data and the "
        "manifest?); it cannot be loaded, use an earlier complete checkpoint"
    )


def check_files(location: str, manifest: Manifest, options: dict[str, Any]) -> None:
    """Every file the manifest lists is there (locally: with its size); else a clear error."""
    if is_remote(location):
        prefix = _prefix(location)
        present = {url[len(prefix) :] for url in list_objects(prefix, **options)}
        bad = [f"{name} (missing)" for name in manifest.files if name not in present]
    else:
        bad = []
        for name, size in manifest.files.items():
            path = os.path.join(location, *name.split("/"))
            actual = os.path.getsize(path) if os.path.isfile(path) else None
            if actual is None:
                bad.append(f"{name} (missing)")
            elif actual != size:
                bad.append(f"{name} ({actual} bytes, the manifest says {size})")
    if bad:
        shown = ", ".join(bad[:8]) + (f", ... ({len(bad)} in all)" if len(bad) > 8 else "")
        raise IncompleteCheckpointError(
            f"checkpoint {location} is incomplete: {len(bad)} of the {len(manifest.files)} files "
            f"its manifest lists are missing or truncated: {shown}"
        )


def complete_checkpoints(folder: str, options: dict[str, Any]) -> list[tuple[str, Manifest]]:
    """(location, manifest) of every complete checkpoint directly in `folder`, newest first.

    A checkpoint is complete when its manifest exists and can be read (an unreadable one is
    skipped with a warning; a manifest of an unknown version raises); hidden names (saves in
    progress, deletions) are ignored. Newest means the latest `saved_at_ns`, then the greatest name.
    """
    if is_remote(folder):
        prefix = _prefix(folder)
        names = sorted(
            {
                rel.split("/")[0]
                for rel in (url[len(prefix) :] for url in list_objects(prefix, **options))
                if rel.count("/") == 1
                and rel.endswith("/" + MANIFEST_NAME)
                and not rel.startswith(".")
            }
        )
        locations = [join_url(folder, name) for name in names]
        with ThreadPoolExecutor(min(_THREADS, max(1, len(locations)))) as pool:
            data = list(
                pool.map(lambda loc: read_bytes(join_url(loc, MANIFEST_NAME), **options), locations)
            )
    else:
        if not os.path.isdir(folder):
            return []
        locations, data = [], []
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name, MANIFEST_NAME)
            if name.startswith(".") or not os.path.isfile(path):
                continue
            with open(path, "rb") as file:
                data.append(file.read())
            locations.append(os.path.join(folder, name))
    found = []
    for location, raw in zip(locations, data, strict=True):
        try:
            found.append((location, Manifest.from_json(raw, location)))
        except CorruptCheckpointError as err:  # not loadable, so not complete; never fatal here
            log.warning("ignoring checkpoint %s: %s", location, err)
    return sorted(found, key=lambda item: (item[1].saved_at_ns, item[1].name), reverse=True)


def delete_checkpoint(location: str, options: dict[str, Any]) -> None:
    """Remove a checkpoint; it stops being complete first (manifest gone), then its files go."""
    if is_remote(location):
        delete_object(join_url(location, MANIFEST_NAME), **options)
        urls = list_objects(_prefix(location), **options)
        with ThreadPoolExecutor(_THREADS) as pool:
            list(pool.map(lambda url: delete_object(url, **options), urls))
        return
    parent, name = os.path.split(os.path.abspath(location))
    trash = os.path.join(parent, f".{name}.deleting-{secrets.token_hex(4)}")
    os.rename(location, trash)  # one atomic step: it is gone from listings at once
    shutil.rmtree(trash, ignore_errors=True)


def read_pointer(folder: str, options: dict[str, Any]) -> str | None:
    """The name the `latest` pointer holds, or None if there is no pointer."""
    where = join_url(folder, LATEST_NAME)
    try:
        if is_remote(folder):
            return read_bytes(where, **options).decode().strip() or None
        with open(where, encoding="utf-8") as file:
            return file.read().strip() or None
    except (FileNotFoundError, RemoteNotFoundError):
        return None


def write_pointer(folder: str, name: str, options: dict[str, Any]) -> None:
    """Point `latest` at `name` (atomically: readers see the old name or the new one)."""
    where = join_url(folder, LATEST_NAME)
    if is_remote(folder):
        upload_bytes(f"{name}\n".encode(), where, **options)
    else:
        write_bytes_atomic(where, f"{name}\n".encode())


def write_bytes_atomic(path: str, data: bytes) -> None:
    """streaming's atomic local write (temp file, fsync, rename), then fsync the folder too."""
    atomic_write_bytes(path, data)
    fsync_folder(os.path.dirname(os.path.abspath(path)))


def fsync_folder(folder: str) -> None:
    """Make renames inside `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prefix(location: str) -> str:
    return location.rstrip("/") + "/"


def walk_files(root: str) -> dict[str, int]:
    """{relative POSIX path: size} of every file under the local folder `root`."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root).replace(os.sep, "/")] = os.path.getsize(path)
    return dict(sorted(found.items()))


def normalize_location(location: str) -> str:
    """A URL without a trailing '/', or a local path (a file:// URL becomes its path)."""
    if is_remote(location):
        return location.rstrip("/")
    path = local_path_of(location)
    return path.rstrip("/") or path


def location_key(location: str) -> str:
    """What identifies a checkpoint location when comparing two (e.g. with `protect`)."""
    if is_remote(location):
        return location.rstrip("/")
    return os.path.realpath(local_path_of(location))
