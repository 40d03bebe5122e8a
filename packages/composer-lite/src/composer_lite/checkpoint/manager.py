"""`CheckpointManager`: sharded, atomic, resumable checkpoints in a local folder or an object store.

Saving (collective: every rank calls `save`):

    local folder                                  object store (s3://...)
    ranks write DCP shards + their files          ranks write into a local staging folder
      into <folder>/.<name>.tmp-<hex>/            and upload them to <folder>/<name>/...
    -- every rank done (error or not) --          -- every rank done (error or not) --
    rank 0 writes manifest.json into it,          rank 0 uploads manifest.json
      renames it to <folder>/<name>
    rank 0 moves `latest`, then deletes checkpoints past `keep` (never a protected one)

A checkpoint without a manifest is never listed by `latest()` nor loaded by `load()`. Loading
(collective) reshards to the current world size and sharding; a remote checkpoint is first
downloaded, once per node, into `cache_dir`. One job saves into a folder at a time.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from composer_lite.checkpoint.collective import (
    broadcast_from_zero,
    on_all_ranks,
    on_all_ranks_local,
    single_process_quiet,
)
from composer_lite.checkpoint.format import (
    MANIFEST_NAME,
    OBJECTS_NAME,
    STATE_DIR,
    Manifest,
    check_name,
    rank_objects_name,
)
from composer_lite.checkpoint.locations import (
    check_files,
    complete_checkpoints,
    delete_checkpoint,
    fsync_folder,
    location_key,
    normalize_location,
    read_manifest,
    walk_files,
    write_bytes_atomic,
    write_pointer,
)
from composer_lite.checkpoint.space import check_space, space_needed
from composer_lite.checkpoint.state import load_state, save_state, to_bytes
from composer_lite.checkpoint.verify import CheckedReader, hash_file, own_files, read_checked
from composer_lite.dist import barrier, get_rank, get_world_size
from streaming.storage import download, is_remote, join_url, upload_file

__all__ = ["CheckpointManager"]

log = logging.getLogger(__name__)

_THREADS = 8  # parallel uploads and downloads per rank
_LEFTOVER = re.compile(r"^\..+\.(tmp|deleting)-[0-9a-f]{8}$")  # folders of a crashed save/delete


@dataclass(frozen=True, kw_only=True)
class _Written:
    """What the ranks wrote of one checkpoint, for rank 0 to publish in its manifest."""

    name: str
    files: dict[str, int]  # relative path: bytes (remote: what the ranks uploaded)
    hashes: dict[str, str]  # relative path: hash, from the rank that wrote the file
    optimizer_kind: str
    rank_objects: list[int]  # the ranks that wrote rank objects
    protect: frozenset[str]  # checkpoints retention must not delete


class CheckpointManager:
    """Saves, finds and loads the checkpoints of one save folder (a local path or a URL).

    keep: how many of the newest complete checkpoints to keep (None or -1: all of them); a
    checkpoint passed in `save(protect=...)` is never deleted. storage_options: endpoint and
    credentials for `streaming.storage`. cache_dir: the local folder where remote checkpoints are
    staged before upload and downloaded before loading (default: `<tmp>/composer-lite-checkpoints`).

    A local folder must be the same folder for every rank (one node, or a shared filesystem);
    object stores have no such need. `latest()` decides by the manifests; the `latest` pointer
    file is for people and other tools.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        keep: int | None = None,
        storage_options: dict[str, Any] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        text = os.fspath(folder)
        if not text:
            raise ValueError("the checkpoint folder is empty: expected a local path or a URL")
        if keep is not None and (
            isinstance(keep, bool) or not isinstance(keep, int) or (keep < 1 and keep != -1)
        ):
            raise ValueError(f"keep={keep!r}: expected None or -1 (keep all) or an int >= 1")
        self.folder = normalize_location(text)
        self.remote = is_remote(self.folder)
        self.keep = None if keep in (None, -1) else keep
        self.storage_options = dict(storage_options or {})
        self.cache_dir = cache_dir or os.path.join(
            tempfile.gettempdir(), "composer-lite-checkpoints"
        )

    def __repr__(self) -> str:
        return f"CheckpointManager({self.folder!r}, keep={self.keep})"

    # -- finding -------------------------------------------------------------------------------
    def checkpoints(self) -> list[str]:
        """The paths or URLs of the complete checkpoints in the folder, newest first."""
        return [location for location, _ in complete_checkpoints(self.folder, self.storage_options)]

    def latest(self) -> str | None:
        """The newest complete checkpoint (its manifest written), or None; not collective."""
        found = self.checkpoints()
        return found[0] if found else None

    def inspect(self, path: str | os.PathLike[str]) -> Manifest:
        """The manifest of a complete checkpoint; raises `CheckpointNotFoundError` (nothing there)
        or `IncompleteCheckpointError` (no manifest, or files missing) naming it. Not collective."""
        location = normalize_location(os.fspath(path))
        manifest = read_manifest(location, self.storage_options)
        check_files(location, manifest, self.storage_options)
        return manifest

    # -- saving --------------------------------------------------------------------------------
    def save(
        self,
        name: str,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        objects: dict[str, Any],
        rank_objects: dict[str, Any] | None = None,
        protect: Iterable[str] = frozenset(),
    ) -> str:
        """Write checkpoint `name` (collective); return its path or URL once it is complete.

        objects: run state identical on every rank (picklable; tensors, DTensors included, inside
        dicts, lists and tuples are saved through DCP). rank_objects: this rank's own state.
        """
        check_name(name)
        rank = get_rank()
        state, optimizer_kind, payload = save_state(model, optimizer, objects)
        target = join_url(self.folder, name)
        if self.remote:
            on_all_ranks("clearing an older copy", lambda: self._clear_remote(target, rank))
            os.makedirs(self.cache_dir, exist_ok=True)
            root = tempfile.mkdtemp(prefix=f".save-{name}-", dir=self.cache_dir)
        else:
            os.makedirs(self.folder, exist_ok=True)
            tmp = os.path.join(self.folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
            root = broadcast_from_zero(tmp if rank == 0 else None)
        try:
            staging = self.cache_dir if self.remote else self.folder
            needs = on_all_ranks("checking free space", lambda: space_needed(state, staging))
            check_space(needs, name=name)
            with single_process_quiet():
                dcp.save(state, storage_writer=dcp.FileSystemWriter(os.path.join(root, STATE_DIR)))
            written = on_all_ranks(
                "writing its files",
                lambda: self._write_rank_files(root, target, payload, rank_objects, rank),
            )
            saved = _Written(
                name=name,
                files={rel: size for uploaded, _, _ in written for rel, size in uploaded.items()},
                hashes={rel: value for _, hashed, _ in written for rel, value in hashed.items()},
                optimizer_kind=optimizer_kind,
                rank_objects=[r for r, (_, _, has_own) in enumerate(written) if has_own],
                protect=frozenset(protect),
            )
            publish = self._publish_remote if self.remote else self._publish_local
            return on_all_ranks("publishing", lambda: publish(root, saved) if rank == 0 else None)[
                0
            ]
        except BaseException:
            if not self.remote and rank == 0:
                shutil.rmtree(root, ignore_errors=True)  # a crash leaves it; the next save cleans
            raise
        finally:
            if self.remote:
                shutil.rmtree(root, ignore_errors=True)

    def _clear_remote(self, target: str, rank: int) -> None:
        """Rank 0: an older checkpoint of the same name stops being complete before we overwrite."""
        if rank == 0 and self.remote:
            delete_checkpoint(target, self.storage_options)

    def _write_rank_files(
        self, root: str, target: str, payload: dict[str, Any], rank_objects: Any, rank: int
    ) -> tuple[dict[str, int], dict[str, str], bool]:
        """objects.pt (rank 0) and this rank's objects; hash the files this rank wrote; remote:
        upload everything staged here. Returns ({relative path: size} of what this rank uploaded
        (remote) or {} (local), {relative path: hash} of its files, whether it wrote rank
        objects)."""
        if rank == 0:
            write_bytes_atomic(os.path.join(root, OBJECTS_NAME), to_bytes(payload, "objects"))
        if rank_objects is not None:
            path = os.path.join(root, *rank_objects_name(rank).split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_bytes_atomic(path, to_bytes(rank_objects, "rank_objects"))
        # a local folder is shared by the ranks: each hashes what it wrote (the rest: rank 0)
        mine = walk_files(root) if self.remote else own_files(root, rank, rank_objects is not None)
        hashes = {rel: hash_file(os.path.join(root, *rel.split("/"))) for rel in mine}
        if not self.remote:
            return {}, hashes, rank_objects is not None
        files = walk_files(root)
        with ThreadPoolExecutor(_THREADS) as pool:
            list(
                pool.map(
                    lambda rel: upload_file(
                        os.path.join(root, *rel.split("/")),
                        join_url(target, rel),
                        **self.storage_options,
                    ),
                    files,
                )
            )
        return files, hashes, rank_objects is not None

    def _publish_local(self, tmp: str, saved: _Written) -> str:
        existing = complete_checkpoints(self.folder, self.storage_options)
        files = walk_files(tmp)
        hashes = {
            rel: saved.hashes.get(rel) or hash_file(os.path.join(tmp, *rel.split("/")))
            for rel in files
        }
        saved = dataclasses.replace(saved, files=files, hashes=hashes)
        write_bytes_atomic(
            os.path.join(tmp, MANIFEST_NAME), self._manifest(saved, existing).to_json()
        )
        name = saved.name
        final = os.path.join(self.folder, name)
        if os.path.exists(final):
            delete_checkpoint(final, self.storage_options)
        os.rename(tmp, final)
        fsync_folder(self.folder)
        self._after_publish(name, final, existing, saved.protect)
        for leftover in os.listdir(self.folder):  # folders of saves or deletions that crashed
            if _LEFTOVER.match(leftover):
                shutil.rmtree(os.path.join(self.folder, leftover), ignore_errors=True)
        return final

    def _publish_remote(self, root: str, saved: _Written) -> str:
        existing = complete_checkpoints(self.folder, self.storage_options)
        target = join_url(self.folder, saved.name)
        path = os.path.join(root, MANIFEST_NAME)
        write_bytes_atomic(path, self._manifest(saved, existing).to_json())
        upload_file(path, join_url(target, MANIFEST_NAME), **self.storage_options)
        self._after_publish(saved.name, target, existing, saved.protect)
        return target

    def _manifest(self, saved: _Written, existing: list) -> Manifest:
        # Newest is the greatest saved_at_ns: never below an existing one, even if the clock
        # went back, so a new checkpoint always sorts first.
        newest = max((m.saved_at_ns for _, m in existing if m.name != saved.name), default=0)
        return Manifest(
            name=saved.name,
            id=uuid.uuid4().hex,
            saved_at_ns=max(time.time_ns(), newest + 1),
            world_size=get_world_size(),
            files=dict(sorted(saved.files.items())),
            hashes={rel: saved.hashes[rel] for rel in sorted(saved.files)},
            optimizer=saved.optimizer_kind,
            rank_objects=saved.rank_objects,
            torch_version=torch.__version__,
        )

    def _after_publish(
        self, name: str, location: str, existing: list, protect: frozenset[str]
    ) -> None:
        """Move `latest`, then apply retention: a failure here is logged, the save stands."""
        write_pointer(self.folder, name, self.storage_options)
        if self.keep is None:
            return
        protected = {location_key(p) for p in protect} | set(protect)
        older = [(loc, m) for loc, m in existing if m.name != name]
        for loc, manifest in older[self.keep - 1 :]:
            if location_key(loc) in protected or manifest.name in protected:
                continue
            try:
                delete_checkpoint(loc, self.storage_options)
            except Exception as err:
                log.warning("could not delete old checkpoint %s (keep=%d): %s", loc, self.keep, err)

    # -- loading -------------------------------------------------------------------------------
    def load(
        self,
        path: str | os.PathLike[str],
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Load a complete checkpoint into `model` and `optimizer` (collective).

        Returns (objects, this rank's rank_objects, or None if no rank of that number saved any).
        Tensors in objects come back whole (unsharded) on the CPU. Every file is checked against
        its recorded hash as it is read (`checkpoint.verify`); a mismatch raises
        `CorruptCheckpointError` on every rank, and the model and optimizer are then partly
        loaded. The checkpoint's pickles are trusted: load only checkpoints you or your jobs wrote.
        """
        location = normalize_location(os.fspath(path))
        rank = get_rank()
        manifest = on_all_ranks(
            "checking the checkpoint", lambda: self.inspect(location) if rank == 0 else None
        )[0]
        if not manifest.hashes and rank == 0:
            log.warning(
                "checkpoint %s has format version %d (composer-lite 0.2.1 or older): it records "
                "no content hashes, so its files cannot be verified",
                location,
                manifest.version,
            )
        local = location
        if self.remote or is_remote(location):
            local = os.path.join(self.cache_dir, f"{manifest.name}-{manifest.id[:16]}")
        try:
            if local != location:
                on_all_ranks("downloading", lambda: self._download(location, local, manifest))
            loaded = _load_files(local, location, manifest, model, optimizer)
        except BaseException:
            if local != location:  # every rank failed in the same collective: none reads it now
                _drop_download(local)
            raise
        if local != location:  # the downloaded copy has served; every rank is done with it
            barrier()
            _drop_download(local)
        return loaded

    def _download(self, location: str, local: str, manifest: Manifest) -> None:
        """Fetch every file once per node (ranks of a node start at different files)."""
        names = sorted(manifest.files)
        local_rank = int(os.environ.get("LOCAL_RANK", get_rank()))
        local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", get_world_size())))
        start = local_rank * len(names) // local_world
        order = names[start:] + names[:start]
        with ThreadPoolExecutor(_THREADS) as pool:
            list(
                pool.map(
                    lambda rel: download(
                        join_url(location, rel),
                        os.path.join(local, *rel.split("/")),
                        **self.storage_options,
                    ),
                    order,
                )
            )
        check_files(local, manifest, {})


def _load_files(
    local: str,
    where: str,
    manifest: Manifest,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load a local complete checkpoint (`where` names it in errors), checking its files."""
    rank, hashes = get_rank(), manifest.hashes

    def read(relative: str) -> Any:
        path = os.path.join(local, *relative.split("/"))
        data = read_checked(path, relative, hashes.get(relative), where)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)

    payload = on_all_ranks_local("reading its objects", lambda: read(OBJECTS_NAME))
    reader = CheckedReader(
        os.path.join(local, STATE_DIR),
        hashes=hashes,
        sizes=manifest.files,
        where=where,
        rank=rank,
        world=get_world_size(),
    )
    objects = load_state(
        reader,
        model=model,
        optimizer=optimizer,
        optimizer_kind=manifest.optimizer,
        payload=payload,
        where=where,
    )
    mine = rank in manifest.rank_objects
    rank_objects = on_all_ranks_local(
        "reading its rank objects", lambda: read(rank_objects_name(rank)) if mine else None
    )
    return objects, rank_objects


def _drop_download(local: str) -> None:
    if int(os.environ.get("LOCAL_RANK", get_rank())) == 0:
        shutil.rmtree(local, ignore_errors=True)
