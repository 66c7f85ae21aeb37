"""Server-side aggregation of sparse LoRA uploads, SOFT (fedsim formulation)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fedsim.soft.importance import check_factors
from fedsim.soft.update import SparseUpdate


def aggregate(
    global_A: Tensor, global_B: Tensor, updates: Sequence[tuple[float, SparseUpdate]]
) -> tuple[Tensor, Tensor]:
    """Per-entry weighted average over the clients that sent each entry.

    For each entry (i, j) of A (and likewise of B), with S_ij the clients whose update carries
    that entry, weights w_k > 0 (e.g. |D_k|) and X_k the sent values:

        A_new[i, j] = sum_{k in S_ij} w_k A_k[i, j] / sum_{k in S_ij} w_k   if S_ij is not empty
        A_new[i, j] = global_A[i, j]                                        otherwise

    For rank updates (soft, randk, svd, dense) S_ij = S_i, the clients that sent rank i, so this
    is the per-rank weighted average of a_i and b_i with weights renormalised over the senders
    of rank i; a rank nobody sent keeps its previous global value. A and B are averaged
    separately (the product of the averages is not the average of the products: see
    :func:`fedsim.soft.diagnostics.covariance_norm`).

    Sums run in float64 in the order of ``updates`` (pass client-id order for reproducibility).
    Pure: the inputs are not modified.

    Parameters
    ----------
    global_A : Tensor, shape (r, d_in)
    global_B : Tensor, shape (d_out, r)
    updates : sequence of (weight, SparseUpdate)

    Returns
    -------
    A_new : Tensor, shape (r, d_in), dtype and device of ``global_A``
    B_new : Tensor, shape (d_out, r), dtype and device of ``global_B``
    """
    r = check_factors(global_A, global_B)
    shape = (global_A.shape[1], global_B.shape[0], r)
    num_A = torch.zeros(global_A.shape, dtype=torch.float64, device=global_A.device)
    den_A = torch.zeros_like(num_A)
    num_B = torch.zeros(global_B.shape, dtype=torch.float64, device=global_B.device)
    den_B = torch.zeros_like(num_B)
    for pos, (weight, update) in enumerate(updates):
        w = float(weight)
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"aggregate: weight of update {pos} must be finite and > 0, got {weight!r}")
        if (update.d_in, update.d_out, update.rank) != shape:
            raise ValueError(
                f"aggregate: update {pos} has (d_in, d_out, r) = {(update.d_in, update.d_out, update.rank)}, "
                f"global factors have {shape}"
            )
        A_k, mask_A, B_k, mask_B = update.decompress()
        num_A += w * A_k.to(num_A.device, torch.float64)
        den_A += w * mask_A.to(num_A.device, torch.float64)
        num_B += w * B_k.to(num_B.device, torch.float64)
        den_B += w * mask_B.to(num_B.device, torch.float64)
    A_new = torch.where(den_A > 0, num_A / den_A.clamp_min(1e-300), global_A.detach().double())
    B_new = torch.where(den_B > 0, num_B / den_B.clamp_min(1e-300), global_B.detach().double())
    return A_new.to(global_A.dtype), B_new.to(global_B.dtype)
