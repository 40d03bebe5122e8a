"""transformers models and Hugging Face tokenizers through evalkit's adapters."""

from __future__ import annotations

import random

import pytest
import torch

from evalkit import EvalConfig, as_tokenizer, evaluate, load_hf
from evalkit.generation import GenerationOptions, generate_greedy
from evalkit.hf import HFCausalLM, model_window
from evalkit.logprobs import Request
from evalkit.scoring import ScoringOptions, score_requests
from evalkit.tokenizer import TokenizersAdapter, TransformersAdapter, needs_prefix_space

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


def gpt2(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = dict(n_embd=32, n_layer=2, n_head=2, vocab_size=512, n_positions=128)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**config, **overrides})).eval()


def word_level():
    words = ["<|endoftext|>", "[UNK]", "the", "red", "cat", "sat", "Ġthe", "Ġred", "Ġcat", "Ġsat"]
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    return tok


@pytest.mark.parametrize(
    "options",
    [
        dict(sharing="packed", pack_len=40),
        dict(sharing="kv_cache"),
        dict(sharing="none"),
        dict(sharing="none", padding_side="left"),
    ],
    ids=["packed", "kv_cache", "right", "left"],
)
def test_every_path_matches_the_model_alone(options):
    model, rng = gpt2(), random.Random(1)
    groups = []
    for _ in range(6):
        context = tuple(rng.randrange(1, 512) for _ in range(rng.randint(2, 12)))
        groups.append(
            [
                Request(context, tuple(rng.randrange(1, 512) for _ in range(rng.randint(1, 4))))
                for _ in range(rng.randint(1, 3))
            ]
        )
    scores = score_requests(HFCausalLM(model), groups, ScoringOptions(batch_size=4, **options))
    with torch.no_grad():
        for group, got in zip(groups, scores, strict=True):
            for req, score in zip(group, got, strict=True):
                logits = model(torch.tensor([list(req.context + req.continuation)[:-1]])).logits[0]
                lp = torch.log_softmax(logits.double(), -1)[len(req.context) - 1 :]
                want = lp.gather(1, torch.tensor(req.continuation)[:, None]).sum().item()
                assert abs(score.logprob - want) < 1e-5


def test_cached_generation_matches_transformers_generate():
    model = gpt2()
    prompts = [[5, 17, 99, 3], [42, 8]]
    ids = HFCausalLM(model)
    expected = []
    for p in prompts:
        out = model.generate(torch.tensor([p]), max_new_tokens=5, do_sample=False, pad_token_id=0)
        expected.append(out[0, len(p) :].tolist())

    class Ids:
        eos_token_id, pad_token_id = None, None

        def decode(self, tokens):
            return ",".join(map(str, tokens))

    texts = generate_greedy(ids, prompts, Ids(), GenerationOptions(max_new_tokens=5, batch_size=2))
    assert texts == [",".join(map(str, e)) for e in expected]


def test_tokenizer_adapters():
    raw = word_level()
    tok = as_tokenizer(raw)
    assert isinstance(tok, TokenizersAdapter) and tok.eos_token_id == 0 and tok.pad_token_id is None
    assert tok.encode("the red cat") == [2, 7, 8] == tok.encode_batch(["the red cat"])[0]
    assert tok.decode([2, 7, 8]) == "the red cat"
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>")
    tf = as_tokenizer(fast)
    assert isinstance(tf, TransformersAdapter) and tf.eos_token_id == 0
    assert tf.encode("the red cat") == [2, 7, 8] == tf.encode_batch(["the red cat"])[0]
    with pytest.raises(ValueError, match="eos_token='<eos>' is not in the tokenizer's vocabulary"):
        TokenizersAdapter(raw, eos_token="<eos>")
    with pytest.raises(TypeError, match="does not follow the tokenizer contract"):
        as_tokenizer(object())

    class Wrapped:  # follows the contract and also has token_to_id/encode_batch (foundry's)
        eos_token_id, pad_token_id = 0, None

        def encode(self, text):
            return tok.encode(text)

        def encode_batch(self, texts):
            return tok.encode_batch(texts)

        def decode(self, ids):
            return tok.decode(ids)

        def token_to_id(self, token):
            return raw.token_to_id(token)

    own = Wrapped()
    assert as_tokenizer(own) is own  # used as it is, not wrapped as an HF `tokenizers` object


@pytest.mark.shared_data
def test_the_neox_tokenizer_both_ways(shared_data):
    path = shared_data / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
    rust = as_tokenizer(tokenizers.Tokenizer.from_file(str(path)))
    fast = as_tokenizer(
        transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|endoftext|>")
    )
    text = "Question: why is the sky blue?\nAnswer: Rayleigh scattering"
    assert rust.encode(text) == fast.encode(text) and rust.decode(rust.encode(text)) == text
    assert rust.eos_token_id == fast.eos_token_id == 0 and needs_prefix_space(rust)


def test_a_saved_folder_evaluates_like_the_model_in_memory(tmp_path, tasks_yaml):
    model = gpt2()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=word_level(), eos_token="<|endoftext|>"
    )
    model.save_pretrained(tmp_path / "m")
    fast.save_pretrained(tmp_path / "m")
    loaded, tok = load_hf(tmp_path / "m")
    assert model_window(loaded) == 128 and tok.eos_token_id == 0
    config = EvalConfig(limit=4, labels=("mc", "schema"))
    a = evaluate(loaded, tok, tasks=tasks_yaml, config=config)
    b = evaluate(model, fast, tasks=tasks_yaml, config=config)
    assert a.metrics() == pytest.approx(b.metrics())
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        load_hf(tmp_path / "nothing")
