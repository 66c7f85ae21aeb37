"""Upload methods: what a client sends after local training and how the server folds it in.

``ideal`` uploads every trainable value (dense FedAvg of the LoRA factors and the extra
trainable modules such as a classification head): the no-compression reference.
"""

from __future__ import annotations

import numpy as np

METHODS: dict[str, str] = {
    "ideal": "dense FedAvg of the LoRA factors and extra trainable modules (no sparsification)",
}


def dense_payload_bits(state: dict[str, np.ndarray], value_bits: int) -> int:
    """Bits of a dense upload: every value at ``value_bits`` bits; names and shapes are shared."""
    return int(sum(a.size for a in state.values()) * value_bits)


def fedavg(states: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    """Weighted average sum_k w_k x_k / sum_k w_k, summed in the order given (client-id order)."""
    total = float(sum(weights))
    out = {}
    for name in states[0]:
        acc = np.zeros_like(states[0][name], dtype=np.float64)
        for w, s in zip(weights, states, strict=True):
            acc += (w / total) * s[name]
        out[name] = acc.astype(np.float32)
    return out
