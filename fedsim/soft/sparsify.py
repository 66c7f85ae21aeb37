"""Client-side sparsifiers: SOFT and the baselines, SOFT (fedsim formulation).

Every sparsifier has the signature ``(A, B, rho, value_bits, generator=None) -> SparseUpdate``
with A: (r, d_in) = ``lora_A.weight``, B: (d_out, r) = ``lora_B.weight``, rho in [0, 1) the
fraction of ranks dropped and q = value_bits in {16, 32}. They read their inputs, never modify
them, and are registered in :data:`SPARSIFIERS`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fedsim.soft.budget import (
    check_rho,
    check_value_bits,
    dense_payload_bits,
    index_bits_per_entry,
    keep_count,
    payload_bits,
    topk_element_budget,
)
from fedsim.soft.importance import check_factors, rank_importance
from fedsim.soft.update import SparseUpdate, to_wire

Sparsifier = Callable[..., SparseUpdate]


def top_ranks(s: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest importances, ties to the lower index.

    Returns ``kept`` (k,) int64 sorted ascending, and ``dropped_s`` (r - k,), the importances
    of the dropped ranks in descending order. Cost O(r log r).
    """
    values, order = torch.sort(s, descending=True, stable=True)
    return torch.sort(order[:k]).values, values[k:]


def dropped_error(dropped_s: Tensor) -> float:
    """sum_i s_i^2 over the given (dropped) importances, in float64."""
    return float(dropped_s.double().square().sum())


def rank_update(
    A: Tensor, B: Tensor, kept: Tensor, value_bits: int, payload: int, error: float, rank: int
) -> SparseUpdate:
    """Rank update sending A[kept, :] and B[:, kept] of an adapted matrix of structural rank r."""
    return SparseUpdate(
        d_in=A.shape[1],
        d_out=B.shape[0],
        rank=rank,
        value_bits=value_bits,
        payload_bits=payload,
        dropped_rank_error=error,
        rank_indices=kept,
        A_rows=to_wire(A.index_select(0, kept), value_bits),
        B_cols=to_wire(B.index_select(1, kept), value_bits),
    )


@torch.no_grad()
def sparsify_soft(
    A: Tensor, B: Tensor, rho: float, value_bits: int, generator: torch.Generator | None = None
) -> SparseUpdate:
    """SOFT: keep the k ranks with the largest importance, the same set for A and B.

    s_i = ||b_i|| ||a_i||,  k = max(1, ceil((1 - rho) r)),  K = top-k of s (ties: lower index)

    Sends A[K, :], B[:, K] and K. Payload S = k (d_in + d_out) q + min(r, k ceil(log2 r)).
    ``dropped_rank_error`` = sum_{i not in K} s_i^2, which equals ||B A - B_K A_K||_F^2 when
    A A^T and B^T B are diagonal (then this is the SVD truncation, Eckart-Young). Cost
    O(r (d_in + d_out)): B A is never formed and no SVD is taken. ``generator`` is unused.
    """
    r = check_factors(A, B)
    q = check_value_bits(value_bits)
    k = keep_count(r, rho)
    s = rank_importance(A, B)
    kept, dropped_s = top_ranks(s, k)
    return rank_update(A, B, kept, q, payload_bits(A.shape[1], B.shape[0], r, k, q), dropped_error(dropped_s), r)


@torch.no_grad()
def sparsify_randk(
    A: Tensor, B: Tensor, rho: float, value_bits: int, generator: torch.Generator | None = None
) -> SparseUpdate:
    """Random-k ranks baseline: k ranks drawn uniformly without replacement from ``generator``.

    Same payload as SOFT; ``dropped_rank_error`` = sum of s_i^2 over the dropped ranks. The
    generator is required (randomness is explicit, house rule 4); a CPU generator is expected.
    """
    r = check_factors(A, B)
    q = check_value_bits(value_bits)
    k = keep_count(r, rho)
    if generator is None:
        raise ValueError("randk needs a torch.Generator (generator=None given)")
    perm = torch.randperm(r, generator=generator, device=generator.device).to(A.device)
    kept, dropped = torch.sort(perm[:k]).values, torch.sort(perm[k:]).values
    error = dropped_error(rank_importance(A, B).index_select(0, dropped))
    return rank_update(A, B, kept, q, payload_bits(A.shape[1], B.shape[0], r, k, q), error, r)


@torch.no_grad()
def sparsify_svd(
    A: Tensor, B: Tensor, rho: float, value_bits: int, generator: torch.Generator | None = None
) -> SparseUpdate:
    """SVD-truncation baseline: form B A, take its SVD, keep the top-k triplets and refactor.

    B A = U diag(sigma) V^T,  B' = U_k diag(sqrt(sigma_k)),  A' = diag(sqrt(sigma_k)) V_k^T

    sent as ranks 0..k-1 of the update (B' (d_out, k), A' (k, d_in)). The index set is implicit
    (always 0..k-1), so the payload has no index bits: S = k (d_in + d_out) q.
    ``dropped_rank_error`` = sum_{j > k} sigma_j^2 = ||B A - B' A'||_F^2. Cost
    O(d_out d_in min(d_in, d_out)) for the SVD. The refactored components live in a per-client
    basis, so the server's per-rank average mixes different bases: that is part of what this
    baseline measures. B A has at most min(d_in, d_out) singular triplets, so k is capped there
    (only possible when r > min(d_in, d_out)). ``generator`` is unused.
    """
    r = check_factors(A, B)
    q = check_value_bits(value_bits)
    k = min(keep_count(r, rho), A.shape[1], B.shape[0])
    work = torch.promote_types(A.dtype, torch.float32)
    U, S, Vh = torch.linalg.svd(B.to(work) @ A.to(work), full_matrices=False)
    root = S[:k].sqrt()
    B_new, A_new = U[:, :k] * root, root[:, None] * Vh[:k]
    kept = torch.arange(k, dtype=torch.int64, device=A.device)
    error = dropped_error(S[k:])
    return rank_update(A_new, B_new, kept, q, k * (A.shape[1] + B.shape[0]) * q, error, r)


@torch.no_grad()
def sparsify_dense(
    A: Tensor, B: Tensor, rho: float, value_bits: int, generator: torch.Generator | None = None
) -> SparseUpdate:
    """Ideal baseline: send all r ranks whatever rho is; S = r (d_in + d_out) q, error 0.

    ``rho`` is validated and otherwise ignored; ``generator`` is unused.
    """
    r = check_factors(A, B)
    q = check_value_bits(value_bits)
    check_rho(rho)
    kept = torch.arange(r, dtype=torch.int64, device=A.device)
    return rank_update(A, B, kept, q, dense_payload_bits(A.shape[1], B.shape[0], r, q), 0.0, r)


def _topk_flat(X: Tensor, n: int) -> tuple[Tensor, Tensor]:
    flat = X.reshape(-1)
    idx = torch.topk(flat.abs(), n, sorted=False).indices if n else flat.new_zeros(0, dtype=torch.int64)
    idx = torch.sort(idx).values
    return idx, flat.index_select(0, idx)


def _product_error(A: Tensor, B: Tensor, A2: Tensor, B2: Tensor) -> float:
    """||B A - B2 A2||_F^2 without forming d_out x d_in products: O(r^2 (d_in + d_out)).

    ||B A - B2 A2||^2 = <B^T B, A A^T> - 2 <B^T B2, A A2^T> + <B2^T B2, A2 A2^T>, with
    <X, Y> = sum_ij X_ij Y_ij (float64).
    """
    A, B, A2, B2 = (X.double() for X in (A, B, A2, B2))
    val = ((B.T @ B) * (A @ A.T)).sum() - 2 * ((B.T @ B2) * (A @ A2.T)).sum() + ((B2.T @ B2) * (A2 @ A2.T)).sum()
    return max(float(val), 0.0)


@torch.no_grad()
def sparsify_topk(
    A: Tensor, B: Tensor, rho: float, value_bits: int, generator: torch.Generator | None = None
) -> SparseUpdate:
    """Element-wise magnitude top-k on A and on B separately, at SOFT's payload for this rho.

    Keeps the n_A largest |A_ij| and the n_B largest |B_ij| with (n_A, n_B) from
    :func:`topk_element_budget`; sends their flat indices (ceil(log2(numel)) bits each) and
    values (q bits each). Payload S = n_A c_A + n_B c_B, with 0 <= S_soft - S < min(c_A, c_B).
    ``dropped_rank_error`` is not a rank quantity here: it is the product error
    ||B A - B~ A~||_F^2 with B~, A~ the sparsified factors (zeros where not sent), computed in
    O(r^2 (d_in + d_out)). Ties in magnitude are broken by ``torch.topk`` (unspecified order).
    ``generator`` is unused.
    """
    r = check_factors(A, B)
    q = check_value_bits(value_bits)
    d_in, d_out = A.shape[1], B.shape[0]
    n_A, n_B = topk_element_budget(d_in, d_out, r, rho, q)
    iA, vA = _topk_flat(A, n_A)
    iB, vB = _topk_flat(B, n_B)
    cost_A, cost_B = q + index_bits_per_entry(r * d_in), q + index_bits_per_entry(d_out * r)
    A_kept = torch.zeros_like(A).reshape(-1).index_copy(0, iA, vA).view_as(A)
    B_kept = torch.zeros_like(B).reshape(-1).index_copy(0, iB, vB).view_as(B)
    return SparseUpdate(
        d_in=d_in,
        d_out=d_out,
        rank=r,
        value_bits=q,
        payload_bits=n_A * cost_A + n_B * cost_B,
        dropped_rank_error=_product_error(A, B, A_kept, B_kept),
        A_indices=iA,
        A_values=to_wire(vA, q),
        B_indices=iB,
        B_values=to_wire(vB, q),
    )


class _Registry(dict):
    """A dict whose missing-key error lists the known names."""

    def __missing__(self, key: object) -> Sparsifier:
        raise KeyError(f"unknown sparsifier {key!r}; known: {', '.join(sorted(self))}")


SPARSIFIERS: dict[str, Sparsifier] = _Registry(
    soft=sparsify_soft,
    randk=sparsify_randk,
    topk=sparsify_topk,
    svd=sparsify_svd,
    dense=sparsify_dense,
)


def get_sparsifier(name: str) -> Sparsifier:
    """Look up a sparsifier by name; unknown names raise KeyError listing the known ones."""
    return SPARSIFIERS[name]
