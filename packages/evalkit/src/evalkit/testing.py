"""Small models, a tokenizer and ICL task files for tests and demos (of evalkit and above it).

- `WordTokenizer`: words and punctuation with their leading space, ids by a stable hash into a
  fixed vocabulary (like GPT-2's BPE, " a" is one token); EOS is 0.
- `tiny_lm(kind)`: a 2-layer causal transformer, the same weights for every `kind`, which
  differ only in the optional contracts they offer: "plain" (`model(input_ids)`), "masked"
  (+ `attention_mask`), "cache" (+ a KV cache, `PrefixCacheLM`), "packed" (+ `forward_packed`).
  Its `blocks()` let composer-lite shard it with FSDP2.
- `write_tasks(folder)`: jsonl files of the four task types and a task YAML naming them.
"""

from __future__ import annotations

import json
import math
import random
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["KINDS", "TinyConfig", "WordTokenizer", "tiny_lm", "write_tasks"]

_PIECES = re.compile(r" ?\w+| ?[^\w\s]+|\s+")


class WordTokenizer:
    """A deterministic tokenizer with GPT-2-like spaces: " Paris" is one token."""

    eos_token_id = 0
    pad_token_id = None

    def __init__(self, vocab_size: int = 512) -> None:
        self.vocab_size = vocab_size
        self._pieces: dict[int, str] = {0: "<eos>"}

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in _PIECES.findall(text):
            token = 1 + zlib.crc32(piece.encode()) % (self.vocab_size - 1)
            self._pieces.setdefault(token, piece)
            ids.append(token)
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(self._pieces.get(int(i), f"<{int(i)}>") for i in ids)


@dataclass(frozen=True)
class TinyConfig:
    vocab_size: int = 512
    d_model: int = 32
    n_heads: int = 2
    n_layers: int = 2
    max_seq_len: int = 256


class _TinyCache:
    """Keys and values per layer (B, H, cached, D), the mask of the cached positions, and how
    many real tokens each row holds (the position of its next token)."""

    def __init__(self, batch_size: int, n_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.mask = torch.zeros((batch_size, 0), dtype=torch.bool)
        self.seen = torch.zeros((batch_size, 1), dtype=torch.long)

    def index_select(self, rows: torch.Tensor) -> _TinyCache:
        picked = _TinyCache(len(rows), len(self.keys))
        picked.keys = [k.index_select(0, rows) if k is not None else None for k in self.keys]
        picked.values = [v.index_select(0, rows) if v is not None else None for v in self.values]
        picked.mask = self.mask.index_select(0, rows)
        picked.seen = self.seen.index_select(0, rows)
        return picked


class _Block(nn.Module):
    def __init__(self, c: TinyConfig) -> None:
        super().__init__()
        self.heads = c.n_heads
        self.norm1, self.norm2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.proj = nn.Linear(c.d_model, c.d_model)
        self.up, self.down = (
            nn.Linear(c.d_model, 4 * c.d_model),
            nn.Linear(4 * c.d_model, c.d_model),
        )

    def forward(self, x, allowed, cache: _TinyCache | None, layer: int):
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, D // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
        if cache is not None:
            if cache.keys[layer] is not None:
                k = torch.cat([cache.keys[layer], k], dim=2)
                v = torch.cat([cache.values[layer], v], dim=2)
            cache.keys[layer], cache.values[layer] = k, v
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        x = x + self.proj(att.transpose(1, 2).reshape(B, T, D))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class _TinyCore(nn.Module):
    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.max_seq_len, config.d_model)
        self.layers = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def _run(self, ids, positions, allowed, cache=None) -> torch.Tensor:
        x = self.wte(ids) + self.wpe(positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, allowed, cache, i)
        return self.head(self.norm(x))  # (B, T, V)

    def _masked(self, ids, attention_mask=None, cache: _TinyCache | None = None) -> torch.Tensor:
        B, T = ids.shape
        new = (attention_mask if attention_mask is not None else torch.ones_like(ids)).bool()
        past = cache.mask if cache is not None else new[:, :0]
        seen = cache.seen if cache is not None else torch.zeros((B, 1), dtype=torch.long)
        positions = seen + (new.long().cumsum(dim=1) - 1).clamp(min=0)
        keys = torch.cat([past, new], dim=1)  # (B, past + T)
        shift = keys.shape[1] - T  # query i sits at key position shift + i
        causal = torch.ones(T, keys.shape[1], dtype=torch.bool).tril(shift)
        itself = torch.ones(T, keys.shape[1], dtype=torch.bool).tril(shift).triu(shift)
        allowed = (keys[:, None, :] & causal) | itself  # a padding query attends to itself
        if cache is not None:
            cache.mask, cache.seen = keys, seen + new.long().sum(dim=1, keepdim=True)
        return self._run(ids, positions.to(ids.device), allowed.to(ids.device), cache)


class _Plain(_TinyCore):
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._masked(input_ids)


class _Masked(_TinyCore):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return self._masked(input_ids, attention_mask)


class _Cached(_TinyCore):
    def forward(self, input_ids, attention_mask=None, past_key_values=None) -> torch.Tensor:
        return self._masked(input_ids, attention_mask, past_key_values)

    def new_cache(self, batch_size: int, capacity: int) -> _TinyCache:
        return _TinyCache(batch_size, self.config.n_layers)


class _Packed(_Masked):
    def forward_packed(self, input_ids, position_ids, allowed, logits_to_keep) -> torch.Tensor:
        return self._run(input_ids, position_ids, allowed)[logits_to_keep]


KINDS = {"plain": _Plain, "masked": _Masked, "cache": _Cached, "packed": _Packed}


def tiny_lm(kind: str = "plain", *, seed: int = 0, **config) -> nn.Module:
    """A tiny causal LM offering the contracts of `kind` (same weights for the same seed)."""
    torch.manual_seed(seed)
    model = KINDS[kind](TinyConfig(**config))
    with torch.no_grad():  # larger logits than the default init: choices differ clearly
        model.head.weight.mul_(math.sqrt(model.config.d_model))
    return model.eval()


_WORDS = (
    "red blue green cat dog bird runs sleeps sings the a tall small old new river hill "
    "apple bread stone paris rome lima why how what"
).split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def write_tasks(folder: str | Path, *, n: int = 12, seed: int = 0) -> Path:
    """Four small tasks (one per type; `mc` has categories) and `tasks.yaml` naming them."""
    folder, rng = Path(folder), random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = {
        "lm": [{"context": _sentence(rng, 6), "continuation": _sentence(rng, 2)} for _ in range(n)],
        "mc": [
            {
                "query": f"Q: {_sentence(rng, 5)}?",
                "choices": [_sentence(rng, rng.randint(1, 4)) for _ in range(3)],
                "gold": rng.randrange(3),
                "category": rng.choice(["north", "south"]),
            }
            for _ in range(n)
        ],
        "schema": [
            {
                "context_options": [_sentence(rng, 4), _sentence(rng, 4)],
                "continuation": _sentence(rng, 3),
                "gold": rng.randrange(2),
            }
            for _ in range(n)
        ],
        "gen": [
            {
                "context": f"Q: {_sentence(rng, 4)}\nA:",
                "answer": rng.choice(_WORDS),
                "aliases": [rng.choice(_WORDS)],
            }
            for _ in range(n)
        ],
    }
    for name, items in rows.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    (folder / "tasks.yaml").write_text(
        "icl_tasks:\n"
        "- {label: lm, dataset_uri: lm.jsonl, icl_task_type: language_modeling, num_fewshot: [0, 2]}\n"
        "- {label: mc, dataset_uri: mc.jsonl, icl_task_type: multiple_choice, num_fewshot: [1],\n"
        '   continuation_delimiter: "\\nAnswer: ", has_categories: true}\n'
        "- {label: schema, dataset_uri: schema.jsonl, icl_task_type: schema, num_fewshot: [2]}\n"
        "- {label: gen, dataset_uri: gen.jsonl, icl_task_type: generation_task_with_answers,\n"
        '   num_fewshot: [1], early_stopping_criteria: ["\\n"], max_new_tokens: 4}\n'
    )
    return folder / "tasks.yaml"
