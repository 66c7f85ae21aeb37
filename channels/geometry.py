"""Client placement around one base station at the origin, and client mobility over rounds.

Drops
-----
disc   Uniform in the annulus min_distance_m <= d <= radius_m (a disc when min_distance_m = 0):
       the area element gives the CDF F(d) = (d^2 - d_min^2) / (R^2 - d_min^2), so
       d = sqrt(d_min^2 + U (R^2 - d_min^2)), U ~ U(0, 1), and the angle is uniform on [0, 2 pi).
csv    Fixed positions read from a CSV file with columns ``client_id,x_m,y_m`` (one row per client
       0..K-1, base station at the origin).

Mobility (state: (K, 4) array [x_m, y_m, vx_m, vy_m], velocity in metres per round)
--------
none               clients stay where they were dropped.
random-walk        every round each client moves ``mobility_step_m`` in a fresh uniform direction.
constant-velocity  each client keeps one uniform random heading and moves ``mobility_step_m`` a round.
Both moving models keep clients in the annulus [max(min_distance_m, 1 m), radius_m] by specular
reflection at its circles (the path length of a step is kept; the velocity is mirrored about the
tangent at the hit point).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from channels.csvfile import cached_while_unchanged, read_client_table

MIN_MOBILE_DISTANCE_M = 1.0
"""A moving client never comes closer than this to the base station (path loss diverges at 0)."""
CELL_RADIUS_M = 500.0
"""Default cell radius (the drops and the mobility models' bound)."""
MIN_DISTANCE_M = 10.0
"""Default closest distance of a client to the base station."""
MOBILITY_STEP_M = 10.0
"""Default distance a mobile client moves per round."""


@dataclass(frozen=True)
class DiscDrop:
    """Clients uniform over the disc of ``radius_m`` minus the inner disc of ``min_distance_m``."""

    radius_m: float = field(default=CELL_RADIUS_M, metadata={"unit": "m"})
    min_distance_m: float = field(default=MIN_DISTANCE_M, metadata={"unit": "m"})

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """Positions (num_clients, 2) in metres, base station at (0, 0)."""
        u = rng.random(num_clients)
        d = np.sqrt(self.min_distance_m**2 + u * (self.radius_m**2 - self.min_distance_m**2))
        theta = rng.uniform(0.0, 2.0 * np.pi, num_clients)
        return np.stack([d * np.cos(theta), d * np.sin(theta)], axis=1)


class PositionsFileError(ValueError):
    """A positions CSV that cannot be used; the message is one line."""


@cached_while_unchanged()
def read_positions_csv(path: str) -> np.ndarray:
    """Positions (K, 2) in metres from ``client_id,x_m,y_m`` rows; cached while the file is unchanged.

    Raises :class:`PositionsFileError` (or OSError) with a one-line reason.
    """

    def problem(xy: np.ndarray) -> str | None:
        return "non-finite position" if not np.all(np.isfinite(xy)) else None

    pos = read_client_table(path, ("x_m", "y_m"), PositionsFileError, problem)
    if np.any(np.hypot(pos[:, 0], pos[:, 1]) <= 0):
        raise PositionsFileError("a client sits on the base station (distance 0 m)")
    pos.setflags(write=False)
    return pos


@dataclass(frozen=True)
class CsvDrop:
    """Fixed client positions from a CSV file (``client_id,x_m,y_m``)."""

    positions_csv: str = field(default="", metadata={"unit": "path"})

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """Positions (num_clients, 2) in metres from the file (``rng`` unused)."""
        pos = read_positions_csv(self.positions_csv)
        if len(pos) != num_clients:
            raise PositionsFileError(f"{self.positions_csv}: has {len(pos)} clients, the run has {num_clients}")
        return np.array(pos)


DROPS: dict[str, type] = {"disc": DiscDrop, "csv": CsvDrop}
"""Client placements by ``channel.drop`` name."""


def distance_m(positions_m: np.ndarray) -> np.ndarray:
    """Euclidean distance (K,) of positions (K, 2) to the base station at the origin."""
    return np.hypot(positions_m[:, 0], positions_m[:, 1])


# ----------------------------------------------------------------------------------------------
# mobility


def move_in_annulus(
    positions_m: np.ndarray, displacement_m: np.ndarray, velocity_m: np.ndarray, r_min_m: float, r_max_m: float
) -> np.ndarray:
    """Move positions (K, 2) by displacements (K, 2) inside the annulus r_min_m <= |x| <= r_max_m with
    specular reflection at both circles (angle of incidence = angle of reflection, path length kept).

    A segment p + s u, s in (0, 1], hits a circle of radius r where |p + s u|^2 = r^2; at the first
    hit q the remaining move and the velocity are mirrored about the tangent,
    u <- u - 2 (u . n) n with n = q / |q|. Returns the state (K, 4) [x, y, vx, vy].
    """
    p = np.array(positions_m, dtype=float)
    u = np.array(displacement_m, dtype=float)
    v = np.array(velocity_m, dtype=float)
    eps = 1e-12
    for _ in range(32):  # each pass handles one wall hit; a step rarely needs more than two
        a = np.sum(u * u, axis=1)
        b = 2.0 * np.sum(p * u, axis=1)
        s_hit = np.full(len(p), np.inf)
        moving = a > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            # outer circle: p is inside, so the positive root is the exit point
            c_out = np.sum(p * p, axis=1) - r_max_m**2
            s_out = (-b + np.sqrt(np.maximum(b * b - 4 * a * c_out, 0.0))) / (2 * a)
            s_hit = np.where(moving & (s_out > eps) & (s_out < 1.0), s_out, s_hit)
            # inner circle: the smaller root, when the segment reaches it
            if r_min_m > 0:
                c_in = np.sum(p * p, axis=1) - r_min_m**2
                disc = b * b - 4 * a * c_in
                s_in = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2 * a)
                s_hit = np.where(moving & (disc > 0) & (s_in > eps) & (s_in < 1.0) & (s_in < s_hit), s_in, s_hit)
        hit = np.isfinite(s_hit)
        if not hit.any():
            break
        s_h = np.where(hit, s_hit, 1.0)[:, None]
        q = p + s_h * u
        n = q / np.hypot(q[:, 0], q[:, 1])[:, None]
        rest = (1.0 - s_h) * u
        rest = rest - 2.0 * np.sum(rest * n, axis=1)[:, None] * n
        v_ref = v - 2.0 * np.sum(v * n, axis=1)[:, None] * n
        p = np.where(hit[:, None], q, p + u)
        u = np.where(hit[:, None], rest, 0.0)
        v = np.where(hit[:, None], v_ref, v)
    p = p + u  # whatever is left after the last pass
    d = np.hypot(p[:, 0], p[:, 1])
    d_ok = np.clip(d, r_min_m, r_max_m)  # guards rounding on the circles
    scale = np.where(d > 0, d_ok / np.where(d > 0, d, 1.0), 1.0)
    return np.concatenate([p * scale[:, None], v], axis=1)


@dataclass(frozen=True)
class NoMobility:
    """Static clients."""

    def initial(self, rng: np.random.Generator, positions_m: np.ndarray) -> np.ndarray:
        """State (K, 4) [x, y, 0, 0] of the first round."""
        return np.concatenate([np.asarray(positions_m, dtype=float), np.zeros((len(positions_m), 2))], axis=1)

    def step(self, rng: np.random.Generator, state: np.ndarray) -> np.ndarray:
        return state

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        """Positions (num_clients, 2) after one round from a default disc drop."""
        s = self.initial(rng, DiscDrop().sample(rng, num_clients))
        return self.step(rng, s)[:, :2]


@dataclass(frozen=True)
class RandomWalkMobility:
    """Random walk: each round a step of ``mobility_step_m`` in a uniform random direction."""

    mobility_step_m: float = field(default=MOBILITY_STEP_M, metadata={"unit": "m per round"})
    radius_m: float = field(default=CELL_RADIUS_M, metadata={"unit": "m"})
    min_distance_m: float = field(default=MIN_DISTANCE_M, metadata={"unit": "m"})

    def initial(self, rng: np.random.Generator, positions_m: np.ndarray) -> np.ndarray:
        return NoMobility().initial(rng, positions_m)

    def step(self, rng: np.random.Generator, state: np.ndarray) -> np.ndarray:
        """x_t = x_{t-1} + s (cos phi, sin phi), phi ~ U(0, 2 pi) per client, then reflection."""
        phi = rng.uniform(0.0, 2.0 * np.pi, len(state))
        v = self.mobility_step_m * np.stack([np.cos(phi), np.sin(phi)], axis=1)
        return move_in_annulus(state[:, :2], v, v, max(self.min_distance_m, MIN_MOBILE_DISTANCE_M), self.radius_m)

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        s = self.initial(rng, DiscDrop(self.radius_m, self.min_distance_m).sample(rng, num_clients))
        return self.step(rng, s)[:, :2]


@dataclass(frozen=True)
class ConstantVelocityMobility:
    """Constant velocity: one uniform random heading per client, ``mobility_step_m`` per round."""

    mobility_step_m: float = field(default=MOBILITY_STEP_M, metadata={"unit": "m per round"})
    radius_m: float = field(default=CELL_RADIUS_M, metadata={"unit": "m"})
    min_distance_m: float = field(default=MIN_DISTANCE_M, metadata={"unit": "m"})

    def initial(self, rng: np.random.Generator, positions_m: np.ndarray) -> np.ndarray:
        """State (K, 4): the dropped positions and a velocity of ``mobility_step_m`` along a random heading."""
        phi = rng.uniform(0.0, 2.0 * np.pi, len(positions_m))
        v = self.mobility_step_m * np.stack([np.cos(phi), np.sin(phi)], axis=1)
        return np.concatenate([np.asarray(positions_m, dtype=float), v], axis=1)

    def step(self, rng: np.random.Generator, state: np.ndarray) -> np.ndarray:
        """x_t = x_{t-1} + v_{t-1}, with reflection (which turns v); ``rng`` unused."""
        v = state[:, 2:]
        return move_in_annulus(state[:, :2], v, v, max(self.min_distance_m, MIN_MOBILE_DISTANCE_M), self.radius_m)

    def sample(self, rng: np.random.Generator, num_clients: int) -> np.ndarray:
        s = self.initial(rng, DiscDrop(self.radius_m, self.min_distance_m).sample(rng, num_clients))
        return self.step(rng, s)[:, :2]


MOBILITY: dict[str, type] = {
    "none": NoMobility,
    "random-walk": RandomWalkMobility,
    "constant-velocity": ConstantVelocityMobility,
}
"""Mobility models by ``channel.mobility`` name."""
