"""DecoupledAdamW and DecoupledLionW against their update rules written out in float64."""

from __future__ import annotations

import pytest
import torch

from composer_lite.decoupled import DecoupledAdamW, DecoupledLionW
from streaming.testing.distributed import run_distributed


def _steps(opt_factory, lrs, seed=0):
    """Parameters after one step per entry of `lrs` (the group's lr set before each step)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(5, 3, generator=g, dtype=torch.float64))
    grads = [torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in lrs]
    opt = opt_factory([w])
    for lr, grad in zip(lrs, grads, strict=True):
        opt.param_groups[0]["lr"] = lr
        w.grad = grad
        opt.step()
    return w.detach(), grads


def test_decoupled_adamw_scales_the_decay_by_lr_over_initial_lr():
    lrs, wd = [1e-2, 5e-3, 2.5e-3], 0.1
    got, grads = _steps(lambda ps: DecoupledAdamW(ps, lr=1e-2, weight_decay=wd), lrs)
    # reference: decay by (lr / initial_lr) * wd, then torch's Adam update without decay
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3, generator=g, dtype=torch.float64))
    adam = torch.optim.Adam([w], lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for lr, grad in zip(lrs, grads, strict=True):
        with torch.no_grad():
            w.mul_(1 - lr / 1e-2 * wd)
        adam.param_groups[0]["lr"] = lr
        w.grad = grad
        adam.step()
    torch.testing.assert_close(got, w.detach(), rtol=0, atol=1e-15)
    # torch's AdamW decays by lr * wd instead: a different result (the test can tell them apart)
    torch_adamw, _ = _steps(lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=wd), lrs)
    assert not torch.allclose(got, torch_adamw)


def test_decoupled_lionw_is_the_sign_update_with_decoupled_decay():
    lrs, wd, (b1, b2) = [1e-3, 1e-3, 5e-4], 0.5, (0.9, 0.99)
    got, grads = _steps(
        lambda ps: DecoupledLionW(ps, lr=1e-3, betas=(b1, b2), weight_decay=wd), lrs
    )
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64)
    m = torch.zeros_like(w)
    for lr, grad in zip(lrs, grads, strict=True):
        w = w * (1 - lr / 1e-3 * wd)
        w = w - lr * torch.sign(b1 * m + (1 - b1) * grad)
        m = b2 * m + (1 - b2) * grad
    torch.testing.assert_close(got, w, rtol=0, atol=1e-15)


@pytest.mark.parametrize("factory", [DecoupledAdamW, DecoupledLionW])
def test_state_round_trips_and_bad_settings_are_named(factory):
    w = torch.nn.Parameter(torch.ones(3))
    opt = factory([w], lr=1e-3, weight_decay=0.1)
    w.grad = torch.ones(3)
    opt.step()
    again = factory([torch.nn.Parameter(torch.ones(3))], lr=5.0)
    again.load_state_dict(opt.state_dict())
    assert again.param_groups[0]["scheduled_weight_decay"] == 0.1
    assert again.param_groups[0]["initial_lr"] == 1e-3
    with pytest.raises(ValueError, match=r"betas=\(0.9, 1.5\).*weight_decay=-1"):
        factory([w], betas=(0.9, 1.5), weight_decay=-1)


def _sharded_step(rank, world, factory_name):
    from torch.distributed.fsdp import fully_shard

    factory = {"adamw": DecoupledAdamW, "lion": DecoupledLionW}[factory_name]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    fully_shard(model)
    opt = factory(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        model(torch.ones(4, 8)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    return [p.full_tensor() for p in model.parameters()]


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["adamw", "lion"])
def test_sharded_parameters_step_like_one_process(name):
    factory = {"adamw": DecoupledAdamW, "lion": DecoupledLionW}[name]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    opt = factory(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        model(torch.ones(4, 8)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    sharded = run_distributed(_sharded_step, world_size=2, args=(name,))
    for got, want in zip(sharded[0], model.parameters(), strict=True):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
