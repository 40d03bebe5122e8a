"""The contracts evalkit evaluates through: a causal LM, a tokenizer, and an optional prefix cache.

Any model that maps token ids to logits fits (an `mpt` model, a Hugging Face model, a loaded
checkpoint); evalkit never imports `mpt`. What a transformers model, mpt's `MPTForCausalLM` and
a plain `nn.Module` returning logits share is the `nn.Module` surface: they are callable, have a
`forward`, `parameters()` (evalkit reads the device from them) and `eval()` (evalkit switches
dropout off). So `CausalLM` asks for exactly that, and a bare function or `print` does not pass.

Two optional contracts let evalkit run a context shared by several choices once:
`PackedLM` (several sequences in one row, without padding, the choices attending to their shared
context through a tree-shaped mask; `evalkit.hf.HFCausalLM` offers it) and `PrefixCacheLM` (a KV
cache: the context runs once, the choices continue from copies of its cache; mpt's
`MPTForCausalLM` fits as it is). Any other model is scored by plain batching.
Hugging Face `tokenizers` and transformers tokenizers fit the tokenizer contract through the
adapters in `evalkit.tokenizer`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch

from composer_lite.protocols import missing_members

__all__ = [
    "CausalLM",
    "PackedLM",
    "PrefixCache",
    "PrefixCacheLM",
    "Tokenizer",
    "check_causal_lm",
    "check_tokenizer",
    "supports_packing",
    "supports_prefix_cache",
]


@runtime_checkable
class CausalLM(Protocol):
    """`model(input_ids)` with int64 ids (B, T) returns logits (B, T, V), or an object whose
    `.logits` holds them; an `nn.Module` (it has `forward`, `parameters()` and `eval()`).

    Optional keyword arguments evalkit passes when `forward` accepts them: `attention_mask`
    (B, T), 1 for real tokens (needed for left padding), and `logits_to_keep`, a bool (B, T) mask
    of the positions whose logits are wanted (transformers >= 4.50 models take it; evalkit then
    reads the flat (N, V) logits of the scored positions only).
    """

    def __call__(self, input_ids: torch.Tensor) -> Any: ...

    def forward(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def eval(self) -> Any: ...


@runtime_checkable
class PrefixCache(Protocol):
    """A KV cache filled in place by `model(ids, past_key_values=cache)`.

    `index_select(rows)` returns a cache whose row i continues row `rows[i]` of this one (a row may
    be repeated: several choices continue one context). It must not change this cache.
    """

    def index_select(self, rows: torch.Tensor) -> PrefixCache: ...


@runtime_checkable
class PrefixCacheLM(Protocol):
    """Optional: a causal LM with a KV cache, for one forward of a context shared by several rows.

    `new_cache(batch_size, capacity)` returns an empty `PrefixCache` for `capacity` positions;
    `model(input_ids, attention_mask=mask, past_key_values=cache)` appends the (B, T) ids to the
    cache and returns their logits. `attention_mask` (B, T) covers the new tokens only (0 on left
    padding); the cache remembers the masking of the positions it holds, and later calls without a
    mask continue every row after its last real token. mpt's `MPTForCausalLM` fits as it is;
    `evalkit.hf.HFCausalLM` makes a transformers model fit.
    """

    def new_cache(self, batch_size: int, capacity: int) -> PrefixCache: ...

    def __call__(self, input_ids: torch.Tensor, **kwargs: Any) -> Any: ...


@runtime_checkable
class PackedLM(Protocol):
    """Optional: sequences packed in rows, each position attending where a mask allows.

    `forward_packed(input_ids, position_ids, allowed, logits_to_keep)`: ids and position ids
    (B, T) int64, `allowed` (B, T, T) bool (query i may attend key j; evalkit always allows
    j <= i only, and a position always itself), `logits_to_keep` (B, T) bool; returns the flat
    (N, V) logits of the kept positions in row-major order. A model may set `can_pack = False`
    to decline (a transformers model whose attention takes no custom mask).
    """

    def forward_packed(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        allowed: torch.Tensor,
        logits_to_keep: torch.Tensor,
    ) -> torch.Tensor: ...


@runtime_checkable
class Tokenizer(Protocol):
    """Text to ids and back, with the two special ids evaluation needs (None when absent)."""

    eos_token_id: int | None
    pad_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def check_causal_lm(model: object) -> None:
    """Raise a TypeError naming every member of the causal-LM contract that `model` lacks."""
    missing = missing_members(model, CausalLM)
    if missing:
        raise TypeError(
            f"{type(model).__name__} is not a causal LM for evaluation: it lacks "
            f"{', '.join(missing)}. Expected an nn.Module whose model(input_ids (B, T)) returns "
            "logits (B, T, V) or an object with .logits (a transformers model, an "
            "MPTForCausalLM, or your own nn.Module)."
        )


def supports_prefix_cache(model: object) -> bool:
    """Whether `model` offers the optional `PrefixCacheLM` contract (a `new_cache` method)."""
    return callable(getattr(model, "new_cache", None))


def supports_packing(model: object) -> bool:
    """Whether `model` offers the optional `PackedLM` contract and does not decline it."""
    return callable(getattr(model, "forward_packed", None)) and bool(
        getattr(model, "can_pack", True)
    )


def check_tokenizer(tokenizer: object) -> None:
    """Raise a TypeError naming every member of the tokenizer contract that `tokenizer` lacks."""
    missing = missing_members(tokenizer, Tokenizer)
    if missing:
        raise TypeError(
            f"{type(tokenizer).__name__} does not follow the tokenizer contract: it lacks "
            f"{', '.join(missing)}. Expected encode(str) -> list[int], decode(list[int]) -> str, "
            "eos_token_id and pad_token_id (HF tokenizers fit through evalkit.as_tokenizer)."
        )
