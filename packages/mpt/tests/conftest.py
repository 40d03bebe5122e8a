"""Shared fixtures of the mpt suite: tiny configs and models built in the test."""

from __future__ import annotations

import pytest
import torch

from mpt import MPTConfig, MPTForCausalLM

TINY = dict(d_model=64, n_heads=4, n_layers=2, vocab_size=101, max_seq_len=64)


@pytest.fixture
def tiny_config():
    """`tiny_config(**overrides)` -> a small MPTConfig (4 heads of 16, 2 layers, vocab 101)."""

    def make(**overrides) -> MPTConfig:
        return MPTConfig(**{**TINY, **overrides})

    return make


@pytest.fixture
def tiny_mpt(tiny_config):
    """`tiny_mpt(seed=0, **overrides)` -> an fp32 MPTForCausalLM in eval mode on CPU."""

    def make(seed: int = 0, **overrides) -> MPTForCausalLM:
        torch.manual_seed(seed)
        return MPTForCausalLM(tiny_config(**overrides)).eval()

    return make


def _rank_entry(rank, fn, world, store, out, args):
    import torch.distributed as dist

    # A forked child inherits the parent's OpenMP pool in a broken state (it would hang in its
    # first parallel op once the parent has run one): one thread per rank.
    torch.set_num_threads(1)
    # A file store, not a TCP port: no race with other suites for a free port.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(fn(rank, world, *args), f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture
def run_ranks(tmp_path):
    """`run_ranks(fn, *args, world=2)` -> [fn(rank, world, *args) for each rank]: each rank a
    forked process in one gloo group, so nothing is imported again (spawned ranks each import
    torch, the test module and what it imports). A rank that raises fails the call with its
    traceback; results travel through torch.save files under tmp_path/ranks."""
    # what FSDP2 ranks import (~2 s of CPU): once here, not again in each rank
    import torch.distributed.fsdp
    import torch.distributed.tensor
    import torch.multiprocessing as mp

    def run(fn, *args, world: int = 2):
        folder = tmp_path / "ranks"
        folder.mkdir()
        store, out = str(folder / "rendezvous"), str(folder)
        mp.start_processes(
            _rank_entry, args=(fn, world, store, out, args), nprocs=world, start_method="fork"
        )
        return [torch.load(f"{out}/{rank}.pt", weights_only=False) for rank in range(world)]

    return run
