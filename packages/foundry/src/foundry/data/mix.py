"""Data mixes: a `data/` config's named sources and weights, as `streaming.Stream`s and as a table.

    data = compose_config("data_mix", ["data=mpt_7b", "data.root=s3://bucket/mpt"]).build(...).data
    streams = streams_from_config(data)            # for StreamingDataset(streams=..., ...)
    print(format_mix_table(mix_table(data, tokens=10**12)))

Relative source paths are joined to `data.root`. A source is read from `local` alone (a prepared
dataset folder), or from `remote` (an `s3://` prefix or a folder) cached in `local` (default: a
folder under `data.cache_dir`, else `streaming`'s per-remote cache). Sources weigh in as the MPT
data table does: every source a relative `proportion`, or absolute `repeat`/`choose` amounts.
`data.epoch_size` scales relative weights only: with `repeat`/`choose` it is refused here, by the
source and key, before `streaming` (which refuses it too, as mosaicml-streaming does) is reached.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from foundry.schema import DataConfig, DataMixCommand, SourceConfig, parse_count

if TYPE_CHECKING:
    from streaming import Stream

__all__ = [
    "MixError",
    "MixRow",
    "check_epoch_size",
    "format_mix_table",
    "mix_table",
    "run_command",
    "source_tokens",
    "streams_from_config",
]


class MixError(ValueError):
    """A data mix that cannot be read; the message names the `data.sources.<name>` key."""


def _under_root(path: str | None, root: str | None) -> str | None:
    from streaming.storage import is_remote, join_url

    if path is None or root is None or is_remote(path) or os.path.isabs(path):
        return path
    return join_url(root, path) if is_remote(root) else os.path.join(root, path)


def _dataset_folder(path: str, split: str | None) -> Path:
    return Path(path) / split if split else Path(path)


def _check_weights(data: DataConfig) -> None:
    given = {n for n, s in data.sources.items() if s.proportion is not None}
    if given and given != set(data.sources):
        missing = ", ".join(sorted(set(data.sources) - given))
        raise MixError(
            f"data.sources: proportion is given for some sources but not for {missing}; "
            "give every source a proportion, or none (then use repeat/choose)"
        )
    for name, s in data.sources.items():
        if s.proportion is not None and (s.repeat is not None or s.choose is not None):
            raise MixError(f"data.sources.{name}: give proportion, or repeat/choose, not both")
        for what in ("proportion", "repeat", "choose"):
            value = getattr(s, what)
            if value is not None and value < 0:
                raise MixError(f"data.sources.{name}.{what} must be >= 0, got {value}")
    check_epoch_size(data)


def check_epoch_size(data: DataConfig) -> None:
    """Refuse `data.epoch_size` beside absolute weights (`repeat`/`choose`): those fix the epoch's
    size themselves, and `streaming` refuses the two together, as mosaicml-streaming does. An
    epoch size of 0 is none, as in `streaming`."""
    if data.epoch_size is None or parse_count(data.epoch_size, key="data.epoch_size") == 0:
        return
    keys = [
        f"data.sources.{name}.{what}"
        for name, s in data.sources.items()
        for what in ("repeat", "choose")
        if getattr(s, what) is not None
    ]
    if keys:
        raise MixError(
            f"data.epoch_size={data.epoch_size!r} needs relative weights, but {', '.join(keys)} "
            f"{'sets an absolute amount' if len(keys) == 1 else 'set absolute amounts'}, which "
            "fix the epoch's size themselves: give every source a proportion instead (the "
            "epoch_size is then split by them), or drop data.epoch_size"
        )


def _stream(name: str, source: SourceConfig, data: DataConfig, check: bool) -> Stream:
    from streaming import Stream
    from streaming.storage import is_remote

    remote = _under_root(source.remote, data.root)
    local = _under_root(source.local, data.root)
    key = f"data.sources.{name}"
    if remote is None and local is None:
        raise MixError(f"{key}: give local (a prepared dataset folder) or remote (where it lives)")
    if remote is not None and local is None and data.cache_dir is not None:
        local = os.path.join(data.cache_dir, name)
    folder = local if remote is None else (None if is_remote(remote) else remote)
    if check and folder is not None:
        index = _dataset_folder(folder, source.split) / "index.json"
        if not index.is_file():
            field = "local" if remote is None else "remote"
            hint = (
                ""
                if data.root or os.path.isabs(folder)
                else " (relative to here; data.root is not set)"
            )
            raise MixError(
                f"{key}.{field}: {folder} holds no prepared dataset (no {index}){hint}; "
                "prepare it with `foundry data prep` or fix the path"
            )
    return Stream(
        remote=remote,
        local=local,
        split=source.split,
        proportion=source.proportion,
        repeat=source.repeat,
        choose=source.choose,
    )


def streams_from_config(data: DataConfig, *, check: bool = True) -> list[Stream]:
    """The mix as `streaming.Stream`s, in the config's order. With `check`, every local source
    must hold an `index.json` (remote ones are checked when the dataset opens them)."""
    _check_weights(data)
    return [_stream(name, s, data, check) for name, s in data.sources.items()]


def source_tokens(name: str, source: SourceConfig, data: DataConfig) -> int | None:
    """Tokens in a source: its `tokens` setting, else samples x max_seq_len from a local index."""
    if source.tokens is not None:
        return parse_count(source.tokens, key=f"data.sources.{name}.tokens")
    from streaming.storage import is_remote

    folder = _under_root(source.local or source.remote, data.root)
    if folder is None or is_remote(folder):
        return None
    index = _dataset_folder(folder, source.split) / "index.json"
    if not index.is_file():
        return None
    shards = json.loads(index.read_text())["shards"]
    return sum(int(s["samples"]) for s in shards) * data.max_seq_len


@dataclass(frozen=True, kw_only=True)
class MixRow:
    """One source's line of the table: its tokens, share of the budget, and epochs over it."""

    name: str
    source_tokens: int | None
    share: float | None
    tokens: float | None
    epochs: float | None


def mix_table(data: DataConfig, *, tokens: int) -> list[MixRow]:
    """Each source's share of a `tokens` budget and the epochs over it that this implies."""
    _check_weights(data)
    sizes = {n: source_tokens(n, s, data) for n, s in data.sources.items()}
    amounts: dict[str, float | None] = {}
    for name, s in data.sources.items():
        size = sizes[name]
        if s.proportion is not None:
            amounts[name] = s.proportion
        elif s.choose is not None:
            amounts[name] = s.choose * data.max_seq_len
        elif size is not None:
            amounts[name] = size * (1.0 if s.repeat is None else s.repeat)
        else:
            amounts[name] = None
    known = [a for a in amounts.values() if a is not None]
    total = sum(known) if len(known) == len(amounts) and sum(known) > 0 else None
    rows = []
    for name, amount in amounts.items():
        share = amount / total if total is not None and amount is not None else None
        spent = share * tokens if share is not None else None
        size = sizes[name]
        epochs = spent / size if spent is not None and size else None
        rows.append(MixRow(name=name, source_tokens=size, share=share, tokens=spent, epochs=epochs))
    return rows


def _count(n: float | None) -> str:
    """Tokens as the MPT table writes them: 417.99 B; smaller counts in M or K."""
    if n is None:
        return "?"
    scale, unit = next(((s, u) for s, u in ((1e9, "B"), (1e6, "M")) if n >= s), (1e3, "K"))
    return f"{n / scale:,.2f} {unit}"


def format_mix_table(rows: list[MixRow], *, tokens: int) -> str:
    """The table as MPT-7B's announcement shows it."""
    width = max(len("source"), *(len(r.name) for r in rows)) + 2
    head = (
        f"{'source':<{width}}{'tokens in source':>18}{'share':>9}{'tokens used':>16}{'epochs':>9}"
    )
    lines = [f"mix for a budget of {_count(tokens)}", head, "-" * len(head)]
    for r in rows:
        share = "?" if r.share is None else f"{100 * r.share:.1f}%"
        epochs = "?" if r.epochs is None else f"{r.epochs:.2f}"
        lines.append(
            f"{r.name:<{width}}{_count(r.source_tokens):>18}{share:>9}"
            f"{_count(r.tokens):>16}{epochs:>9}"
        )
    return "\n".join(lines)


def run_command(cfg: DataMixCommand, config_text: str) -> int:
    """`foundry data mix`: print the table (and, with check=true, build the Streams)."""
    tokens = parse_count(cfg.tokens, key="tokens")
    print(format_mix_table(mix_table(cfg.data, tokens=tokens), tokens=tokens))
    if cfg.check:
        streams = streams_from_config(cfg.data)
        print(f"ok: {len(streams)} streams")
    return 0
