"""Generation with a KV cache: greedy against a no-cache loop, batching, sampling, EOS."""

from __future__ import annotations

import pytest
import torch

from mpt.generate import left_pad, sample_next


def greedy_without_cache(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        logits = model(torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids


@pytest.mark.parametrize("overrides", [{}, {"kv_n_heads": 1}, {"attn_impl": "sdpa"}])
def test_greedy_with_cache_equals_the_loop_without(tiny_mpt, overrides):
    model = tiny_mpt(**overrides)
    prompt = torch.randint(0, 101, (7,)).tolist()
    out = model.generate(torch.tensor([prompt]), max_new_tokens=10)
    assert out[0].tolist() == greedy_without_cache(model, prompt, 10)


def test_batched_prompts_of_different_lengths_match_one_by_one(tiny_mpt):
    model = tiny_mpt()
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(1, 101, (n,), generator=g).tolist() for n in (3, 9, 5)]
    out = model.generate(prompts, max_new_tokens=6, pad_token_id=0)
    assert out.shape == (3, 9 + 6)
    for row, prompt in enumerate(prompts):
        alone = model.generate([prompt], max_new_tokens=6)[0].tolist()
        assert out[row, 9 - len(prompt) :].tolist() == alone
        assert out[row, : 9 - len(prompt)].tolist() == [0] * (9 - len(prompt))


def test_generation_stops_at_eos_and_pads_finished_rows(tiny_mpt):
    model = tiny_mpt()
    prompts = [[5, 6, 7], [8, 9, 10, 11]]
    free = model.generate(prompts, max_new_tokens=8)
    eos = int(free[0, 4])  # row 0's first generated token becomes the EOS
    out = model.generate(prompts, max_new_tokens=8, eos_token_id=eos, pad_token_id=0)
    assert out[0, 4:].tolist() == [eos] + [0] * (out.shape[1] - 5)
    row1 = free[1, 4:].tolist()
    cut = row1.index(eos) + 1 if eos in row1 else len(row1)
    assert out[1, 4 : 4 + cut].tolist() == row1[:cut]  # the other row is not disturbed
    alone = model.generate([[5, 6, 7]], max_new_tokens=8, eos_token_id=eos)
    assert alone[0].tolist() == [5, 6, 7, eos]  # stopped as soon as the only row ended


def test_sampling_settings(tiny_mpt):
    model = tiny_mpt()
    prompt = [[3, 1, 4, 1, 5]]
    greedy = model.generate(prompt, max_new_tokens=6)
    assert torch.equal(model.generate(prompt, max_new_tokens=6, temperature=1.0, top_k=1), greedy)
    assert torch.equal(
        model.generate(prompt, max_new_tokens=6, temperature=0.7, top_p=1e-6), greedy
    )
    a = model.generate(
        prompt, max_new_tokens=6, temperature=1.0, generator=torch.Generator().manual_seed(1)
    )
    b = model.generate(
        prompt, max_new_tokens=6, temperature=1.0, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(a, b)


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    seen_k = {int(sample_next(logits, temperature=1.0, top_k=2, generator=g)) for _ in range(200)}
    assert seen_k == {0, 1}
    # top_p 0.7: 0.5 alone is short of it, 0.5 + 0.3 reaches it, so tokens 0 and 1 remain
    seen_p = {int(sample_next(logits, temperature=1.0, top_p=0.7, generator=g)) for _ in range(200)}
    assert seen_p == {0, 1}
    with pytest.raises(ValueError, match="top_p must be in"):
        sample_next(logits, temperature=1.0, top_p=0.0)


def test_top_k_zero_filters_nothing():
    logits = torch.randn(3, 50)
    for top_k in (0, None):  # transformers' meaning of 0; was a ValueError
        picks = {
            int(
                sample_next(
                    logits, temperature=5.0, top_k=top_k, generator=torch.Generator().manual_seed(i)
                )[0]
            )
            for i in range(200)
        }
        assert len(picks) > 10, top_k
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        sample_next(logits, temperature=1.0, top_k=-1)


def test_left_pad_rejects_empty_prompts():
    ids, mask = left_pad([[1, 2], [3]], pad_token_id=9)
    assert ids.tolist() == [[1, 2], [9, 3]] and mask.tolist() == [[1, 1], [0, 1]]
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []], pad_token_id=0)
