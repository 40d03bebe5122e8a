"""The contracts evalkit evaluates through: a causal LM and a tokenizer.

Any model that maps token ids to logits fits (an `mpt` model, a Hugging Face model, a loaded
checkpoint); evalkit never imports `mpt`. Hugging Face `tokenizers` and transformers tokenizers
fit the tokenizer contract through a thin adapter.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from composer_lite.protocols import missing_members

__all__ = ["CausalLM", "Tokenizer", "check_causal_lm", "check_tokenizer"]


@runtime_checkable
class CausalLM(Protocol):
    """`model(input_ids)` with int64 ids (B, T) returns logits (B, T, V), or an object whose
    `.logits` holds them. A model may also offer a KV-cache `generate`; evalkit uses it when
    present."""

    def __call__(self, input_ids: torch.Tensor) -> Any: ...


@runtime_checkable
class Tokenizer(Protocol):
    """Text to ids and back, with the two special ids evaluation needs (None when absent)."""

    eos_token_id: int | None
    pad_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def check_causal_lm(model: object) -> None:
    """Raise a TypeError if `model` cannot be called on token ids."""
    if missing_members(model, CausalLM):
        raise TypeError(
            f"{type(model).__name__} is not a causal LM for evaluation: it is not callable. "
            "Expected model(input_ids (B, T)) -> logits (B, T, V) or an object with .logits."
        )


def check_tokenizer(tokenizer: object) -> None:
    """Raise a TypeError naming every member of the tokenizer contract that `tokenizer` lacks."""
    missing = missing_members(tokenizer, Tokenizer)
    if missing:
        raise TypeError(
            f"{type(tokenizer).__name__} does not follow the tokenizer contract: it lacks "
            f"{', '.join(missing)}. Expected encode(str) -> list[int], decode(list[int]) -> str, "
            "eos_token_id and pad_token_id (HF tokenizers fit through a thin adapter)."
        )
