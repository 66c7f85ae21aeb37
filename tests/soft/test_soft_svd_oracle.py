"""(a) SOFT equals the SVD truncation when the factors are exactly orthogonal."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.soft import keep_count, rank_importance, sparsify_soft, sparsify_svd
from fedsim.soft.sparsify import top_ranks


@st.composite
def orthogonal_case(draw):
    r = draw(st.integers(1, 12))
    d_in = draw(st.integers(r, 40))
    d_out = draw(st.integers(r, 40))
    rho = draw(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 0.99]))
    seed = draw(st.integers(0, 2**31 - 1))
    # distinct importances in a random order, well separated so the top-k set is unique
    g = torch.Generator().manual_seed(seed)
    s = (torch.randperm(r, generator=g).double() + 1.0) * draw(st.floats(0.01, 100.0))
    return r, d_in, d_out, rho, seed, s


@settings(max_examples=60, deadline=None)
@given(orthogonal_case())
def test_soft_equals_svd_truncation_on_orthogonal_factors(orthogonal_factors, case):
    r, d_in, d_out, rho, seed, s = case
    A, B = orthogonal_factors(d_in, d_out, s, seed)
    k = keep_count(r, rho)
    M = B @ A
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    M_k = U[:, :k] @ torch.diag(S[:k]) @ Vh[:k]

    # importances are the singular values, and SOFT keeps the ranks carrying the top-k of them
    torch.testing.assert_close(torch.sort(rank_importance(A, B), descending=True).values, S[:r])
    kept, _ = top_ranks(rank_importance(A, B), k)
    svd_kept = {int(torch.argmin((s - sigma).abs())) for sigma in S[:k]}
    assert set(kept.tolist()) == svd_kept

    # the reconstruction is the Eckart-Young rank-k truncation (float64 math)
    B_k, A_k = B[:, kept], A[kept]
    torch.testing.assert_close(B_k @ A_k, M_k, rtol=1e-9, atol=1e-9 * float(S[0]))

    # dropped error: sum of dropped s_i^2 = ||BA - B_k A_k||_F^2 = sum of dropped sigma^2
    update = sparsify_soft(A, B, rho, 32)
    assert update.rank_indices.tolist() == kept.tolist()
    dropped = [i for i in range(r) if i not in svd_kept]
    expected = float(sum(float(s[i]) ** 2 for i in dropped))
    scale = float(S[0]) ** 2
    assert abs(update.dropped_rank_error - expected) <= 1e-9 * scale
    assert abs(update.dropped_rank_error - float(torch.linalg.matrix_norm(M - B_k @ A_k)) ** 2) <= 1e-9 * scale
    assert abs(update.dropped_rank_error - float(S[k:].square().sum())) <= 1e-9 * scale

    # what goes on the wire (float32) reconstructs the same truncation, and matches the SVD baseline
    A_d, _, B_d, _ = update.decompress()
    svd_update = sparsify_svd(A, B, rho, 32)
    A_s, _, B_s, _ = svd_update.decompress()
    tol = dict(rtol=1e-5, atol=1e-5 * float(S[0]))
    torch.testing.assert_close((B_d @ A_d).double(), M_k, **tol)
    torch.testing.assert_close((B_s @ A_s).double(), M_k, **tol)
    assert abs(svd_update.dropped_rank_error - update.dropped_rank_error) <= 1e-6 * scale


def test_soft_ties_keep_the_lower_index():
    A = torch.ones(6, 3)
    B = torch.ones(4, 6)
    B[:, 5] = 2.0  # rank 5 is the largest; ranks 0..4 tie
    update = sparsify_soft(A, B, 0.5, 32)
    assert update.rank_indices.tolist() == [0, 1, 5]


def test_soft_on_non_orthogonal_factors_reports_the_importance_proxy(random_factors):
    A, B = random_factors(8, 20, 24, seed=3)
    update = sparsify_soft(A, B, 0.5, 32)
    s = rank_importance(A, B)
    kept = update.rank_indices
    dropped = [i for i in range(8) if i not in kept.tolist()]
    assert min(float(s[i]) for i in kept) >= max(float(s[i]) for i in dropped)
    expected = float(s[dropped].double().square().sum())
    assert update.dropped_rank_error == pytest.approx(expected, rel=1e-12)
