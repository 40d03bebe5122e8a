"""Parallelism applied from outside: FSDP2 (full and hybrid) on gloo ranks matches one process,
mixed precision runs, activation checkpointing and compile keep gradients, norms are global.

Tolerances of the multi-process comparisons (fp32): the sharded run computes the same loss and
gradients as the single-process reference, but sums in another order (each rank's matmuls over
its rows, then a reduce-scatter over ranks), so gradients differ by a few ulps (~1e-7 relative).
AdamW's update lr * m / (sqrt(v) + eps) is bounded by lr per element and smooth in the gradient
away from g ~ eps, so after a handful of steps parameters and losses stay within ~1e-6 of the
reference (measured: losses 2e-7, weights 5e-7 apart); we allow 2e-5 absolute and relative. A
real bug is far above that: a wrong gradient average shows in the clipped norms (Adam alone is
blind to a gradient scale), a missing reduction or a wrong shard in the losses (~0.45 per step).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.distributed.tensor import Replicate, Shard

from composer_lite.parallel import (
    ParallelConfig,
    apply_parallelism,
    build_mesh,
    check_blocks,
    clip_grad_norm_,
    grad_norm,
    is_sharded,
)
from composer_lite.testing import TinyLM, random_lm_batch
from streaming.testing.distributed import run_distributed

CPU = torch.device("cpu")
STEPS, ROWS, SEQ, LR, MAX_NORM = 4, 8, 16, 1e-2, 0.3
TOL = {"atol": 2e-5, "rtol": 2e-5}


def _model(dropout: float = 0.0) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(vocab=64, dim=32, n_layers=2, dropout=dropout)


def _batches() -> list[dict[str, torch.Tensor]]:
    # The same global batch at every step (so the loss falls). No masked labels: every row has
    # SEQ loss tokens, so the mean of the ranks' mean losses is the global mean and the gradient
    # average FSDP2 does equals the single-process gradient.
    return [random_lm_batch(ROWS, SEQ, seed=7, mask_fraction=0.0)] * STEPS


def _train(model, batches, rows: slice, clip):
    """AdamW steps on `rows` of each batch; returns (local losses, grad norms, final weights)."""
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    losses, norms = [], []
    for batch in batches:
        part = {k: v[rows] for k, v in batch.items()}
        loss = model.loss(model(part), part)
        loss.backward()
        norms.append(float(clip(model, MAX_NORM)))
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    weights = {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone().numpy()
        for n, p in model.named_parameters()
    }
    return losses, norms, weights


def _forked_rank_setup() -> None:
    # The ranks are forked from pytest, whose OpenMP thread pool (started by any earlier test's
    # torch op big enough to go parallel) does not survive fork: a forked child's first parallel
    # op would hang. One thread per rank avoids OpenMP (and oversubscribing 2 cores with 4 ranks).
    torch.set_num_threads(1)


def _reference_run(rank, world):
    """One process, the whole batch, torch's own clip_grad_norm_."""
    _forked_rank_setup()

    def clip(model, max_norm):
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    return _train(_model(), _batches(), slice(None), clip)


@pytest.fixture(scope="module")
def reference():
    # Computed in a forked process too: a backward pass in pytest's own process starts autograd's
    # device threads on CUDA builds, and later forked ranks then refuse to run backward.
    (result,) = run_distributed(_reference_run, world_size=1)
    return result


def _global_losses(losses: list[float]) -> list[float]:
    tensor = torch.tensor(losses, dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return (tensor / torch.distributed.get_world_size()).tolist()


def _sharded_run(rank, world, config_kwargs):
    """On each rank: shard, train on this rank's rows, report placements and results."""
    _forked_rank_setup()
    out = {}
    for name, extra in {"plain": {}, "checkpointed": {"activation_checkpointing": True}}.items():
        model = apply_parallelism(_model(), ParallelConfig(**config_kwargs, **extra), device=CPU)
        params = dict(model.named_parameters())
        layout = {
            n: (type(p).__name__, tuple(p.placements), tuple(p.device_mesh.shape))
            for n, p in params.items()
        }
        rows_per_rank = ROWS // world
        rows = slice(rank * rows_per_rank, (rank + 1) * rows_per_rank)
        losses, norms, weights = _train(model, _batches(), rows, clip_grad_norm_)
        out[name] = {
            "sharded": is_sharded(model),
            "layout": layout,
            "losses": _global_losses(losses),
            "norms": norms,
            "weights": weights,
            "local_numel": params["layers.0.up.weight"].to_local().numel(),
        }
    if config_kwargs.get("sharding") == "hybrid":
        bad = ParallelConfig(sharding="hybrid", shard_group_size=3)
        try:
            build_mesh(bad, world, "cpu")
        except ValueError as err:
            out["bad_group_error"] = str(err)
    return out


def _check_against_reference(results, reference, placements, mesh_shape, shard_size):
    ref_losses, ref_norms, ref_weights = reference
    for rank_result in results:
        for variant in ("plain", "checkpointed"):
            got = rank_result[variant]
            assert got["sharded"]
            for name, (kind, got_placements, got_mesh) in got["layout"].items():
                assert (kind, got_placements, got_mesh) == ("DTensor", placements, mesh_shape), name
            assert got["local_numel"] == 128 * 32 // shard_size  # Shard(0) of the (4D, D) weight
            torch.testing.assert_close(got["losses"], ref_losses, **TOL)
            torch.testing.assert_close(got["norms"], ref_norms, **TOL)
            assert min(ref_norms) > MAX_NORM  # clipping was active at every step
            for name, ref in ref_weights.items():
                torch.testing.assert_close(
                    torch.from_numpy(got["weights"][name]), torch.from_numpy(ref), **TOL
                )


@pytest.mark.distributed
def test_full_shard_on_two_ranks_matches_one_process(reference):
    results = run_distributed(_sharded_run, world_size=2, args=({"sharding": "full"},))
    _check_against_reference(results, reference, (Shard(0),), (2,), shard_size=2)


@pytest.mark.distributed
def test_hybrid_shard_on_a_2x2_mesh_matches_one_process(reference):
    # shard_group_size defaults to LOCAL_WORLD_SIZE: two "nodes" of two ranks.
    results = run_distributed(
        _sharded_run, world_size=4, local_world_size=2, args=({"sharding": "hybrid"},)
    )
    _check_against_reference(results, reference, (Replicate(), Shard(0)), (2, 2), shard_size=2)
    assert "shard_group_size=3 does not divide world_size=4" in results[0]["bad_group_error"]


def _options_run(rank, world):
    """bf16 parameters with fp32 reduction; and CPU offload with parameters kept after forward."""
    _forked_rank_setup()
    rows = slice(rank * ROWS // world, (rank + 1) * ROWS // world)
    model = apply_parallelism(_model(), ParallelConfig(param_dtype="bf16"), device=CPU)
    seen = []
    model.layers[0].register_forward_pre_hook(
        lambda module, args: seen.append((module.up.weight.dtype, args[0].dtype))
    )
    losses, norms, _ = _train(model, _batches(), rows, clip_grad_norm_)
    master = model.layers[0].up.weight
    offload = ParallelConfig(cpu_offload=True, reshard_after_forward=False)
    offloaded = apply_parallelism(_model(), offload, device=CPU)
    offload_losses, offload_norms, _ = _train(offloaded, _batches(), rows, clip_grad_norm_)
    # Sharded and plain gradients together: normed group by group, then combined.
    batch = {k: v[rows] for k, v in _batches()[0].items()}
    offloaded.loss(offloaded(batch), batch).backward()
    extra = torch.zeros(9, requires_grad=True)
    extra.grad = torch.full((9,), 2.0)
    mixed = [*offloaded.parameters(), extra]
    sharded_norms = [float(grad_norm(offloaded, p)) for p in (2.0, float("inf"))]
    mixed_norms = [float(grad_norm(mixed, p)) for p in (2.0, float("inf"))]
    clip_grad_norm_(mixed, 0.1)
    return {
        "losses": _global_losses(losses),
        "norms": norms,
        "in_forward": seen[0],
        "master": (master.dtype, master.grad is None),
        "offload": (_global_losses(offload_losses), offload_norms),
        "mixed": (sharded_norms, mixed_norms, float(grad_norm(mixed))),
    }


@pytest.mark.distributed
def test_bf16_params_with_fp32_reduction_and_cpu_offload_train_on_cpu(reference):
    results = run_distributed(_options_run, world_size=2)
    ref_losses, ref_norms, _ = reference
    for got in results:
        # Blocks run on bf16 copies; the sharded masters (and the optimizer) stay fp32.
        assert got["in_forward"] == (torch.bfloat16, torch.bfloat16)
        assert got["master"] == (torch.float32, True)
        # bf16 keeps 8 mantissa bits (~0.4% per rounding): close to fp32, not equal.
        torch.testing.assert_close(got["losses"], ref_losses, atol=3e-2, rtol=1e-2)
        assert got["losses"][-1] < got["losses"][0] - 0.5
        torch.testing.assert_close(got["offload"], (ref_losses, ref_norms), **TOL)
    assert results[0]["norms"] == results[1]["norms"]  # every rank sees the global norm
    (two, inf), (mixed_two, mixed_inf), clipped = results[0]["mixed"]
    assert mixed_two == pytest.approx((two**2 + 9 * 2.0**2) ** 0.5, rel=1e-6)
    assert mixed_inf == max(inf, 2.0) and clipped == pytest.approx(0.1, rel=1e-5)
    assert results[1]["mixed"] == results[0]["mixed"]


# -- one process ------------------------------------------------------------------------------


def _grads(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)  # dropout masks
    model.loss(model(batch), batch).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_activation_checkpointing_keeps_gradients_names_and_deepcopy():
    batch = random_lm_batch(4, SEQ, seed=3)
    plain = _model(dropout=0.1)
    checkpointed = apply_parallelism(
        copy.deepcopy(plain), ParallelConfig(activation_checkpointing=True), device=CPU
    )
    assert type(checkpointed.layers[0]).__name__ == "Checkpointed_Block"
    assert checkpointed.state_dict().keys() == plain.state_dict().keys()
    expected = _grads(plain, batch)
    # Recomputation replays the saved RNG state, so even dropout gives bit-equal gradients.
    for model in (checkpointed, copy.deepcopy(checkpointed)):
        model.zero_grad(set_to_none=True)
        got = _grads(model, batch)
        for name, grad in expected.items():
            torch.testing.assert_close(got[name], grad, atol=0, rtol=0, msg=name)


def test_compile_with_checkpointing_on_cpu_keeps_gradients():
    # aot_eager runs dynamo and AOTAutograd (the graph capture, checkpoint included) without
    # inductor's C++ build, which takes ~20 s cold on a 2-core CPU; inductor: the gpu test below.
    batch = random_lm_batch(4, SEQ, seed=3)
    plain = _model()
    config = ParallelConfig(
        compile=True, activation_checkpointing=True, compile_backend="aot_eager"
    )
    compiled = apply_parallelism(copy.deepcopy(plain), config, device=CPU)
    assert type(compiled.layers[1]).__name__ == "CheckpointedCompiled_Block"
    expected, got = _grads(plain, batch), _grads(compiled, batch)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.gpu
def test_inductor_compile_of_blocks_on_gpu_keeps_gradients():
    device = torch.device("cuda")
    batch = {k: v.to(device) for k, v in random_lm_batch(4, SEQ, seed=3).items()}
    plain = _model().to(device)
    config = ParallelConfig(compile=True, activation_checkpointing=True)
    compiled = apply_parallelism(copy.deepcopy(plain), config, device=device)
    expected, got = _grads(plain, batch), _grads(compiled, batch)
    for name, grad in expected.items():
        # inductor fuses and reorders fp32 reductions (TF32 stays off): a few ulps apart
        torch.testing.assert_close(got[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_one_process_is_not_sharded_and_param_dtype_warns():
    model = apply_parallelism(_model(), ParallelConfig(), device=CPU)
    assert not is_sharded(model) and type(model) is TinyLM
    with pytest.warns(UserWarning, match="param_dtype='bf16' is FSDP2's mixed precision"):
        apply_parallelism(_model(), ParallelConfig(param_dtype="bf16"), device=CPU)
    with pytest.raises(ValueError, match="activation_checkpointing needs Plain.blocks()"):
        apply_parallelism(Plain(), ParallelConfig(activation_checkpointing=True), device=CPU)
    with pytest.raises(RuntimeError, match="needs torch.distributed initialized"):
        build_mesh(ParallelConfig(), 2, "cpu")


def test_compile_without_blocks_wraps_the_whole_model():
    model = apply_parallelism(
        Plain(), ParallelConfig(compile=True, compile_backend="aot_eager"), device=CPU
    )
    assert type(model).__name__ == "CompiledPlain"
    with pytest.raises(ValueError, match="already checkpointed or compiled"):
        apply_parallelism(model, ParallelConfig(compile=True), device=CPU)


@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
def test_clip_grad_norm_matches_torch_on_a_plain_model(norm_type):
    batch = random_lm_batch(4, SEQ, seed=5)
    ours, theirs = _model(), _model()
    _grads(ours, batch), _grads(theirs, batch)
    expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.1, norm_type)
    torch.testing.assert_close(grad_norm(ours, norm_type), expected, atol=0, rtol=0)
    torch.testing.assert_close(clip_grad_norm_(ours, 0.1, norm_type), expected, atol=0, rtol=0)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=0, rtol=0)


def test_grad_norm_edge_cases():
    model = _model()
    assert float(grad_norm(model)) == 0.0 and float(clip_grad_norm_(model, 1.0)) == 0.0
    model.head.bias.grad = torch.full_like(model.head.bias, float("nan"))
    assert torch.isnan(grad_norm(model))
    with pytest.raises(RuntimeError, match="not finite"):
        clip_grad_norm_(model, 1.0, error_if_nonfinite=True)
    model.head.bias.grad = torch.ones_like(model.head.bias)
    model.norm.bias.grad = torch.ones_like(model.norm.bias)
    expected = (model.head.bias.numel() + model.norm.bias.numel()) ** 0.5
    assert float(grad_norm(model)) == pytest.approx(expected)


# -- configs and the blocks() contract ------------------------------------------------------------


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.b(self.a(x))


class BadBlocks(Plain):
    def __init__(self, pick) -> None:
        super().__init__()
        self.pick = pick
        self.outer = nn.Sequential(nn.Linear(4, 4))

    def blocks(self):
        return self.pick(self)


def test_check_blocks_accepts_the_contract_and_names_every_problem():
    assert check_blocks(Plain()) is None
    assert len(check_blocks(_model())) == 2
    stranger = nn.Linear(4, 4)
    with pytest.raises(ValueError) as err:
        check_blocks(BadBlocks(lambda m: [m.a, m.a, stranger, "x", m.outer, m.outer[0]]))
    message = str(err.value)
    for problem in [
        "block 1 (a) is listed twice",
        "block 2 (Linear) is not a submodule",
        "block 3 is a str",
        "block 4 (outer) contains another block",
    ]:
        assert problem in message, problem

    def tied(m):
        m.b.weight = m.a.weight
        return [m.a]

    with pytest.raises(ValueError, match=r"block 0 \(a\) shares a parameter"):
        check_blocks(BadBlocks(tied))
    with pytest.raises(ValueError, match="non-empty list"):
        check_blocks(BadBlocks(lambda m: []))


def test_config_names_every_bad_value_and_unknown_key():
    with pytest.raises(ValueError) as err:
        ParallelConfig(sharding="zero3", param_dtype="fp8", reduce_dtype="x", shard_group_size=0)
    for part in ["sharding='zero3'", "param_dtype='fp8'", "reduce_dtype='x'", "shard_group_size=0"]:
        assert part in str(err.value)
    with pytest.raises(ValueError, match=r"unknown ParallelConfig keys \['fdsp', 'zero'\]"):
        ParallelConfig.from_dict({"fdsp": True, "zero": 3})
    config = ParallelConfig.from_dict({"sharding": "hybrid", "shard_group_size": 8})
    assert config.shard_group_size == 8
    policy = ParallelConfig(param_dtype="bf16").mixed_precision()
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ParallelConfig()  # the defaults are valid and quiet
