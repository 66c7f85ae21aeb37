"""Large-scale log-normal shadowing, optionally correlated over rounds.

S_k,t [dB] = sigma_dB * x_k,t,  x_k,t ~ N(0, 1), so the linear shadowing gain 10^(S/10) is
log-normal (Goldsmith, Wireless Communications, 2005, sec. 2.7). Over rounds the standardised
state follows a first-order Gauss-Markov process

    x_k,1 ~ N(0, 1),   x_k,t = rho x_k,t-1 + sqrt(1 - rho^2) w_k,t,   w_k,t ~ N(0, 1) i.i.d.,

which is stationary with lag-l correlation rho^l. With a client moving v metres per round,
Gudmundson's exponential model (Electron. Lett. 27(23), 1991) gives rho = exp(-v / d_corr)
with the decorrelation distance d_corr (TR 38.901 Table 7.5-6: 10 m UMi LOS, 13 m UMi NLOS,
37 m UMa LOS, 50 m UMa NLOS). rho = 0: a new shadowing draw every round; rho = 1: fixed per client.

Typical sigma (TR 38.901 Table 7.4.1-1): UMi street canyon 4 dB LOS / 7.82 dB NLOS, UMa 4 dB LOS /
6 dB NLOS; the 128.1 + 37.6 log10(d_km) macro model is used with 8 dB (TR 36.814 Table A.2.1.1.2-3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class NoShadowing:
    """No shadowing: S = 0 dB."""

    correlation = 1.0  # a constant zero state, whatever the round

    def initial(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        return np.zeros(num_clients)

    def step(self, rng: np.random.Generator, x_prev: np.ndarray) -> np.ndarray:
        return x_prev

    def to_db(self, x: np.ndarray) -> np.ndarray:
        return np.zeros(np.shape(x))

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """Shadowing in dB (num_clients,): zeros."""
        return np.zeros(num_clients)


@dataclass(frozen=True)
class LogNormalShadowing:
    """Log-normal shadowing: S ~ N(0, ``shadowing_std_db``^2) dB, Gauss-Markov over rounds."""

    shadowing_std_db: float = field(default=8.0, metadata={"unit": "dB"})
    shadowing_correlation: float = field(default=0.0, metadata={"unit": "coefficient in [0, 1]"})

    @property
    def correlation(self) -> float:
        return self.shadowing_correlation

    def initial(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """Standardised state x (num_clients,) of the first round, N(0, 1)."""
        return rng.standard_normal(num_clients)

    def step(self, rng: np.random.Generator, x_prev: np.ndarray) -> np.ndarray:
        """x_t = rho x_{t-1} + sqrt(1 - rho^2) w_t."""
        rho = self.shadowing_correlation
        return rho * x_prev + np.sqrt(1.0 - rho * rho) * rng.standard_normal(len(x_prev))

    def to_db(self, x: np.ndarray) -> np.ndarray:
        """S = sigma_dB * x in dB."""
        return self.shadowing_std_db * np.asarray(x, dtype=float)

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """Shadowing in dB (num_clients,), i.i.d. N(0, sigma_dB^2)."""
        return self.to_db(self.initial(rng, num_clients))


SHADOWING: dict[str, type] = {"none": NoShadowing, "lognormal": LogNormalShadowing}
"""Shadowing models by ``channel.shadowing`` name."""
