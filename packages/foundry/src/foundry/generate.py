"""Text generation for `foundry generate`: prompts in, completions out, through an MPT's KV cache.

    sampling = Sampling(max_new_tokens=32, temperature=0.0, stop=("\\n\\n",))
    texts = generate_texts(model, tokenizer, ["Once upon", "The cat"], sampling, batch_size=8)
    ids = generate_ids(model, [[5, 6, 7]], sampling, eos_token_ids=[0])  # new token ids per prompt

One decoding loop serves a batch of prompts and a streamed chat reply:

- prompts of different lengths are left-padded into one batch (`mpt.generate.left_pad`); padding
  carries sequence id -1, so no token attends to it, and ALiBi biases (and MPT's learned
  positions) count only real tokens, so each prompt decodes what it decodes alone (a test holds
  batched == one by one);
- one forward over the prompts fills the KV cache (`model.new_cache`), then one token per step;
- a row stops at an EOS id (kept in its ids, left out of its text), at a stop sequence (its text
  is cut before the stop; its ids end with the token that completed it, as transformers'
  `stop_strings` does), or after `max_new_tokens`; the loop ends when every row has stopped;
- temperature 0 is greedy (argmax, `mpt.generate.sample_next`): deterministic, and equal token for
  token to transformers' `generate(do_sample=False)` on the exported model (a test holds it);
  otherwise temperature, top-k and top-p sampling, seeded by `Sampling.seed`;
- `on_text(row, piece)` gets each row's new text as it decodes. Text that might still become a
  stop sequence, or that ends inside a UTF-8 character (byte-level BPE decodes bytes), is held
  back until it is settled, so the pieces add up to the final text.

The tokenizer follows evalkit's contract (`encode`, `decode`, `eos_token_id`, `pad_token_id`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mpt.generate import left_pad, sample_next

__all__ = ["CompletionText", "Sampling", "generate_ids", "generate_texts"]

OnText = Callable[[int, str], None]
_PARTIAL = "\ufffd"  # what a decoder gives for the bytes of an unfinished UTF-8 character


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """How to pick the new tokens; `temperature=0` is greedy (top-k and top-p unused)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None  # None or 0: no top-k filter
    top_p: float | None = None  # None or 1: no nucleus filter
    stop: tuple[str, ...] = ()  # a completion ends before the first of these
    seed: int | None = None  # None: torch's global RNG

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0: greedy), got {self.temperature!r}")
        if self.top_k is not None and self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0 or null: no filter), got {self.top_k!r}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (1 or null: no filter), got {self.top_p!r}")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            problems.append(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if problems:
            raise ValueError("; ".join(problems))


class CompletionText:
    """One prompt's completion as it decodes: its ids, its text (cut before a stop sequence)
    and how much of that text was streamed. `add(token)` each new token, then `settled()` is
    the new text that is safe to show."""

    def __init__(self, decode: Callable[[list[int]], str] | None, stop: Sequence[str]) -> None:
        self.decode, self.stop = decode, tuple(stop)
        self.ids: list[int] = []
        self._text_ids: list[int] = []
        self.text = ""
        self.shown = 0  # characters of `text` handed to on_text

    def add(self, token: int, *, text: bool = True) -> bool:
        """Append a token (to the text too, unless `text` is False); True when the text now
        holds a stop sequence (the text is then cut before it)."""
        self.ids.append(token)
        if not text or self.decode is None:
            return False
        self._text_ids.append(token)
        self.text = self.decode(self._text_ids)  # whole: bytes of a character may now be complete
        found = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if found:
            self.text = self.text[: min(found)]
        return bool(found)

    def settled(self, final: bool = False) -> str:
        """The new text that can no longer change (all of it when the row is done)."""
        end = len(self.text)
        if not final:
            while end > self.shown and self.text[end - 1] == _PARTIAL:
                end -= 1
            held = [
                k for s in self.stop for k in range(1, len(s)) if self.text[:end].endswith(s[:k])
            ]
            end -= max(held, default=0)
        piece = self.text[self.shown : max(end, self.shown)]
        self.shown += len(piece)
        return piece


def _cache_dtype(model: Any) -> torch.dtype:
    kind = model.transformer.wte.weight.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return model.transformer.wte.weight.dtype


@torch.no_grad()
def _decode(
    model: Any,
    prompts: Sequence[Sequence[int]],
    rows: list[CompletionText],
    sampling: Sampling,
    *,
    stop_ids: frozenset[int],
    pad_token_id: int,
    on_text: OnText | None,
    generator: torch.Generator | None,
) -> None:
    """Fill `rows` (one per prompt) with their completions; see the module docstring."""
    device = model.transformer.wte.weight.device
    input_ids, mask = left_pad(prompts, pad_token_id, device)  # (B, T) each
    B, T = input_ids.shape
    n = sampling.max_new_tokens
    model.config.check_length(
        T + n - 1, f"the longest prompt ({T} tokens) + max_new_tokens {n} needs {T + n - 1}"
    )
    mask = None if bool(mask.all()) else mask  # no padding: the unmasked (faster) attention
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(B, T + n, dtype=_cache_dtype(model))
        out = model(input_ids, attention_mask=mask, past_key_values=cache)
        step_mask = None if mask is None else torch.ones((B, 1), dtype=torch.long, device=device)
        active = [True] * B
        for step in range(n):
            nxt = sample_next(
                out.logits[:, -1],
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                generator=generator,
            )  # (B,)
            for row, token in enumerate(nxt.tolist()):
                if not active[row]:
                    continue
                is_stop = token in stop_ids
                done = rows[row].add(token, text=not is_stop) or is_stop or step == n - 1
                piece = rows[row].settled(final=done) if on_text is not None else ""
                if piece:
                    on_text(row, piece)
                active[row] = not done
            if not any(active):
                break
            feed = torch.where(torch.tensor(active, device=device), nxt, pad_token_id)
            out = model(feed[:, None], attention_mask=step_mask, past_key_values=cache)
    finally:
        model.train(was_training)


def _generator(sampling: Sampling, model: Any) -> torch.Generator | None:
    if sampling.seed is None or sampling.temperature == 0:
        return None
    device = model.transformer.wte.weight.device
    return torch.Generator(device=device).manual_seed(sampling.seed)


def generate_ids(
    model: Any,
    prompts: Sequence[Sequence[int]],
    sampling: Sampling | None = None,
    *,
    eos_token_ids: Iterable[int] = (),
    pad_token_id: int | None = None,
    decode: Callable[[list[int]], str] | None = None,
) -> list[list[int]]:
    """The new token ids of each prompt (one batch), ending with the EOS id when one came.

    `model` is an `mpt.MPTForCausalLM`; stop sequences need `decode` (ids -> text)."""
    sampling = sampling or Sampling()
    if sampling.stop and decode is None:
        raise ValueError("stop sequences need decode= (the tokenizer's ids -> text)")
    eos = frozenset(eos_token_ids)
    pad = pad_token_id if pad_token_id is not None else min(eos, default=0)
    rows = [CompletionText(decode, sampling.stop) for _ in prompts]
    _decode(
        model,
        prompts,
        rows,
        sampling,
        stop_ids=eos,
        pad_token_id=pad,
        on_text=None,
        generator=_generator(sampling, model),
    )
    return [row.ids for row in rows]


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    sampling: Sampling | None = None,
    *,
    batch_size: int = 8,
    stop_token_ids: Iterable[int] = (),
    on_text: OnText | None = None,
) -> list[str]:
    """The completion of each prompt (the new text, without EOS and stop sequences), generated
    `batch_size` prompts at a time in the given order; `on_text(index, piece)` streams them
    (index into `prompts`). Stops at the tokenizer's EOS and at `stop_token_ids`."""
    sampling = sampling or Sampling()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = [tokenizer.encode(p) for p in prompts]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"prompts {empty} encode to no tokens; every prompt needs at least one")
    eos = tokenizer.eos_token_id
    stop_ids = frozenset(stop_token_ids) | ({eos} if eos is not None else set())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids, default=0)
    generator = _generator(sampling, model)
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = encoded[start : start + batch_size]
        rows = [CompletionText(tokenizer.decode, sampling.stop) for _ in batch]
        shifted = None if on_text is None else functools.partial(_shifted, on_text, start)
        _decode(
            model,
            batch,
            rows,
            sampling,
            stop_ids=stop_ids,
            pad_token_id=pad,
            on_text=shifted,
            generator=generator,
        )
        texts += [row.text for row in rows]
    return texts


def _shifted(on_text: OnText, start: int, row: int, piece: str) -> None:
    """`on_text` with a batch's row index turned into the index of the prompt."""
    on_text(start + row, piece)
