"""KVCache.index_select: several continuations of one cached prefix, as evalkit scores choices.

Tolerance: the cached run computes the same fp32 attention as the full sequence, over the same
unmasked keys but in another order of summation (padding columns, two forwards), so logits agree
to a few ulps (measured ~1e-6); 1e-5 absolute. A row taken from the wrong prefix, or a lost
padding mask, is off by far more (~1e-1).
"""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("overrides", [{}, {"learned_pos_emb": True, "alibi": False}])
def test_rows_picked_from_a_padded_prefix_continue_like_the_full_sequences(tiny_mpt, overrides):
    model = tiny_mpt(**overrides)
    g = torch.Generator().manual_seed(3)
    prefixes = [torch.randint(1, 101, (n,), generator=g).tolist() for n in (6, 3)]
    tails = [torch.randint(1, 101, (4,), generator=g).tolist() for _ in range(3)]
    owners = [0, 0, 1]  # two continuations of the first prefix, one of the second
    width = max(map(len, prefixes))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prefixes])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prefixes])
    with torch.no_grad():
        cache = model.new_cache(2, width + 4)
        model(ids, attention_mask=mask, past_key_values=cache)
        picked = cache.index_select(torch.tensor(owners))
        assert picked.batch_size == 3 and cache.batch_size == 2
        got = model(torch.tensor(tails), past_key_values=picked).logits  # (3, 4, V)
        for row, (owner, tail) in enumerate(zip(owners, tails, strict=True)):
            full = model(torch.tensor([prefixes[owner] + tail])).logits[0, -4:]
            torch.testing.assert_close(got[row], full, atol=1e-5, rtol=0)


def test_index_select_leaves_the_cache_it_copies_unchanged(tiny_mpt):
    model = tiny_mpt()
    prompt, tail = [5, 7, 9, 11], [13, 17]
    with torch.no_grad():
        cache = model.new_cache(1, 8)
        model(torch.tensor([prompt]), past_key_values=cache)
        copy = cache.index_select(torch.tensor([0, 0]))
        model(torch.tensor([tail, tail]), past_key_values=copy)
        assert (cache.length, copy.length) == (4, 6)
        again = model(torch.tensor([tail]), past_key_values=cache).logits[0]
        full = model(torch.tensor([prompt + tail])).logits[0, -2:]
    torch.testing.assert_close(again, full, atol=1e-5, rtol=0)
