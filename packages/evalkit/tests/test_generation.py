"""Greedy generation: the same text with a cache, a mask or neither, alone or batched; stops."""

from __future__ import annotations

import pytest
import torch

from evalkit.generation import GenerationOptions, cut_at_stop, generate_greedy
from evalkit.testing import WordTokenizer, tiny_lm


def greedy_alone(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("kind", ["plain", "masked", "cache"])
@pytest.mark.parametrize("batch_size", [1, 8])
def test_generation_matches_one_prompt_at_a_time(kind, batch_size):
    tok = WordTokenizer()
    prompts = [tok.encode(t) for t in ("the red cat", "a dog", "why does the river run", "hill")]
    expected = [tok.decode(greedy_alone(tiny_lm("plain"), p, 5)) for p in prompts]
    options = GenerationOptions(max_new_tokens=5, batch_size=batch_size)
    assert generate_greedy(tiny_lm(kind), prompts, tok, options) == expected


def test_generation_stops_at_a_stop_sequence_or_eos():
    tok = WordTokenizer()
    prompt = tok.encode("the red cat")
    free = greedy_alone(tiny_lm("plain"), prompt, 6)
    stop = tok.decode(free[2:3])  # the third generated token is a stop sequence
    got = generate_greedy(
        tiny_lm("cache"), [prompt], tok, GenerationOptions(max_new_tokens=6, stop=(stop,))
    )
    assert got == [cut_at_stop(tok.decode(free[:3]), (stop,))]
    assert cut_at_stop("A: 42\n\nQ: next", ("\n\n", "Q:")) == "A: 42"
    eos = tiny_lm("cache")
    with torch.no_grad():
        eos.head.bias = torch.nn.Parameter(torch.full((512,), -1e4))
        eos.head.bias[0] = 1e4  # EOS always wins: generation ends after one token
    assert generate_greedy(eos, [prompt], tok, GenerationOptions(max_new_tokens=6)) == ["<eos>"]
