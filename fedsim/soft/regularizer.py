"""Scale-free orthogonality regulariser for LoRA factors, SOFT (fedsim formulation)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from fedsim.soft.importance import check_factors

_EPS = 1e-12


def _unit_rows(X: Tensor, eps: float = _EPS) -> Tensor:
    """Rows of X divided by their 2-norm; a zero row stays zero with a finite gradient.

    The norm is sqrt(max(sum x^2, eps^2)): clamping the squared norm (not the norm) keeps the
    backward pass away from d sqrt(u)/du at u = 0, which would give 0 * inf = NaN.
    """
    sq = (X * X).sum(dim=1, keepdim=True)
    return X * torch.rsqrt(sq.clamp_min(eps * eps))


def _mean_sq_offdiag_cos(X: Tensor) -> Tensor:
    """Mean of cos(x_i, x_j)^2 over the r (r - 1) ordered pairs i != j of rows of X (r, d)."""
    r = X.shape[0]
    if r < 2:
        return X.new_zeros(())
    U = _unit_rows(X)
    G = U @ U.T  # (r, r) cosine Gram matrix
    off = G - torch.diag_embed(torch.diagonal(G))
    return (off * off).sum() / (r * (r - 1))


def orthogonality_penalty(pairs: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
    """Scale-free off-diagonal Gram penalty R_orth, SOFT (fedsim formulation).

    For one adapted matrix with A: (r, d_in), B: (d_out, r), rank components a_i = A[i, :] and
    b_i = B[:, i], and cos(x, y) = x^T y / (||x|| ||y||) (taken as 0 when either is 0):

        R(A, B) = 1 / (r (r - 1)) * sum_{i != j} [cos(a_i, a_j)^2 + cos(b_i, b_j)^2]

    and R_orth is the mean of R(A, B) over the pairs (0 for r = 1). Local loss:
    L_task + lambda_orth * R_orth (docs/methods.md; default lambda_orth = 0.1).

    R only depends on directions, so it pushes A A^T and B^T B towards *diagonal* matrices
    without touching the rank norms: the importance s_i = ||b_i|| ||a_i|| stays informative. (A
    penalty towards orthonormality, A A^T = I and B^T B = I, would equalise the norms.) Zero
    vectors (peft initialises B = 0) contribute 0 with finite gradients.

    Parameters
    ----------
    pairs : iterable of (A, B)
        A of shape (r, d_in) (``lora_A.weight``), B of shape (d_out, r) (``lora_B.weight``);
        ranks may differ between pairs. See :func:`lora_factor_pairs`.

    Returns
    -------
    Tensor, scalar
        Differentiable penalty in [0, 2]; float32 (or float64 for float64 factors).
    """
    total: Tensor | None = None
    count = 0
    for A, B in pairs:
        check_factors(A, B)
        dtype = torch.promote_types(torch.promote_types(A.dtype, B.dtype), torch.float32)
        term = _mean_sq_offdiag_cos(A.to(dtype)) + _mean_sq_offdiag_cos(B.T.to(dtype))
        total = term if total is None else total + term
        count += 1
    if total is None:
        raise ValueError("orthogonality_penalty got no (A, B) pairs: is the model LoRA-adapted?")
    return total / count


def lora_factor_pairs(model: nn.Module, adapter_name: str = "default") -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (A, B) = (lora_A.weight, lora_B.weight) of every peft LoRA layer in ``model``.

    Duck-typed (no peft import): any submodule with ``lora_A`` and ``lora_B`` module dicts that
    hold ``adapter_name`` counts. Order is ``model.named_modules()`` order.
    """
    for module in model.modules():
        lora_A, lora_B = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if isinstance(lora_A, nn.ModuleDict) and isinstance(lora_B, nn.ModuleDict) and adapter_name in lora_A:
            yield lora_A[adapter_name].weight, lora_B[adapter_name].weight
