"""Shared fixtures of the mpt suite: tiny configs and models built in the test."""

from __future__ import annotations

import inspect
import sys

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


@pytest.fixture(scope="session", autouse=True)
def _interpreter_finds_the_builtins_once():
    """Speed only: under TRITON_INTERPRET=1, Triton's interpreter patches `triton.language` again
    for every call of a `@triton.jit` helper from a kernel, running `inspect.getmembers` over four
    namespaces each time: about a quarter of the interpreter's time at these sizes. Here the names
    of their builtins are found once, before any kernel runs; every call still patches exactly the
    members that are builtins at that moment, as Triton's `_patch_builtin` does (other namespaces
    go to Triton's own). Without Triton, or with another interpreter layout, nothing changes."""
    interpreter = sys.modules.get("triton.runtime.interpreter")
    if interpreter is None or not hasattr(interpreter, "_patch_attr"):
        yield
        return
    import triton.language as tl

    is_builtin = tl.core.is_builtin
    spaces = [
        tl,
        tl.core,
        tl.core.tensor,
        tl.math,
        getattr(tl.core, "tensor_descriptor_base", None),
    ]
    names = {
        id(space): [name for name, member in inspect.getmembers(space) if is_builtin(member)]
        for space in spaces
        if space is not None
    }
    real = interpreter._patch_builtin

    def patch_builtin(pkg, builder, scope):
        found = names.get(id(pkg))
        if found is None:
            return real(pkg, builder, scope)
        for name in found:
            member = getattr(pkg, name)
            if is_builtin(member):
                interpreter._patch_attr(pkg, name, member, builder, scope)

    interpreter._patch_builtin = patch_builtin
    try:
        yield
    finally:
        interpreter._patch_builtin = real
