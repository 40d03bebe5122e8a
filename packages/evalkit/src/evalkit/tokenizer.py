"""Thin adapters that make Hugging Face tokenizers follow evalkit's `Tokenizer` contract.

    tok = as_tokenizer(tokenizers.Tokenizer.from_file("tokenizer.json"))   # HF `tokenizers`
    tok = as_tokenizer(transformers.AutoTokenizer.from_pretrained(path))   # transformers

Both encode without special tokens (no BOS is added in front of a context, as lm-eval's `hf`
model does for causal LMs); `add_special_tokens=True` adds them. `encode_batch` is offered because
the Rust tokenizers encode many texts at once much faster than one at a time; evalkit uses it when
a tokenizer has it. Neither `tokenizers` nor `transformers` is imported here: the adapter is
chosen by what the object offers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evalkit.protocols import Tokenizer, check_tokenizer

__all__ = [
    "EOS_NAMES",
    "TokenizersAdapter",
    "TransformersAdapter",
    "as_tokenizer",
    "encode_many",
    "needs_prefix_space",
]

# Names of the end-of-text token in common vocabularies, tried in order when none is given.
EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>")


class TokenizersAdapter:
    """An HF `tokenizers.Tokenizer` as an evalkit tokenizer.

    `eos_token` names the end-of-text token (default: the first of `EOS_NAMES` in the vocabulary);
    `pad_token` the padding token (default: none, evalkit pads with EOS or 0).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        eos_token: str | None = None,
        pad_token: str | None = None,
        add_special_tokens: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens
        if eos_token is None:
            eos_token = next((n for n in EOS_NAMES if tokenizer.token_to_id(n) is not None), None)
        self.eos_token_id = self._id_of(eos_token, "eos_token")
        self.pad_token_id = self._id_of(pad_token, "pad_token")

    def _id_of(self, token: str | None, what: str) -> int | None:
        if token is None:
            return None
        found = self.tokenizer.token_to_id(token)
        if found is None:
            raise ValueError(f"{what}={token!r} is not in the tokenizer's vocabulary")
        return int(found)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.tokenizer.encode_batch(
            list(texts), add_special_tokens=self.add_special_tokens
        )
        return [e.ids for e in encoded]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def __len__(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))


class TransformersAdapter:
    """A transformers tokenizer (`PreTrainedTokenizerBase`) as an evalkit tokenizer."""

    def __init__(self, tokenizer: Any, *, add_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens
        self.eos_token_id = tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)  # fast tokenizers: Rust
        if backend is not None:
            encoded = backend.encode_batch(list(texts), add_special_tokens=self.add_special_tokens)
            return [e.ids for e in encoded]
        out = self.tokenizer(list(texts), add_special_tokens=self.add_special_tokens)
        return [list(ids) for ids in out["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def __len__(self) -> int:
        return len(self.tokenizer)


def as_tokenizer(tokenizer: Any, **options: Any) -> Tokenizer:
    """`tokenizer` as an evalkit tokenizer: transformers and HF `tokenizers` objects are wrapped
    (`options` go to the adapter); an object that already follows the contract is returned as it
    is; anything else raises a TypeError naming what it lacks."""
    if callable(getattr(tokenizer, "convert_tokens_to_ids", None)) and hasattr(
        tokenizer, "eos_token_id"
    ):
        return TransformersAdapter(tokenizer, **options)
    follows_contract = isinstance(tokenizer, Tokenizer)
    if (
        not follows_contract  # e.g. foundry's tokenizer, which has token_to_id and encode_batch too
        and callable(getattr(tokenizer, "token_to_id", None))
        and callable(getattr(tokenizer, "encode_batch", None))
    ):
        return TokenizersAdapter(tokenizer, **options)
    if options:
        raise TypeError(f"options {sorted(options)} apply only to Hugging Face tokenizers")
    check_tokenizer(tokenizer)
    return tokenizer


def encode_many(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Encode `texts`, in one `encode_batch` call when the tokenizer offers one."""
    batch = getattr(tokenizer, "encode_batch", None)
    if callable(batch) and texts:
        return [list(ids) for ids in batch(list(texts))]
    return [list(tokenizer.encode(t)) for t in texts]


def needs_prefix_space(tokenizer: Tokenizer) -> bool:
    """Whether words take their leading space in the token (GPT-2 style BPE: " a" is one token).

    Such tokenizers get a space in front of a continuation that has none (llm-foundry's rule), so
    that " Paris" is scored, not "Paris" glued to the previous word.
    """
    return len(tokenizer.encode(" a")) == 1
