"""`merge_index`: one `index.json` over datasets written in parts (one writer per process or
task, each into a sub-folder), as mosaicml-streaming's `streaming.base.util.merge_index` makes it.

    merge_index(["out/part0/index.json", "out/part1/index.json"], "out")   # the parts' indexes
    merge_index("out")                                                    # every part under out

The merged index lists every part's shards in order, each basename prefixed with its part's
folder (`part0/shard.00000.mds`), so readers find the shards where the parts wrote them. A part
may be named by a local path, a URL (`s3://...`, read through `streaming.storage`) or a
`(local, remote)` pair (the local copy if it exists, else the remote); `out` likewise, and the
merged index is written there atomically (uploaded for a URL; both for a pair). Without a list,
the parts are the `index.json` files below `out` (sorted), and each prefix is the part's path
relative to `out` (mosaicml-streaming prefixes only the part's own folder name, the same for
parts one level down, which is how writers lay them out).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from streaming.errors import IndexFormatError
from streaming.format import FORMAT_VERSION, INDEX_NAME
from streaming.storage import (
    is_remote,
    join_url,
    list_objects,
    read_bytes,
    upload_bytes,
    write_bytes_atomic,
)

__all__ = ["merge_index", "merge_index_files", "merge_index_root"]

_FILE_KEYS = ("raw_data", "zip_data", "raw_meta", "zip_meta")


def _read(url: str, timeout: float) -> bytes:
    if is_remote(url):
        return read_bytes(url, timeout=timeout)
    with open(url, "rb") as file:
        return file.read()


def _prefixed(data: bytes, where: str, prefix: str) -> list[dict[str, Any]]:
    try:
        obj = json.loads(data)
    except ValueError as err:
        raise IndexFormatError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(obj, dict) or obj.get("version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"{where}: expected an index of format version {FORMAT_VERSION}, got "
            f"{obj.get('version') if isinstance(obj, dict) else obj!r}"
        )
    shards = obj.get("shards")
    if not isinstance(shards, list):
        raise IndexFormatError(f"{where}: expected a list under 'shards'")
    for shard in shards:
        for key in _FILE_KEYS:
            info = shard.get(key) if isinstance(shard, dict) else None
            if isinstance(info, dict) and isinstance(info.get("basename"), str):
                info["basename"] = f"{prefix}/{info['basename']}" if prefix else info["basename"]
    return shards


def _write(out: str | tuple[str, str], data: bytes, keep_local: bool) -> None:
    if isinstance(out, (tuple, list)):
        local, remote = out
    elif is_remote(out):
        local, remote = None, out
    else:
        local, remote = out, None
    if local is not None:
        os.makedirs(local, exist_ok=True)
        write_bytes_atomic(os.path.join(local, INDEX_NAME), data)
    if remote is not None:
        upload_bytes(data, join_url(remote, INDEX_NAME))
        if local is not None and not keep_local:
            os.remove(os.path.join(local, INDEX_NAME))


def merge_index_files(
    index_file_urls: Sequence[str | tuple[str, str]],
    out: str | tuple[str, str],
    keep_local: bool = True,
    download_timeout: float = 60,
) -> None:
    """Merge the given parts' index.json files into `out`'s (see the module docstring)."""
    if not index_file_urls:
        raise ValueError("merge_index needs the parts' index.json files; got none")
    shards: list[dict[str, Any]] = []
    for entry in dict.fromkeys(index_file_urls):  # in order, each once
        if isinstance(entry, (tuple, list)):
            url = entry[0] if os.path.exists(entry[0]) else entry[1]
        else:
            url = entry
        url = url.rstrip("/")
        folder = os.path.basename(os.path.dirname(url.split("://", 1)[-1]))
        shards += _prefixed(_read(url, download_timeout), url, folder)
    data = json.dumps({"shards": shards, "version": FORMAT_VERSION}, sort_keys=True)
    _write(out, data.encode("utf-8"), keep_local)


def merge_index_root(
    out: str | tuple[str, str], keep_local: bool = True, download_timeout: float = 60
) -> None:
    """Merge the index.json files found below `out` into `out`'s own."""
    root = out[0] if isinstance(out, (tuple, list)) and os.path.isdir(out[0]) else out
    if isinstance(root, (tuple, list)):
        root = root[1]
    parts: list[tuple[str, str]] = []  # (url of a part's index, its prefix)
    if is_remote(root):
        base = root.rstrip("/") + "/"
        for url in list_objects(base, timeout=download_timeout):
            rel = url[len(base) :]
            if rel.endswith("/" + INDEX_NAME):
                parts.append((url, rel[: -len(INDEX_NAME) - 1]))
    else:
        for folder, _, files in sorted(os.walk(root)):
            rel = os.path.relpath(folder, root)
            if INDEX_NAME in files and rel != ".":
                parts.append((os.path.join(folder, INDEX_NAME), rel.replace(os.sep, "/")))
    if not parts:
        raise FileNotFoundError(f"merge_index: no part (a sub-folder with {INDEX_NAME}) in {root}")
    shards: list[dict[str, Any]] = []
    for url, prefix in sorted(parts, key=lambda part: part[1]):
        shards += _prefixed(_read(url, download_timeout), url, prefix)
    data = json.dumps({"shards": shards, "version": FORMAT_VERSION}, sort_keys=True)
    _write(out, data.encode("utf-8"), keep_local)


def merge_index(*args: Any, **kwargs: Any) -> None:
    """`merge_index(index_file_urls, out, keep_local=True, download_timeout=60)` or
    `merge_index(out, keep_local=True, download_timeout=60)`, as mosaicml-streaming's."""
    first = args[0] if args else kwargs.get("index_file_urls", kwargs.get("out"))
    if isinstance(first, list) or "index_file_urls" in kwargs:
        return merge_index_files(*args, **kwargs)
    return merge_index_root(*args, **kwargs)
