"""Per-rank importance of LoRA factors, SOFT (fedsim formulation)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_factors(A: Tensor, B: Tensor) -> int:
    """Check peft-convention LoRA factors and return the rank r.

    A is ``lora_A.weight`` with shape (r, d_in); B is ``lora_B.weight`` with shape (d_out, r).
    """
    if not (isinstance(A, Tensor) and isinstance(B, Tensor)):
        raise TypeError(f"A and B must be torch.Tensor, got {type(A).__name__} and {type(B).__name__}")
    if A.ndim != 2 or B.ndim != 2:
        raise ValueError(f"A must be (r, d_in) and B (d_out, r); got A {tuple(A.shape)}, B {tuple(B.shape)}")
    if A.shape[0] != B.shape[1]:
        raise ValueError(
            f"rank mismatch: A {tuple(A.shape)} has r = {A.shape[0]} rows, "
            f"B {tuple(B.shape)} has r = {B.shape[1]} columns"
        )
    if A.shape[0] < 1 or A.shape[1] < 1 or B.shape[0] < 1:
        raise ValueError(f"empty LoRA factors: A {tuple(A.shape)}, B {tuple(B.shape)}")
    if not (A.is_floating_point() and B.is_floating_point()):
        raise TypeError(f"A and B must be floating point, got {A.dtype} and {B.dtype}")
    return int(A.shape[0])


def rank_importance(A: Tensor, B: Tensor) -> Tensor:
    """Importance of each LoRA rank component, SOFT (fedsim formulation).

    s_i = ||b_i||_2 ||a_i||_2,   b_i = B[:, i],  a_i = A[i, :].

    B A = sum_i b_i a_i^T = sum_i s_i u_i v_i^T with u_i = b_i / ||b_i||, v_i = a_i / ||a_i||.
    If the columns of B are mutually orthogonal and so are the rows of A (B^T B and A A^T
    diagonal), this sum is an exact SVD of B A with singular values s_i, so the top-k ranks by
    s_i give the optimal rank-k approximation (Eckart-Young) without forming B A. Cost
    O(r (d_in + d_out)).

    Parameters
    ----------
    A : Tensor, shape (r, d_in)
        ``lora_A.weight``.
    B : Tensor, shape (d_out, r)
        ``lora_B.weight``.

    Returns
    -------
    Tensor, shape (r,)
        s, same dtype and device as the inputs (not differentiable: computed under no_grad).
    """
    check_factors(A, B)
    with torch.no_grad():
        return torch.linalg.vector_norm(B, dim=0) * torch.linalg.vector_norm(A, dim=1)
