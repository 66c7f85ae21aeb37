"""Uploads that overlap in time share the uplink band: the clock of asynchronous aggregation.

In a synchronous round a scheduler splits the band B once among the round's clients. Under
asynchronous aggregation (:mod:`fedsim.core.asynchronous`) clients start and finish their
uploads at different times, so the split changes whenever an upload starts or ends. fedsim's
model is **equal sharing at every instant** (processor sharing, as an FDMA scheduler that gives
each active uplink the same number of resource blocks): while n uploads are in flight, each gets

    b(t) = B / n(t)                                               [Hz]

and upload k runs at its Shannon rate on that band (channels.rate),

    R_k(t) = b(t) log2(1 + a_k(t) / b(t)),    a_k = p_k g_k / N0   [bit/s]

with the gain g_k of the fading block that holds t: the channel is block fading in *simulated
time*, block j covering [(j - 1) T_b, j T_b) for ``asynchronous.fading_block_s`` = T_b. The rates
are constant between events (an upload starting or ending, a block boundary), so upload k ends
at the first t_f with

    integral from its start to t_f of R_k(t) dt = S_k                [bit]

which :class:`SharedUplink` finds event by event, exactly (up to floating point). Ties (two
uploads ending at the same instant) are ordered by client id. A lone upload gets the whole band,
so with one client in flight the upload time is the synchronous S / R(B).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

import numpy as np

from channels.rate import shannon_rate_bps

SnrPerHz = Callable[[int, list[int]], np.ndarray]
"""``snr_per_hz(block, client_ids) -> a_k`` in Hz for fading block ``block`` (from 1)."""


def shared_rates_bps(bandwidth_hz: float, snr_per_hz: np.ndarray) -> np.ndarray:
    """R_k = (B / n) log2(1 + a_k n / B) of n uploads sharing ``bandwidth_hz`` equally."""
    a = np.asarray(snr_per_hz, dtype=float)
    return shannon_rate_bps(np.full(len(a), bandwidth_hz / max(len(a), 1)), a, 1.0, 1.0)  # p g / N0 = a


class SharedUplink:
    """The uploads in flight and the simulated clock that advances them (see the module docstring).

    Parameters
    ----------
    bandwidth_hz : the uplink band B.
    block_s : the length T_b of a fading block in simulated seconds.
    snr_per_hz : a_k of the given clients in a block.
    """

    def __init__(self, bandwidth_hz: float, block_s: float, snr_per_hz: SnrPerHz) -> None:
        self.bandwidth_hz = float(bandwidth_hz)
        self.block_s = float(block_s)
        self.snr_per_hz = snr_per_hz
        self.t_s = 0.0
        self.block = 1
        """The fading block that holds ``t_s`` (its end is ``block * block_s``)."""
        self._active: dict[Hashable, tuple[int, float]] = {}  # key -> (client id, bits left)
        self.band_hz_s: dict[Hashable, float] = {}
        """Per upload, the integral of its band over time so far (Hz s): over its duration, its mean band."""

    def __len__(self) -> int:
        return len(self._active)

    def block_of(self, t_s: float) -> int:
        """The fading block that holds simulated time ``t_s``."""
        return int(math.floor(t_s / self.block_s)) + 1

    def start(self, key: Hashable, client_id: int, bits: float) -> None:
        """Upload ``bits`` for ``client_id`` from now on (``key`` names it in what :meth:`advance` returns)."""
        if key in self._active:
            raise ValueError(f"upload {key!r} is already in flight")
        self._active[key] = (int(client_id), float(bits))
        self.band_hz_s[key] = 0.0

    def active(self) -> dict[Hashable, tuple[int, float]]:
        """The uploads in flight: key -> (client id, bits left)."""
        return dict(self._active)

    def resume_upload(self, key: Hashable, client_id: int, bits_left: float, band_hz_s: float) -> None:
        """Put back an upload in progress (a checkpoint's): its bits left and its band integral so far."""
        self.start(key, client_id, bits_left)
        self.band_hz_s[key] = band_hz_s

    def cancel(self, key: Hashable) -> None:
        """Take an upload out before it ends (its device left); the others share the band from now on."""
        del self._active[key]
        del self.band_hz_s[key]

    def rates_bps(self) -> dict[Hashable, float]:
        """Each upload's rate now."""
        keys = list(self._active)
        if not keys:
            return {}
        a = self.snr_per_hz(self.block, [self._active[k][0] for k in keys])
        return dict(zip(keys, shared_rates_bps(self.bandwidth_hz, a).tolist(), strict=True))

    def advance(self, until_s: float = math.inf) -> tuple[float, Hashable] | None:
        """Run the clock to the next upload that ends at or before ``until_s`` and return
        ``(its end time, its key)`` (it leaves the set); with none, run it to ``until_s`` and
        return None. ``until_s`` may be infinite only while an upload is in flight."""
        if until_s < self.t_s:
            raise ValueError(f"cannot run the clock back from {self.t_s} s to {until_s} s")
        while self._active:
            rates = self.rates_bps()
            if min(rates.values()) <= 0:
                raise ValueError(f"an upload has no rate in block {self.block} (zero channel gain)")
            ends = {k: self.t_s + self._active[k][1] / r for k, r in rates.items()}
            first = min(ends, key=lambda k: (ends[k], self._active[k][0], repr(k)))
            block_end = self.block * self.block_s
            stop = min(block_end, until_s)
            if ends[first] <= stop:
                self._elapse(rates, ends[first] - self.t_s)
                self.t_s = ends[first]
                del self._active[first]
                self._roll_block()
                return self.t_s, first
            self._elapse(rates, stop - self.t_s)
            self.t_s = stop
            if stop == block_end:
                self.block += 1
            if stop == until_s:
                return None
        if math.isinf(until_s):
            raise ValueError("no upload is in flight: the clock has no next event")
        self.t_s = until_s
        self._roll_block()
        return None

    def _elapse(self, rates: dict[Hashable, float], dt_s: float) -> None:
        share_hz = self.bandwidth_hz / len(rates)
        for k, r in rates.items():
            cid, left = self._active[k]
            self._active[k] = (cid, max(left - r * dt_s, 0.0))
            self.band_hz_s[k] += share_hz * dt_s

    def _roll_block(self) -> None:
        while self.block * self.block_s <= self.t_s:
            self.block += 1
