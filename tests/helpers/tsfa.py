"""Synthetic rounds for the TSFA tests: channels, SOFT payloads and dropped-rank errors (no training)."""

from __future__ import annotations

import math

import numpy as np

from channels.rate import noise_psd_w_hz, snr_per_hz
from channels.units import db_to_linear, dbm_to_w

BANDWIDTH_TOTAL_HZ = 20e6
TX_POWER_DBM = 23.0
RHO_GRID = (0.0, 0.25, 0.5, 0.75)


def soft_payload_bits(rank: int, rho: float, d_in: int = 768, d_out: int = 768, matrices: int = 12, q: int = 32) -> int:
    """SOFT upload of one client (docs/methods.md), summed over the adapted matrices.

    k = max(1, ceil((1 - rho) r)),  S = k (d_in + d_out) q + min(r, k ceil(log2 r)) per matrix.
    Written out here (rather than imported from fedsim.soft) so the TSFA tests stay torch-free.
    """
    k = max(1, math.ceil((1.0 - rho) * rank - 1e-9))
    per_matrix = k * (d_in + d_out) * q + min(rank, k * math.ceil(math.log2(rank)))
    return matrices * per_matrix


def dropped_error(rank: int, rho: float, decay: float = 0.8) -> float:
    """Dropped-rank error sum_{i not kept} s_i^2 for importances s_i^2 = decay^i (sorted)."""
    k = max(1, math.ceil((1.0 - rho) * rank - 1e-9))
    return float(sum(decay**i for i in range(k, rank)))


def path_loss_db(distance_m: np.ndarray) -> np.ndarray:
    """PL_dB = 128.1 + 37.6 log10(d_km) (the default of docs/wireless.md)."""
    return 128.1 + 37.6 * np.log10(np.asarray(distance_m) / 1000.0)


def rayleigh_snr_per_hz(rng: np.random.Generator, distance_m: np.ndarray) -> np.ndarray:
    """a_k = p g_k / N0 in Hz with g = PL(d) |h|^2, h ~ CN(0, 1) (|h|^2 ~ Exp(1))."""
    gain = db_to_linear(-path_loss_db(distance_m)) * rng.exponential(1.0, size=np.shape(distance_m))
    return snr_per_hz(dbm_to_w(TX_POWER_DBM), gain, noise_psd_w_hz())


def random_instance(rng: np.random.Generator, num_clients: int, zero_compute_fraction: float = 0.3):
    """a over 60 dB, payloads over 100x, compute times in [0, 1] s with some exact zeros."""
    a = 1e13 * 10.0 ** (rng.uniform(-60.0, 0.0, num_clients) / 10.0)
    s = 1e6 * 10.0 ** rng.uniform(0.0, 2.0, num_clients)
    t = rng.uniform(0.0, 1.0, num_clients) * (rng.random(num_clients) >= zero_compute_fraction)
    return a, s, t


def cell_rounds(num_clients: int, rounds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The rounds of ``benchmarks/allocator.py`` (same generator, same draws): (a, S, T_cmp) per round.

    Clients uniform in a 500 m disc (min 10 m), drawn once; Rayleigh fading redrawn every round;
    the SOFT payload of a rank-16 adapter at rho = 0.5; compute times uniform in [0.1, 1] s.
    """
    rng = np.random.default_rng([seed, num_clients])
    distance_m = np.sqrt(rng.uniform(10.0**2, 500.0**2, num_clients))
    tcmp = rng.uniform(0.1, 1.0, num_clients)
    payload = np.full(num_clients, float(soft_payload_bits(16, 0.5)))
    return [(rayleigh_snr_per_hz(rng, distance_m), payload, tcmp) for _ in range(rounds)]
