"""The wireless model of a run: the cell built from ``[channel]`` and ``[compute]``, every round's
channel, and the per-client accounting of a round (no Flower, no torch).

For round t and participating client k (equal FDMA split b_k = B_total / |S_t| unless a
scheduler passes its allocation):

    R_k,t   = b_k log2(1 + p g_k,t / (b_k N0))                  (channels.rate)
    T_k,t   = T_dl,t + T_cmp_k + n_k,t S_k,t / R_k,t             (T_dl,t = 0 without a downlink)
    T_t     = max_k T_k,t                                          (round latency)

n_k,t is the number of transmissions of the upload: 1, unless ``channel.packet_errors`` is on.
Then each transmission is erased with q_k,t = 1 - exp(-m / gamma_k,t), gamma_k,t = p g_k,t / (b_k N0)
(:func:`channels.rate.packet_error_prob`), drawn from the client's own stream per round and
attempt. ``drop``: one transmission, an erased upload is lost for the round. ``retransmit``: sent
again until it gets through, at most ``channel.max_transmissions`` times and, under
``tsfa.deadline_s``, only while the attempt ends within the deadline; otherwise it is lost.

The channel model is the one ``[channel]`` configures (:func:`build_link`), or a replayed trace
(``channel.trace_csv``). Every random draw comes from ``fedsim.core.seeding`` streams
keyed on (seed, round, purpose), and the draws cover all clients whether sampled or not, so records
do not depend on scheduling. Time-correlated channels (mobility, correlated shadowing or fading)
are advanced round by round from round 1, so any round can be recomputed after a resume.

Also here: :func:`check_channel_config` (the checks of ``[channel]`` and ``[compute]`` that need
more than one key or a file, run before anything starts), :func:`describe_components` (what
``fedsim channels`` prints) and :func:`export_trace_from_results`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from channels import REGISTRIES, build_component
from channels.compute import SpeedFileError, compute_energy_j, compute_time_s, read_speeds_csv
from channels.devices import (
    ClassDeviceSpeed,
    DeviceClass,
    DeviceFileError,
    load_catalogue,
    online_time_s,
    parse_mix,
    read_classes_csv,
)
from channels.fading import GaussMarkov
from channels.geometry import PositionsFileError, distance_m, read_positions_csv
from channels.link import LinkBudget, LinkState, RoundChannel
from channels.rate import (
    broadcast_time_s,
    expected_transmissions,
    in_outage,
    noise_psd_w_hz,
    packet_error_prob,
    shannon_rate_bps,
    snr_per_hz,
    upload_energy_j,
    upload_time_s,
)
from channels.trace import TraceError, check_trace, read_trace, rows_from_round_records, write_trace
from channels.units import db_to_linear, dbm_to_w
from fedsim.core import plugins
from fedsim.core.config import Config
from fedsim.core.seeding import SERVER, rng, sample_clients
from fedsim.errors import ConfigError

SECTION_OF_KIND = {
    "drop": "channel",
    "mobility": "channel",
    "pathloss": "channel",
    "shadowing": "channel",
    "fading": "channel",
    "device_speed": "compute",
}

TR38901 = ("umi", "uma")
TR38901_CARRIER_HZ = (0.5e9, 100e9)  # TR 38.901 covers 0.5-100 GHz
TR38901_DISTANCE_M = (10.0, 5000.0)  # Table 7.4.1-1 validity of d_2D
UMA_MAX_UT_HEIGHT_M = 13.0  # above it the standard draws h_E at random (Note 1), which is not modelled
LONGEST_ROUND_S = 1e9
"""The longest time fedsim's keys allow a round (tsfa.latency_budget_s, tsfa.deadline_s,
channel.outage_deadline_s): a link that takes longer for one bit is refused."""

OTHER_PARAMETERS: dict[str, tuple[str, ...]] = {
    "fading time correlation (gauss-markov)": ("channel.fading_correlation",),
    "noise and FDMA Shannon rate": (
        "channel.bandwidth_hz",
        "channel.tx_power_dbm",
        "channel.noise_psd_dbm_hz",
        "channel.noise_figure_db",
    ),
    "downlink (none, broadcast)": ("channel.downlink", "channel.downlink_bandwidth_hz", "channel.bs_power_dbm"),
    "outage": ("channel.outage_deadline_s",),
    "uplink packet errors": ("channel.packet_errors", "channel.packet_error_m", "channel.max_transmissions"),
    "channel trace replay": ("channel.trace_csv",),
    "energy (recorded only)": ("channel.tx_power_dbm", "compute.flops_per_cycle", "compute.kappa"),
}
"""Parameters of the link that are not registry entries, for ``fedsim channels``."""


def build_link(channel: Any) -> LinkBudget:
    """The link budget of a ``ChannelSection``."""
    return LinkBudget(
        drop=build_component("drop", channel.drop, channel),
        pathloss=build_component("pathloss", channel.pathloss, channel),
        fading=build_component("fading", channel.fading, channel),
        shadowing=build_component("shadowing", channel.shadowing, channel),
        mobility=build_component("mobility", channel.mobility, channel),
        time_correlation=GaussMarkov(channel.fading_correlation),
    )


def build_device_speed(compute: Any) -> Any:
    """The device-speed model of a ``ComputeSection``."""
    return build_component("device_speed", compute.device_speed, compute)


def _opt(x: float) -> float | None:
    """A record value: None where unknown (NaN)."""
    x = float(x)
    return None if math.isnan(x) else x


@dataclass
class WirelessModel:
    """The cell of a run: client positions and device speeds, and every round's channel.

    ``profiles`` maps a client id to its own channel profile, as a deployed SuperNode reports it:
    ``distance-m`` places the client at that distance from the base station (on the x axis),
    ``device-flops`` sets its device speed in FLOP/s. Clients without a profile keep their seeded
    drop and speed, so a simulated run is unchanged.
    """

    cfg: Config
    profiles: Mapping[int, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = self.cfg.channel
        self.link = build_link(c)
        k, seed = self.cfg.run.clients, self.cfg.run.seed
        self.positions_m = self.link.place(rng(seed, 0, SERVER, "client-positions"), k)
        speeds = build_device_speed(self.cfg.compute)
        self.device_classes: list[DeviceClass] | None = None
        """Each client's device class (``compute.device_speed=classes``, :mod:`channels.devices`), else None."""
        if isinstance(speeds, ClassDeviceSpeed):
            self.device_classes = speeds.assign(rng(seed, 0, SERVER, "device-speeds"), k)
            self.device_flops = np.array([c.flops for c in self.device_classes])
        else:
            self.device_flops = speeds.sample(rng(seed, 0, SERVER, "device-speeds"), k)
        for cid, profile in sorted(self.profiles.items()):
            for key, value in profile.items():
                if not (np.isfinite(value) and value > 0):
                    raise ConfigError(f"client {cid}: node config {key}={value!r}: must be a positive number")
            if "distance-m" in profile:
                self.positions_m[cid] = (profile["distance-m"], 0.0)
            if "device-flops" in profile:
                self.device_flops[cid] = profile["device-flops"]
        self.tx_power_w = float(dbm_to_w(c.tx_power_dbm))
        self.bs_power_w = float(dbm_to_w(c.bs_power_dbm))
        self.n0_w_hz = noise_psd_w_hz(c.noise_psd_dbm_hz, c.noise_figure_db)
        self.trace = read_trace(c.trace_csv) if c.trace_csv else None
        self._last_state: LinkState | None = None
        self._cache: dict[int, RoundChannel] = {}

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

    def compute_energies_j(self, client_ids: list[int], num_samples: list[int], flops_per_sample) -> np.ndarray:
        """E_cmp of the given clients: P_k T_cmp_k with device classes, else the CMOS model (channels.compute)."""
        ids = np.asarray(client_ids, dtype=int)
        if self.device_classes is not None:
            power_w = np.array([self.device_classes[c].power_w for c in ids])
            return power_w * self.compute_times_s(client_ids, num_samples, flops_per_sample)
        comp = self.cfg.compute
        e = self.cfg.train.local_epochs
        return compute_energy_j(
            e, num_samples, flops_per_sample, self.device_flops[ids], comp.flops_per_cycle, comp.kappa
        )

    def online_times_s(self, trip: int, client_ids: list[int]) -> np.ndarray:
        """How long each client stays online from the start of trip ``trip`` (a round, or an asynchronous
        dispatch), from its own stream (:func:`channels.devices.online_time_s`); inf without device classes."""
        if self.device_classes is None:
            return np.full(len(client_ids), np.inf)
        seed = self.cfg.run.seed
        return np.array([online_time_s(rng(seed, trip, c, "availability"), self.device_classes[c]) for c in client_ids])

    def downlink_time_s(self, round_: int, client_ids: list[int], downlink_bits: float) -> float:
        """T_dl: broadcast of ``downlink_bits`` decodable by every given client; 0 without a downlink."""
        c = self.cfg.channel
        if c.downlink != "broadcast" or not len(client_ids):
            return 0.0
        gains = self._gains(round_, client_ids)
        return broadcast_time_s(downlink_bits, c.downlink_bandwidth_hz, self.bs_power_w, gains, self.n0_w_hz)

    def packet_error_probs(self, round_: int, client_ids: list[int], bandwidth_hz: np.ndarray) -> np.ndarray:
        """q_k = 1 - exp(-m / gamma_k) of one transmission on band b_k (gamma_k = p g_k / (b_k N0));
        0 when ``channel.packet_errors`` is none."""
        if self.cfg.channel.packet_errors == "none":
            return np.zeros(len(client_ids))
        b = np.asarray(bandwidth_hz, dtype=float)
        a = self.snr_per_hz(round_, client_ids)
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = np.where(b > 0, a / np.where(b > 0, b, 1.0), np.inf)
        return packet_error_prob(snr, self.cfg.channel.packet_error_m)

    def expected_transmissions(self, round_: int, client_ids: list[int]) -> np.ndarray:
        """E[n_k] = (1 - q_k^N) / (1 - q_k) under ``packet_errors=retransmit`` with q_k on an equal
        share of the band (what a scheduler prices before it splits the band); 1 otherwise."""
        c = self.cfg.channel
        if c.packet_errors != "retransmit" or not len(client_ids):
            return np.ones(len(client_ids))
        share = np.full(len(client_ids), c.bandwidth_hz / len(client_ids))
        return expected_transmissions(self.packet_error_probs(round_, client_ids, share), c.max_transmissions)

    def _transmissions(
        self, round_: int, client_ids: list[int], q: np.ndarray, t_before_s: np.ndarray, t_up_s: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n_k, delivered_k): transmissions made and whether the upload got through, from the
        client's stream for (round, attempt). A client with no band makes no transmission."""
        c, seed = self.cfg.channel, self.cfg.run.seed
        if c.packet_errors == "none":
            return np.ones(len(client_ids), dtype=int), np.ones(len(client_ids), dtype=bool)
        n = np.zeros(len(client_ids), dtype=int)
        ok = np.zeros(len(client_ids), dtype=bool)
        tries = 1 if c.packet_errors == "drop" else c.max_transmissions
        deadline = self.cfg.tsfa.deadline_s
        for i, cid in enumerate(client_ids):
            if not np.isfinite(t_up_s[i]):
                continue
            for attempt in range(1, tries + 1):
                if attempt > 1 and deadline > 0 and t_before_s[i] + attempt * t_up_s[i] > deadline:
                    break  # this try would end after the deadline
                n[i] = attempt
                if rng(seed, round_, int(cid), f"packet-error-{attempt}").random() >= q[i]:
                    ok[i] = True
                    break
        return n, ok

    def channel_fields(self, round_: int, client_id: int) -> dict[str, Any]:
        """The channel part of a client's round record: distance, total gain and its terms, LOS.

        A term the model (or a replayed trace) does not have is None, and so is ``los`` for a
        path-loss model without a LOS state.
        """
        ch = self.channel(round_)

        def part(values: np.ndarray | None) -> float | None:
            return None if values is None else _opt(values[client_id])

        los = None if ch.los is None or np.isnan(float(ch.los[client_id])) else bool(ch.los[client_id])
        return {
            "distance_m": float(ch.distance_m[client_id]),
            "gain_db": float(ch.gain_db[client_id]),
            "pathloss_db": part(ch.pathloss_db),
            "shadowing_db": part(ch.shadowing_db),
            "fading_gain_db": part(ch.fading_gain_db),
            "los": los,
        }

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
        extra_compute_s: np.ndarray | None = None,
    ) -> tuple[list[dict], float]:
        """Per-client channel fields of the round record (distance_m ... outage, packet_error_prob,
        transmissions) and the round latency T_t in seconds. Each record also has ``delivered``
        (False: the upload was erased, see the module docstring), which the caller turns into a
        drop; ``upload_time_s`` and ``upload_energy_j`` count every transmission.

        ``bandwidth_hz`` is the allocation of a scheduler; None splits the band equally.
        ``downlink_bits`` is the size of the broadcast global model (channel.downlink=broadcast);
        None takes the largest upload, which is exact for dense uploads. ``extra_compute_s`` is
        added to each client's compute time (a straggler's delay, in simulated time).
        """
        ids = np.asarray(client_ids, dtype=int)
        if bandwidth_hz is None:
            bandwidth_hz = np.full(len(ids), self.cfg.channel.bandwidth_hz / max(len(ids), 1))
        bandwidth_hz = np.asarray(bandwidth_hz, dtype=float)
        gain = self._gains(round_, client_ids)
        rate = shannon_rate_bps(bandwidth_hz, self.tx_power_w, gain, self.n0_w_hz)
        t_up = upload_time_s(payload_bits, rate)
        t_cmp = self.compute_times_s(client_ids, num_samples, flops_per_sample)
        if extra_compute_s is not None:
            t_cmp = t_cmp + np.asarray(extra_compute_s, dtype=float)
        if downlink_bits is None:
            downlink_bits = max(payload_bits, default=0)
        t_dl = self.downlink_time_s(round_, client_ids, downlink_bits)
        q = self.packet_error_probs(round_, client_ids, bandwidth_hz)
        n_tx, delivered = self._transmissions(round_, client_ids, q, t_dl + t_cmp, t_up)
        if self.cfg.channel.packet_errors != "none":
            t_up = np.where(n_tx > 0, n_tx * t_up, t_up)
        t_total = t_dl + t_cmp + t_up
        outage = in_outage(t_total, self.cfg.channel.outage_deadline_s)
        e_up = upload_energy_j(self.tx_power_w, t_up)
        e_cmp = self.compute_energies_j(client_ids, num_samples, flops_per_sample)
        online_s = self.online_times_s(round_, client_ids)

        records = [
            {
                "client_id": int(cid),
                **self.channel_fields(round_, int(cid)),
                "bandwidth_hz": float(bandwidth_hz[i]),
                "rate_bps": float(rate[i]),
                "payload_bits": int(payload_bits[i]),
                "num_samples": int(num_samples[i]),
                "compute_time_s": float(t_cmp[i]),
                "upload_time_s": float(t_up[i]),
                "downlink_time_s": float(t_dl),
                "upload_energy_j": float(e_up[i]),
                "compute_energy_j": float(e_cmp[i]),
                "outage": bool(outage[i]),
                "packet_error_prob": float(q[i]),
                "transmissions": int(n_tx[i]),
                "delivered": bool(delivered[i]),
                "left": _left(self.device_classes, int(cid), float(online_s[i]), float(t_total[i])),
            }
            for i, cid in enumerate(ids)
        ]
        latency = float(np.max(t_total)) if len(ids) else 0.0
        return records, latency


def _left(classes: list[DeviceClass] | None, client_id: int, online_s: float, trip_s: float) -> str | None:
    """Why a client left before its upload ended (device availability), or None."""
    return availability_reason(classes, client_id, online_s, trip_s) if online_s < trip_s else None


def availability_reason(
    classes: list[DeviceClass] | None, client_id: int, online_s: float, trip_s: float | None = None
) -> str:
    """The drop reason of a client whose device went offline ``online_s`` into its trip."""
    name = classes[client_id].name if classes is not None else "?"
    if online_s == 0:
        return f"offline: device ({name}) unavailable at the start (compute.device_speed=classes)"
    trip = f" of its {trip_s:.4g} s trip" if trip_s is not None else " after its dispatch"
    return f"offline: device ({name}) left {online_s:.4g} s{trip} (compute.device_speed=classes)"


# ----------------------------------------------------------------------------------------------
# checks of [channel] and [compute] that need more than one key or a file


def _file_error(key: str, path: str, e: Exception) -> ConfigError:
    if isinstance(e, FileNotFoundError):
        return ConfigError(f"{key}={path!r}: file not found")
    if isinstance(e, OSError):
        return ConfigError(f"{key}={path!r}: cannot read ({e.strerror or e})")
    if isinstance(e, UnicodeDecodeError):
        return ConfigError(f"{key}={path!r}: not a text CSV file")
    return ConfigError(f"{key}={path!r}: {e}")


def check_channel_config(cfg: Any) -> None:
    """Cross-key and file checks of ``[channel]`` and ``[compute]``; ConfigError with one line."""
    c, k = cfg.channel, cfg.run.clients

    if c.pathloss in TR38901:
        lo, hi = TR38901_CARRIER_HZ
        if not lo <= c.carrier_hz <= hi:
            raise ConfigError(
                f"channel.carrier_hz={c.carrier_hz!r}: channel.pathloss={c.pathloss} (TR 38.901) needs a carrier "
                f"in [{lo:g}, {hi:g}] Hz"
            )
        if c.pathloss == "uma" and c.ut_height_m > UMA_MAX_UT_HEIGHT_M:
            raise ConfigError(
                f"channel.ut_height_m={c.ut_height_m!r}: channel.pathloss=uma supports client heights up to "
                f"{UMA_MAX_UT_HEIGHT_M:g} m (above, TR 38.901 draws the environment height at random)"
            )
        dlo, dhi = TR38901_DISTANCE_M
        if c.drop == "disc" and (c.min_distance_m < dlo or c.radius_m > dhi):
            raise ConfigError(
                f"channel.min_distance_m={c.min_distance_m!r}, channel.radius_m={c.radius_m!r}: "
                f"channel.pathloss={c.pathloss} (TR 38.901) is valid for distances in [{dlo:g}, {dhi:g}] m"
            )

    closest_m = c.min_distance_m  # where a client can be closest to the base station
    if c.drop != "csv" and c.positions_csv:
        raise ConfigError(f"channel.positions_csv={c.positions_csv!r}: only used with channel.drop=csv")
    if c.drop == "csv":
        if not c.positions_csv:
            raise ConfigError("channel.positions_csv='': channel.drop=csv needs a CSV file (client_id,x_m,y_m)")
        try:
            pos = read_positions_csv(c.positions_csv)
        except (OSError, UnicodeDecodeError, PositionsFileError) as e:
            raise _file_error("channel.positions_csv", c.positions_csv, e) from None
        if len(pos) != k:
            raise ConfigError(f"channel.positions_csv={c.positions_csv!r}: has {len(pos)} clients, run.clients is {k}")
        d = distance_m(pos)
        closest_m = min(closest_m, float(d.min()))
        if c.pathloss in TR38901 and (d.min() < TR38901_DISTANCE_M[0] or d.max() > TR38901_DISTANCE_M[1]):
            raise ConfigError(
                f"channel.positions_csv={c.positions_csv!r}: distances {d.min():.1f}..{d.max():.1f} m, "
                f"channel.pathloss={c.pathloss} (TR 38.901) is valid in [10, 5000] m"
            )
        if c.mobility != "none" and (d.min() < c.min_distance_m or d.max() > c.radius_m):
            raise ConfigError(
                f"channel.positions_csv={c.positions_csv!r}: distances {d.min():.1f}..{d.max():.1f} m must lie in "
                f"[channel.min_distance_m, channel.radius_m] = [{c.min_distance_m:g}, {c.radius_m:g}] m "
                f"when clients move (channel.mobility={c.mobility})"
            )

    if c.trace_csv:
        _check_trace_file(cfg)
    else:
        rate = best_mean_rate_bps(c, closest_m)
        if rate * LONGEST_ROUND_S < 1:
            raise ConfigError(
                f"channel.bandwidth_hz={c.bandwidth_hz:g}, channel.tx_power_dbm={c.tx_power_dbm:g}, "
                f"channel.noise_psd_dbm_hz={c.noise_psd_dbm_hz:g}, channel.noise_figure_db={c.noise_figure_db:g}: "
                f"the best-placed client's mean uplink rate is at most {rate:.3g} bit/s, so one bit takes longer than "
                f"{LONGEST_ROUND_S:g} s, the longest round fedsim allows; raise the band or the power, or lower the noise"
            )

    comp = cfg.compute
    _check_device_classes(comp, k)
    if comp.device_speed != "csv" and comp.device_speed_csv:
        raise ConfigError(
            f"compute.device_speed_csv={comp.device_speed_csv!r}: only used with compute.device_speed=csv"
        )
    if comp.device_speed == "csv":
        if not comp.device_speed_csv:
            raise ConfigError(
                "compute.device_speed_csv='': compute.device_speed=csv needs a CSV file (client_id,device_flops)"
            )
        try:
            speeds = read_speeds_csv(comp.device_speed_csv)
        except (OSError, UnicodeDecodeError, SpeedFileError) as e:
            raise _file_error("compute.device_speed_csv", comp.device_speed_csv, e) from None
        if len(speeds) != k:
            raise ConfigError(
                f"compute.device_speed_csv={comp.device_speed_csv!r}: has {len(speeds)} clients, run.clients is {k}"
            )


def _check_device_classes(comp: Any, num_clients: int) -> None:
    """``compute.device_speed=classes``: the catalogue, the mix or the class file, and every class named."""
    for key in ("device_classes_csv", "device_catalogue"):
        if comp.device_speed != "classes" and getattr(comp, key):
            raise ConfigError(f"compute.{key}={getattr(comp, key)!r}: only used with compute.device_speed=classes")
    if comp.device_speed != "classes":
        return
    try:
        catalogue = load_catalogue(comp.device_catalogue)
    except (OSError, UnicodeDecodeError, DeviceFileError) as e:
        raise _file_error("compute.device_catalogue", comp.device_catalogue or "(shipped)", e) from None
    if comp.device_classes_csv:
        try:
            names = list(read_classes_csv(comp.device_classes_csv))
        except (OSError, UnicodeDecodeError, DeviceFileError) as e:
            raise _file_error("compute.device_classes_csv", comp.device_classes_csv, e) from None
        key, value = "compute.device_classes_csv", comp.device_classes_csv
        if len(names) != num_clients:
            raise ConfigError(f"{key}={value!r}: has {len(names)} clients, run.clients is {num_clients}")
    else:
        key, value = "compute.device_mix", comp.device_mix
        try:
            names = list(parse_mix(comp.device_mix))
        except DeviceFileError as e:
            raise ConfigError(f"{key}={value!r}: {e}") from None
    unknown = sorted(set(names) - set(catalogue))
    if unknown:
        raise ConfigError(
            f"{key}={value!r}: class {unknown[0]!r} is not in the catalogue (one of {', '.join(catalogue)})"
        )


def best_mean_rate_bps(channel: Any, distance_m_: float) -> float:
    """An upper bound on any client's mean uplink rate (bit/s) in the cell of a ``ChannelSection``.

    E[R] = E[B log2(1 + p g / (B N0))] <= B log2(1 + p E[g] / (B N0)) (Jensen: log is concave), on
    the whole band B, at the mean gain of the closest place a client can be (``distance_m_``; line
    of sight where the path-loss model has the state): fading has E|h|^2 = 1, and log-normal
    shadowing of sigma dB multiplies the mean gain by exp((sigma ln 10 / 10)^2 / 2).
    """
    link = build_link(channel)
    los = np.array([True]) if link.pathloss.has_los_state else None
    sigma_db = float(link.shadowing.to_db(np.array(1.0)))
    with np.errstate(divide="ignore", over="ignore"):
        gain_db = -link.pathloss.loss_db(np.array([distance_m_]), los)[0] + sigma_db**2 * math.log(10) / 20
        noise = noise_psd_w_hz(channel.noise_psd_dbm_hz, channel.noise_figure_db)
        return float(
            shannon_rate_bps(channel.bandwidth_hz, dbm_to_w(channel.tx_power_dbm), db_to_linear(gain_db), noise)
        )


def _check_trace_file(cfg: Any) -> None:
    path = cfg.channel.trace_csv
    try:
        trace = read_trace(path)
        check_trace(trace, cfg.run.rounds, cfg.run.clients)
    except (OSError, UnicodeDecodeError, TraceError) as e:
        raise _file_error("channel.trace_csv", path, e) from None
    for round_ in range(1, cfg.run.rounds + 1):
        needed = sample_clients(cfg.run.seed, round_, cfg.run.clients, cfg.num_sampled)
        missing = sorted(set(needed) - trace.clients(round_))
        if missing:
            raise ConfigError(
                f"channel.trace_csv={path!r}: round {round_} has no row for sampled clients {missing[:8]} "
                "(a trace needs every client a run samples)"
            )


# ----------------------------------------------------------------------------------------------
# fedsim channels


def _config_fields() -> dict[str, dataclasses.Field]:
    from fedsim.core.config import SECTIONS

    return {f"{name}.{f.name}": f for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def describe_components() -> list[dict[str, Any]]:
    """One entry per registered component and per other link parameter group.

    Each entry: ``kind``, ``name``, ``summary`` (first docstring line), ``selector`` (the key that
    picks it, or None) and ``parameters``: a list of (key, default, unit or allowed values).
    """
    fields = _config_fields()

    def param(key: str, unit: str | None) -> tuple[str, Any, str]:
        f = fields[key]
        return key, f.default, unit or f.metadata["allowed"]

    out = []
    for kind, name in plugins.installed_channel_components():  # added to the registries on first use
        if kind in REGISTRIES:
            section = SECTION_OF_KIND[kind]
            keys = {key.partition(".")[2] for key in fields if key.startswith(f"{section}.")}
            try:
                plugins.channel_component(kind, name, f"{section}.{kind}", keys)
            except ConfigError as e:  # a broken plug-in is listed, not fatal
                summary = f"unusable: {str(e).partition(': ')[2]}"
                out.append({"kind": kind, "name": name, "summary": summary, "selector": None, "parameters": []})
    for kind, registry in REGISTRIES.items():
        section = SECTION_OF_KIND[kind]
        for name, cls in registry.items():
            doc = (cls.__doc__ or "").strip().splitlines()
            params = [param(f"{section}.{f.name}", f.metadata.get("unit")) for f in dataclasses.fields(cls)]
            out.append(
                {
                    "kind": kind,
                    "name": name,
                    "summary": doc[0] if doc else "",
                    "selector": f"{section}.{kind}={name}",
                    "parameters": params,
                }
            )
    for group, keys in OTHER_PARAMETERS.items():
        out.append(
            {
                "kind": "link",
                "name": group,
                "summary": "",
                "selector": None,
                "parameters": [param(key, None) for key in keys],
            }
        )
    return out


def export_trace_from_results(results_dir: str | Path, out_csv: str | Path) -> int:
    """Write the per-round, per-client channel of a results folder's ``rounds.jsonl`` as a trace CSV."""
    from fedsim.core.results import read_rounds

    try:
        rows = rows_from_round_records(read_rounds(results_dir))
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise ConfigError(
            f"--export-trace={str(results_dir)!r}: rounds.jsonl does not hold fedsim round records ({type(e).__name__})"
        ) from None
    return write_trace(out_csv, rows)
