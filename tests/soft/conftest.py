"""Shared builders for the SOFT tests."""

from __future__ import annotations

import pytest
import torch


def _orthogonal_factors(
    d_in: int, d_out: int, s: torch.Tensor, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly orthogonal LoRA factors with importances s: B = U diag(beta), A = diag(alpha) V^T.

    U (d_out, r) and V (d_in, r) have orthonormal columns; beta_i alpha_i = s_i with an uneven
    split between the two factors so that the test does not rely on balanced norms.
    """
    r = s.numel()
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(d_out, r, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d_in, r, generator=g, dtype=torch.float64))
    split = torch.rand(r, generator=g, dtype=torch.float64) * 2 + 0.25
    beta, alpha = s.double() * split, 1.0 / split
    return (alpha[:, None] * V.T).to(dtype), (U * beta).to(dtype)


def _random_factors(r: int, d_in: int, d_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)


@pytest.fixture(scope="session")
def orthogonal_factors():
    """The builder :func:`_orthogonal_factors` (session scope: it is a pure function)."""
    return _orthogonal_factors


@pytest.fixture(scope="session")
def random_factors():
    """The builder :func:`_random_factors`: standard normal A (r, d_in) and B (d_out, r)."""
    return _random_factors


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """These tensors are tiny: one thread avoids OpenMP spin-waiting on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
