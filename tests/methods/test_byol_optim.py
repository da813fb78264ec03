"""LARS wrapper (STRL's LARSWrapper semantics) and the warm-up + cosine schedule."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from selfsup_pcd.methods.optim import LARS, warmup_cosine


def param(values: list[float]) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))


def lars_scale(p: torch.Tensor, g: torch.Tensor, lr: float, wd: float, eta: float = 0.02) -> float:
    p_norm, g_norm = float(p.norm()), float(g.norm())
    return min(eta * p_norm / (g_norm + wd * p_norm + 1e-8) / lr, 1.0)


@pytest.mark.parametrize(("grad_size", "wd"), [(100.0, 0.0), (0.01, 0.0), (100.0, 0.5)])
def test_lars_sgd_step_scales_the_gradient(grad_size: float, wd: float) -> None:
    lr = 0.1
    p = param([1.0, -2.0, 0.5])
    start = p.detach().clone()
    g = torch.tensor([3.0, 1.0, -2.0], dtype=torch.float64) * grad_size
    p.grad = g.clone()
    opt = LARS([p], optimizer=partial(torch.optim.SGD, lr=lr, weight_decay=wd))
    opt.step()
    scale = lars_scale(start, g, lr, wd)
    assert (scale < 1) == (grad_size > 1)  # the clip only bites for large gradients
    torch.testing.assert_close(p.detach(), start - lr * scale * (g + wd * start))
    assert opt.param_groups[0]["weight_decay"] == wd  # restored after the inner step


def test_lars_adam_equals_adam_on_scaled_gradients() -> None:
    p, q = param([1.0, -2.0, 0.5]), param([1.0, -2.0, 0.5])
    lars = LARS([p], optimizer=partial(torch.optim.Adam, lr=1e-3))
    adam = torch.optim.Adam([q], lr=1e-3)
    for step in range(3):
        g = torch.tensor([40.0, -10.0, 25.0], dtype=torch.float64) * (step + 1)
        p.grad = g.clone()
        q.grad = g * lars_scale(q.detach(), g, 1e-3, 0.0)
        lars.step()
        adam.step()
        torch.testing.assert_close(p, q)
    torch.testing.assert_close(lars.state_dict()["state"][0]["exp_avg"], adam.state_dict()["state"][0]["exp_avg"])


def test_lars_shares_groups_with_the_inner_optimizer_and_round_trips_state() -> None:
    p = param([1.0, 2.0])
    opt = LARS([p], optimizer=partial(torch.optim.Adam, lr=1e-3))
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    p.grad = torch.ones(2, dtype=torch.float64)
    opt.step()
    scheduler.step()
    assert opt.inner.param_groups[0]["lr"] == pytest.approx(5e-4)
    state = opt.state_dict()
    other = LARS([param([1.0, 2.0])], optimizer=partial(torch.optim.Adam, lr=1e-3))
    other.load_state_dict(state)
    assert other.param_groups is other.inner.param_groups and other.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert torch.equal(other.state[other.param_groups[0]["params"][0]]["exp_avg"], state["state"][0]["exp_avg"])
    opt.zero_grad()
    assert p.grad is None


def test_closure_is_evaluated_before_scaling() -> None:
    p = param([1.0])
    opt = LARS([p], optimizer=partial(torch.optim.SGD, lr=1.0))

    def closure():
        opt.zero_grad()
        loss = (p * 1000.0).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == pytest.approx(1000.0)
    assert float(p.detach()) == pytest.approx(1.0 - 0.02 * 1.0 / 1000.0 * 1000.0)  # scale = eta |p| / |g| / lr


def test_warmup_then_cosine() -> None:
    p = param([0.0])
    opt = torch.optim.SGD([p], lr=1.0)
    scheduler = warmup_cosine(opt, max_epochs=6, warmup_epochs=2, warmup_start_factor=0.01)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    expected = [0.01, 0.505, 1.0] + [(1 + math.cos(math.pi * e / 4)) / 2 for e in (1, 2, 3, 4)]
    assert lrs == pytest.approx(expected)
    plain = warmup_cosine(torch.optim.SGD([param([0.0])], lr=1.0), max_epochs=6)
    assert isinstance(plain, torch.optim.lr_scheduler.CosineAnnealingLR)
    with pytest.raises(ValueError):
        warmup_cosine(opt, max_epochs=3, warmup_epochs=3)
