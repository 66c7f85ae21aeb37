"""Unit conversions: the only place where dB, dBm and linear quantities meet.

Equations
---------
x_linear = 10 ** (x_db / 10)          (power ratios)
p_w      = 10 ** ((p_dbm - 30) / 10)  (power in watts from dBm)
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def db_to_linear(x_db: ArrayLike) -> np.ndarray:
    """Power ratio in dB -> linear, x = 10^(x_dB / 10)."""
    return np.power(10.0, np.asarray(x_db, dtype=float) / 10.0)


def linear_to_db(x_linear: ArrayLike) -> np.ndarray:
    """Linear power ratio -> dB, x_dB = 10 log10(x). Zero maps to -inf."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(np.asarray(x_linear, dtype=float))


def dbm_to_w(p_dbm: ArrayLike) -> np.ndarray:
    """Power in dBm -> watts, P_W = 10^((P_dBm - 30) / 10)."""
    return np.power(10.0, (np.asarray(p_dbm, dtype=float) - 30.0) / 10.0)


def w_to_dbm(p_w: ArrayLike) -> np.ndarray:
    """Power in watts -> dBm, P_dBm = 10 log10(P_W) + 30."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(np.asarray(p_w, dtype=float)) + 30.0
