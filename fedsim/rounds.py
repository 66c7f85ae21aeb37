"""Server-side round accounting without Flower: who takes part, their channels, and the latency.

For round t and participating client k (equal FDMA split b_k = B_total / |S_t| unless a
scheduler passes its allocation):

    R_k,t   = b_k log2(1 + p g_k,t / (b_k N0))                  (channels.rate)
    T_k,t   = T_dl,t + T_cmp_k + S_k,t / R_k,t                   (T_dl,t = 0 without a downlink)
    T_t     = max_k T_k,t                                          (round latency)

The channel model is the one ``[channel]`` configures (``fedsim.channel_config.build_link``), or a
replayed trace (``channel.trace_csv``). Every random draw comes from ``fedsim.seeding`` streams
keyed on (seed, round, purpose), and the draws cover all clients whether sampled or not, so records
do not depend on scheduling. Time-correlated channels (mobility, correlated shadowing or fading)
are advanced round by round from round 1, so any round can be recomputed after a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from channels.compute import compute_energy_j, compute_time_s
from channels.geometry import distance_m
from channels.link import LinkState, RoundChannel
from channels.rate import (
    broadcast_time_s,
    in_outage,
    noise_psd_w_hz,
    shannon_rate_bps,
    snr_per_hz,
    upload_energy_j,
    upload_time_s,
)
from channels.trace import read_trace, write_trace
from channels.units import db_to_linear, dbm_to_w
from fedsim.channel_config import build_device_speed, build_link
from fedsim.config import Config
from fedsim.errors import ConfigError
from fedsim.seeding import SERVER, rng


def sample_clients(seed: int, round_: int, num_clients: int, num_sampled: int) -> list[int]:
    """Sorted ids of the clients taking part in ``round_``, drawn without replacement."""
    chosen = rng(seed, round_, SERVER, "sample-clients").choice(num_clients, size=num_sampled, replace=False)
    return sorted(int(c) for c in chosen)


def _opt(x: float) -> float | None:
    """A record value: None where unknown (NaN)."""
    x = float(x)
    return None if math.isnan(x) else x


@dataclass
class WirelessModel:
    """The cell of a run: client positions and device speeds, and every round's channel."""

    cfg: Config

    def __post_init__(self) -> None:
        c = self.cfg.channel
        self.link = build_link(c)
        k, seed = self.cfg.run.clients, self.cfg.run.seed
        self.positions_m = self.link.place(rng(seed, 0, SERVER, "client-positions"), k)
        self.device_flops = build_device_speed(self.cfg.compute).sample(rng(seed, 0, SERVER, "device-speeds"), k)
        self.tx_power_w = float(dbm_to_w(c.tx_power_dbm))
        self.bs_power_w = float(dbm_to_w(c.bs_power_dbm))
        self.n0_w_hz = noise_psd_w_hz(c.noise_psd_dbm_hz, c.noise_figure_db)
        self.trace = read_trace(c.trace_csv) if c.trace_csv else None
        self._last_state: LinkState | None = None
        self._cache: dict[int, RoundChannel] = {}
        self._positions_seen: bytes | None = None  # the positions the cache was computed from

    def _streams(self, round_: int, purpose: str) -> np.random.Generator:
        return rng(self.cfg.run.seed, round_, SERVER, purpose)

    def _state(self, round_: int) -> LinkState:
        """The link state of ``round_``, advanced from the last computed round or from round 1."""
        if self.link.is_memoryless or round_ <= 1:
            return self.link.state(round_, self.positions_m, self._streams, None)
        state = self._last_state
        if state is None or state.round_ > round_:
            state = self.link.state(1, self.positions_m, self._streams, None)
        while state.round_ < round_:
            state = self.link.state(state.round_ + 1, self.positions_m, self._streams, state)
        self._last_state = state
        return state

    def _trace_channel(self, round_: int) -> RoundChannel:
        k, tr = self.cfg.run.clients, self.trace
        gain_db = tr.column(round_, k, "gain_db")
        d = tr.column(round_, k, "distance_m")
        d = np.where(np.isnan(d), distance_m(self.positions_m), d)  # unknown distance: the drop's
        return RoundChannel(
            distance_m=d,
            gain_linear=db_to_linear(gain_db),
            pathloss_db=tr.column(round_, k, "pathloss_db"),
            shadowing_db=tr.column(round_, k, "shadowing_db"),
            fading_gain_db=tr.column(round_, k, "fading_gain_db"),
            los=tr.column(round_, k, "los"),  # 1.0 / 0.0 / NaN
            positions_m=None,
            total_gain_db=gain_db,
        )

    def channel(self, round_: int) -> RoundChannel:
        """The channel of every client in ``round_`` (one block-fading draw for the whole cell)."""
        seen = self.positions_m.tobytes()
        if seen != self._positions_seen:  # positions set after construction (deployed node profiles)
            self._positions_seen, self._cache, self._last_state = seen, {}, None
        if round_ not in self._cache:
            if len(self._cache) >= 8:
                self._cache.pop(next(iter(self._cache)))
            if self.trace is not None:
                self._cache[round_] = self._trace_channel(round_)
            else:
                self._cache[round_] = self.link.channel(self._state(round_))
        return self._cache[round_]

    def _gains(self, round_: int, client_ids: list[int]) -> np.ndarray:
        gain = self.channel(round_).gain_linear[np.asarray(client_ids, dtype=int)]
        if self.trace is not None and np.isnan(gain).any():
            missing = [int(c) for c, g in zip(client_ids, gain, strict=True) if np.isnan(g)]
            raise ConfigError(
                f"channel.trace_csv={self.cfg.channel.trace_csv!r}: round {round_} has no row for clients {missing[:8]}"
            )
        return gain

    def snr_per_hz(self, round_: int, client_ids: list[int]) -> np.ndarray:
        """a_k = p_k g_k / N0 in Hz for the given clients: what a bandwidth allocator needs."""
        return snr_per_hz(self.tx_power_w, self._gains(round_, client_ids), self.n0_w_hz)

    def sample_snr_per_hz(self, rng_: np.random.Generator, client_ids: list[int]) -> np.ndarray:
        """a_k of the given clients for one fresh draw of the channel distribution (shadowing, LOS state,
        fading) at their dropped positions, from ``rng_``: statistics for planning, never one of the
        run's own realisations."""

        def streams(round_: int, purpose: str) -> np.random.Generator:
            return np.random.default_rng(rng_.integers(2**63))

        gain = self.link.channel(self.link.state(1, self.positions_m, streams, None)).gain_linear
        return snr_per_hz(self.tx_power_w, gain[np.asarray(client_ids, dtype=int)], self.n0_w_hz)

    def compute_times_s(self, client_ids: list[int], num_samples: list[int], flops_per_sample: float) -> np.ndarray:
        """T_cmp_k = E |D_k| F / f_k for the given clients."""
        ids = np.asarray(client_ids, dtype=int)
        return compute_time_s(self.cfg.train.local_epochs, num_samples, flops_per_sample, self.device_flops[ids])

    def downlink_time_s(self, round_: int, client_ids: list[int], downlink_bits: float) -> float:
        """T_dl: broadcast of ``downlink_bits`` decodable by every given client; 0 without a downlink."""
        c = self.cfg.channel
        if c.downlink != "broadcast" or not len(client_ids):
            return 0.0
        gains = self._gains(round_, client_ids)
        return broadcast_time_s(downlink_bits, c.downlink_bandwidth_hz, self.bs_power_w, gains, self.n0_w_hz)

    def account(
        self,
        round_: int,
        client_ids: list[int],
        payload_bits: list[int],
        num_samples: list[int],
        flops_per_sample: float,
        bandwidth_hz: np.ndarray | None = None,
        *,
        downlink_bits: int | None = None,
    ) -> tuple[list[dict], float]:
        """Per-client records (distance_m ... outage) and the round latency T_t in seconds.

        ``bandwidth_hz`` is the allocation of a scheduler; None splits the band equally.
        ``downlink_bits`` is the size of the broadcast global model (channel.downlink=broadcast);
        None takes the largest upload, which is exact for dense uploads.
        """
        channel = self.channel(round_)
        ids = np.asarray(client_ids, dtype=int)
        if bandwidth_hz is None:
            bandwidth_hz = np.full(len(ids), self.cfg.channel.bandwidth_hz / max(len(ids), 1))
        bandwidth_hz = np.asarray(bandwidth_hz, dtype=float)
        gain = self._gains(round_, client_ids)
        rate = shannon_rate_bps(bandwidth_hz, self.tx_power_w, gain, self.n0_w_hz)
        t_up = upload_time_s(payload_bits, rate)
        t_cmp = self.compute_times_s(client_ids, num_samples, flops_per_sample)
        if downlink_bits is None:
            downlink_bits = max(payload_bits, default=0)
        t_dl = self.downlink_time_s(round_, client_ids, downlink_bits)
        t_total = t_dl + t_cmp + t_up
        outage = in_outage(t_total, self.cfg.channel.outage_deadline_s)
        e_up = upload_energy_j(self.tx_power_w, t_up)
        comp = self.cfg.compute
        e_cmp = compute_energy_j(
            self.cfg.train.local_epochs,
            num_samples,
            flops_per_sample,
            self.device_flops[ids],
            comp.flops_per_cycle,
            comp.kappa,
        )

        def part(values: np.ndarray | None, cid: int) -> float | None:
            return None if values is None else _opt(values[cid])

        def los(cid: int) -> bool | None:
            if channel.los is None or np.isnan(float(channel.los[cid])):
                return None
            return bool(channel.los[cid])

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
                "pathloss_db": part(channel.pathloss_db, cid),
                "shadowing_db": part(channel.shadowing_db, cid),
                "fading_gain_db": part(channel.fading_gain_db, cid),
                "los": los(cid),
                "downlink_time_s": float(t_dl),
                "upload_energy_j": float(e_up[i]),
                "compute_energy_j": float(e_cmp[i]),
                "outage": bool(outage[i]),
            }
            for i, cid in enumerate(ids)
        ]
        latency = float(np.max(t_total)) if len(ids) else 0.0
        return records, latency

    def trace_rows(self, round_: int, client_ids: list[int] | None = None) -> list[dict]:
        """Channel-trace rows (channels.trace columns) of ``round_`` for the given clients (default all)."""
        ch = self.channel(round_)
        ids = range(self.cfg.run.clients) if client_ids is None else client_ids
        rows = []
        for cid in ids:
            rows.append(
                {
                    "round": round_,
                    "client_id": int(cid),
                    "distance_m": float(ch.distance_m[cid]),
                    "pathloss_db": None if ch.pathloss_db is None else float(ch.pathloss_db[cid]),
                    "shadowing_db": None if ch.shadowing_db is None else float(ch.shadowing_db[cid]),
                    "fading_gain_db": None if ch.fading_gain_db is None else float(ch.fading_gain_db[cid]),
                    "los": None if ch.los is None else float(ch.los[cid]),
                    "gain_db": float(ch.gain_db[cid]),
                }
            )
        return rows

    def export_trace(self, path: str | Path, rounds: int | None = None) -> int:
        """Write the channel of every client in rounds 1..``rounds`` (default run.rounds) as a trace CSV.

        Returns the number of rows. Such a trace replays under any client sampling.
        """
        last = self.cfg.run.rounds if rounds is None else rounds
        return write_trace(path, (row for t in range(1, last + 1) for row in self.trace_rows(t)))
