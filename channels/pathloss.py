"""Large-scale path loss.

Log-distance model: PL_dB(d) = intercept_db + slope_db * log10(d / 1 km). The default
128.1 + 37.6 log10(d_km) is the 3GPP TR 36.814 (Table A.2.1.1.2-3) macro-cell model at 2 GHz,
the one used throughout the wireless federated-learning literature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LogDistancePathLoss:
    intercept_db: float = 128.1
    slope_db: float = 37.6

    def loss_db(self, distance_m: np.ndarray) -> np.ndarray:
        """Path loss in dB (positive) at distance_m (metres, > 0)."""
        return self.intercept_db + self.slope_db * np.log10(np.asarray(distance_m, dtype=float) / 1000.0)
