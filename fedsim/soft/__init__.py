"""SOFT (fedsim formulation): sparsified orthogonal LoRA updates as plain torch functions.

LoRA factors follow peft: A = ``lora_A.weight`` (r, d_in), B = ``lora_B.weight`` (d_out, r),
W = W0 + B A; rank component i is (b_i = B[:, i], a_i = A[i, :]). The math is in the
docstrings and docs/methods.md. No Flower, Ray or config imports here.

Client: ``orthogonality_penalty`` in the local loss, then a sparsifier from ``SPARSIFIERS``
(``soft``, ``randk``, ``topk``, ``svd``, ``dense``) gives a ``SparseUpdate`` per adapted
matrix; ``SparseUpdate.to_arrays`` / ``from_arrays`` cross the wire. Server: ``aggregate``
and the diagnostics ``covariance_norm``, ``mean_abs_cos``, ``dropped_errors_for_rhos``.

The names below are loaded on first use (PEP 562), so the payload arithmetic of
:mod:`fedsim.soft.budget` is available without importing torch: a configuration is checked in
well under a second.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "aggregate": "aggregation",
    "dense_payload_bits": "budget",
    "index_bits_per_entry": "budget",
    "keep_count": "budget",
    "payload_bits": "budget",
    "topk_element_budget": "budget",
    "covariance_norm": "diagnostics",
    "dropped_errors_for_rhos": "diagnostics",
    "mean_abs_cos": "diagnostics",
    "rank_importance": "importance",
    "lora_factor_pairs": "regularizer",
    "orthogonality_penalty": "regularizer",
    "SPARSIFIERS": "sparsify",
    "Sparsifier": "sparsify",
    "get_sparsifier": "sparsify",
    "rank_update": "sparsify",
    "sparsify_dense": "sparsify",
    "sparsify_randk": "sparsify",
    "sparsify_soft": "sparsify",
    "sparsify_svd": "sparsify",
    "sparsify_topk": "sparsify",
    "SparseUpdate": "update",
}
"""Public name -> the submodule that defines it."""

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'fedsim.soft' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fedsim.soft.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return __all__
