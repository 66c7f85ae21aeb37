"""Small-scale block fading: one power gain |h|^2 per client and round, constant within a round.

Rayleigh: h ~ CN(0, 1), so |h|^2 ~ Exp(1) with E|h|^2 = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RayleighFading:
    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """Power gains |h|^2 (num_clients,), i.i.d. Exp(1)."""
        return rng.exponential(1.0, num_clients)


@dataclass(frozen=True)
class NoFading:
    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        return np.ones(num_clients)


FADING = {"rayleigh": RayleighFading, "none": NoFading}
