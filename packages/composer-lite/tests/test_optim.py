"""MasterWeightAdamW: the torch path and the Triton kernel (interpreter) against torch's AdamW."""

import importlib.util

import pytest
import torch

from composer_lite.optim import MasterWeightAdamW

HYPER = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def _grads(shapes, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g) for s in shapes] for _ in range(steps)]


def _train(optimizer, init, grads, dtype):
    """Parameters of `dtype` from `init`, `optimizer(params)` stepped on `grads`; (params, opt)."""
    params = [torch.nn.Parameter(w.clone().to(dtype)) for w in init]
    opt = optimizer(params)
    for step in grads:
        for p, g in zip(params, step, strict=True):
            p.grad = g.to(dtype)
        opt.step()
        opt.zero_grad()
    return params, opt


def _reference(init, grads):
    """torch.optim.AdamW on fp32 copies, fed the same (bf16-rounded) gradients."""
    params, _ = _train(
        lambda ps: torch.optim.AdamW(ps, foreach=False, **HYPER), init, grads, torch.float32
    )
    return [p.detach() for p in params]


def _run_ours(init, grads, dtype, fused):
    return _train(lambda ps: MasterWeightAdamW(ps, fused=fused, **HYPER), init, grads, dtype)


SHAPES = [(7, 5), (3000,), (1,)]  # 3000 > the kernel's block: a masked tail


def test_fp32_params_match_adamw():
    init = [torch.randn(s) for s in SHAPES]
    grads = _grads(SHAPES, 6)
    params, opt = _run_ours(init, grads, torch.float32, fused=False)
    for p, r in zip(params, _reference(init, grads), strict=True):
        torch.testing.assert_close(p.detach(), r, rtol=1e-6, atol=1e-7)
    assert all("master" not in s for s in opt.state.values())  # fp32 needs no copy


def test_bf16_params_keep_an_fp32_master_that_matches_adamw():
    init = [torch.randn(s).bfloat16().float() for s in SHAPES]  # representable in bf16
    grads = [[g.bfloat16().float() for g in step] for step in _grads(SHAPES, 6)]
    params, opt = _run_ours(init, grads, torch.bfloat16, fused=False)
    for p, r in zip(params, _reference(init, grads), strict=True):
        master = opt.state[p]["master"]
        assert master.dtype == torch.float32 and p.dtype == torch.bfloat16
        torch.testing.assert_close(master, r, rtol=1e-6, atol=1e-7)
        assert torch.equal(p.detach(), master.bfloat16())  # the weight is the rounded master
    # the updates are far below bf16's resolution for many weights: without the master copy
    # (AdamW straight on bf16) the weights drift from the fp32 result
    naive, _ = _train(
        lambda ps: torch.optim.AdamW(ps, foreach=False, **HYPER), init, grads, torch.bfloat16
    )
    ref = _reference(init, grads)
    ours_err = sum((p.float() - r).abs().sum() for p, r in zip(params, ref, strict=True))
    naive_err = sum((p.float() - r).abs().sum() for p, r in zip(naive, ref, strict=True))
    assert ours_err < naive_err


def test_state_dict_round_trip_resumes_exactly():
    init = [torch.randn(s) for s in SHAPES]
    grads = _grads(SHAPES, 6)
    straight, _ = _run_ours(init, grads, torch.bfloat16, fused=False)
    first, opt = _run_ours(init, grads[:3], torch.bfloat16, fused=False)
    saved = opt.state_dict()
    params = [torch.nn.Parameter(p.detach().clone()) for p in first]
    resumed = MasterWeightAdamW(params, fused=False, **HYPER)
    resumed.load_state_dict(saved)
    for step in grads[3:]:
        for p, g in zip(params, step, strict=True):
            p.grad = g.bfloat16()
        resumed.step()
    for a, b in zip(params, straight, strict=True):
        assert torch.equal(a, b)


def test_bad_arguments_are_named():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="lr"):
        MasterWeightAdamW(p, lr=-1.0)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        MasterWeightAdamW(p, betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="floating point"):
        MasterWeightAdamW([torch.zeros(2, dtype=torch.int64)])


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_triton_kernel_matches_the_torch_path_under_the_interpreter(monkeypatch):
    """The fused kernel (run by Triton's CPU interpreter) vs the torch path. The kernel is built
    here under TRITON_INTERPRET=1 and forgotten afterwards, so no other test meets it; with
    fused=True a kernel that cannot run raises instead of falling back to the torch path."""
    from composer_lite import optim

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    optim._kernel.cache_clear()  # built again, now as an interpreted function
    try:
        torch.manual_seed(0)
        shapes = [(7, 5), (3000,), (1,)]
        init = [torch.randn(s) for s in shapes]
        grads = [[torch.randn(s) for s in shapes] for _ in range(4)]
        for dtype in (torch.bfloat16, torch.float32):
            out = {}
            for fused in (True, False):
                ps = [torch.nn.Parameter(w.clone().to(dtype)) for w in init]
                opt = MasterWeightAdamW(
                    ps, fused=fused, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1
                )
                for step in grads:
                    for p, g in zip(ps, step, strict=True):
                        p.grad = g.to(dtype)
                    opt.step()
                out[fused] = (
                    [p.detach().float() for p in ps],
                    [opt.state[p].get("master", p.detach()).float() for p in ps],
                    [opt.state[p]["exp_avg_sq"] for p in ps],
                )
            for i, (a, b) in enumerate(zip(out[True], out[False], strict=True)):
                for x, y in zip(a, b, strict=True):
                    # the interpreter rounds fp32 -> bf16 toward zero (the GPU to nearest): the
                    # weights (i == 0) may differ by one bf16 step; masters and moments may not
                    tol = dict(rtol=2**-7, atol=0) if i == 0 and dtype == torch.bfloat16 else {}
                    torch.testing.assert_close(x, y, **(tol or dict(rtol=2e-6, atol=1e-7)))
    finally:
        optim._kernel.cache_clear()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_kernel_on_gpu_matches_torch_path():
    torch.manual_seed(0)
    shapes = [(2048, 2048), (50432, 64), (3,)]
    init = [torch.randn(s, device="cuda") for s in shapes]
    grads = [[torch.randn(s, device="cuda") for s in shapes] for _ in range(3)]
    out = {}
    for fused in (True, False):
        ps = [torch.nn.Parameter(w.clone().bfloat16()) for w in init]
        opt = MasterWeightAdamW(ps, fused=fused, **HYPER)
        for step in grads:
            for p, g in zip(ps, step, strict=True):
                p.grad = g.bfloat16()
            opt.step()
        out[fused] = [opt.state[p]["master"] for p in ps]
        for p in ps:  # round to nearest on the GPU, like torch's cast
            assert torch.equal(p.detach(), opt.state[p]["master"].bfloat16())
    for a, b in zip(out[True], out[False], strict=True):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)


class _Loader(list):
    batch_size = 8


def _bf16_trainer(folder, max_duration, **options):
    from composer_lite import Trainer
    from composer_lite.testing import TinyLM, random_lm_batch

    torch.manual_seed(0)
    model = TinyLM().to(torch.bfloat16)
    data = _Loader(random_lm_batch(8, 6, seed=i) for i in range(4))
    opt = MasterWeightAdamW(model.parameters(), fused=False, **HYPER)
    return Trainer(
        model,
        data,
        opt,
        max_duration=max_duration,
        save_folder=str(folder),
        save_interval="1ba",
        default_callbacks=False,
        loggers=[],
        **options,
    )


@pytest.mark.filterwarnings("ignore:the train dataloader has no state_dict")
def test_trainer_checkpoint_resume_with_bf16_weights_is_bitwise(tmp_path):
    """In the Trainer: bf16 weights, masters in the optimizer's state; a run stopped at batch 2 and
    resumed from its checkpoint ends bitwise equal to one that never stopped (masters too)."""
    straight = _bf16_trainer(tmp_path / "a", "4ba")
    straight.fit()
    _bf16_trainer(tmp_path / "b", "2ba").fit()
    resumed = _bf16_trainer(tmp_path / "b", "4ba", autoresume=True)
    assert resumed.checkpointer.resumed_from.endswith("ep0-ba2")
    resumed.fit()
    a, b = straight.state.model, resumed.state.model
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert p.dtype == torch.bfloat16 and torch.equal(p, q), name
        ma, mb = straight.state.optimizer.state[p], resumed.state.optimizer.state[q]
        assert mb["master"].dtype == torch.float32 and torch.equal(ma["master"], mb["master"]), name
        assert torch.equal(ma["exp_avg_sq"], mb["exp_avg_sq"]), name
