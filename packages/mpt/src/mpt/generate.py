"""Text generation with a KV cache: greedy, temperature, top-k and top-p sampling, EOS stops.

Prompts of different lengths are left-padded into one batch; the padding is masked through the
attention mask (sequence id -1), so every prompt generates exactly what it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["generate", "left_pad", "sample_next"]


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int, device=None):
    """(input_ids, attention_mask), both (B, longest), prompts aligned to the right."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B,) next tokens from (B, vocab) logits; temperature 0 is greedy, `top_k` 0 or None and
    `top_p` 1 or None filter nothing (as in transformers)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: no top-k filter), got {top_k}")
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor | Sequence[Sequence[int]],
    *,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Prompt plus up to `max_new_tokens` tokens per row, (B, prompt + new).

    `input_ids` is a (B, T) tensor (left-padded, with `attention_mask`) or a list of token lists.
    Rows that produced an EOS token continue with `pad_token_id` (default: the first EOS id, or 0)
    until every row is done or `max_new_tokens` is reached.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    device = model.transformer.wte.weight.device
    if not isinstance(input_ids, torch.Tensor):
        input_ids, attention_mask = left_pad(input_ids, pad, device)
    input_ids = input_ids.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids"
                f" {tuple(input_ids.shape)}"
            )
    B, T = input_ids.shape
    last = T + max_new_tokens - 1  # the longest forward: the last new token is never fed back
    model.config.check_length(
        last, f"prompt length {T} + max_new_tokens {max_new_tokens} needs {last}"
    )
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(B, T + max_new_tokens, dtype=_cache_dtype(model, device))
        out = model(input_ids, attention_mask=attention_mask, past_key_values=cache)
        tokens = [input_ids]
        done = torch.zeros(B, dtype=torch.bool, device=device)
        eos_ids = torch.tensor(eos, device=device, dtype=torch.long)
        step_mask = torch.ones((B, 1), dtype=torch.long, device=device)
        for _ in range(max_new_tokens):
            nxt = sample_next(
                out.logits[:, -1],
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
            )
            nxt = torch.where(done, pad, nxt)
            tokens.append(nxt[:, None])
            if eos:
                done = done | torch.isin(nxt, eos_ids)
                if bool(done.all()):
                    break
            if len(tokens) - 1 == max_new_tokens:
                break
            mask = step_mask if attention_mask is not None else None
            out = model(nxt[:, None], attention_mask=mask, past_key_values=cache)
        return torch.cat(tokens, dim=1)
    finally:
        model.train(was_training)


def _cache_dtype(model, device) -> torch.dtype:
    """The dtype keys and values will have: the autocast dtype when autocast is on."""
    kind = torch.device(device).type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return model.transformer.wte.weight.dtype
