"""Large-scale path loss PL_dB(d) (positive dB; the power gain is 10^(-PL/10)).

Every model has ``loss_db(distance_m, los=None)`` and ``los_probability(distance_m)``; models
without a LOS/NLOS distinction return probability 1 and ignore ``los``. ``distance_m`` is the
horizontal (2D) distance between client and base station.

Log-distance   PL = intercept_dB + slope_dB * log10(d / 1 km). Default 128.1 + 37.6 log10(d_km):
               3GPP TR 36.814 Table A.2.1.1.2-3 (macro cell, 2 GHz), the model of the wireless
               federated-learning literature.
Free space     PL = 20 log10(4 pi d f_c / c) (Friis), c = 299 792 458 m/s.
UMi / UMa      3GPP TR 38.901 (v17) Table 7.4.1-1 (path loss), Table 7.4.2-1 (LOS probability),
               scenario heights from Table 7.2-1 (h_BS = 10 m UMi, 25 m UMa), f_c in GHz in the
               formulas, d_3D = sqrt(d_2D^2 + (h_BS - h_UT)^2), breakpoint
               d'_BP = 4 h'_BS h'_UT f_c / c with h' = h - h_E, h_E = 1 m, c = 3.0e8 m/s
               (Note 1 of Table 7.4.1-1; for UMa h_E = 1 m is exact for h_UT <= 13 m).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

SPEED_OF_LIGHT_M_S = 299_792_458.0
CARRIER_HZ = 3.5e9
"""Default carrier frequency of the models that use one."""
UT_HEIGHT_M = 1.5
"""Default client (UT) antenna height of the 3GPP models."""


def _d(distance_m: ArrayLike) -> np.ndarray:
    return np.asarray(distance_m, dtype=float)


@dataclass(frozen=True)
class LogDistancePathLoss:
    """Log-distance path loss: intercept at 1 km plus slope per decade of distance."""

    pathloss_intercept_db: float = field(default=128.1, metadata={"unit": "dB at 1 km"})
    pathloss_slope_db: float = field(default=37.6, metadata={"unit": "dB per decade"})

    has_los_state: ClassVar[bool] = False

    def loss_db(self, distance_m: ArrayLike, los: ArrayLike | None = None) -> np.ndarray:
        """Path loss in dB (positive) at distance_m (metres, > 0)."""
        return self.pathloss_intercept_db + self.pathloss_slope_db * np.log10(_d(distance_m) / 1000.0)

    def los_probability(self, distance_m: ArrayLike) -> np.ndarray:
        return np.ones_like(_d(distance_m))


@dataclass(frozen=True)
class FreeSpacePathLoss:
    """Free-space (Friis) path loss at carrier ``carrier_hz``: 20 log10(4 pi d f / c)."""

    carrier_hz: float = field(default=CARRIER_HZ, metadata={"unit": "Hz"})

    has_los_state: ClassVar[bool] = False

    def loss_db(self, distance_m: ArrayLike, los: ArrayLike | None = None) -> np.ndarray:
        """PL = 20 log10(d) + 20 log10(f_c) + 20 log10(4 pi / c) in dB."""
        return 20.0 * np.log10(4.0 * np.pi * _d(distance_m) * self.carrier_hz / SPEED_OF_LIGHT_M_S)

    def los_probability(self, distance_m: ArrayLike) -> np.ndarray:
        return np.ones_like(_d(distance_m))


@dataclass(frozen=True)
class _TR38901:
    """Shared geometry of the TR 38.901 outdoor models (valid for 10 m <= d_2D <= 5 km)."""

    carrier_hz: float = field(default=CARRIER_HZ, metadata={"unit": "Hz"})
    ut_height_m: float = field(default=UT_HEIGHT_M, metadata={"unit": "m"})

    bs_height_m: ClassVar[float]
    has_los_state: ClassVar[bool] = True
    C_M_S: ClassVar[float] = 3.0e8  # the value TR 38.901 fixes for the breakpoint distance
    ENV_HEIGHT_M: ClassVar[float] = 1.0

    @property
    def fc_ghz(self) -> float:
        return self.carrier_hz / 1e9

    @property
    def breakpoint_m(self) -> float:
        """d'_BP = 4 (h_BS - h_E)(h_UT - h_E) f_c / c in metres."""
        e = self.ENV_HEIGHT_M
        return 4.0 * (self.bs_height_m - e) * (self.ut_height_m - e) * self.carrier_hz / self.C_M_S

    def d3d_m(self, distance_m: ArrayLike) -> np.ndarray:
        return np.hypot(_d(distance_m), self.bs_height_m - self.ut_height_m)

    def _los_db(self, distance_m: ArrayLike, a: float, b1: float, c2: float) -> np.ndarray:
        """PL1 = a + b1 log10 d3D + 20 log10 fc (d2D <= d'BP), else
        PL2 = a + 40 log10 d3D + 20 log10 fc - c2 log10(d'BP^2 + (hBS - hUT)^2)."""
        d2, d3, fc, bp = _d(distance_m), self.d3d_m(distance_m), self.fc_ghz, self.breakpoint_m
        pl1 = a + b1 * np.log10(d3) + 20.0 * np.log10(fc)
        pl2 = (
            a
            + 40.0 * np.log10(d3)
            + 20.0 * np.log10(fc)
            - c2 * np.log10(bp**2 + (self.bs_height_m - self.ut_height_m) ** 2)
        )
        return np.where(d2 <= bp, pl1, pl2)

    def loss_db(self, distance_m: ArrayLike, los: ArrayLike | None = None) -> np.ndarray:
        """PL_LOS where ``los`` is true, PL_NLOS elsewhere (``los=None``: all LOS)."""
        los_db = self.los_loss_db(distance_m)
        if los is None:
            return los_db
        return np.where(np.asarray(los, dtype=bool), los_db, self.nlos_loss_db(distance_m))

    def shadowing_std_db(self, los: ArrayLike) -> np.ndarray:
        """sigma_SF of Table 7.4.1-1 for each LOS state (not applied automatically; see channel.shadowing)."""
        return np.where(np.asarray(los, dtype=bool), self.SIGMA_LOS_DB, self.SIGMA_NLOS_DB)


@dataclass(frozen=True)
class UMiStreetCanyonPathLoss(_TR38901):
    """3GPP TR 38.901 UMi street canyon (h_BS = 10 m), LOS/NLOS with the LOS probability.

    Table 7.4.1-1, f_c in GHz, distances in m:
      LOS:  PL1 = 32.4 + 21 log10(d_3D) + 20 log10(f_c)                      (10 m <= d_2D <= d'_BP)
            PL2 = 32.4 + 40 log10(d_3D) + 20 log10(f_c) - 9.5 log10(d'_BP^2 + (h_BS - h_UT)^2)
      NLOS: PL = max(PL_LOS, 35.3 log10(d_3D) + 22.4 + 21.3 log10(f_c) - 0.3 (h_UT - 1.5))
      sigma_SF = 4 dB (LOS), 7.82 dB (NLOS).
    Table 7.4.2-1: Pr_LOS = 1 for d_2D <= 18 m, else 18/d_2D + exp(-d_2D/36) (1 - 18/d_2D).
    """

    bs_height_m: ClassVar[float] = 10.0
    SIGMA_LOS_DB: ClassVar[float] = 4.0
    SIGMA_NLOS_DB: ClassVar[float] = 7.82

    def los_loss_db(self, distance_m: ArrayLike) -> np.ndarray:
        return self._los_db(distance_m, 32.4, 21.0, 9.5)

    def nlos_loss_db(self, distance_m: ArrayLike) -> np.ndarray:
        d3 = self.d3d_m(distance_m)
        nlos = 35.3 * np.log10(d3) + 22.4 + 21.3 * np.log10(self.fc_ghz) - 0.3 * (self.ut_height_m - 1.5)
        return np.maximum(self.los_loss_db(distance_m), nlos)

    def los_probability(self, distance_m: ArrayLike) -> np.ndarray:
        d = _d(distance_m)
        with np.errstate(divide="ignore"):
            p = 18.0 / d + np.exp(-d / 36.0) * (1.0 - 18.0 / d)
        return np.where(d <= 18.0, 1.0, p)


@dataclass(frozen=True)
class UMaPathLoss(_TR38901):
    """3GPP TR 38.901 UMa (h_BS = 25 m), LOS/NLOS with the LOS probability.

    Table 7.4.1-1, f_c in GHz, distances in m:
      LOS:  PL1 = 28.0 + 22 log10(d_3D) + 20 log10(f_c)                      (10 m <= d_2D <= d'_BP)
            PL2 = 28.0 + 40 log10(d_3D) + 20 log10(f_c) - 9 log10(d'_BP^2 + (h_BS - h_UT)^2)
      NLOS: PL = max(PL_LOS, 13.54 + 39.08 log10(d_3D) + 20 log10(f_c) - 0.6 (h_UT - 1.5))
      sigma_SF = 4 dB (LOS), 6 dB (NLOS).
    Table 7.4.2-1: Pr_LOS = 1 for d_2D <= 18 m, else
      [18/d_2D + exp(-d_2D/63) (1 - 18/d_2D)] (1 + C'(h_UT) 5/4 (d_2D/100)^3 exp(-d_2D/150)),
      C'(h_UT) = 0 for h_UT <= 13 m, ((h_UT - 13)/10)^1.5 for 13 m < h_UT <= 23 m.
    """

    bs_height_m: ClassVar[float] = 25.0
    SIGMA_LOS_DB: ClassVar[float] = 4.0
    SIGMA_NLOS_DB: ClassVar[float] = 6.0

    def los_loss_db(self, distance_m: ArrayLike) -> np.ndarray:
        return self._los_db(distance_m, 28.0, 22.0, 9.0)

    def nlos_loss_db(self, distance_m: ArrayLike) -> np.ndarray:
        d3 = self.d3d_m(distance_m)
        nlos = 13.54 + 39.08 * np.log10(d3) + 20.0 * np.log10(self.fc_ghz) - 0.6 * (self.ut_height_m - 1.5)
        return np.maximum(self.los_loss_db(distance_m), nlos)

    def los_probability(self, distance_m: ArrayLike) -> np.ndarray:
        d = _d(distance_m)
        c = 0.0 if self.ut_height_m <= 13.0 else ((self.ut_height_m - 13.0) / 10.0) ** 1.5
        with np.errstate(divide="ignore"):
            p = (18.0 / d + np.exp(-d / 63.0) * (1.0 - 18.0 / d)) * (
                1.0 + c * 1.25 * (d / 100.0) ** 3 * np.exp(-d / 150.0)
            )
        return np.where(d <= 18.0, 1.0, p)


PATHLOSS: dict[str, type] = {
    "log-distance": LogDistancePathLoss,
    "free-space": FreeSpacePathLoss,
    "umi": UMiStreetCanyonPathLoss,
    "uma": UMaPathLoss,
}
"""Path-loss models by ``channel.pathloss`` name."""


def sample_los(pathloss: object, u: np.ndarray, distance_m: np.ndarray) -> np.ndarray:
    """LOS state per client: u_k < Pr_LOS(d_k), with u_k ~ U(0, 1) drawn once per client and run.

    Keeping u_k fixed makes the LOS state of a static client constant over rounds and lets it
    change only when a moving client's LOS probability crosses u_k.
    """
    return np.asarray(u) < pathloss.los_probability(distance_m)
