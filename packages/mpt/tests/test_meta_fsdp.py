"""A meta-device model sharded with FSDP2 on 2 gloo ranks, then materialized rank by rank."""

from __future__ import annotations

import torch

from mpt import MPTConfig, MPTForCausalLM

CONFIG = dict(d_model=64, n_heads=4, n_layers=2, vocab_size=128, max_seq_len=32)


def _worker(rank: int, world: int):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard

    model = MPTForCausalLM(MPTConfig(**CONFIG), device="meta")
    for block in model.blocks():
        fully_shard(block)
    fully_shard(model)
    model.materialize("cpu", seed=7)  # each rank fills only its own shards
    wqkv = model.transformer.blocks[0].attn.Wqkv.weight
    assert isinstance(wqkv, DTensor) and wqkv.placements == (Shard(0),)
    local_rows = wqkv.to_local().shape[0]
    full = {name: p.full_tensor().detach() for name, p in model.named_parameters()}
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    loss = model(ids, labels=ids).loss
    loss.backward()
    # fan_out with grouped-query heads: q, k and v each get the std of their own fan_out
    fan_out = MPTForCausalLM(MPTConfig(**CONFIG, fan_mode="fan_out", kv_n_heads=1), device="meta")
    fully_shard(fan_out)
    fan_out.materialize("cpu", seed=7)
    parts = fan_out.transformer.blocks[0].attn.Wqkv.weight.full_tensor().split([64, 16, 16])
    return local_rows, full, loss.item(), [p.std().item() for p in parts]


def test_meta_model_shards_then_materializes_consistently(run_ranks):
    (rows0, full0, loss0, stds0), (rows1, full1, loss1, stds1) = run_ranks(_worker)
    assert stds0 == stds1
    for std, rows in zip(stds0, (64, 16, 16), strict=True):  # kaiming: sqrt(2 / fan_out)
        assert 0.85 * (2 / rows) ** 0.5 < std < 1.15 * (2 / rows) ** 0.5, (std, rows)
    assert rows0 == rows1 == 3 * 64 // 2  # Wqkv (192, 64) split in two
    for name in full0:
        assert torch.equal(full0[name], full1[name]), name
    assert loss0 == loss1
    # The sharded init is MPT's init, not zeros or garbage.
    std = full0["transformer.blocks.0.attn.Wqkv.weight"].std().item()
    assert 0.5 * (2 / 64) ** 0.5 < std < 1.5 * (2 / 64) ** 0.5
    assert torch.equal(full0["transformer.norm_f.weight"], torch.ones(64))
