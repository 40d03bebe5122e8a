"""Build typed config dataclasses from plain data, reporting every problem of the config at once.

    cfg = build(DataPrepConfig, {"inputs": ["a.txt"], "out": "mds", "max_seq_len": "2k"})
    # ConfigError: 1 problem in the config:
    #   max_seq_len: expected int, got str '2k'

OmegaConf stops at the first bad key; `build` walks the whole tree and collects every unknown key
(with a "did you mean" from difflib), every value of the wrong type, every required key left unset
(`???` in YAML) and every value a dataclass's `__post_init__` refuses, each named by its dotted
key, in one `ConfigError`. A `Locator` can add where a key came from (a YAML file and line, or the
command-line override). Supported annotations: bool, int, float (ints are accepted), str, None,
Any, Literal, unions (a union of dataclasses is chosen by the `name` key, as the optimizer
group does), list[T], tuple[T, ...], dict[str, T] and dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Protocol, TypeVar, Union

__all__ = ["MISSING_VALUE", "ConfigError", "Locator", "build", "need", "opt", "problems_of"]

T = TypeVar("T")
MISSING_VALUE = "???"  # OmegaConf's mark for a value that must be given


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and a help line (`foundry <command> --help` shows it)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help}
        )
    if isinstance(default, type):  # a dataclass: its own defaults
        return dataclasses.field(default_factory=default, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def need(help: str) -> Any:
    """A required dataclass field (no default) with a help line."""
    return dataclasses.field(metadata={"help": help})


class Locator(Protocol):
    """Says where a dotted key was set (`configs/model/mpt_tiny.yaml:3`), or None if unknown."""

    def locate(self, key: str) -> str | None: ...


class ConfigError(ValueError):
    """Every problem of one config, one per line, each naming its dotted key."""

    def __init__(
        self, problems: list[str], *, what: str = "the config", missing: tuple[str, ...] = ()
    ) -> None:
        self.problems = list(problems)
        self.missing = missing  # the dotted keys among the problems that are required but unset
        n = len(problems)
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in {what}:\n{lines}")


class _Failed:
    """The value of a node that has problems (never handed to a constructor)."""


_FAILED = _Failed()


@dataclasses.dataclass
class _Walk:
    problems: list[str]
    locator: Locator | None
    missing: list[str] = dataclasses.field(default_factory=list)

    def add(self, key: str, message: str) -> _Failed:
        where = self.locator.locate(key) if self.locator and key else None
        label = key or "<root>"
        self.problems.append(f"{label}: {message}" + (f" ({where})" if where else ""))
        return _FAILED


def build(
    schema: type[T], data: Any, *, locator: Locator | None = None, what: str = "the config"
) -> T:
    """`schema` built from `data` (nested dicts and lists); ConfigError lists every problem."""
    walk = _Walk(problems=[], locator=locator)
    value = _value(schema, data, "", walk)
    if walk.problems:
        raise ConfigError(walk.problems, what=what, missing=tuple(walk.missing))
    assert not isinstance(value, _Failed)
    return value


def problems_of(schema: type, data: Any) -> list[str]:
    """The problems `build` would report, as a list (empty when `data` is valid)."""
    try:
        build(schema, data)
    except ConfigError as err:
        return err.problems
    return []


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _value(tp: Any, value: Any, key: str, walk: _Walk) -> Any:
    if isinstance(value, str) and value == MISSING_VALUE and tp is not Any:
        walk.missing.append(key)
        return walk.add(key, f"required, but not set (give it on the command line: {key}=...)")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(tp, value, key, walk)
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        return _union(tp, value, key, walk)
    if origin is Literal:
        return _literal(tp, value, key, walk)
    if origin in (list, tuple):
        return _sequence(tp, value, key, walk)
    if origin is dict:
        return _mapping(tp, value, key, walk)
    return _scalar(tp, value, key, walk)


def _scalar(tp: Any, value: Any, key: str, walk: _Walk) -> Any:
    if tp is type(None):
        ok = value is None
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"validate: unsupported annotation {tp!r} at {key!r}")
    if not ok:
        return walk.add(key, f"expected {_type_name(tp)}, got {_describe(value)}")
    return value


def _literal(tp: Any, value: Any, key: str, walk: _Walk) -> Any:
    choices = typing.get_args(tp)
    if value in choices and type(value) in {type(c) for c in choices}:
        return value
    hint = _did_you_mean(value, [c for c in choices if isinstance(c, str)])
    listed = ", ".join(repr(c) for c in choices)
    return walk.add(key, f"expected one of {listed}, got {_describe(value)}{hint}")


def _union(tp: Any, value: Any, key: str, walk: _Walk) -> Any:
    arms = typing.get_args(tp)
    if value is None and type(None) in arms:
        return None
    tagged = [a for a in arms if dataclasses.is_dataclass(a)]
    if len(tagged) > 1:
        return _tagged(tagged, value, key, walk)
    for arm in arms:
        trial = _Walk(problems=[], locator=None)
        result = _value(arm, value, key, trial)
        if not trial.problems:
            return result
    for arm in arms:  # a single structured arm: report its problems rather than "expected X or Y"
        if dataclasses.is_dataclass(arm) or typing.get_origin(arm) in (list, tuple, dict):
            if _plausible(arm, value):
                return _value(arm, value, key, walk)
    names = " or ".join(_type_name(a) for a in arms)
    return walk.add(key, f"expected {names}, got {_describe(value)}")


def _plausible(tp: Any, value: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    return isinstance(value, Mapping)


def _tag_of(cls: type) -> str:
    tp = typing.get_type_hints(cls).get("name")
    if typing.get_origin(tp) is not Literal:
        raise TypeError(f"validate: {cls.__name__} in a union needs a `name: Literal[...]` field")
    return typing.get_args(tp)[0]


def _tagged(classes: list[type], value: Any, key: str, walk: _Walk) -> Any:
    """A union of dataclasses told apart by their `name: Literal[...]` field."""
    by_tag = {_tag_of(cls): cls for cls in classes}
    if not isinstance(value, Mapping):
        return walk.add(key, f"expected a mapping with a 'name' key, got {_describe(value)}")
    tag = value.get("name")
    if tag not in by_tag:
        hint = _did_you_mean(tag, list(by_tag))
        listed = ", ".join(map(repr, by_tag))
        return walk.add(_join(key, "name"), f"expected one of {listed}, got {_describe(tag)}{hint}")
    return _dataclass(by_tag[tag], value, key, walk)


def _sequence(tp: Any, value: Any, key: str, walk: _Walk) -> Any:
    if not isinstance(value, (list, tuple)):
        return walk.add(key, f"expected a list, got {_describe(value)}")
    args = typing.get_args(tp)
    item_tp = args[0] if args else Any
    items = [_value(item_tp, item, f"{key}[{i}]", walk) for i, item in enumerate(value)]
    if any(isinstance(item, _Failed) for item in items):
        return _FAILED
    return tuple(items) if typing.get_origin(tp) is tuple else items


def _mapping(tp: Any, value: Any, key: str, walk: _Walk) -> Any:
    if not isinstance(value, Mapping):
        return walk.add(key, f"expected a mapping, got {_describe(value)}")
    _, value_tp = typing.get_args(tp) or (str, Any)
    out = {}
    for name, item in value.items():
        if not isinstance(name, str):
            walk.add(_join(key, str(name)), "keys must be strings")
            continue
        out[name] = _value(value_tp, item, _join(key, name), walk)
    if any(isinstance(item, _Failed) for item in out.values()):
        return _FAILED
    return out


def _did_you_mean(name: Any, known: list[str]) -> str:
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _dataclass(cls: type, value: Any, key: str, walk: _Walk) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        return walk.add(key, f"expected a mapping ({cls.__name__}), got {_describe(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    before = len(walk.problems)
    for name in value:
        if name not in fields:
            hint = _did_you_mean(str(name), sorted(fields))
            known = "" if hint else f" (known: {', '.join(sorted(fields))})"
            walk.add(_join(key, str(name)), f"unknown key{hint}{known}")
    kwargs = {}
    for name, field in fields.items():
        if name in value:
            kwargs[name] = _value(hints[name], value[name], _join(key, name), walk)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            walk.missing.append(_join(key, name))
            walk.add(_join(key, name), f"required, but not set (give it: {_join(key, name)}=...)")
    if len(walk.problems) > before:
        return _FAILED
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # the dataclass's own value checks
        return walk.add(key, str(err))
