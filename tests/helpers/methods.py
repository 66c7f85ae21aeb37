"""A realistic LoRA adapter state (two layers, query and value, a dense head) for the method tests."""

import numpy as np

D_IN, D_OUT, R = 24, 16, 8


def make_state(seed: int) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    state = {}
    for layer in range(2):
        for proj in ("query", "value"):
            prefix = f"base_model.model.layer.{layer}.{proj}"
            state[f"{prefix}.lora_A.default.weight"] = g.normal(size=(R, D_IN)).astype(np.float32)
            state[f"{prefix}.lora_B.default.weight"] = g.normal(size=(D_OUT, R)).astype(np.float32)
    state["base_model.model.head.modules_to_save.default.weight"] = g.normal(size=(4, D_OUT)).astype(np.float32)
    state["base_model.model.head.modules_to_save.default.bias"] = g.normal(size=4).astype(np.float32)
    return state
