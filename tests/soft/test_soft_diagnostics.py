"""(e) covariance diagnostic, mean |cos|, dropped errors per rho."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.soft import covariance_norm, dropped_errors_for_rhos, mean_abs_cos, sparsify_soft


@settings(max_examples=30, deadline=None)
@given(
    K=st.integers(1, 6),
    r=st.integers(1, 6),
    d_in=st.integers(1, 12),
    d_out=st.integers(1, 12),
    seed=st.integers(0, 10_000),
)
def test_covariance_norm_is_the_product_gap(K, r, d_in, d_out, seed):
    g = torch.Generator().manual_seed(seed)
    As = [torch.randn(r, d_in, generator=g) for _ in range(K)]
    Bs = [torch.randn(d_out, r, generator=g) for _ in range(K)]
    weights = (torch.rand(K, generator=g) * 10 + 0.1).tolist()
    w = torch.tensor(weights, dtype=torch.float64) / sum(weights)
    A_bar = sum(wk * A.double() for wk, A in zip(w, As, strict=True))
    B_bar = sum(wk * B.double() for wk, B in zip(w, Bs, strict=True))
    gap = sum(wk * B.double() @ A.double() for wk, A, B in zip(w, As, Bs, strict=True)) - B_bar @ A_bar
    assert covariance_norm(As, Bs, weights) == pytest.approx(float(torch.linalg.matrix_norm(gap)), rel=1e-9, abs=1e-9)


def test_covariance_norm_is_zero_for_identical_clients_and_not_otherwise(random_factors):
    A, B = random_factors(4, 6, 5, seed=1)
    assert covariance_norm([A, A, A], [B, B, B], [1, 2, 3]) == pytest.approx(0.0, abs=1e-12)
    A2, B2 = random_factors(4, 6, 5, seed=2)
    assert covariance_norm([A, A2], [B, B2], [1, 1]) > 0.1
    with pytest.raises(ValueError, match="weights"):
        covariance_norm([A, A2], [B, B2], [1, 0])


def test_mean_abs_cos():
    assert mean_abs_cos(torch.randn(1, 5), torch.randn(4, 1)) == 0.0
    eye = torch.eye(4)
    assert mean_abs_cos(3 * eye, torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0]))) == 0.0
    # identical (or opposite) rank components: |cos| = 1 on both sides
    A = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
    assert mean_abs_cos(A, A.T) == pytest.approx(1.0)
    # A side all parallel, B side orthogonal: the mean of 1 and 0
    assert mean_abs_cos(A, torch.eye(2)) == pytest.approx(0.5)
    # zero vectors (peft's B = 0) count as cos 0, never NaN
    assert mean_abs_cos(torch.eye(3), torch.zeros(5, 3)) == 0.0


def test_dropped_errors_for_rhos_match_soft(random_factors):
    A, B = random_factors(16, 12, 20, seed=9)
    rhos = [0.0, 0.25, 0.5, 0.75, 0.9]
    errors = dropped_errors_for_rhos(A, B, rhos)
    assert errors == [sparsify_soft(A, B, rho, 16).dropped_rank_error for rho in rhos]
    assert errors[0] == 0.0 and errors == sorted(errors) and errors[-1] > 0
    with pytest.raises(ValueError, match="1.0"):
        dropped_errors_for_rhos(A, B, [0.5, 1.0])
