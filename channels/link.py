"""A link budget: composes geometry, path loss and fading into per-client channel gains.

g_k,t = 10^(-PL_dB(d_k) / 10) * |h_k,t|^2        (linear power gain, shadowing off)

Positions are drawn once per run; fading is drawn anew every round (block fading). Each draw
takes the generator it is given, so the caller decides the random streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from channels.fading import FADING, RayleighFading
from channels.geometry import DiscDrop, distance_m
from channels.pathloss import LogDistancePathLoss
from channels.units import db_to_linear, linear_to_db


@dataclass(frozen=True)
class RoundChannel:
    """Channel state of every client in one round; all arrays have shape (K,)."""

    distance_m: np.ndarray
    gain_linear: np.ndarray

    @property
    def gain_db(self) -> np.ndarray:
        return linear_to_db(self.gain_linear)


@dataclass(frozen=True)
class LinkBudget:
    drop: DiscDrop = DiscDrop()
    pathloss: LogDistancePathLoss = LogDistancePathLoss()
    fading: RayleighFading = RayleighFading()

    @classmethod
    def from_names(
        cls,
        *,
        radius_m: float,
        min_distance_m: float,
        pathloss_intercept_db: float,
        pathloss_slope_db: float,
        fading: str,
    ) -> LinkBudget:
        return cls(
            DiscDrop(radius_m, min_distance_m),
            LogDistancePathLoss(pathloss_intercept_db, pathloss_slope_db),
            FADING[fading](),
        )

    def place(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """Client positions (K, 2) in metres."""
        return self.drop.sample(rng, num_clients)

    def round_channel(self, positions_m: np.ndarray, rng: np.random.Generator) -> RoundChannel:
        """Gains of every client for one round from one fading draw."""
        d = distance_m(positions_m)
        fade = self.fading.sample(rng, len(d))
        return RoundChannel(distance_m=d, gain_linear=db_to_linear(-self.pathloss.loss_db(d)) * fade)
