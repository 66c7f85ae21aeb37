"""SOFT (fedsim formulation): sparsified orthogonal LoRA updates as plain torch functions.

LoRA factors follow peft: A = ``lora_A.weight`` (r, d_in), B = ``lora_B.weight`` (d_out, r),
W = W0 + B A; rank component i is (b_i = B[:, i], a_i = A[i, :]). The math is in the
docstrings and the README's SOFT section. No Flower, Ray or config imports here.

Client: ``orthogonality_penalty`` in the local loss, then a sparsifier from ``SPARSIFIERS``
(``soft``, ``randk``, ``topk``, ``svd``, ``dense``) gives a ``SparseUpdate`` per adapted
matrix; ``SparseUpdate.to_arrays`` / ``from_arrays`` cross the wire. Server: ``aggregate``
and the diagnostics ``covariance_norm``, ``mean_abs_cos``, ``dropped_errors_for_rhos``.
"""

from fedsim.soft.aggregate import aggregate
from fedsim.soft.budget import dense_payload_bits, index_bits_per_entry, keep_count, payload_bits
from fedsim.soft.diagnostics import covariance_norm, dropped_errors_for_rhos, mean_abs_cos
from fedsim.soft.importance import rank_importance
from fedsim.soft.regularizer import lora_factor_pairs, orthogonality_penalty
from fedsim.soft.sparsify import (
    SPARSIFIERS,
    Sparsifier,
    get_sparsifier,
    sparsify_dense,
    sparsify_randk,
    sparsify_soft,
    sparsify_svd,
    sparsify_topk,
    topk_element_budget,
)
from fedsim.soft.update import SparseUpdate

__all__ = [
    "SPARSIFIERS",
    "SparseUpdate",
    "Sparsifier",
    "aggregate",
    "covariance_norm",
    "dense_payload_bits",
    "dropped_errors_for_rhos",
    "get_sparsifier",
    "index_bits_per_entry",
    "keep_count",
    "lora_factor_pairs",
    "mean_abs_cos",
    "orthogonality_penalty",
    "payload_bits",
    "rank_importance",
    "sparsify_dense",
    "sparsify_randk",
    "sparsify_soft",
    "sparsify_svd",
    "sparsify_topk",
    "topk_element_budget",
]
