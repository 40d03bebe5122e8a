"""Greedy generation until a stop sequence, EOS or a token budget, for generation tasks.

    texts = generate_greedy(model, prompts, tokenizer, GenerationOptions(max_new_tokens=32))

Prompts are sorted by length and batched. A model with a KV cache (`PrefixCacheLM`) reads the
left-padded prompts once and then one token per step; a model that takes `attention_mask` is run
on the whole left-padded sequence each step; any other model gets batches of prompts of one
length (no padding at all). Each row stops at EOS or when its decoded text contains a stop
sequence; the text is cut before the first stop sequence. Greedy decoding is deterministic, so a
prompt generates the same text alone or in a batch (up to ties of the argmax).

`lockstep=True`: ranks agree on the number of batches and on every step (one small all-reduce per
step), padding with dummy rows, so a sharded model's collectives always match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from evalkit.logprobs import ModelCall, forward_logits, inspect_model, pad_rows
from evalkit.protocols import Tokenizer

__all__ = ["GenerationOptions", "cut_at_stop", "generate_greedy"]


@dataclass(frozen=True, kw_only=True)
class GenerationOptions:
    """max_new_tokens: budget per prompt. stop: stop sequences. batch_size: prompts per batch.
    pad_token_id: the id on padding. lockstep: see the module docstring."""

    max_new_tokens: int
    stop: tuple[str, ...] = ()
    batch_size: int = 32
    pad_token_id: int = 0
    lockstep: bool = False


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` before the first occurrence of any stop sequence."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


@dataclass
class _Rows:
    """The state of one batch: new tokens per row and which rows still generate."""

    new: list[list[int]]
    active: list[bool]


def _step_done(rows: _Rows, step_tokens: list[int], tokenizer: Tokenizer, opts) -> None:
    eos = tokenizer.eos_token_id
    for j, token in enumerate(step_tokens):
        if not rows.active[j]:
            continue
        rows.new[j].append(token)
        if token == eos or len(rows.new[j]) >= opts.max_new_tokens:
            rows.active[j] = False
        elif opts.stop and any(s in tokenizer.decode(rows.new[j]) for s in opts.stop):
            rows.active[j] = False


def _any_active(rows: _Rows, lockstep: bool) -> bool:
    alive = any(rows.active)
    if lockstep:
        from composer_lite.dist import all_reduce

        return all_reduce([float(alive)], op="max")[0] > 0
    return alive


def _run_batch(model, call: ModelCall, prompts, tokenizer, opts, real: bool) -> list[list[int]]:
    """New tokens of each prompt (a dummy batch, `real=False`, only keeps in step)."""
    dev = call.device
    left = call.attention_mask
    ids, mask, _ = pad_rows(prompts, opts.pad_token_id, left=True)
    rows = _Rows([[] for _ in prompts], [real] * len(prompts))
    ids, mask = ids.to(dev), (mask.to(dev) if mask is not None and left else None)
    cache = None
    if call.prefix_cache:
        cache = model.new_cache(len(prompts), ids.shape[1] + opts.max_new_tokens)
    feed = ids
    for _ in range(opts.max_new_tokens):
        last = torch.zeros(feed.shape, dtype=torch.bool, device=dev)
        last[:, -1] = True  # only the last position's logits are needed
        logits = forward_logits(model, call, feed, mask=mask, keep=last, cache=cache)
        step = logits.float().argmax(dim=-1)  # (B,)
        _step_done(rows, step.tolist(), tokenizer, opts)
        if not _any_active(rows, opts.lockstep):
            break
        nxt = step[:, None].to(dev)
        if cache is not None:  # the cache holds everything before: feed the new token only
            feed, mask = nxt, None
            continue
        ids = torch.cat([ids, nxt], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        feed = ids
    return rows.new


def _batches(prompts: Sequence[Sequence[int]], call: ModelCall, size: int) -> list[list[int]]:
    """Indices of prompts per batch, longest first; one length per batch without a mask."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    batches: list[list[int]] = []
    for i in order:
        fits = batches and len(batches[-1]) < size
        if fits and not call.attention_mask:
            fits = len(prompts[batches[-1][0]]) == len(prompts[i])
        if fits:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def generate_greedy(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    tokenizer: Tokenizer,
    options: GenerationOptions,
    *,
    call: ModelCall | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """The generated text of each prompt, cut before the first stop sequence."""
    call = call or inspect_model(model)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    batches = _batches(prompts, call, options.batch_size)
    count = len(batches)
    if options.lockstep:
        from composer_lite.dist import all_reduce

        count = int(all_reduce([count], op="max")[0])
    texts = [""] * len(prompts)
    with torch.no_grad():
        for b in range(count):
            real = b < len(batches)
            chosen = [list(prompts[i]) for i in batches[b]] if real else [[options.pad_token_id]]
            new = _run_batch(model, call, chosen, tokenizer, options, real)
            for i, tokens in zip(batches[b] if real else [], new, strict=False):
                texts[i] = cut_at_stop(tokenizer.decode(tokens), options.stop)
            if on_batch:
                on_batch(len(chosen) if real else 0)
    return texts
