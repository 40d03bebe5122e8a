"""`foundry generate`: one prompt, a file of prompts, or an interactive chat, from any model source.

    foundry generate load_path=runs/tiny prompt="the quick brown" max_new_tokens=32
    foundry generate load_path=hf/mpt prompts_file=prompts.jsonl out=completions.jsonl batch_size=16
    foundry generate load_path=runs/chat chat=true system="You are terse." temperature=0.7 top_p=0.9

`load_path` is a foundry save folder or checkpoint, a Hugging Face MPT directory, or a consolidated
`.safetensors` file (`foundry.sources`). Everything that can be known wrong (the mode, the prompts
file and each of its rows, a prompt longer than the model's window, the output file, the
tokenizer against the vocabulary and the chat template) is refused before the weights are read.

- `prompt=`: its completion is printed as it decodes.
- `prompts_file=`: `.jsonl` rows `{"prompt": ...}` or text, one prompt per line (blank lines
  skipped); generated `batch_size` at a time with the KV cache; `{prompt, completion}` rows go to
  `out` (jsonl, written atomically once all are done; an existing file only with overwrite=true)
  or to stdout.
- `chat=true`: `chat()` reads stdin line by line, formats the conversation with the ChatML
  template (`foundry.chat`), streams the reply, and keeps the history (the oldest turns are
  dropped when it outgrows the window); `/reset` starts over, `/quit` or end of input ends.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from foundry.generate import Sampling, generate_texts
from foundry.validate import need, opt

__all__ = ["GenerateCommand", "chat", "read_prompts", "run_command"]


@dataclass(frozen=True, kw_only=True)
class GenerateCommand:
    """`foundry generate`: completions of a prompt, of a file of prompts, or a chat."""

    load_path: str = need(
        "a foundry save folder or checkpoint, a Hugging Face MPT directory, or a consolidated"
        " .safetensors file"
    )
    tokenizer: str | None = opt(None, "tokenizer.json or its folder; null: the one load_path names")
    prompt: str | None = opt(None, "one prompt; its completion is printed as it decodes")
    prompts_file: str | None = opt(
        None, "prompts: .jsonl rows {'prompt': ...} or text, one per line; generated in batches"
    )
    out: str | None = opt(None, "prompts_file: write {prompt, completion} jsonl here; null: print")
    overwrite: bool = opt(False, "replace an existing out file")
    chat: bool = opt(False, "chat on stdin with the ChatML template (/reset, /quit)")
    system: str | None = opt(None, "chat: the system message")
    batch_size: int = opt(8, "prompts_file: prompts per batch")
    max_new_tokens: int = opt(64, "tokens generated at most per completion")
    temperature: float = opt(0.0, "0: greedy (deterministic); else the sampling temperature")
    top_k: int | None = opt(None, "sample among the k most likely tokens; null or 0: all")
    top_p: float | None = opt(None, "sample within this probability mass; null or 1: all")
    stop: list[str] = opt([], "stop sequences: a completion ends before the first one")
    seed: int | None = opt(None, "seed of the sampling RNG; null: unseeded")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto: cuda when there is a GPU")
    dtype: Literal["fp32", "bf16", "fp16"] | None = opt(None, "cast the weights; null: as stored")

    def __post_init__(self) -> None:
        given = {"prompt": self.prompt is not None, "prompts_file": self.prompts_file is not None}
        modes = [name for name, is_given in {**given, "chat": self.chat}.items() if is_given]
        problems = []
        if len(modes) != 1:
            problems.append(
                "give exactly one of prompt=..., prompts_file=... or chat=true, got"
                f" {' and '.join(modes) or 'none'}"
            )
        if self.out is not None and self.prompts_file is None:
            problems.append(f"out={self.out} is for prompts_file; a prompt or a chat prints")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        try:
            self.sampling()
        except ValueError as err:
            problems.append(str(err))
        if problems:
            raise ValueError("; ".join(problems))

    def sampling(self) -> Sampling:
        return Sampling(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            stop=tuple(self.stop),
            seed=self.seed,
        )


def read_prompts(path: str) -> list[tuple[str, str]]:
    """[(where, prompt)] of a prompts file: `file:line` and the text; raises naming the line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompts_file={path} does not exist")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    prompts = []
    is_jsonl = path.endswith((".jsonl", ".json"))
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if not is_jsonl:
            prompts.append((where, line))
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise ValueError(f"{where}: not JSON ({err})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f"{where}: expected an object with a string 'prompt', got {line[:80]}")
        prompts.append((where, row["prompt"]))
    if not prompts:
        raise ValueError(f"prompts_file={path} holds no prompt")
    return prompts


def _check_prompts(prompts: list[tuple[str, str]], tokenizer: Any, config: Any, new: int) -> None:
    """Each prompt encodes to at least one token and fits the window with `new` tokens."""
    for where, text in prompts:
        n = len(tokenizer.encode(text))
        if n == 0:
            raise ValueError(f"{where}: the prompt encodes to no tokens")
        if n + new - 1 > config.max_seq_len and not config.alibi_extrapolate:
            raise ValueError(
                f"{where}: the prompt's {n} tokens + max_new_tokens {new} exceed the model's"
                f" max_seq_len {config.max_seq_len}: shorten it or lower max_new_tokens"
            )


# -- chat -------------------------------------------------------------------------------------------
def _fit_history(
    messages: list[dict[str, str]], tokenizer: Any, config: Any, new: int
) -> str | None:
    """The chat prompt of `messages`, dropping the oldest user/assistant pairs until it fits the
    window with `new` tokens (`messages` is trimmed only then); None, with `messages` untouched,
    when even the last user turn alone does not fit."""
    from foundry.chat import SYSTEM, format_chat

    trial = list(messages)
    while True:
        text = format_chat(trial, add_generation_prompt=True)
        if len(tokenizer.encode(text)) + new - 1 <= config.max_seq_len or config.alibi_extrapolate:
            messages[:] = trial
            return text
        first = 1 if trial[0]["role"] == SYSTEM else 0
        if len(trial) - first <= 1:
            return None
        del trial[first : first + 2]


class _Echo:
    """Streams a reply to `output` as it decodes (a callable for `generate_texts`' on_text)."""

    def __init__(self, output: TextIO) -> None:
        self.output = output

    def __call__(self, row: int, piece: str) -> None:
        self.output.write(piece)
        self.output.flush()


def _chat_turn(model, tokenizer, messages, sampling, stop_ids, output) -> None:
    """Answer the last user message of `messages` (streamed to `output`) and append the reply."""
    from foundry.chat import ASSISTANT

    prompt = _fit_history(messages, tokenizer, model.config, sampling.max_new_tokens)
    if prompt is None:
        print(
            "(that message is too long for the model's window with max_new_tokens"
            f" {sampling.max_new_tokens}; it was not sent, the conversation is unchanged)",
            file=sys.stderr,
        )
        messages.pop()
        return
    [reply] = generate_texts(
        model, tokenizer, [prompt], sampling, stop_token_ids=stop_ids, on_text=_Echo(output)
    )
    output.write("\n")
    output.flush()
    messages.append({"role": ASSISTANT, "content": reply})


def chat(
    model: Any,
    tokenizer: Any,
    sampling: Sampling | None = None,
    *,
    system: str | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> list[dict[str, str]]:
    """An interactive chat: each line of `stdin` is a user turn, each reply is streamed to
    `stdout` and ends with a newline. `/reset` forgets the
    conversation (the system message stays), `/quit` or end of input ends it. Returns the
    conversation as it stands at the end."""
    sampling = sampling or Sampling()
    from foundry.chat import IM_END, IM_START, SYSTEM, USER, ChatFormatError, check_chat_encodable

    stdin, output = stdin or sys.stdin, stdout or sys.stdout
    check_chat_encodable(tokenizer)
    # the reply ends at <|im_end|>; the markers as text (pieces) end it too
    stop_ids = [tokenizer.encode(IM_END)[0]]
    sampling = dataclasses.replace(sampling, stop=(*sampling.stop, IM_END, IM_START))
    start = [{"role": SYSTEM, "content": system}] if system else []
    messages = list(start)
    interactive = stdin.isatty()
    while True:
        if interactive:
            output.write("you> ")
            output.flush()
        line = stdin.readline()
        if not line or line.strip() == "/quit":
            return messages
        text = line.rstrip("\r\n")
        if text.strip() == "/reset":
            messages = list(start)
            print("(conversation reset)", file=sys.stderr)
            continue
        if not text.strip():
            continue
        messages.append({"role": USER, "content": text})
        try:
            _chat_turn(model, tokenizer, messages, sampling, stop_ids, output)
        except ChatFormatError as err:
            messages.pop()
            print(f"(not sent: {err})", file=sys.stderr)


# -- the command ------------------------------------------------------------------------------------
def _device(cfg: GenerateCommand) -> str:
    import torch

    if cfg.device != "auto":
        return cfg.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _write_rows(path: str, rows: list[dict[str, str]]) -> None:
    from streaming.storage import write_bytes_atomic

    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_bytes_atomic(path, text.encode("utf-8"))


def run_command(cfg: GenerateCommand, config_text: str) -> int:
    """`foundry generate`: check everything, load the model, generate."""
    from foundry.sources import DTYPES, inspect_source, load_source
    from foundry.tokenizer import check_vocab_fits, load_tokenizer

    source = inspect_source(cfg.load_path)
    tokenizer_path = cfg.tokenizer or source.tokenizer
    if tokenizer_path is None:
        raise ValueError(f"load_path={cfg.load_path} names no tokenizer: give tokenizer=...")
    tokenizer = load_tokenizer(tokenizer_path)
    check_vocab_fits(tokenizer, source.config.vocab_size)
    sampling = cfg.sampling()
    prompts = read_prompts(cfg.prompts_file) if cfg.prompts_file else [("prompt", cfg.prompt)]
    if cfg.chat:
        from foundry.chat import check_chat_encodable

        check_chat_encodable(tokenizer)
    else:
        _check_prompts(prompts, tokenizer, source.config, sampling.max_new_tokens)
    if cfg.out is not None and os.path.isdir(cfg.out):
        raise IsADirectoryError(f"out={cfg.out} is a folder: out is the .jsonl file to write")
    if cfg.out is not None and os.path.exists(cfg.out) and not cfg.overwrite:
        raise FileExistsError(f"out={cfg.out} exists; pass overwrite=true to replace it")
    model = load_source(source, device=_device(cfg), dtype=DTYPES.get(cfg.dtype))
    if cfg.chat:
        chat(model, tokenizer, sampling, system=cfg.system)
        return 0
    if cfg.prompt is not None:
        generate_texts(model, tokenizer, [cfg.prompt], sampling, on_text=_Echo(sys.stdout))
        print(flush=True)
        return 0
    texts = [text for _, text in prompts]
    completions = generate_texts(model, tokenizer, texts, sampling, batch_size=cfg.batch_size)
    rows = [{"prompt": p, "completion": c} for p, c in zip(texts, completions, strict=True)]
    if cfg.out is None:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False), flush=True)
    else:
        _write_rows(cfg.out, rows)
        print(f"{len(rows)} completions: {cfg.out}", flush=True)
    return 0
