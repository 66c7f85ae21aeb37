"""A link budget: composes geometry, mobility, path loss, shadowing and fading into channel gains.

    G_k,t [dB] = -PL(d_k,t, LOS_k,t) + S_k,t + 10 log10 |h_k,t|^2,     g_k,t = 10^(G_k,t / 10)

Positions are dropped once per run and move with the mobility model; shadowing and fading are
drawn every round (block fading: constant within the round), optionally correlated over rounds.
The LOS state of a TR 38.901 model compares a uniform u_k, drawn once per client and run, with
Pr_LOS(d_k,t).

Randomness is explicit: the caller passes ``streams(round_, purpose) -> np.random.Generator``
(fedsim keys them on (seed, round, purpose)). Every round draws for *all* clients, so the gains
of a client do not depend on which other clients take part. A round's state depends only on the
previous round's state and that round's streams, so any round can be recomputed from round 1.
Purposes: "client-positions" (round 0), "los" (round 0), "mobility" (round 0: headings; round t:
steps), "shadowing" and "fading" (round t).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from channels.fading import GaussMarkov, RayleighFading
from channels.geometry import DiscDrop, NoMobility, distance_m
from channels.pathloss import LogDistancePathLoss, sample_los
from channels.shadowing import NoShadowing
from channels.units import db_to_linear, linear_to_db

Streams = Callable[[int, str], np.random.Generator]
"""``streams(round_, purpose)``: a fresh generator of the named stream of a round."""


@dataclass(frozen=True)
class RoundChannel:
    """Channel state of every client in one round; all arrays have shape (K,) unless noted.

    ``gain_linear`` is 10^(gain_db / 10) of the total gain in dB, so exported and replayed
    gains are identical. Component fields are None (or NaN per client) where unknown, e.g. in
    a replayed trace without them.
    """

    distance_m: np.ndarray
    gain_linear: np.ndarray
    pathloss_db: np.ndarray | None = None
    shadowing_db: np.ndarray | None = None
    fading_gain_db: np.ndarray | None = None
    los: np.ndarray | None = None  # bool (K,); None when the path-loss model has no LOS state
    positions_m: np.ndarray | None = None  # (K, 2)
    total_gain_db: np.ndarray | None = None

    @property
    def gain_db(self) -> np.ndarray:
        """Total channel power gain in dB (negative)."""
        if self.total_gain_db is not None:
            return self.total_gain_db
        return linear_to_db(self.gain_linear)


@dataclass(frozen=True)
class LinkState:
    """Everything a round carries to the next: explicit, so a resume can recompute it."""

    round_: int
    mobility: np.ndarray  # (K, 4) [x_m, y_m, vx_m, vy_m]
    shadowing: np.ndarray  # (K,) standardised N(0, 1) state
    fading_z: np.ndarray | None  # (K,) CN(0, 1) Gauss-Markov state; None for i.i.d. fading
    fading_power: np.ndarray  # (K,) |h|^2
    los_u: np.ndarray  # (K,) U(0, 1), fixed for the run


@dataclass(frozen=True)
class LinkBudget:
    drop: object = DiscDrop()
    pathloss: object = LogDistancePathLoss()
    fading: object = RayleighFading()
    shadowing: object = NoShadowing()
    mobility: object = NoMobility()
    time_correlation: GaussMarkov = field(default_factory=GaussMarkov)

    @property
    def is_memoryless(self) -> bool:
        """True when a round's channel does not depend on earlier rounds (no mobility, no correlation)."""
        return (
            isinstance(self.mobility, NoMobility)
            and (isinstance(self.shadowing, NoShadowing) or self.shadowing.correlation == 0.0)
            and self.time_correlation.fading_correlation == 0.0
        )

    def place(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """Client positions (K, 2) in metres."""
        return self.drop.sample(rng, num_clients)

    def state(
        self, round_: int, positions_m: np.ndarray, streams: Streams, previous: LinkState | None = None
    ) -> LinkState:
        """The state of ``round_``: from ``previous`` (that of round_ - 1), or a first-round draw when None.

        ``positions_m`` (K, 2) are the dropped positions; they are used only for the first round.
        """
        k = len(positions_m)
        rho_f = self.time_correlation.fading_correlation
        if previous is None:
            los_u = streams(0, "los").random(k)
            mob = self.mobility.initial(streams(0, "mobility"), positions_m)
            shadow = self.shadowing.initial(streams(round_, "shadowing"), k)
            fading_rng = streams(round_, "fading")
            z = self.time_correlation.initial(fading_rng, k) if rho_f > 0 else None
        else:
            los_u = previous.los_u
            mob = self.mobility.step(streams(round_, "mobility"), previous.mobility)
            shadow = self.shadowing.step(streams(round_, "shadowing"), previous.shadowing)
            fading_rng = streams(round_, "fading")
            z = self.time_correlation.step(fading_rng, previous.fading_z) if rho_f > 0 else None
        # i.i.d. fading keeps each model's own sampler; correlated fading maps the Gauss-Markov state
        power = self.fading.power(z) if z is not None else self.fading.sample(fading_rng, k)
        return LinkState(round_, mob, shadow, z, power, los_u)

    def channel(self, state: LinkState) -> RoundChannel:
        """Per-client gains of the round whose state is ``state``."""
        pos = state.mobility[:, :2]
        d = distance_m(pos)
        los = sample_los(self.pathloss, state.los_u, d) if self.pathloss.has_los_state else None
        pl_db = self.pathloss.loss_db(d, los)
        sh_db = self.shadowing.to_db(state.shadowing)
        fade_db = linear_to_db(state.fading_power)
        total_db = -pl_db + sh_db + fade_db
        return RoundChannel(
            distance_m=d,
            gain_linear=db_to_linear(total_db),
            pathloss_db=pl_db,
            shadowing_db=sh_db,
            fading_gain_db=fade_db,
            los=los,
            positions_m=pos,
            total_gain_db=total_db,
        )

    def round_channel(self, positions_m: np.ndarray, rng: np.random.Generator) -> RoundChannel:
        """One memoryless round from a single generator (fading, then shadowing, then LOS draws).

        For analysis and notebooks; a run uses :meth:`state` and :meth:`channel` with named streams.
        """
        k = len(positions_m)
        fade = self.fading.sample(rng, k)
        shadow = self.shadowing.initial(rng, k)
        los_u = rng.random(k)
        mob = NoMobility().initial(rng, positions_m)
        return self.channel(LinkState(0, mob, shadow, None, fade, los_u))
