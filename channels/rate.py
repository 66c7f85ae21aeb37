"""FDMA Shannon rate and upload time.

Each client k transmits on its own band of b_k Hz with power p_k W over a channel of power gain
g_k; the noise power over that band is b_k N0 with N0 the noise power spectral density (W/Hz)
(Shannon 1948; e.g. Tse & Viswanath, Fundamentals of Wireless Communication, eq. 5.14):

    R_k = b_k log2(1 + p_k g_k / (b_k N0))      [bit/s]

R_k is increasing and concave in b_k, with R_k -> p_k g_k / (N0 ln 2) as b_k -> infinity.

N0 is the thermal noise density k_B T_0 = -174 dBm/Hz (T_0 = 290 K) raised by the receiver's
noise figure NF: N0 [dBm/Hz] = -174 + NF_dB.

Downlink broadcast: the base station sends one message of S_dl bits over the whole downlink band
B_dl at power P_BS; every participating client must decode it, so it is sent at the rate of the
weakest one (channel reciprocity within the round's coherence block):

    T_dl = S_dl / min_k [ B_dl log2(1 + P_BS g_k / (B_dl N0)) ]

Outage: with a round deadline T_max, client k is in outage when its rate cannot carry its payload
in the time left after the downlink and its computation, S_k > R_k (T_max - T_dl - T_cmp_k)
(equivalently T_dl + T_cmp_k + S_k / R_k > T_max).

Upload energy: E_up_k = p_k * S_k / R_k joules (transmit power times airtime).

Packet errors (optional): an upload sent at SNR gamma_k = p_k g_k / (b_k N0) on its band is
erased with probability

    q_k = 1 - exp(-m / gamma_k),      m = 0.023 (waterfall threshold, per resource block)

the SNR-based packet-error model of M. Chen, Z. Yang, W. Saad, C. Yin, H. V. Poor, S. Cui, "A
Joint Learning and Communications Framework for Federated Learning over Wireless Networks",
IEEE Trans. Wireless Commun. 20(1), 2021 (their packet error rate with the interference term set
to zero: FDMA bands do not overlap). Retransmitting until success, at most N times, takes
E[n] = sum_{j<N} q^j = (1 - q^N) / (1 - q) transmissions on average (1 / (1 - q) as N -> inf).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from channels.units import dbm_to_w

THERMAL_NOISE_PSD_DBM_HZ = -174.0
"""Thermal noise power spectral density at 290 K, k_B T = -174 dBm/Hz."""


def noise_psd_w_hz(noise_psd_dbm_hz: float = THERMAL_NOISE_PSD_DBM_HZ, noise_figure_db: float = 0.0) -> float:
    """Noise power spectral density N0 in W/Hz: 10^((N0_dBm/Hz + NF_dB - 30) / 10)."""
    return float(dbm_to_w(noise_psd_dbm_hz + noise_figure_db))


def snr_per_hz(tx_power_w: ArrayLike, gain_linear: ArrayLike, noise_psd_w_hz_: float) -> np.ndarray:
    """a_k = p_k g_k / N0 in Hz: the SNR a client would have on a 1 Hz band."""
    return np.asarray(tx_power_w, dtype=float) * np.asarray(gain_linear, dtype=float) / noise_psd_w_hz_


def shannon_rate_bps(
    bandwidth_hz: ArrayLike, tx_power_w: ArrayLike, gain_linear: ArrayLike, noise_psd_w_hz_: float
) -> np.ndarray:
    """FDMA Shannon rate R = b log2(1 + p g / (b N0)) in bit/s; zero bandwidth gives zero rate.

    Parameters
    ----------
    bandwidth_hz : (K,) allocated band per client, Hz, >= 0.
    tx_power_w : (K,) or scalar transmit power, W.
    gain_linear : (K,) channel power gain (path loss x shadowing x |h|^2), linear.
    noise_psd_w_hz_ : noise power spectral density N0, W/Hz.
    """
    b = np.asarray(bandwidth_hz, dtype=float)
    a = snr_per_hz(tx_power_w, gain_linear, noise_psd_w_hz_)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        snr = a / b
        # log1p: an SNR below 1e-16 still has a rate; an SNR past the float range (a band of 1e-300 Hz)
        # has log(1 + a / b) = log(a) - log(b), not infinity
        rate = b * np.where(np.isinf(snr), np.log(a) - np.log(b), np.log1p(snr)) / np.log(2.0)
    return np.where(b > 0, rate, 0.0)


def upload_time_s(payload_bits: ArrayLike, rate_bps: ArrayLike) -> np.ndarray:
    """Upload time S / R in seconds; infinite when the rate is zero and the payload is not."""
    s = np.asarray(payload_bits, dtype=float)
    r = np.asarray(rate_bps, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = s / r
    return np.where(s > 0, t, 0.0)


def broadcast_time_s(
    payload_bits: float, bandwidth_hz: float, bs_power_w: float, gain_linear: ArrayLike, noise_psd_w_hz_: float
) -> float:
    """T_dl = S_dl / min_k R_dl,k in seconds: one broadcast decodable by every client in ``gain_linear``.

    Zero clients or a zero payload take no time; a client with zero gain makes it infinite.
    """
    g = np.asarray(gain_linear, dtype=float)
    if payload_bits <= 0 or g.size == 0:
        return 0.0
    rate = shannon_rate_bps(bandwidth_hz, bs_power_w, g.min(), noise_psd_w_hz_)
    return float(upload_time_s(payload_bits, rate))


def in_outage(latency_s: ArrayLike, deadline_s: float) -> np.ndarray:
    """Outage flags: a client's T_dl + T_cmp + S / R exceeds the deadline; ``deadline_s`` <= 0 means none."""
    t = np.asarray(latency_s, dtype=float)
    if deadline_s <= 0:
        return np.zeros(t.shape, dtype=bool)
    return t > deadline_s


def upload_energy_j(tx_power_w: ArrayLike, upload_time_s_: ArrayLike) -> np.ndarray:
    """E_up = p T_up in joules (radiated energy; circuit power not modelled)."""
    return np.asarray(tx_power_w, dtype=float) * np.asarray(upload_time_s_, dtype=float)


PACKET_ERROR_M = 0.023
"""Waterfall threshold m of q = 1 - exp(-m / SNR) per resource block (Chen et al. 2021)."""


def packet_error_prob(snr_linear: ArrayLike, m: float = PACKET_ERROR_M) -> np.ndarray:
    """q = 1 - exp(-m / SNR): the chance one transmission is erased; 1 at zero SNR, 0 at infinite SNR."""
    snr = np.asarray(snr_linear, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(snr > 0, -np.expm1(-m / np.where(snr > 0, snr, 1.0)), 1.0)


def expected_transmissions(error_prob: ArrayLike, max_transmissions: int) -> np.ndarray:
    """E[n] = (1 - q^N) / (1 - q) = sum_{j<N} q^j: mean transmissions of an upload retransmitted
    until it gets through, at most N times (N at q = 1)."""
    q = np.asarray(error_prob, dtype=float)
    return sum(q**j for j in range(max_transmissions)) if max_transmissions > 0 else np.zeros_like(q)
