"""Online stage of TSFA: Lyapunov drift-plus-penalty choice of rho and bandwidth (fedsim formulation).

Long-term constraint (docs/schedulers.md, TSFA): (1/T) sum_t T_t <= T_avg. Virtual queue
(Neely, Stochastic Network Optimization, 2010, ch. 3):

    Q_1 = 0,    Q_{t+1} = max(Q_t + T_t - T_avg, 0)              [s]

Every round the scheduler observes a_k,t and Q_t and picks rho_t from a grid and the band b_t:

    minimise_{rho in grid, b}   V Pen(rho) + Q_t T_t(rho, b)
    subject to                  sum_k b_k <= B_total,  b >= 0.

For a fixed rho the inner problem is the min-max latency allocation, so each rho costs one
allocator call and the scheduler keeps the best. Q has units of seconds, T of seconds, Pen is
dimensionless, so V is in s^2: a larger V buys a smaller penalty at the price of a larger
queue (an O(V) backlog, an O(1/V) penalty gap).

The schedulers here share one interface, ``decide(...) -> Decision`` then
``update(round_latency_s)``, and a JSON-serialisable state (``state_dict`` /
``load_state_dict``) for checkpoints:

- :class:`TsfaScheduler`: TSFA online stage ("tsfa").
- :class:`FixedRhoScheduler`: a fixed rho with a given allocator ("fixed", or "equal" with the
  equal-split allocator).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from fedsim.tsfa.allocator import AllocationResult, Allocator, min_bandwidth_hz

__all__ = [
    "DEFAULT_RHO_GRID",
    "PENALTY_MODES",
    "Decision",
    "FixedRhoScheduler",
    "TsfaScheduler",
]

DEFAULT_RHO_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
PENALTY_MODES: tuple[str, ...] = ("dropped_error", "rho")
_RHO_MATCH_TOL = 1e-9
# Relative slack on the hard deadline: solver tolerances (~1e-8) must not drop a client.
_DEADLINE_RTOL = 1e-6


@dataclass(frozen=True)
class Decision:
    """One round's scheduling decision: TSFA (fedsim formulation).

    Attributes
    ----------
    round_index : int
        t, 1-based: the round this decision is for.
    rho : float
        rho_t, fraction of ranks dropped.
    bandwidth_hz : (K,) float array, read-only
        b_k,t in Hz (0 for dropped clients).
    round_latency_s : float
        T_t = max over the participating clients of T_cmp_k + S_k / R_k, seconds (0 when every
        client is dropped).
    per_client_latency_s : (K,) float array, read-only
        Latency per client in seconds; NaN for dropped clients.
    objective : float
        V Pen(rho_t) + Q_t T_t(rho_t) before any deadline drop (NaN for fixed-rho schedulers).
    penalty : float
        Pen(rho_t) as used in the objective (normalised, dimensionless; NaN for fixed rho).
    queue_s : float
        Q_t in seconds, the queue the decision was made with.
    solver_status : str
        Status of the allocation of the chosen rho (fallback chain included).
    solve_time_s : float
        Allocator wall-clock seconds summed over every rho tried and every deadline re-solve.
    fallback : bool
        Whether any allocator call of this round fell back.
    dropped : tuple[int, ...]
        Positions (0-based, in the order of the inputs) of the clients dropped by the
        per-round deadline.
    latency_by_rho : tuple[tuple[float, float], ...]
        (rho, T_t(rho)) for every rho tried, before deadline drops.
    """

    round_index: int
    rho: float
    bandwidth_hz: np.ndarray
    round_latency_s: float
    per_client_latency_s: np.ndarray
    objective: float
    penalty: float
    queue_s: float
    solver_status: str
    solve_time_s: float
    fallback: bool
    dropped: tuple[int, ...]
    latency_by_rho: tuple[tuple[float, float], ...]

    def as_dict(self) -> dict:
        """Plain JSON types for round records (NaN becomes None)."""

        def num(x: float) -> float | None:
            return None if not math.isfinite(x) else float(x)

        return {
            "round_index": self.round_index,
            "rho": self.rho,
            "bandwidth_hz": self.bandwidth_hz.tolist(),
            "round_latency_s": num(self.round_latency_s),
            "per_client_latency_s": [num(x) for x in self.per_client_latency_s.tolist()],
            "objective": num(self.objective),
            "penalty": num(self.penalty),
            "queue_s": self.queue_s,
            "solver_status": self.solver_status,
            "solve_time_s": self.solve_time_s,
            "fallback": self.fallback,
            "dropped": list(self.dropped),
            "latency_by_rho": [[r, num(t)] for r, t in self.latency_by_rho],
        }


# --------------------------------------------------------------------------------------------
# Validation helpers: one-line errors naming the key and the value
# --------------------------------------------------------------------------------------------


def _real(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{key}={value!r}: must be a finite number")
    return float(value)


def _positive(key: str, value: object) -> float:
    x = _real(key, value)
    if not x > 0:
        raise ValueError(f"{key}={value!r}: must be > 0")
    return x


def _rho(key: str, value: object) -> float:
    x = _real(key, value)
    if not 0.0 <= x < 1.0:
        raise ValueError(f"{key}={value!r}: must be in [0, 1)")
    return x


def _rho_grid(value: object) -> tuple[float, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(f"tsfa.rho_grid={value!r}: must be a non-empty list of numbers in [0, 1)")
    if len(value) == 0:
        raise ValueError(f"tsfa.rho_grid={list(value)!r}: must be non-empty")
    grid = sorted({_rho(f"tsfa.rho_grid[{i}]", v) for i, v in enumerate(value)})
    return tuple(grid)


def _lookup(mapping: Mapping, rho: float, name: str) -> object:
    for key, val in mapping.items():
        if isinstance(key, numbers.Real) and abs(float(key) - rho) <= _RHO_MATCH_TOL:
            return val
    raise ValueError(f"{name} has no entry for rho={rho!r} (keys: {sorted(mapping)!r})")


# --------------------------------------------------------------------------------------------
# Shared scheduler machinery: queue, state, deadline
# --------------------------------------------------------------------------------------------


def deadline_admission(
    snr_per_hz: np.ndarray,
    payload_bits: np.ndarray,
    compute_time_s: np.ndarray,
    deadline_s: float,
    bandwidth_total_hz: float,
) -> np.ndarray:
    """The clients that cannot all meet the deadline d: a (K,) bool mask of the dropped ones.

    Greedy on the minimum band each client needs to meet d,

        m_k = min_bandwidth_hz(a_k, S_k / (d - T_cmp_k))   (+inf if T_cmp_k >= d),

    admitting clients in increasing m_k while sum m_k <= B_total: the largest set that can all
    meet d (a unit-value knapsack, solved exactly by the greedy order).
    """
    d = deadline_s
    with np.errstate(divide="ignore", invalid="ignore"):
        need_bps = np.where(compute_time_s < d, payload_bits / (d - compute_time_s), np.inf)
    need_hz = np.where(payload_bits > 0, min_bandwidth_hz(snr_per_hz, need_bps), 0.0)
    need_hz = np.where(compute_time_s <= d, need_hz, np.inf)
    order = np.argsort(need_hz, kind="stable")
    dropped = np.zeros(np.shape(snr_per_hz), dtype=bool)
    dropped[order[~(np.cumsum(need_hz[order]) <= bandwidth_total_hz * (1 + 1e-12))]] = True
    return dropped


class _Scheduler:
    kind = "base"

    def __init__(self, allocator: Allocator, latency_budget_s: float | None, deadline_s: float | None) -> None:
        if not callable(getattr(allocator, "solve", None)):
            raise ValueError(f"allocator={allocator!r}: must have a solve(a, payload_bits, compute_time_s) method")
        self.allocator = allocator
        self.latency_budget_s = (
            None if latency_budget_s is None else _positive("tsfa.latency_budget_s", latency_budget_s)
        )
        self.deadline_s = None if deadline_s is None else _positive("tsfa.deadline_s", deadline_s)
        self.queue_s = 0.0
        self.round_index = 0  # rounds completed (update calls)
        self.latency_sum_s = 0.0
        self.dropped_total = 0

    # --- queue ---------------------------------------------------------------------------------

    def update(self, round_latency_s: float) -> float:
        """Close round t with its realised latency T_t; returns Q_{t+1} = max(Q_t + T_t - T_avg, 0).

        Without a latency budget (fixed-rho schedulers built without one) Q stays 0.
        """
        t = _real("round_latency_s", round_latency_s)
        if t < 0:
            raise ValueError(f"round_latency_s={round_latency_s!r}: must be >= 0")
        if self.latency_budget_s is not None:
            self.queue_s = max(self.queue_s + t - self.latency_budget_s, 0.0)
        self.round_index += 1
        self.latency_sum_s += t
        return self.queue_s

    @property
    def average_latency_s(self) -> float:
        """(1/t) sum_{s<=t} T_s over the completed rounds (NaN before the first update)."""
        return self.latency_sum_s / self.round_index if self.round_index else float("nan")

    def state_dict(self) -> dict:
        """The mutable state as plain JSON types (for checkpoints)."""
        return {
            "kind": self.kind,
            "queue_s": float(self.queue_s),
            "round_index": int(self.round_index),
            "latency_sum_s": float(self.latency_sum_s),
            "dropped_total": int(self.dropped_total),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict` output; a missing key or bad value raises ValueError."""
        if not isinstance(state, Mapping):
            raise ValueError(f"scheduler state={state!r}: must be a mapping")
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(f"scheduler state keys={sorted(state)!r}: expected {sorted(expected)!r}")
        if {"lyapunov": "tsfa"}.get(
            state["kind"], state["kind"]
        ) != self.kind:  # "lyapunov": the name in checkpoints written before 0.2
            raise ValueError(f"scheduler state kind={state['kind']!r}: this scheduler is {self.kind!r}")
        q = _real("state.queue_s", state["queue_s"])
        s = _real("state.latency_sum_s", state["latency_sum_s"])
        for key in ("round_index", "dropped_total"):
            v = state[key]
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ValueError(f"state.{key}={v!r}: must be an integer >= 0")
        if q < 0 or s < 0:
            raise ValueError(f"state.queue_s={q!r}, state.latency_sum_s={s!r}: must be >= 0")
        self.queue_s, self.latency_sum_s = q, s
        self.round_index, self.dropped_total = int(state["round_index"]), int(state["dropped_total"])

    # --- one allocation, with the optional hard deadline ----------------------------------------

    def _apply_deadline(
        self, a: np.ndarray, payload: np.ndarray, tcmp: np.ndarray, res: AllocationResult
    ) -> tuple[AllocationResult, np.ndarray, float, bool]:
        """Drop the clients that cannot meet ``deadline_s`` and re-solve for the rest.

        A min-max allocation equalises latencies, so "drop whoever exceeds the deadline" would
        drop everyone at once. Admission is therefore :func:`deadline_admission`. The allocator
        then re-solves for the admitted clients; any that still exceed d (possible with a
        heuristic allocator such as the equal split) are dropped in turn and it re-solves again.
        """
        d = self.deadline_s
        dropped = np.zeros(a.shape, dtype=bool)
        extra_time, extra_fallback = 0.0, False
        if d is None or res.latency_s <= d * (1 + _DEADLINE_RTOL):
            return res, dropped, extra_time, extra_fallback
        dropped = deadline_admission(a, payload, tcmp, d, self.allocator.bandwidth_total_hz)
        for _ in range(a.size + 1):
            s_m = np.where(dropped, 0.0, payload)
            t_m = np.where(dropped, 0.0, tcmp)
            res = self.allocator.solve(a, s_m, t_m)
            extra_time += res.solve_time_s
            extra_fallback |= res.fallback
            late = (~dropped) & (res.per_client_latency_s > d * (1 + _DEADLINE_RTOL))
            if not late.any():
                break
            dropped |= late
        return res, dropped, extra_time, extra_fallback

    def _finish(
        self,
        rho: float,
        res: AllocationResult,
        dropped: np.ndarray,
        objective: float,
        penalty: float,
        solve_time_s: float,
        fallback: bool,
        latency_by_rho: list[tuple[float, float]],
    ) -> Decision:
        lat = np.where(dropped, np.nan, res.per_client_latency_s)
        kept = lat[~dropped]
        round_latency = float(kept.max()) if kept.size else 0.0
        bw = np.where(dropped, 0.0, res.bandwidth_hz)
        lat.flags.writeable = False
        bw.flags.writeable = False
        self.dropped_total += int(dropped.sum())
        return Decision(
            round_index=self.round_index + 1,
            rho=float(rho),
            bandwidth_hz=bw,
            round_latency_s=round_latency,
            per_client_latency_s=lat,
            objective=float(objective),
            penalty=float(penalty),
            queue_s=float(self.queue_s),
            solver_status=res.status,
            solve_time_s=float(solve_time_s),
            fallback=bool(fallback),
            dropped=tuple(int(i) for i in np.flatnonzero(dropped)),
            latency_by_rho=tuple((float(r), float(t)) for r, t in latency_by_rho),
        )

    def _inputs(
        self,
        snr_per_hz: ArrayLike,
        compute_time_s: ArrayLike,
        payload_bits_by_rho: Mapping,
        rhos: Sequence[float],
    ) -> tuple[np.ndarray, np.ndarray, dict[float, np.ndarray]]:
        a = np.atleast_1d(np.asarray(snr_per_hz, dtype=float))
        t = np.atleast_1d(np.asarray(compute_time_s, dtype=float))
        if not isinstance(payload_bits_by_rho, Mapping):
            raise ValueError(f"payload_bits_by_rho={payload_bits_by_rho!r}: must be a mapping rho -> (K,) bits")
        payloads = {}
        for rho in rhos:
            s = np.atleast_1d(np.asarray(_lookup(payload_bits_by_rho, rho, "payload_bits_by_rho"), dtype=float))
            if s.shape != a.shape:
                raise ValueError(f"payload_bits_by_rho[{rho!r}] has shape {s.shape}: must match snr_per_hz {a.shape}")
            payloads[rho] = s
        return a, t, payloads


# --------------------------------------------------------------------------------------------
# Schedulers
# --------------------------------------------------------------------------------------------


class TsfaScheduler(_Scheduler):
    """TSFA online stage: drift-plus-penalty choice of rho_t and b_t (fedsim formulation).

    Each round, for every rho in the grid (ascending), the allocator gives the min-max band
    b(rho) and latency T_t(rho); the controller picks

        rho_t = argmin_rho  V Pen(rho) + Q_t T_t(rho),      ties -> the smaller rho,

    then applies the optional hard deadline (clients that cannot meet it are dropped and the
    band re-solved for the rest, see ``_apply_deadline``). ``update(T_t)`` advances the queue.

    Penalty (``penalty``):

    - "dropped_error": Pen(rho) = E(rho) / max_{rho' in grid} E(rho'), where E(rho) is the
      clients' reported dropped-rank error sum_{i not kept} s_i^2 at rho, averaged over the
      clients (a (K,) array is averaged; a scalar is taken as that mean already). The
      normalisation by the largest value over the grid (the error at the largest rho when it
      grows with rho, as it does for SOFT) makes Pen dimensionless in [0, 1], so V is in s^2
      whatever the model's scale; when every E is 0, Pen = 0.
    - "rho": Pen(rho) = rho (surrogate; ``penalty_by_rho`` is ignored).

    Parameters
    ----------
    allocator : an :class:`~fedsim.tsfa.allocator.Allocator` (``make_allocator("minmax", K, B)``).
    latency_budget_s : T_avg > 0, seconds.
    v : V >= 0, s^2.
    rho_grid : non-empty, every value in [0, 1); sorted and de-duplicated.
    penalty : "dropped_error" (default) or "rho".
    deadline_s : optional per-round hard deadline > 0, seconds.

    Raises
    ------
    ValueError
        A bad parameter, e.g. "tsfa.latency_budget_s=-1: must be > 0".
    """

    kind = "tsfa"

    def __init__(
        self,
        allocator: Allocator,
        latency_budget_s: float,
        v: float,
        rho_grid: Sequence[float] = DEFAULT_RHO_GRID,
        penalty: str = "dropped_error",
        deadline_s: float | None = None,
    ) -> None:
        if latency_budget_s is None:
            raise ValueError("tsfa.latency_budget_s=None: must be > 0")
        super().__init__(allocator, latency_budget_s, deadline_s)
        self.v = _real("tsfa.v", v)
        if self.v < 0:
            raise ValueError(f"tsfa.v={v!r}: must be >= 0")
        self.rho_grid = _rho_grid(rho_grid)
        if penalty not in PENALTY_MODES:
            raise ValueError(f"tsfa.penalty={penalty!r}: must be one of {', '.join(PENALTY_MODES)}")
        self.penalty = penalty

    def _penalties(self, penalty_by_rho: Mapping | None) -> dict[float, float]:
        if self.penalty == "rho":
            return {rho: rho for rho in self.rho_grid}
        if not isinstance(penalty_by_rho, Mapping):
            raise ValueError(f"penalty_by_rho={penalty_by_rho!r}: tsfa.penalty='dropped_error' needs rho -> error")
        raw = {}
        for rho in self.rho_grid:
            e = np.asarray(_lookup(penalty_by_rho, rho, "penalty_by_rho"), dtype=float)
            val = float(e.mean()) if e.size else 0.0
            if not (math.isfinite(val) and val >= 0):
                raise ValueError(f"penalty_by_rho[{rho!r}]={val!r}: must be finite and >= 0")
            raw[rho] = val
        top = max(raw.values())
        return {rho: (val / top if top > 0 else 0.0) for rho, val in raw.items()}

    def decide(
        self,
        snr_per_hz: ArrayLike,
        compute_time_s: ArrayLike,
        payload_bits_by_rho: Mapping[float, ArrayLike],
        penalty_by_rho: Mapping[float, float | ArrayLike] | None = None,
    ) -> Decision:
        """Choose rho_t and b_t for this round from the a_k (Hz), T_cmp_k (s) and S_k(rho) (bits).

        Parameters
        ----------
        snr_per_hz : (K,) a_k = p_k g_k / N0, Hz.
        compute_time_s : (K,) T_cmp_k, seconds.
        payload_bits_by_rho : rho -> (K,) payload S_k(rho) in bits, one entry per grid value.
        penalty_by_rho : rho -> the clients' dropped-rank error at rho (scalar mean or (K,)),
            required in "dropped_error" mode.
        """
        a, t, payloads = self._inputs(snr_per_hz, compute_time_s, payload_bits_by_rho, self.rho_grid)
        pens = self._penalties(penalty_by_rho)
        q = self.queue_s
        best = None
        total_time, any_fallback = 0.0, False
        latency_by_rho = []
        for rho in self.rho_grid:
            res = self.allocator.solve(a, payloads[rho], t)
            total_time += res.solve_time_s
            any_fallback |= res.fallback
            latency_by_rho.append((rho, res.latency_s))
            # Q = 0 must not turn an infinite latency into NaN.
            obj = self.v * pens[rho] + (q * res.latency_s if q > 0 else 0.0)
            if best is None or obj < best[0] - 1e-12 * max(1.0, abs(best[0])):
                best = (obj, rho, res)
        obj, rho, res = best
        res, dropped, extra_time, extra_fb = self._apply_deadline(a, payloads[rho], t, res)
        return self._finish(
            rho,
            res,
            dropped,
            obj,
            pens[rho],
            total_time + extra_time,
            any_fallback or extra_fb,
            latency_by_rho,
        )


class FixedRhoScheduler(_Scheduler):
    """A fixed sparsification ratio with a given allocator (the "fixed" and "equal" schedulers).

    ``FixedRhoScheduler(rho, make_allocator("minmax", K, B))`` is the fixed-rho baseline with
    the min-max split; with ``make_allocator("equal", K, B)`` it is the equal-split baseline.
    Same ``decide`` / ``update`` / state interface as :class:`TsfaScheduler`; Q_t is
    tracked for the records when ``latency_budget_s`` is given and never used.

    Parameters
    ----------
    rho : in [0, 1).
    allocator : an :class:`~fedsim.tsfa.allocator.Allocator`.
    latency_budget_s : optional T_avg > 0, seconds (for the queue in the records).
    deadline_s : optional per-round hard deadline > 0, seconds.
    """

    kind = "fixed"

    def __init__(
        self,
        rho: float,
        allocator: Allocator,
        latency_budget_s: float | None = None,
        deadline_s: float | None = None,
    ) -> None:
        super().__init__(allocator, latency_budget_s, deadline_s)
        self.rho = _rho("method.rho", rho)

    def decide(
        self,
        snr_per_hz: ArrayLike,
        compute_time_s: ArrayLike,
        payload_bits_by_rho: Mapping[float, ArrayLike],
        penalty_by_rho: Mapping[float, float | ArrayLike] | None = None,
    ) -> Decision:
        """Allocate the band for this scheduler's rho (``penalty_by_rho`` is ignored)."""
        a, t, payloads = self._inputs(snr_per_hz, compute_time_s, payload_bits_by_rho, (self.rho,))
        res = self.allocator.solve(a, payloads[self.rho], t)
        lat_rho = [(self.rho, res.latency_s)]
        res2, dropped, extra_time, extra_fb = self._apply_deadline(a, payloads[self.rho], t, res)
        return self._finish(
            self.rho,
            res2,
            dropped,
            float("nan"),
            float("nan"),
            res.solve_time_s + extra_time,
            res.fallback or extra_fb,
            lat_rho,
        )
