"""One check for the configs built from mappings (foundry's YAML): every unknown key at once."""

from __future__ import annotations

import dataclasses
from typing import Any


def reject_unknown_keys(cls: type, options: dict[str, Any], what: str) -> None:
    """Raise one ValueError naming every key of `options` that is not a field of dataclass `cls`."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; known keys: {sorted(known)}")
