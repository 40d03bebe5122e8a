"""The causal-LM and tokenizer contracts accept conforming objects and name what is wrong."""

import pytest
import torch

from evalkit import CausalLM, Tokenizer, check_causal_lm, check_tokenizer


class CharTokenizer:
    eos_token_id = 0
    pad_token_id = None

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


class NoSpecials:
    def encode(self, text):
        return []

    def decode(self, ids):
        return ""


def bigram_lm(input_ids: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(input_ids, 300).float()  # (B, T, V)


def test_conforming_model_and_tokenizer_pass():
    assert isinstance(bigram_lm, CausalLM)
    check_causal_lm(bigram_lm)
    tok = CharTokenizer()
    assert isinstance(tok, Tokenizer)
    check_tokenizer(tok)
    assert tok.decode(tok.encode("abc")) == "abc"
    ids = torch.tensor([tok.encode("hi")])
    assert bigram_lm(ids).shape == (1, 2, 300)


def test_non_callable_model_is_rejected():
    assert not isinstance(object(), CausalLM)
    with pytest.raises(
        TypeError, match="object is not a causal LM for evaluation: it is not callable"
    ):
        check_causal_lm(object())


def test_tokenizer_missing_special_ids_is_rejected_by_name():
    tok = NoSpecials()
    assert not isinstance(tok, Tokenizer)
    with pytest.raises(
        TypeError,
        match="NoSpecials does not follow the tokenizer contract: it lacks eos_token_id, pad_token_id",
    ):
        check_tokenizer(tok)
