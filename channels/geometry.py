"""Client placement around one base station at the origin.

Uniform in an annulus min_distance_m <= d <= radius_m: the area element gives the CDF
F(d) = (d^2 - d_min^2) / (R^2 - d_min^2), so d = sqrt(d_min^2 + U (R^2 - d_min^2)), U ~ U(0, 1),
and the angle is uniform on [0, 2 pi).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DiscDrop:
    """Clients uniform over the disc of ``radius_m`` minus the inner disc of ``min_distance_m``."""

    radius_m: float = 500.0
    min_distance_m: float = 10.0

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """Positions (num_clients, 2) in metres, base station at (0, 0)."""
        u = rng.random(num_clients)
        d = np.sqrt(self.min_distance_m**2 + u * (self.radius_m**2 - self.min_distance_m**2))
        theta = rng.uniform(0.0, 2.0 * np.pi, num_clients)
        return np.stack([d * np.cos(theta), d * np.sin(theta)], axis=1)


def distance_m(positions_m: np.ndarray) -> np.ndarray:
    """Euclidean distance (K,) of positions (K, 2) to the base station at the origin."""
    return np.hypot(positions_m[:, 0], positions_m[:, 1])
