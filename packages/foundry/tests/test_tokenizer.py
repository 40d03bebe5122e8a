"""Tokenizers: loading, the evalkit contract, `foundry tokenizer train`, and the model checks."""

from __future__ import annotations

import json
import random

import pytest

from foundry.compose import compose_config
from foundry.schema import TokenizerTrainCommand
from foundry.tokenizer import (
    CHAT_TOKENS,
    check_seq_len,
    check_vocab_fits,
    load_tokenizer,
    train_from_config,
)

from .conftest import random_text, write_jsonl


@pytest.mark.shared_data
def test_neox_tokenizer_loads_from_file_or_folder(neox_path):
    for where in (neox_path, neox_path.parent):
        tok = load_tokenizer(where)
        assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0
        assert tok.vocab_size == 50277
        text = "Hello, world! Ünïcödé and   spaces\n"
        assert tok.decode(tok.encode(text)) == text
        assert tok.encode("Hello world") == [12092, 1533]


def test_adapter_satisfies_evalkit_tokenizer_contract(tiny_tokenizer):
    from evalkit.protocols import Tokenizer, check_tokenizer

    tok = load_tokenizer(tiny_tokenizer)
    check_tokenizer(tok)
    assert isinstance(tok, Tokenizer)
    assert (tok.eos_token_id, tok.pad_token_id) == (0, 1)


def test_missing_tokenizer_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="a folder must hold tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_tokenizer(tmp_path / "nope.json")


def train_config(tmp_path, *overrides):
    rng = random.Random(3)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [random_text(rng, 40) for _ in range(300)])
    composed = compose_config(
        "tokenizer_train", [f"inputs=[{corpus}]", f"out={tmp_path / 'tok'}", *overrides]
    )
    return composed.build(TokenizerTrainCommand), composed.to_yaml()


def test_tokenizer_train_with_chat_tokens_and_transformers_loads_it(tmp_path):
    cfg, text = train_config(tmp_path, "vocab_size=700")
    tok = train_from_config(cfg, config_text=text)
    assert tok.vocab_size == 700
    specials = ["<|endoftext|>", "<|pad|>", *CHAT_TOKENS]
    assert [tok.token_to_id(t) for t in specials] == [0, 1, 2, 3]
    chat = "<|im_start|>user\nw1 w2 w3<|im_end|>\n"
    ids = tok.encode(chat)
    assert ids[0] == 2 and 3 in ids, "chat tokens are single special tokens"
    assert tok.decode(ids) == chat
    saved = tmp_path / "tok"
    assert "vocab_size: 700" in (saved / "foundry_config.yaml").read_text()
    assert json.loads((saved / "tokenizer_config.json").read_text())["eos_token"] == specials[0]

    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(saved))
    assert hf.eos_token_id == 0 and hf.pad_token_id == 1
    assert hf.encode("w1 w2 w3", add_special_tokens=False) == tok.encode("w1 w2 w3")
    rendered = hf.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_train_refuses_to_overwrite_and_small_vocab(tmp_path):
    cfg, _ = train_config(tmp_path, "vocab_size=300")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        train_from_config(cfg)
    assert (tmp_path / "tok" / "keep.txt").read_text() == "mine"
    cfg, _ = train_config(tmp_path, "vocab_size=100", "overwrite=true")
    with pytest.raises(ValueError, match="set vocab_size >= 260"):
        train_from_config(cfg)


@pytest.mark.shared_data
def test_vocab_larger_than_the_model_is_an_error_naming_the_fix(neox_path):
    tok = load_tokenizer(neox_path)
    check_vocab_fits(tok, 50368)
    with pytest.raises(
        ValueError, match=r"50277 tokens but model.vocab_size=8192: set model.vocab_size=50304"
    ):
        check_vocab_fits(tok, 8192)


def test_seq_len_longer_than_the_model_is_an_error():
    check_seq_len(2048, 2048)
    with pytest.raises(ValueError, match=r"max_seq_len=4096 is longer than model.max_seq_len=2048"):
        check_seq_len(4096, 2048)
