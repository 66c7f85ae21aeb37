"""Local computation time.

T_cmp_k = E * |D_k| * F / f_k   [s]

with E local epochs, |D_k| local samples, F training FLOPs per sample and f_k the device's
sustained speed in FLOP/s, drawn once per client (uniform between a slow and a fast device).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UniformDeviceSpeed:
    flops_min: float = 0.5e12
    flops_max: float = 2.0e12

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """Device speeds (num_clients,) in FLOP/s."""
        return rng.uniform(self.flops_min, self.flops_max, num_clients)


def compute_time_s(
    epochs: int, num_samples: np.ndarray, flops_per_sample: float, device_flops: np.ndarray
) -> np.ndarray:
    """T_cmp = E |D| F / f in seconds, element-wise over clients."""
    return epochs * np.asarray(num_samples, dtype=float) * flops_per_sample / np.asarray(device_flops, dtype=float)
