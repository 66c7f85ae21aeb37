"""(f) the scale-free orthogonality regulariser."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from fedsim.soft import lora_factor_pairs, mean_abs_cos, orthogonality_penalty, rank_importance


def test_zero_for_orthogonal_factors_whatever_the_norms(orthogonal_factors):
    s = torch.tensor([5.0, 0.1, 2.0, 30.0])
    A, B = orthogonal_factors(10, 12, s, seed=0, dtype=torch.float32)
    assert float(orthogonality_penalty([(A, B)])) == pytest.approx(0.0, abs=1e-10)
    # orthogonal but far from orthonormal: an orthonormality penalty would not be 0 here
    assert float((A @ A.T - torch.eye(4)).norm()) > 1.0


def test_scale_free_and_mean_over_pairs(random_factors):
    A, B = random_factors(6, 10, 8, seed=1)
    A2, B2 = random_factors(4, 5, 7, seed=2)
    p = orthogonality_penalty([(A, B)])
    scaled = orthogonality_penalty([(A * torch.linspace(0.1, 10, 6)[:, None], B * 1e-3)])
    torch.testing.assert_close(p, scaled, rtol=1e-5, atol=1e-7)
    both = orthogonality_penalty([(A, B), (A2, B2)])
    torch.testing.assert_close(both, (p + orthogonality_penalty([(A2, B2)])) / 2)
    # definition: mean over i != j of cos^2, rows of A plus columns of B
    An = A / A.norm(dim=1, keepdim=True)
    Bn = B / B.norm(dim=0, keepdim=True)
    off = ~torch.eye(6, dtype=torch.bool)
    expected = (An @ An.T)[off].square().mean() + (Bn.T @ Bn)[off].square().mean()
    torch.testing.assert_close(p, expected)


def test_gradient_does_not_change_the_rank_norms(random_factors):
    # R is invariant to rescaling a rank component, so its gradient is orthogonal to it:
    # gradient steps leave ||a_i|| and ||b_i|| unchanged to first order.
    A, B = random_factors(5, 9, 7, seed=3)
    A.requires_grad_()
    B.requires_grad_()
    orthogonality_penalty([(A, B)]).backward()
    torch.testing.assert_close((A.grad * A).sum(dim=1), torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close((B.grad * B).sum(dim=0), torch.zeros(5), atol=1e-6, rtol=0)
    assert A.grad.abs().sum() > 0


def test_zero_vectors_give_zero_and_finite_gradients():
    # peft initialises B = 0
    A = torch.eye(4, 6).requires_grad_()
    B = torch.zeros(8, 4, requires_grad=True)
    p = orthogonality_penalty([(A, B)])
    p.backward()
    assert float(p.detach()) == 0.0
    assert torch.isfinite(A.grad).all() and torch.isfinite(B.grad).all()
    Z = torch.zeros(3, 5, requires_grad=True)
    orthogonality_penalty([(Z, torch.zeros(2, 3))]).backward()
    assert torch.isfinite(Z.grad).all()


def test_rank_one_and_empty_input():
    assert float(orthogonality_penalty([(torch.randn(1, 4), torch.randn(3, 1))])) == 0.0
    with pytest.raises(ValueError, match="no"):
        orthogonality_penalty([])


def _train(lambda_orth: float, seed: int = 0, steps: int = 100):
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # peft's LoRA init draws from the global generator
        base = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 16))
        model = get_peft_model(base, LoraConfig(r=8, lora_alpha=8, target_modules=["0", "2"]))
    g = torch.Generator().manual_seed(seed + 1)
    X, Y = torch.randn(256, 32, generator=g), torch.randn(256, 16, generator=g)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(X), Y)
        if lambda_orth:
            loss = loss + lambda_orth * orthogonality_penalty(lora_factor_pairs(model))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [(A.detach().clone(), B.detach().clone()) for A, B in lora_factor_pairs(model)]


def test_regulariser_lowers_mean_abs_cos_in_training():
    plain = _train(0.0)
    regularised = _train(0.1)  # the default lambda_orth
    assert len(plain) == len(regularised) == 2
    for (A0, B0), (A1, B1) in zip(plain, regularised, strict=True):
        assert B0.abs().sum() > 0  # trained away from peft's B = 0
        assert mean_abs_cos(A1, B1) < 0.9 * mean_abs_cos(A0, B0)
        assert torch.all(rank_importance(A1, B1) > 0)
