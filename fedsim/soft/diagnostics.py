"""Per-round SOFT diagnostics, SOFT (fedsim formulation)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from fedsim.soft.budget import keep_count
from fedsim.soft.importance import check_factors, rank_importance
from fedsim.soft.regularizer import _unit_rows
from fedsim.soft.sparsify import dropped_error


@torch.no_grad()
def covariance_norm(As: Sequence[Tensor], Bs: Sequence[Tensor], weights: Sequence[float]) -> float:
    """Covariance term of separate A/B aggregation.

    With w_k normalised to sum to 1, A_bar = sum_k w_k A_k and B_bar = sum_k w_k B_k:

        C = || sum_k w_k (B_k - B_bar)(A_k - A_bar) ||_F = || sum_k w_k B_k A_k - B_bar A_bar ||_F

    (expand the product and use sum_k w_k = 1): the exact gap between averaging the clients'
    products and multiplying the averaged factors.

    Parameters
    ----------
    As : sequence of Tensor, each (r, d_in)
    Bs : sequence of Tensor, each (d_out, r)
    weights : sequence of float, each > 0 (e.g. |D_k|); normalised here.

    Returns
    -------
    float
        C >= 0 (float64 arithmetic; forms one d_out x d_in product).
    """
    if not (len(As) == len(Bs) == len(weights)) or not As:
        raise ValueError(
            f"covariance_norm needs equally many A, B and weights (>= 1); got {len(As)}, {len(Bs)}, {len(weights)}"
        )
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
        raise ValueError(f"covariance_norm: weights must be finite and > 0, got {list(weights)}")
    w = w / w.sum()
    for A, B in zip(As, Bs, strict=True):
        check_factors(A, B)
    dev = As[0].device
    A_all = torch.stack([A.to(dev, torch.float64) for A in As])  # (K, r, d_in)
    B_all = torch.stack([B.to(dev, torch.float64) for B in Bs])  # (K, d_out, r)
    w = w.to(dev)
    dA = A_all - torch.einsum("k,kij->ij", w, A_all)
    dB = B_all - torch.einsum("k,kij->ij", w, B_all)
    # sum_k w_k dB_k dA_k = [w_1 dB_1 ... w_K dB_K] (d_out, K r) @ [dA_1; ...; dA_K] (K r, d_in)
    K, r, d_in = dA.shape
    left = (w[:, None, None] * dB).permute(1, 0, 2).reshape(dB.shape[1], K * r)
    return float(torch.linalg.matrix_norm(left @ dA.reshape(K * r, d_in)))


def _mean_abs_offdiag_cos(X: Tensor) -> float:
    r = X.shape[0]
    U = _unit_rows(X.double())
    G = (U @ U.T).abs()
    return float((G.sum() - torch.diagonal(G).sum()) / (r * (r - 1)))


@torch.no_grad()
def mean_abs_cos(A: Tensor, B: Tensor) -> float:
    """Mean |cos| between distinct rank components, averaged over A and B.

    m = 1/2 [ mean_{i != j} |cos(a_i, a_j)| + mean_{i != j} |cos(b_i, b_j)| ]

    with a_i = A[i, :], b_i = B[:, i] and cos taken as 0 for a zero vector; 0 for r = 1. It is
    0 exactly when A A^T and B^T B are diagonal, i.e. when SOFT's selection is the SVD truncation.

    Parameters
    ----------
    A : Tensor, shape (r, d_in)
    B : Tensor, shape (d_out, r)
    """
    r = check_factors(A, B)
    if r < 2:
        return 0.0
    return 0.5 * (_mean_abs_offdiag_cos(A) + _mean_abs_offdiag_cos(B.T))


@torch.no_grad()
def dropped_errors_for_rhos(A: Tensor, B: Tensor, rhos: Iterable[float]) -> list[float]:
    """SOFT dropped-rank error for each candidate rho, from one sort of the importances.

    E(rho) = sum_{i > k(rho)} s_(i)^2,  s_(1) >= ... >= s_(r),  k(rho) = max(1, ceil((1 - rho) r))

    Bitwise equal to ``sparsify_soft(A, B, rho, q).dropped_rank_error``; a client reports
    these few scalars so the TSFA controller can price each rho (docs/schedulers.md, TSFA).

    Parameters
    ----------
    A : Tensor, shape (r, d_in)
    B : Tensor, shape (d_out, r)
    rhos : iterable of float, each in [0, 1)

    Returns
    -------
    list of float, one per rho, in the given order.
    """
    r = check_factors(A, B)
    ks = [keep_count(r, rho) for rho in rhos]
    s_sorted = torch.sort(rank_importance(A, B), descending=True, stable=True).values
    return [dropped_error(s_sorted[k:]) for k in ks]
