"""Input corpora: find the files, split them into work units, and read documents back.

Inputs are files or folders, local or `s3://` (remote objects are fetched once into a staging
folder through `streaming.storage`). A `.jsonl`/`.json` file holds one JSON object per line, its
text under `text_key`; any other file is text, whose documents are the whole file
(`text_unit="file"`, llm-foundry's convert_text_to_mds), one per line (`"line"`) or one per
blank-line-separated paragraph (`"paragraph"`).

A work unit is a list of byte ranges of files, about `unit_bytes` long, cut only at document
boundaries. Units depend on the inputs and `unit_bytes` alone (never on the number of processes),
so the documents and their order are the same however the work is split.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TEXT_UNITS",
    "Document",
    "InputError",
    "InputFile",
    "Segment",
    "expand_inputs",
    "iter_documents",
    "plan_units",
    "read_segment",
]

TEXT_UNITS = ("file", "line", "paragraph")
JSON_SUFFIXES = (".jsonl", ".json")
_BLOCK = 1 << 20


class InputError(ValueError):
    """Inputs that cannot be read: missing paths, empty corpora, malformed lines (file:line)."""


@dataclass(frozen=True, kw_only=True)
class InputFile:
    """One input file: `name` as the user gave it (path or URL), `path` where it is read locally."""

    name: str
    path: str
    size: int
    jsonl: bool


@dataclass(frozen=True, kw_only=True)
class Segment:
    """Bytes [start, end) of input file number `file`, starting at line number `line` (1-based)."""

    file: int
    start: int
    end: int
    line: int


@dataclass(frozen=True, kw_only=True)
class Document:
    """One document and where it came from (`file:line`, or the file for whole-file documents)."""

    text: str
    where: str


def _is_jsonl(name: str) -> bool:
    return name.lower().endswith(JSON_SUFFIXES)


def _wanted(name: str, include: list[str] | None) -> bool:
    return not name.startswith(".") and (
        include is None or any(fnmatch.fnmatch(name, pattern) for pattern in include)
    )


def _local_files(path: Path, include: list[str] | None) -> list[Path]:
    if path.is_file():
        return [path]
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files) if _wanted(f, include)]
    return found


def _remote_files(url: str, staging: Path, include: list[str] | None) -> list[tuple[str, Path]]:
    from streaming.storage import download, list_objects, object_exists

    urls = [url] if object_exists(url) else list_objects(url.rstrip("/") + "/")
    fetched = []
    for remote in urls:
        name = remote.rsplit("/", 1)[-1]
        if not name or (remote != url and not _wanted(name, include)):
            continue
        digest = hashlib.sha256(remote.encode()).hexdigest()[:16]
        local = staging / f"{digest}-{name}"
        staging.mkdir(parents=True, exist_ok=True)
        download(remote, local)
        fetched.append((remote, local))
    return fetched


def expand_inputs(
    inputs: list[str], *, staging: str | os.PathLike[str], include: list[str] | None = None
) -> list[InputFile]:
    """The input files in a fixed order (each input in turn, files of a folder sorted by path).
    Files inside folders are taken when their name matches a pattern of `include` (fnmatch,
    e.g. ["*.py", "*.md"]; None: every file); hidden files and folders never are.

    Raises InputError naming every input that does not exist or holds no files, and when all the
    files together are empty.
    """
    from streaming.storage import is_remote

    if not inputs:
        raise InputError("inputs: no input given; pass inputs=[file_or_folder,...]")
    files: list[InputFile] = []
    problems = []
    for i, given in enumerate(inputs):
        if is_remote(given):
            pairs = _remote_files(given, Path(staging), include)
        else:
            path = Path(given).expanduser()
            if not path.exists():
                problems.append(f"inputs[{i}]: {given} does not exist")
                continue
            pairs = [(str(p), p) for p in _local_files(path, include)]
        if not pairs:
            matching = f" matching include={include}" if include is not None else ""
            problems.append(f"inputs[{i}]: {given} holds no files{matching}")
        for name, local in pairs:
            size = local.stat().st_size
            files.append(InputFile(name=name, path=str(local), size=size, jsonl=_is_jsonl(name)))
    if problems:
        raise InputError("\n".join(problems))
    if sum(f.size for f in files) == 0:
        listed = ", ".join(inputs)
        raise InputError(f"the corpus is empty: every input file has 0 bytes ({listed})")
    return files


def _line_cuts(path: str, unit_bytes: int, paragraph: bool) -> list[tuple[int, int]]:
    """(byte offset, line number) of cut points: after a newline (after a blank line for
    paragraphs) at or past each multiple of about `unit_bytes`."""
    cuts = [(0, 1)]
    next_target = unit_bytes
    offset, line = 0, 1
    with open(path, "rb") as f:
        for raw in f:
            offset += len(raw)
            line += raw.endswith(b"\n")
            if offset >= next_target and (not paragraph or not raw.strip()):
                cuts.append((offset, line))
                next_target = offset + unit_bytes
    if cuts[-1][0] != offset:
        cuts.append((offset, line))
    return cuts


def plan_units(files: list[InputFile], *, text_unit: str, unit_bytes: int) -> list[list[Segment]]:
    """Work units of about `unit_bytes`: whole files packed together for whole-file documents;
    line-based files cut at document boundaries. Empty files are left out."""
    if text_unit not in TEXT_UNITS:
        raise ValueError(f"text_unit must be one of {TEXT_UNITS}, got {text_unit!r}")
    units: list[list[Segment]] = []
    current: list[Segment] = []
    size = 0
    for i, file in enumerate(files):
        if file.size == 0:
            continue
        if not file.jsonl and text_unit == "file":
            pieces = [Segment(file=i, start=0, end=file.size, line=1)]
        else:
            paragraph = text_unit == "paragraph" and not file.jsonl
            cuts = _line_cuts(file.path, unit_bytes, paragraph=paragraph)
            pieces = [
                Segment(file=i, start=a, end=b, line=line)
                for (a, line), (b, _) in zip(cuts, cuts[1:], strict=False)
            ]
        for piece in pieces:
            current.append(piece)
            size += piece.end - piece.start
            if size >= unit_bytes:
                units.append(current)
                current, size = [], 0
    if current:
        units.append(current)
    return units


def _json_text(raw: bytes, *, text_key: str, where: str) -> str | None:
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as err:
        raise InputError(
            f"{where}: not a JSON object ({err.msg}); a .jsonl file holds one per line"
        ) from err
    if not isinstance(row, dict) or text_key not in row:
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise InputError(f"{where}: no {text_key!r} key (found {keys}); set text_key=<key>")
    text = row[text_key]
    if not isinstance(text, str):
        raise InputError(f"{where}: {text_key!r} is {type(text).__name__}, expected a string")
    return text


def _segment_lines(file: InputFile, segment: Segment) -> Iterator[tuple[int, bytes]]:
    with open(file.path, "rb") as f:
        f.seek(segment.start)
        data = f.read(segment.end - segment.start)
    for n, raw in enumerate(data.splitlines(keepends=True)):
        yield segment.line + n, raw


def read_segment(
    file: InputFile, segment: Segment, *, text_unit: str, text_key: str
) -> Iterator[Document]:
    """The documents of one segment, in order."""
    if not file.jsonl and text_unit == "file":
        with open(file.path, "rb") as f:
            yield Document(text=f.read().decode("utf-8", errors="replace"), where=file.name)
        return
    if file.jsonl:
        for line, raw in _segment_lines(file, segment):
            if raw.strip():
                where = f"{file.name}:{line}"
                yield Document(text=_json_text(raw, text_key=text_key, where=where), where=where)
        return
    if text_unit == "line":
        for line, raw in _segment_lines(file, segment):
            if raw.strip():
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                yield Document(text=text, where=f"{file.name}:{line}")
        return
    yield from _paragraphs(file, segment)


def _paragraphs(file: InputFile, segment: Segment) -> Iterator[Document]:
    lines: list[bytes] = []
    first = segment.line
    for line, raw in _segment_lines(file, segment):
        if raw.strip():
            if not lines:
                first = line
            lines.append(raw)
        elif lines:
            yield Document(text=_joined(lines), where=f"{file.name}:{first}")
            lines = []
    if lines:
        yield Document(text=_joined(lines), where=f"{file.name}:{first}")


def _joined(lines: list[bytes]) -> str:
    return b"".join(lines).decode("utf-8", errors="replace").rstrip("\r\n")


def iter_documents(
    files: list[InputFile], units: list[list[Segment]], *, text_unit: str, text_key: str
) -> Iterator[Document]:
    """Every document of the planned units, in the global order."""
    for unit in units:
        for segment in unit:
            yield from read_segment(
                files[segment.file], segment, text_unit=text_unit, text_key=text_key
            )
