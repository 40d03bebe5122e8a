"""The on-disk format of a checkpoint, defined here and nowhere else (version 2; 1 is read too).

A save folder (a local path or an object-store URL) holds:

    <folder>/
      latest                         # text: the name of the newest complete checkpoint (moved last)
      <name>/                        # one checkpoint, e.g. ep1-ba200
        manifest.json                # written last: present <=> the checkpoint is complete
        state/.metadata              # torch.distributed.checkpoint (DCP): model, optimizer, and
        state/__<rank>_<i>.distcp    #   the tensors of `objects`, sharded (DTensors by their owners)
        objects.pt                   # torch.save of the run objects, tensors replaced by TensorRef
        rank_objects/rank<r>.pt      # torch.save of rank r's own objects (RNG states), one per rank
      .<name>.tmp-<hex>/             # a local checkpoint being written (renamed to <name> when done)

`manifest.json` records what a loader checks: the format and its version, the world size at save,
every file with its size in bytes and (since version 2) its content hash (`hash_algorithm`, xxh3
64-bit, hex), whether optimizer state is present, and which ranks wrote rank objects. Sizes are
checked before a load starts, hashes as the load reads the files (`checkpoint.verify`). Readers
refuse a version they do not know; version 1 (composer-lite <= 0.2.1) has no hashes and loads
unverified.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LATEST_NAME",
    "MANIFEST_NAME",
    "OBJECTS_NAME",
    "OPTIMIZER_KINDS",
    "RANK_OBJECTS_DIR",
    "STATE_DIR",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "HASH_ALGORITHM",
    "IncompleteCheckpointError",
    "Manifest",
    "TensorRef",
    "check_name",
    "rank_objects_name",
]

FORMAT_NAME = "composer-lite-checkpoint"
FORMAT_VERSION = 2  # 2: content hashes of the files (composer-lite 0.2.2)
SUPPORTED_VERSIONS = (1, 2)
HASH_ALGORITHM = "xxh3_64"
MANIFEST_NAME = "manifest.json"
LATEST_NAME = "latest"
STATE_DIR = "state"
OBJECTS_NAME = "objects.pt"
RANK_OBJECTS_DIR = "rank_objects"
# How the optimizer was saved: "sharded" (its state is in DCP), "empty" (no step taken yet: only
# the param groups' hyperparameters, in objects.pt), "none" (saved without an optimizer).
OPTIMIZER_KINDS = ("sharded", "empty", "none")
_HEX16 = re.compile(r"[0-9a-f]{16}")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be saved or loaded; the message names it and what is wrong."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """Nothing exists at the checkpoint path or URL."""


class IncompleteCheckpointError(CheckpointError):
    """The checkpoint exists but its save did not finish (no manifest, or files missing)."""


class CorruptCheckpointError(CheckpointError):
    """The checkpoint's bytes are not what was saved: a file's content hash differs from the one
    its manifest recorded, or the manifest itself is unreadable."""


@dataclass(frozen=True)
class TensorRef:
    """Stands in `objects.pt` for a tensor of the run objects; the tensor is `objects.<key>` in DCP."""

    key: str


def rank_objects_name(rank: int) -> str:
    return f"{RANK_OBJECTS_DIR}/rank{rank}.pt"


def check_name(name: str) -> str:
    """A checkpoint name is one path component that is not hidden and not the `latest` pointer."""
    if (
        not isinstance(name, str)
        or not name
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or name == LATEST_NAME
    ):
        raise ValueError(
            f"checkpoint name {name!r} is not usable: expected one non-empty path component "
            f"without '/', not starting with '.', and not {LATEST_NAME!r} (e.g. 'ep1-ba200')"
        )
    return name


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What `manifest.json` holds. `files` maps paths relative to the checkpoint to byte sizes,
    `hashes` the same paths to their content hashes (empty in version 1)."""

    name: str
    id: str
    saved_at_ns: int
    world_size: int
    files: dict[str, int]
    optimizer: str
    rank_objects: list[int] = field(default_factory=list)
    torch_version: str = ""
    hashes: dict[str, str] = field(default_factory=dict)
    hash_algorithm: str = HASH_ALGORITHM
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        """Parse and check a manifest read from `where` (named in every error): one that cannot be
        read raises `CorruptCheckpointError`, an unknown version `CheckpointError`."""
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptCheckpointError(
                f"the manifest of checkpoint {where} is not valid JSON: {err}"
            ) from err
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
            got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise CorruptCheckpointError(
                f"{where} is not a composer-lite checkpoint manifest: expected format "
                f"{FORMAT_NAME!r}, got {got!r}"
            )
        version = raw.get("version")
        if version not in SUPPORTED_VERSIONS:
            raise CheckpointError(
                f"checkpoint {where} has format version {version!r}; this composer-lite reads "
                f"version(s) {list(SUPPORTED_VERSIONS)}: use the composer-lite that wrote it"
            )
        since_2 = {"hashes", "hash_algorithm"}
        known = set(cls.__dataclass_fields__) - (since_2 if version == 1 else set())
        required = {"name", "id", "saved_at_ns", "world_size", "files", "optimizer"}
        missing = sorted((required | (since_2 if version >= 2 else set())) - set(raw))
        unknown = sorted(set(raw) - known)
        if missing or unknown:
            raise CorruptCheckpointError(
                f"the manifest of checkpoint {where} is malformed: missing keys {missing}, "
                f"unknown keys {unknown}"
            )
        manifest = cls(**raw)
        manifest._check(where)
        return manifest

    def _check(self, where: str) -> None:
        problems: list[str] = []
        if not isinstance(self.world_size, int) or self.world_size < 1:
            problems.append(f"world_size {self.world_size!r} (expected an int >= 1)")
        if self.optimizer not in OPTIMIZER_KINDS:
            problems.append(f"optimizer {self.optimizer!r} (expected one of {OPTIMIZER_KINDS})")
        if not isinstance(self.files, dict):
            problems.append(f"files of type {type(self.files).__name__} (expected a mapping)")
        else:
            for path, size in self.files.items():
                if not _safe_relative(path) or not isinstance(size, int) or size < 0:
                    problems.append(f"file entry {path!r}: {size!r}")
            if MANIFEST_NAME in self.files:
                problems.append(f"the manifest lists itself ({MANIFEST_NAME})")
            if self.version >= 2:
                problems.extend(self._hash_problems())
        if problems:
            raise CorruptCheckpointError(
                f"the manifest of checkpoint {where} is malformed: {'; '.join(problems)}"
            )

    def _hash_problems(self) -> list[str]:
        if self.hash_algorithm != HASH_ALGORITHM:
            return [f"hash_algorithm {self.hash_algorithm!r} (expected {HASH_ALGORITHM!r})"]
        if not isinstance(self.hashes, dict):
            return [f"hashes of type {type(self.hashes).__name__} (expected a mapping)"]
        problems = [f"no hash for {path!r}" for path in self.files if path not in self.hashes]
        problems += [
            f"a hash for {path!r}, not a listed file"
            for path in self.hashes
            if path not in self.files
        ]
        problems += [
            f"hash of {path!r}: {value!r} (expected 16 hex digits)"
            for path, value in self.hashes.items()
            if not (isinstance(value, str) and _HEX16.fullmatch(value))
        ]
        return problems

    def summary(self) -> dict[str, Any]:
        """A short description for logs and error messages."""
        return {
            "name": self.name,
            "world_size": self.world_size,
            "files": len(self.files),
            "bytes": sum(self.files.values()),
            "optimizer": self.optimizer,
        }


def _safe_relative(path: Any) -> bool:
    """A relative POSIX path that stays inside the checkpoint (no '..', not absolute)."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        return False
    return all(part not in ("", ".", "..") for part in posixpath.normpath(path).split("/")) and (
        posixpath.normpath(path) == path
    )
