"""Finetuning examples: prompt/response and chat rows, read with their file and line, checked,
and tokenized into `input_ids` and `labels` (-100 on every token that is not a response).

Rows (a `.jsonl` file holds one JSON object per line; a `.json` file a JSON array of them, or
one per line):

    {"prompt": "...", "response": "..."}                       prompt_response
    {"messages": [{"role": "user", "content": "..."}, ...]}    chat (the `messages` form)
    {"conversations": [{"from": "human", "value": "..."}]}     chat (ShareGPT, FastChat's data)

`format="auto"` takes each file's format from its first row; every row must then have it. A
prompt/response pair renders `plain` (the prompt, then the response and EOS: llm-foundry's
instruction format; the loss covers the response and EOS) or as a `chat` (a user turn and an
assistant turn). A chat renders with `foundry.chat`'s ChatML template; the loss covers every
assistant turn's content and its `<|im_end|>`, none of the system or user turns.

Each example's first token never carries a label: nothing before it in the example predicts it,
so in a packed row no loss crosses from one example into the next.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from foundry.chat import ASSISTANT, USER, ChatFormatError, chat_segments, check_roles, from_sharegpt

__all__ = [
    "FORMATS",
    "IGNORE",
    "Example",
    "FinetuneDataError",
    "Tokenized",
    "fit_length",
    "read_examples",
    "row_format",
    "tokenize_examples",
]

FORMATS = ("auto", "prompt_response", "chat")
IGNORE = -100  # the label of a token that carries no loss
MAX_PROBLEMS = 10  # bad rows named in one error


class FinetuneDataError(ValueError):
    """Finetuning input that cannot be used; the message names the file and line."""


@dataclass(frozen=True, kw_only=True)
class Example:
    """One example as text pieces: (text, trained?) in order; `eos`: a trained EOS follows."""

    where: str  # "file:line"
    format: Literal["prompt_response", "chat"]
    segments: tuple[tuple[str, bool], ...]
    eos: bool


@dataclass(frozen=True, kw_only=True)
class Tokenized:
    """An example's token ids and labels (int32, same length)."""

    where: str
    input_ids: np.ndarray
    labels: np.ndarray


def _json_array(text: str, name: str) -> Iterator[tuple[int, Any]]:
    """(line, element) of a JSON array, each element's line being where it starts."""
    decoder = json.JSONDecoder()
    line, seen, i = 1, 0, text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        if i < len(text) and text[i] == "]":
            return
        line += text.count("\n", seen, i)
        seen = i
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as err:
            raise FinetuneDataError(f"{name}:{err.lineno}: not valid JSON ({err.msg})") from None
        yield line, value
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        if i < len(text) and text[i] == ",":
            i += 1
        elif i >= len(text) or text[i] != "]":
            at = text.count("\n", 0, i) + 1
            raise FinetuneDataError(f"{name}:{at}: expected ',' or ']' between array elements")


def _rows(name: str, path: str) -> Iterator[tuple[str, Any]]:
    """("file:line", parsed row) of a .jsonl file, or of a .json array (or JSON lines)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if name.endswith(".json") and text.lstrip().startswith("["):
        for line, value in _json_array(text, name):
            yield f"{name}:{line}", value
        return
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield f"{name}:{line}", json.loads(raw)
        except json.JSONDecodeError as err:
            raise FinetuneDataError(f"{name}:{line}: not valid JSON ({err.msg})") from None


def row_format(row: Any, where: str) -> Literal["prompt_response", "chat"]:
    """The format a row is in, judged from its keys."""
    if not isinstance(row, Mapping):
        raise FinetuneDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "messages" in row or "conversations" in row:
        return "chat"
    if "prompt" in row or "response" in row:
        return "prompt_response"
    raise FinetuneDataError(
        f"{where}: a row with keys {sorted(row)}; expected 'prompt' and 'response' "
        "(prompt_response), or 'messages' or 'conversations' (chat)"
    )


def _pair(row: Mapping[str, Any], where: str, template: str) -> Example:
    for key in ("prompt", "response"):
        if key not in row:
            raise FinetuneDataError(
                f"{where}: missing {key!r}; a prompt_response row needs 'prompt' and 'response' "
                f"strings (it has {sorted(row)})"
            )
        if not isinstance(row[key], str):
            raise FinetuneDataError(
                f"{where}: {key!r} should be a string, got {type(row[key]).__name__}"
            )
    if template == "chat":
        messages = [
            {"role": USER, "content": row["prompt"]},
            {"role": ASSISTANT, "content": row["response"]},
        ]
        check_roles(messages, where=where)
        segments = chat_segments(messages)
        return Example(where=where, format="prompt_response", segments=tuple(segments), eos=False)
    segments = ((row["prompt"], False), (row["response"], True))
    return Example(where=where, format="prompt_response", segments=segments, eos=True)


def _chat(row: Mapping[str, Any], where: str) -> Example:
    if "messages" in row:
        messages = row["messages"]
    else:
        messages = from_sharegpt(row["conversations"], where=where)
    check_roles(messages, require_assistant=True, where=where)
    return Example(where=where, format="chat", segments=tuple(chat_segments(messages)), eos=False)


def _example(row: Any, where: str, fmt: str, pair_template: str) -> Example:
    found = row_format(row, where)
    if found != fmt:
        raise FinetuneDataError(
            f"{where}: a {found} row in a {fmt} file (keys {sorted(row)}); one format per file"
        )
    return _pair(row, where, pair_template) if fmt == "prompt_response" else _chat(row, where)


def read_examples(
    files: Sequence[tuple[str, str]], *, format: str, pair_template: str
) -> tuple[list[Example], dict[str, str]]:
    """(every example of the files, in order; the format of each file). `files` are (name shown
    in messages, local path). Raises one `FinetuneDataError` naming up to ten bad rows."""
    if format not in FORMATS:
        raise FinetuneDataError(f"format={format!r}; expected one of {FORMATS}")
    examples: list[Example] = []
    formats: dict[str, str] = {}
    problems: list[str] = []
    bad = 0
    for name, path in files:
        fmt = None if format == "auto" else format
        for where, row in _rows(name, path):
            try:
                if fmt is None:
                    fmt = row_format(row, where)
                    formats[name] = fmt
                examples.append(_example(row, where, fmt, pair_template))
            except (FinetuneDataError, ChatFormatError) as err:
                bad += 1
                if len(problems) < MAX_PROBLEMS:
                    problems.append(str(err))
        formats.setdefault(name, fmt or "empty")
    if problems:
        more = f"\n  ... and {bad - len(problems)} more" if bad > len(problems) else ""
        raise FinetuneDataError(f"{bad} bad example row(s):\n  " + "\n  ".join(problems) + more)
    if not examples:
        raise FinetuneDataError(f"no examples in {[name for name, _ in files]}")
    return examples, formats


def tokenize_examples(examples: Sequence[Example], tokenizer: Any) -> list[Tokenized]:
    """Token ids and labels of each example; the pieces are encoded apart (batched), so a
    label boundary is always a token boundary."""
    texts = [text for example in examples for text, _ in example.segments]
    encoded = iter(tokenizer.encode_batch(texts))
    out = []
    for example in examples:
        ids: list[int] = []
        labels: list[int] = []
        for _, trained in example.segments:
            piece = next(encoded)
            ids += piece
            labels += piece if trained else [IGNORE] * len(piece)
        if example.eos:
            ids.append(tokenizer.eos_token_id)
            labels.append(tokenizer.eos_token_id)
        if labels:
            labels[0] = IGNORE  # nothing in the example predicts its first token
        out.append(
            Tokenized(
                where=example.where,
                input_ids=np.asarray(ids, dtype=np.int32),
                labels=np.asarray(labels, dtype=np.int32),
            )
        )
    return out


def fit_length(example: Tokenized, max_seq_len: int, too_long: str) -> tuple[Tokenized | None, str]:
    """(the example within `max_seq_len` tokens or None, and what happened: "kept",
    "truncated" (its end cut: the response's, or a chat's later turns) or "dropped" (too long
    with too_long="drop", or no response token left within max_seq_len))."""
    if len(example.input_ids) <= max_seq_len:
        return example, "kept"
    if too_long == "drop":
        return None, "dropped"
    labels = example.labels[:max_seq_len]
    if not (labels != IGNORE).any():
        return None, "dropped"
    cut = Tokenized(where=example.where, input_ids=example.input_ids[:max_seq_len], labels=labels)
    return cut, "truncated"
