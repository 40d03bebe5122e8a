"""One check for the configs built from mappings (foundry's YAML): every unknown key at once."""

from __future__ import annotations

import dataclasses
from typing import Any


def reject_unknown_keys(
    cls: type, options: dict[str, Any], what: str, hints: dict[str, str] | None = None
) -> None:
    """Raise one ValueError naming every key of `options` that is not a field of dataclass `cls`;
    `hints` maps other tools' names for a setting to what to use here."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        spelled = [f"{key} -> {hints[key]}" for key in unknown if hints and key in hints]
        instead = f" (composer's names; here: {'; '.join(spelled)})" if spelled else ""
        raise ValueError(f"unknown {what} keys {unknown}{instead}; known keys: {sorted(known)}")
