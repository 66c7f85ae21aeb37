"""Server-side round accounting without Flower: who takes part, their channels, and the latency.

For round t and participating client k (equal FDMA split b_k = B_total / |S_t|):

    R_k,t   = b_k log2(1 + p g_k,t / (b_k N0))                  (channels.rate)
    T_k,t   = T_cmp_k + S_k,t / R_k,t
    T_t     = max_k T_k,t                                          (round latency)

Every random draw comes from ``fedsim.seeding`` streams keyed on (seed, round, purpose), and the
draws cover all clients whether sampled or not, so records do not depend on scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from channels.compute import UniformDeviceSpeed, compute_time_s
from channels.link import LinkBudget, RoundChannel
from channels.rate import noise_psd_w_hz, shannon_rate_bps, snr_per_hz, upload_time_s
from channels.units import dbm_to_w
from fedsim.config import Config
from fedsim.seeding import SERVER, rng


def sample_clients(seed: int, round_: int, num_clients: int, num_sampled: int) -> list[int]:
    """Sorted ids of the clients taking part in ``round_``, drawn without replacement."""
    chosen = rng(seed, round_, SERVER, "sample-clients").choice(num_clients, size=num_sampled, replace=False)
    return sorted(int(c) for c in chosen)


@dataclass
class WirelessModel:
    """The cell of a run: fixed client positions and device speeds, per-round fading."""

    cfg: Config

    def __post_init__(self) -> None:
        c = self.cfg.channel
        self.link = LinkBudget.from_names(
            radius_m=c.radius_m,
            min_distance_m=c.min_distance_m,
            pathloss_intercept_db=c.pathloss_intercept_db,
            pathloss_slope_db=c.pathloss_slope_db,
            fading=c.fading,
        )
        k, seed = self.cfg.run.clients, self.cfg.run.seed
        self.positions_m = self.link.place(rng(seed, 0, SERVER, "client-positions"), k)
        speeds = UniformDeviceSpeed(self.cfg.compute.device_flops_min, self.cfg.compute.device_flops_max)
        self.device_flops = speeds.sample(rng(seed, 0, SERVER, "device-speeds"), k)
        self.tx_power_w = float(dbm_to_w(c.tx_power_dbm))
        self.n0_w_hz = noise_psd_w_hz(c.noise_psd_dbm_hz, c.noise_figure_db)

    def channel(self, round_: int) -> RoundChannel:
        """The channel of every client in ``round_`` (one block-fading draw for the whole cell)."""
        return self.link.round_channel(self.positions_m, rng(self.cfg.run.seed, round_, SERVER, "fading"))

    def snr_per_hz(self, round_: int, client_ids: list[int]) -> np.ndarray:
        """a_k = p_k g_k / N0 in Hz for the given clients: what a bandwidth allocator needs."""
        return snr_per_hz(self.tx_power_w, self.channel(round_).gain_linear[np.asarray(client_ids)], self.n0_w_hz)

    def compute_times_s(self, client_ids: list[int], num_samples: list[int], flops_per_sample: float) -> np.ndarray:
        """T_cmp_k = E |D_k| F / f_k for the given clients."""
        ids = np.asarray(client_ids)
        return compute_time_s(self.cfg.train.local_epochs, num_samples, flops_per_sample, self.device_flops[ids])

    def account(
        self,
        round_: int,
        client_ids: list[int],
        payload_bits: list[int],
        num_samples: list[int],
        flops_per_sample: float,
        bandwidth_hz: np.ndarray | None = None,
    ) -> tuple[list[dict], float]:
        """Per-client records (distance_m ... upload_time_s) and the round latency T_t in seconds.

        ``bandwidth_hz`` is the allocation of a scheduler; None splits the band equally.
        """
        channel = self.channel(round_)
        ids = np.asarray(client_ids)
        if bandwidth_hz is None:
            bandwidth_hz = np.full(len(ids), self.cfg.channel.bandwidth_hz / max(len(ids), 1))
        gain = channel.gain_linear[ids]
        rate = shannon_rate_bps(bandwidth_hz, self.tx_power_w, gain, self.n0_w_hz)
        t_up = upload_time_s(payload_bits, rate)
        t_cmp = self.compute_times_s(client_ids, num_samples, flops_per_sample)
        records = [
            {
                "client_id": int(cid),
                "dropped": False,
                "distance_m": float(channel.distance_m[cid]),
                "gain_db": float(channel.gain_db[cid]),
                "bandwidth_hz": float(bandwidth_hz[i]),
                "rate_bps": float(rate[i]),
                "payload_bits": int(payload_bits[i]),
                "num_samples": int(num_samples[i]),
                "compute_time_s": float(t_cmp[i]),
                "upload_time_s": float(t_up[i]),
            }
            for i, cid in enumerate(ids)
        ]
        latency = float(np.max(t_cmp + t_up)) if len(ids) else 0.0
        return records, latency
