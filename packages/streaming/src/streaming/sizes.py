"""Byte sizes in settings (`size_limit`, `cache_limit`), read as mosaicml-streaming reads them.

One parser for every setting, so that a string means the same number of bytes everywhere. As
mosaicml-streaming's `bytes_to_int`: units are powers of 1024, in any case, with spaces allowed
around the number and the unit; a number with a unit may have a fraction, cut off after the unit
is applied; an int or a float is taken as bytes (a float cut off to an int).

    1000, 1000.0, "1000", "1000b"     -> 1000
    "64kb", "64KB", " 64 kb "          -> 65_536          (kb, mb, gb, tb, pb, eb, zb, yb)
    "64mb"                             -> 67_108_864
    "1.5gb"                            -> 1_610_612_736

Refused, with a message saying what was expected: a sign or an exponent, a unit alone ("mb"), a
unit mosaicml-streaming does not know ("k", "64mib": "mb" already means 2**20 bytes), and a bool.
Two forms it refuses are accepted, with the obvious meaning: a fraction of a byte ("1.5",
"1.5b": 1) and a space before "b" ("64 b").
"""

from __future__ import annotations

import math
import re

__all__ = ["UNITS", "parse_bytes"]

# unit -> bytes: "b" and the powers of 1024 that mosaicml-streaming knows
UNITS = {"b": 1} | {f"{prefix}b": 1024 ** (power + 1) for power, prefix in enumerate("kmgtpezy")}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)\s*", re.IGNORECASE)
_IEC = re.compile(r"[kmgtpezy]ib", re.IGNORECASE)


def parse_bytes(value: int | float | str, *, setting: str = "size") -> int:
    """The number of bytes `value` stands for (see the module docstring).

    `setting` names the setting in error messages. Raises `TypeError` for a value that is not
    an int, a float or a string (a bool included), `ValueError` for a negative or unreadable one.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(
            f"{setting} must be a number of bytes or a string like '64mb', got {value!r}"
        )
    if isinstance(value, str):
        return _parse_text(value, setting)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{setting} must be a number of bytes >= 0, got {value!r}")
    return int(value)


def _parse_text(text: str, setting: str) -> int:
    match = _SIZE.fullmatch(text)
    unit = match[2].lower() if match else ""
    if match is None or unit not in ("", *UNITS):
        hint = ""
        if match is not None and _IEC.fullmatch(unit):
            hint = f"; write '{unit[0]}b' for '{unit}': these units are powers of 1024 already"
        units = ", ".join(UNITS)
        raise ValueError(
            f"{setting} {text!r} is not a size; expected a number of bytes with an optional "
            f"unit among {units} (powers of 1024, e.g. '64mb'){hint}"
        )
    number = match[1]
    if unit in ("", "b"):  # as mosaicml-streaming: whole bytes exactly
        return int(number) if number.isdigit() else int(float(number))
    return int(float(number) * UNITS[unit])
