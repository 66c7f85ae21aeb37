"""Small-scale block fading: one power gain |h|^2 per client and round, constant within a round.

Every model is normalised to E|h|^2 = 1, so the mean channel gain is set by path loss and
shadowing alone. Block fading: the gain is drawn once per round and holds for the whole upload.

Two ways to draw a round's gains
--------------------------------
``sample(rng, num_clients)``
    i.i.d. over rounds and clients, with each model's natural sampler.
``power(z)``
    the same marginal law as a function of a circularly symmetric Gaussian state
    z ~ CN(0, 1). :class:`GaussMarkov` evolves z over rounds,
    z_t = rho z_{t-1} + sqrt(1 - rho^2) w_t with w_t ~ CN(0, 1) i.i.d. (first-order
    Gauss-Markov / AR(1) model; with Jakes' spectrum rho = J0(2 pi f_D T) for Doppler f_D and
    round spacing T; Baddour & Beaulieu, IEEE Trans. Wireless Commun. 4(4), 2005), so every
    model can be time-correlated while its marginal distribution stays exact.

Models
------
Rayleigh     h ~ CN(0, 1); |h|^2 ~ Exp(1); E|h|^4 = 2.
Rician(K)    h = sqrt(K / (K + 1)) + sqrt(1 / (K + 1)) z, z ~ CN(0, 1) (LOS phase fixed, it does
             not change |h|^2's law); E|h|^4 = (K^2 + 4K + 2) / (K + 1)^2
             (Simon & Alouini, Digital Communication over Fading Channels, 2nd ed., eq. 2.16).
Nakagami(m)  |h|^2 ~ Gamma(m, 1/m), m >= 1/2; E|h|^4 = 1 + 1/m (Nakagami 1960; Simon & Alouini
             eq. 2.21). From the Gaussian state by the probability integral transform:
             u = 1 - exp(-|z|^2) ~ U(0, 1), |h|^2 = P^{-1}(m, u) / m, computed as
             Q^{-1}(m, exp(-|z|^2)) / m with Q the regularised upper incomplete gamma function.
none         |h|^2 = 1 (path loss and shadowing only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def complex_normal(rng: np.random.Generator, num_clients: int) -> np.ndarray:
    """z ~ CN(0, 1), shape (num_clients,): independent real and imaginary parts of variance 1/2."""
    re_im = rng.standard_normal((2, num_clients))
    return (re_im[0] + 1j * re_im[1]) / np.sqrt(2.0)


@dataclass(frozen=True)
class RayleighFading:
    """Rayleigh fading: h ~ CN(0, 1), power |h|^2 ~ Exp(1) (no line of sight)."""

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """Power gains |h|^2 (num_clients,), i.i.d. Exp(1)."""
        return rng.exponential(1.0, num_clients)

    def power(self, z: np.ndarray) -> np.ndarray:
        """|h|^2 = |z|^2 for a CN(0, 1) state z (num_clients,)."""
        return np.abs(z) ** 2


@dataclass(frozen=True)
class RicianFading:
    """Rician fading with K factor ``rician_k_linear`` = LOS power / scattered power (linear, >= 0)."""

    rician_k_linear: float = field(default=3.0, metadata={"unit": "linear ratio"})

    def power(self, z: np.ndarray) -> np.ndarray:
        """|h|^2 = |sqrt(K/(K+1)) + z / sqrt(K+1)|^2 for a CN(0, 1) state z (num_clients,)."""
        k = self.rician_k_linear
        return np.abs(np.sqrt(k / (k + 1.0)) + z / np.sqrt(k + 1.0)) ** 2

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """Power gains |h|^2 (num_clients,), i.i.d., noncentral chi-square with 2 degrees of freedom, mean 1."""
        return self.power(complex_normal(rng, num_clients))


@dataclass(frozen=True)
class NakagamiFading:
    """Nakagami-m fading: |h|^2 ~ Gamma(shape m, scale 1/m), m >= 1/2 (m = 1 is Rayleigh)."""

    nakagami_m: float = field(default=2.0, metadata={"unit": "shape, >= 0.5"})

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """Power gains |h|^2 (num_clients,), i.i.d. Gamma(m, 1/m)."""
        return rng.gamma(self.nakagami_m, 1.0 / self.nakagami_m, num_clients)

    def power(self, z: np.ndarray) -> np.ndarray:
        """|h|^2 = Q^{-1}(m, exp(-|z|^2)) / m: Gamma(m, 1/m) by the probability integral transform of |z|^2."""
        from scipy.special import gammainccinv

        return gammainccinv(self.nakagami_m, np.exp(-(np.abs(z) ** 2))) / self.nakagami_m


@dataclass(frozen=True)
class NoFading:
    """No small-scale fading: |h|^2 = 1."""

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        return np.ones(num_clients)

    def power(self, z: np.ndarray) -> np.ndarray:
        return np.ones(np.shape(z))


FADING: dict[str, type] = {
    "rayleigh": RayleighFading,
    "rician": RicianFading,
    "nakagami": NakagamiFading,
    "none": NoFading,
}
"""Small-scale fading models by ``channel.fading`` name."""


@dataclass(frozen=True)
class GaussMarkov:
    """First-order Gauss-Markov evolution of the CN(0, 1) fading state over rounds.

    z_1 ~ CN(0, 1);  z_t = rho z_{t-1} + sqrt(1 - rho^2) w_t,  w_t ~ CN(0, 1) i.i.d.

    The process is stationary with marginal CN(0, 1) and lag-l correlation
    E[z_t z_{t-l}^*] = rho^l; for Rayleigh the power |z_t|^2 has lag-l correlation
    coefficient rho^(2 l). rho = 0 is i.i.d. block fading, rho = 1 a static channel.
    """

    fading_correlation: float = field(default=0.0, metadata={"unit": "coefficient in [0, 1]"})

    def initial(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """The state of the first round, (num_clients,) complex, CN(0, 1)."""
        return complex_normal(rng, num_clients)

    def step(self, rng: np.random.Generator, z_prev: np.ndarray) -> np.ndarray:
        """The next round's state from the previous one (shape kept); fresh innovations from ``rng``."""
        rho = self.fading_correlation
        return rho * z_prev + np.sqrt(1.0 - rho * rho) * complex_normal(rng, len(z_prev))

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """A stationary draw of the state (what a round sees without history)."""
        return self.initial(rng, num_clients)
