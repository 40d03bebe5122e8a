"""A meta-device model sharded with FSDP2 on 2 gloo ranks, then materialized rank by rank."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mpt import MPTConfig, MPTForCausalLM

CONFIG = dict(d_model=64, n_heads=4, n_layers=2, vocab_size=128, max_seq_len=32)


def _worker(rank: int, world: int, store: str, results) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard

    # A file rendezvous: no port to race for with other tests running at the same time.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
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
        results[rank] = (local_rows, full, loss.item())
    finally:
        dist.destroy_process_group()


def test_meta_model_shards_then_materializes_consistently(tmp_path):
    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), results), nprocs=2, join=True)
    (rows0, full0, loss0), (rows1, full1, loss1) = results[0], results[1]
    assert rows0 == rows1 == 3 * 64 // 2  # Wqkv (192, 64) split in two
    for name in full0:
        assert torch.equal(full0[name], full1[name]), name
    assert loss0 == loss1
    # The sharded init is MPT's init, not zeros or garbage.
    std = full0["transformer.blocks.0.attn.Wqkv.weight"].std().item()
    assert 0.5 * (2 / 64) ** 0.5 < std < 1.5 * (2 / 64) ** 0.5
    assert torch.equal(full0["transformer.norm_f.weight"], torch.ones(64))
