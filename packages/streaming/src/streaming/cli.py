"""Command line: `python -m streaming {inspect,verify,convert}`.

  inspect DATASET            shards, samples, columns, sizes and compression of a dataset
  verify DATASET             check every shard as a reader would serve it; exit 1 if any is bad
  convert INPUT... --out DIR jsonl or text files to MDS

DATASET is a local folder or a remote URL (`s3://bucket/prefix`); remote shards are fetched into
`--cache` (default: a temporary folder removed at exit). verify checks the files a reader would
serve each shard from: the stored file and the decompressed copy the cache made of it (in the
dataset folder, or for a read-only one in the reader's cache folder, or in `--cache`). A cache
folder (a remote stream's `local`) holds only what was read: its absent shards are "not cached",
not bad, and with keep_zip=False its decompressed copies are what is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from streaming.cache import cache_marker
from streaming.errors import StreamingError
from streaming.format import INDEX_NAME, ShardInfo, parse_index
from streaming.stream import Stream
from streaming.verify import ShardReport

__all__ = ["main"]


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


class _Dataset:
    """A dataset folder, a cache folder or a remote, with its index read, and where a reader
    would find each shard's files (see `streaming.verify`)."""

    def __init__(self, where: str, cache: str | None) -> None:
        from streaming.storage import is_remote

        self.where = where
        self.remote = where if is_remote(where) else None
        self.cache_of: str | None = None  # what this folder caches, if it is a cache
        self._tmp = None
        if self.remote:
            if cache is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="streaming-cli-")
                cache = self._tmp.name
            from streaming.storage import open_dataset_index

            self.local = self.raw_folder = cache
            self.cache_of = self.remote
            data = open_dataset_index(self.remote, cache)
            self.index_where = f"{self.remote.rstrip('/')}/{INDEX_NAME}"
        else:
            self.local = where
            self.index_where = os.path.join(where, INDEX_NAME)
            marker = cache_marker(where)
            try:
                with open(self.index_where, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                raise StreamingError(_no_dataset(where, marker)) from None
            if marker is not None and marker["kind"] == "remote":  # a remote stream's cache
                self.cache_of, self.raw_folder = str(marker["source"]), where
            else:  # a dataset: its copies are where a reader would keep them
                self.raw_folder = Stream(local=where, cache_dir=cache).raw_folder()
        self.shards = parse_index(data, self.index_where)

    def fetch(self, info: ShardInfo) -> str:
        """Download a shard of a remote dataset into the local folder; returns its path."""
        from streaming.storage import download

        assert self.remote is not None
        path = os.path.join(self.local, info.basename)
        return download(f"{self.remote.rstrip('/')}/{info.basename}", path)


def _no_dataset(where: str, marker: dict | None) -> str:
    if marker is not None and marker["kind"] == "raw copies":
        return (
            f"{where} holds the decompressed shards of the dataset {marker['source']}, not a "
            f"dataset: verify that with `python -m streaming verify {marker['source']} --cache "
            f"{where}`"
        )
    return f"no MDS dataset at {where}: {os.path.join(where, INDEX_NAME)} does not exist"


def cmd_inspect(args: argparse.Namespace) -> int:
    ds = _Dataset(args.dataset, args.cache)
    rows = [
        {
            "shard": s.basename,
            "samples": s.samples,
            "raw_bytes": s.raw_data.bytes,
            "stored_bytes": (s.zip_data or s.raw_data).bytes,
            "compression": s.compression,
            "hashes": list(s.hashes),
        }
        for s in ds.shards
    ]
    columns = {}
    if ds.shards:
        first = ds.shards[0]
        columns = dict(zip(first.column_names, first.column_encodings, strict=True))
    total = {
        "shards": len(rows),
        "samples": sum(r["samples"] for r in rows),
        "raw_bytes": sum(r["raw_bytes"] for r in rows),
        "stored_bytes": sum(r["stored_bytes"] for r in rows),
        "compression": sorted({str(r["compression"]) for r in rows}),
        "columns": columns,
    }
    if args.json:
        print(json.dumps({"dataset": args.dataset, "total": total, "shards": rows}, indent=2))
        return 0
    print(f"dataset      {args.dataset}")
    print(f"shards       {total['shards']}")
    print(f"samples      {total['samples']:,}")
    print(f"size         {_human(total['raw_bytes'])} raw, {_human(total['stored_bytes'])} stored")
    print(f"compression  {', '.join(total['compression'])}")
    print("columns      " + ", ".join(f"{k}: {v}" for k, v in columns.items()))
    if args.shards:
        print(f"\n{'shard':28s} {'samples':>9s} {'raw':>10s} {'stored':>10s}  compression")
        for r in rows:
            print(
                f"{r['shard']:28s} {r['samples']:9,d} {_human(r['raw_bytes']):>10s} {_human(r['stored_bytes']):>10s}  {r['compression']}"
            )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from streaming.verify import verify_shard

    ds = _Dataset(args.dataset, args.cache)
    reports = []
    for n, info in enumerate(ds.shards, 1):
        try:
            report = verify_shard(
                info,
                folder=ds.local,
                raw_folder=ds.raw_folder,
                cache_of=ds.cache_of,
                fetch=ds.fetch if ds.remote else None,
            )
        except (StreamingError, OSError) as err:  # the shard could not be fetched
            report = ShardReport(info.basename, problems=[str(err)])
        reports.append(report)
        if report.problems or args.verbose:  # not cached: in the summary only
            print(f"[{n}/{len(ds.shards)}] {info.basename}: {report.status()}")
            for line in report.checked if args.verbose else ():
                print(f"    {line}")
    print(_verify_summary(ds, reports))
    bad = [r.basename for r in reports if r.problems]
    if bad:
        print("bad shards: " + ", ".join(bad))
    return 1 if bad else 0


def _verify_summary(ds: _Dataset, reports: list[ShardReport]) -> str:
    ok = [r for r in reports if r.ok]
    hashed = sorted({h for s in ds.shards for h in s.hashes})
    unhashed = sum(not r.by_hash for r in ok)
    if not hashed:
        how = "no hashes recorded; sizes and layout only"
    elif unhashed:
        how = f"hashes {', '.join(hashed)}; {unhashed} by sizes and layout only: no hash to check"
    else:
        how = f"hashes {', '.join(hashed)}"
    line = f"{len(ok)}/{len(reports)} shards ok ({how})"
    not_cached = sum(r.not_cached for r in reports)
    if not_cached:
        line += (
            f", {not_cached} not cached (this folder caches {ds.cache_of}: a reader fetches "
            "them when it needs them)"
        )
    return line


def _read_inputs(
    paths: list[str], fmt: str, text_key: str, unit: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) for each sample: `where` is "path:line" (or the path, one per file)."""
    for path in paths:
        kind = fmt if fmt != "auto" else ("jsonl" if path.endswith((".jsonl", ".json")) else "text")
        line_no = 0
        try:
            with open(path, encoding="utf-8") as f:
                if kind != "jsonl" and unit == "file":
                    yield path, {text_key: f.read()}
                    continue
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    if kind != "jsonl":
                        yield f"{path}:{line_no}", {text_key: line.rstrip("\n")}
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise StreamingError(
                            f"{path}:{line_no}: not valid JSON ({err.msg})"
                        ) from None
                    if not isinstance(record, dict):
                        raise StreamingError(
                            f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}"
                        )
                    yield f"{path}:{line_no}", record
        except UnicodeDecodeError as err:
            raise StreamingError(
                f"{_first_undecodable(path)}: not UTF-8 text ({err.reason})"
            ) from None


def _first_undecodable(path: str) -> str:
    """ "path:line" of the first line that is not UTF-8 (the error comes from a read-ahead block)."""
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return f"{path}:{line_no}"
    return path


def _infer_columns(record: dict[str, Any]) -> dict[str, str]:
    kinds = {bool: "json", int: "int", float: "float64", str: "str"}
    return {k: kinds.get(type(v), "json") for k, v in record.items()}


def cmd_convert(args: argparse.Namespace) -> int:
    from streaming.writer import MDSWriter

    for path in args.inputs:
        if not os.path.isfile(path):
            raise StreamingError(f"input file {path} does not exist")
    records = _read_inputs(args.inputs, args.format, args.text_key, args.unit)
    first = next(records, None)
    if first is None:
        raise StreamingError(f"no samples in {', '.join(args.inputs)}")
    columns = (
        dict(c.split(":", 1) for c in args.columns.split(","))
        if args.columns
        else _infer_columns(first[1])
    )
    hint = (
        ""
        if args.columns
        else f" (columns inferred from {first[0]}: {columns}; --columns sets them)"
    )
    start, count = time.perf_counter(), 0
    with MDSWriter(
        out=args.out,
        columns=columns,
        compression=args.compression or None,
        hashes=args.hashes.split(",") if args.hashes else None,
        size_limit=args.size_limit,
        exist_ok=args.overwrite,
    ) as writer:
        for where, record in _chain(first, records):
            try:
                writer.write(record)
            except (StreamingError, ValueError, TypeError) as err:
                raise StreamingError(f"{where}: {err}{hint}") from err
            count += 1
            if count % 10_000 == 0 and sys.stderr.isatty():
                print(f"\r{count:,} samples", end="", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    print(f"\rwrote {count:,} samples to {args.out} in {seconds:.1f} s (columns: {columns})")
    return 0


def _chain(
    first: tuple[str, dict[str, Any]], rest: Iterator[tuple[str, dict[str, Any]]]
) -> Iterator[tuple[str, dict[str, Any]]]:
    yield first
    yield from rest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streaming",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="shards, samples, columns, sizes and compression")
    p.add_argument("dataset", help="local folder or remote URL holding index.json")
    p.add_argument("--shards", action="store_true", help="also list every shard")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--cache", help="local folder for a remote dataset's index")
    p.set_defaults(run=cmd_inspect)
    p = sub.add_parser("verify", help="check every shard as a reader would serve it")
    p.add_argument("dataset", help="local folder (dataset or cache) or remote URL of index.json")
    p.add_argument(
        "--cache",
        help="a remote dataset's cache folder (default: temporary); for a local dataset, the "
        "cache_dir a reader keeps its decompressed shards in",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="print every shard, not only bad ones"
    )
    p.set_defaults(run=cmd_verify)
    p = sub.add_parser("convert", help="jsonl or text files to MDS")
    p.add_argument(
        "inputs", nargs="+", help="input files (.jsonl: one JSON object per line; other: text)"
    )
    p.add_argument("--out", required=True, help="output folder or remote URL")
    p.add_argument(
        "--format",
        choices=["auto", "jsonl", "text"],
        default="auto",
        help="input format (default: by extension)",
    )
    p.add_argument("--columns", help="name:encoding,... (default: inferred from the first record)")
    p.add_argument("--text-key", default="text", help="column name for text inputs (default: text)")
    p.add_argument(
        "--unit",
        choices=["line", "file"],
        default="line",
        help="text inputs: one sample per non-empty line or per file",
    )
    p.add_argument(
        "--compression",
        default="zstd",
        help="zstd[:level], gz, bz2, br, snappy, or '' for none (default: zstd)",
    )
    p.add_argument(
        "--hashes", default="xxh64", help="comma-separated hash algorithms (default: xxh64)"
    )
    p.add_argument(
        "--size-limit",
        default=1 << 26,
        help="shard size limit in bytes or e.g. 64mb (default: 64 MiB)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.set_defaults(run=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (StreamingError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
