"""Reading a task's jsonl file: rows to checked `Example`s, bad rows to `Issue`s with file:line.

    lines, where = read_lines("commonsense_reasoning/piqa.jsonl", data_root)
    examples, bad = parse_rows(lines, where, "multiple_choice", task="piqa/0-shot")

`dataset_uri` is relative to the data root (a local folder or an `s3://` prefix), or absolute
(a path, `file://`, `s3://...`). Remote files are read through `streaming`'s storage layer
(endpoint and credentials from the environment, as everywhere in this stack). A row that is not
JSON, lacks a field, has a field of the wrong type or a gold index outside its choices becomes an
`Issue` naming the file and line; the other rows are evaluated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from evalkit.tasks import Issue

__all__ = ["ROW_PARSERS", "DatasetMissing", "Example", "parse_rows", "read_lines", "resolve_uri"]


class DatasetMissing(FileNotFoundError):
    """A task's dataset file cannot be read (missing locally, or the object store refused)."""


@dataclass(frozen=True, kw_only=True)
class Example:
    """One checked row. Which fields are used depends on the task type:

    language_modeling:  contexts=(context,), continuations=(continuation,)
    multiple_choice:    contexts=(query,), continuations=choices, gold
    schema:             contexts=context_options, continuations=(continuation,), gold
    generation:         contexts=(context,), answers=(answer, *aliases), chain_of_thought
    """

    line: int
    contexts: tuple[str, ...]
    continuations: tuple[str, ...] = ()
    gold: int = 0
    answers: tuple[str, ...] = ()
    chain_of_thought: str = ""
    category: str | None = None


def resolve_uri(dataset_uri: str, data_root: str | os.PathLike[str] | None) -> str:
    """The location of `dataset_uri`: as given when absolute or a URL, else under `data_root`."""
    from streaming.storage import join_url, scheme_of

    if scheme_of(dataset_uri) or os.path.isabs(dataset_uri) or data_root is None:
        return dataset_uri
    return join_url(os.fspath(data_root), dataset_uri)


def read_lines(dataset_uri: str, data_root: str | os.PathLike[str] | None) -> tuple[list[str], str]:
    """(the file's lines, its location for messages); raises `DatasetMissing` naming it."""
    from streaming.storage import is_remote, local_path_of, read_bytes

    where = resolve_uri(dataset_uri, data_root)
    try:
        if is_remote(where):
            data = read_bytes(where)
        else:
            with open(local_path_of(where), "rb") as f:
                data = f.read()
    except (OSError, ValueError) as err:
        raise DatasetMissing(f"cannot read dataset {where}: {err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DatasetMissing(f"dataset {where} is not UTF-8 text: {err}") from None
    return text.splitlines(), where


def _strings(row: dict, key: str, problems: list[str], *, min_len: int = 1) -> tuple[str, ...]:
    value = row.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{key!r} must be a list of strings, got {_show(value)}")
        return ()
    if len(value) < min_len:
        problems.append(f"{key!r} needs at least {min_len} entries, got {len(value)}")
    if any(not v.strip() for v in value):
        problems.append(f"{key!r} has an empty entry: nothing to score")
    return tuple(value)


def _text(row: dict, key: str, problems: list[str], *, empty: bool = True) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        problems.append(f"{key!r} must be a string, got {_show(value)}")
        return ""
    if not empty and not value.strip():
        problems.append(f"{key!r} is empty: nothing to score")
    return value.strip()  # llm-foundry strips every string field of a row


def _gold(row: dict, n: int, what: str, problems: list[str]) -> int:
    value = row.get("gold")
    if not isinstance(value, int) or isinstance(value, bool):
        problems.append(f"'gold' must be an integer index, got {_show(value)}")
        return 0
    if n and not 0 <= value < n:
        problems.append(f"gold {value} is outside the {n} {what} (0..{n - 1})")
    return value


def _show(value: object) -> str:
    return "nothing (missing)" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _language_modeling(row: dict, problems: list[str]) -> dict:
    return {
        "contexts": (_text(row, "context", problems),),
        "continuations": (_text(row, "continuation", problems, empty=False),),
    }


def _multiple_choice(row: dict, problems: list[str]) -> dict:
    choices = _strings(row, "choices", problems, min_len=2)
    return {
        "contexts": (_text(row, "query", problems),),
        "continuations": choices,
        "gold": _gold(row, len(choices), "choices", problems),
    }


def _schema(row: dict, problems: list[str]) -> dict:
    options = tuple(o.strip() for o in _strings(row, "context_options", problems, min_len=2))
    return {
        "contexts": options,
        "continuations": (_text(row, "continuation", problems, empty=False),),
        "gold": _gold(row, len(options), "context_options", problems),
    }


def _generation(row: dict, problems: list[str]) -> dict:
    aliases = _strings(row, "aliases", problems, min_len=0) if "aliases" in row else ()
    cot = _text(row, "chain_of_thought", problems) if "chain_of_thought" in row else ""
    answer = _text(row, "answer", problems, empty=False)
    return {
        "contexts": (_text(row, "context", problems),),
        "answers": (answer, *[a for a in aliases if a != answer]),
        "chain_of_thought": cot,
    }


# icl_task_type -> the parser of one jsonl row (its fields, checked)
ROW_PARSERS: dict[str, Callable[[dict, list[str]], dict]] = {
    "language_modeling": _language_modeling,
    "multiple_choice": _multiple_choice,
    "schema": _schema,
    "generation_task_with_answers": _generation,
}


def parse_rows(
    lines: list[str], where: str, task_type: str, *, task: str, has_categories: bool = False
) -> tuple[list[Example], list[Issue]]:
    """Checked examples and the bad rows (blank lines are skipped, as jsonl readers do)."""
    parse = ROW_PARSERS[task_type]
    examples, bad = [], []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        problems: list[str] = []
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            bad.append(Issue(task, f"{where}:{number}", f"not valid JSON ({err.msg})"))
            continue
        if not isinstance(row, dict):
            bad.append(
                Issue(task, f"{where}:{number}", f"a row is a JSON object, got {_show(row)}")
            )
            continue
        fields = parse(row, problems)
        category = row.get("category")
        if has_categories and not isinstance(category, str):
            problems.append(f"'category' must be a string (has_categories), got {_show(category)}")
        if problems:
            bad.append(Issue(task, f"{where}:{number}", "; ".join(problems)))
            continue
        cat = category if has_categories else None
        examples.append(Example(line=number, category=cat, **fields))
    return examples, bad
