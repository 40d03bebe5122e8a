"""The contracts accept conforming objects and name what is wrong with the others."""

import pytest
import torch

from evalkit import CausalLM, Tokenizer, check_causal_lm, check_tokenizer
from evalkit.protocols import PackedLM, PrefixCacheLM, supports_packing, supports_prefix_cache
from evalkit.testing import WordTokenizer, tiny_lm


class NoSpecials:
    def encode(self, text):
        return []

    def decode(self, ids):
        return ""


class Bigram(torch.nn.Module):
    """The smallest causal LM: an embedding read as next-token logits."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(300, 300)

    def forward(self, input_ids):
        return self.table(input_ids)  # (B, T, V)


def test_modules_returning_logits_pass():
    for model in (Bigram(), tiny_lm("plain"), tiny_lm("cache")):
        assert isinstance(model, CausalLM)
        check_causal_lm(model)
    assert Bigram()(torch.tensor([[1, 2]])).shape == (1, 2, 300)


@pytest.mark.parametrize("thing", [print, lambda ids: ids, object()])
def test_callables_that_are_not_models_fail_by_name(thing):
    assert not isinstance(thing, CausalLM)
    with pytest.raises(
        TypeError, match=r"is not a causal LM for evaluation: it lacks .*parameters"
    ):
        check_causal_lm(thing)


def test_transformers_and_mpt_models_pass():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50)
    check_causal_lm(transformers.GPT2LMHeadModel(config))
    mpt = pytest.importorskip("mpt")  # a test-side import only: evalkit never imports mpt
    model = mpt.MPTForCausalLM(mpt.MPTConfig(d_model=16, n_heads=2, n_layers=1, vocab_size=50))
    check_causal_lm(model)
    assert supports_prefix_cache(model) and isinstance(model, PrefixCacheLM)


def test_optional_contracts_are_detected():
    assert supports_prefix_cache(tiny_lm("cache")) and not supports_prefix_cache(tiny_lm("plain"))
    assert supports_packing(tiny_lm("packed")) and isinstance(tiny_lm("packed"), PackedLM)
    assert not supports_packing(tiny_lm("masked"))


def test_tokenizers_follow_or_are_named():
    tok = WordTokenizer()
    assert isinstance(tok, Tokenizer)
    check_tokenizer(tok)
    assert tok.decode(tok.encode("hi there")) == "hi there"
    assert not isinstance(NoSpecials(), Tokenizer)
    with pytest.raises(TypeError, match="NoSpecials .* lacks eos_token_id, pad_token_id"):
        check_tokenizer(NoSpecials())
