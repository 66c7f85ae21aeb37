"""Min-max latency bandwidth allocation for one FDMA round: TSFA (fedsim formulation).

Problem (docs/schedulers.md (TSFA) and docs/wireless.md). Client k has a_k = p_k g_k / N0 in Hz
(``channels.rate.snr_per_hz``), a payload of S_k bits and a compute time T_cmp_k in seconds.
With b_k Hz its upload rate is R_k(b_k) = b_k log2(1 + a_k / b_k) bit/s and its latency
T_k = T_cmp_k + S_k / R_k(b_k). The round allocation solves

    minimise_b   max_k  T_cmp_k + S_k / R_k(b_k)
    subject to   sum_k b_k <= B_total,  b >= 0.

R_k is increasing and concave in b_k with R_k -> a_k / ln 2 as b_k -> infinity, so each
client's latency is a decreasing convex function of its band and the problem is convex.
Clients with S_k = 0 need no band: they get 0 Hz and latency T_cmp_k.

Solvers (all return an :class:`AllocationResult` whose latencies are recomputed from the band
with ``channels.rate``, never taken from a solver's internal deadline):

- :class:`CvxpyAllocator` ("minmax"): one cvxpy problem in DPP form, compiled once and re-solved
  every round by updating Parameter values; its status is checked on every solve and a failure
  falls back to :func:`solve_reference`, then to :func:`equal_split`.
- :func:`solve_reference` ("reference"): an independent solver, root finding on the deadline tau
  with the per-client minimum band in closed form (Lambert W).
- :func:`equal_split` ("equal") and :func:`proportional_split` ("proportional"): heuristics.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import cvxpy as cp
import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import brentq
from scipy.special import lambertw

from channels.rate import shannon_rate_bps, upload_time_s

LN2 = math.log(2.0)

__all__ = [
    "ALLOCATORS",
    "AllocationResult",
    "Allocator",
    "CvxpyAllocator",
    "ReferenceAllocator",
    "SplitAllocator",
    "client_latency_s",
    "equal_split",
    "make_allocator",
    "min_bandwidth_hz",
    "proportional_split",
    "solve_reference",
]


# --------------------------------------------------------------------------------------------
# Result type and shared NumPy helpers
# --------------------------------------------------------------------------------------------


def _frozen(x: ArrayLike) -> np.ndarray:
    out = np.array(x, dtype=float)
    out.flags.writeable = False
    return out


@dataclass(frozen=True)
class AllocationResult:
    """One round's bandwidth allocation: TSFA (fedsim formulation).

    Attributes
    ----------
    bandwidth_hz : (K,) float array, read-only
        Band b_k per client in Hz; b >= 0 and sum_k b_k <= B_total (= B_total for every
        method when at least one client has a payload).
    latency_s : float
        Round latency max_k T_k in seconds, computed in NumPy from ``bandwidth_hz``.
    per_client_latency_s : (K,) float array, read-only
        T_k = T_cmp_k + S_k / (b_k log2(1 + a_k / b_k)) in seconds (T_cmp_k when S_k = 0).
    status : str
        "optimal" when the named method succeeded; otherwise the chain of what happened, e.g.
        "cvxpy:optimal_inaccurate -> reference:optimal".
    solve_time_s : float
        Wall-clock seconds of the whole call, fallbacks included.
    fallback : bool
        True when the primary method failed and another produced ``bandwidth_hz``.
    method : str
        The method that produced ``bandwidth_hz``: "cvxpy", "reference", "equal" or
        "proportional".
    """

    bandwidth_hz: np.ndarray
    latency_s: float
    per_client_latency_s: np.ndarray
    status: str
    solve_time_s: float
    fallback: bool
    method: str

    def as_dict(self) -> dict:
        """Plain JSON types (lists and floats) for round records."""
        return {
            "bandwidth_hz": self.bandwidth_hz.tolist(),
            "latency_s": float(self.latency_s),
            "per_client_latency_s": self.per_client_latency_s.tolist(),
            "status": self.status,
            "solve_time_s": float(self.solve_time_s),
            "fallback": bool(self.fallback),
            "method": self.method,
        }


def _rate_bps(bandwidth_hz: np.ndarray, snr_per_hz: np.ndarray) -> np.ndarray:
    # channels.rate takes (p, g, N0); a_k = p g / N0 is the same with p = a_k, g = 1, N0 = 1.
    return shannon_rate_bps(bandwidth_hz, snr_per_hz, 1.0, 1.0)


def client_latency_s(
    bandwidth_hz: ArrayLike, snr_per_hz: ArrayLike, payload_bits: ArrayLike, compute_time_s: ArrayLike
) -> np.ndarray:
    """Per-client round latency T_k = T_cmp_k + S_k / R_k(b_k), in seconds.

    R_k(b) = b log2(1 + a_k / b) (``channels.rate.shannon_rate_bps``); the upload time is
    ``channels.rate.upload_time_s`` (0 when S_k = 0, +inf when S_k > 0 and b_k = 0).

    Parameters
    ----------
    bandwidth_hz : (K,) band per client, Hz.
    snr_per_hz : (K,) a_k = p_k g_k / N0, Hz.
    payload_bits : (K,) S_k, bits.
    compute_time_s : (K,) T_cmp_k, seconds.

    Returns
    -------
    (K,) latency in seconds.
    """
    b = np.asarray(bandwidth_hz, dtype=float)
    rate = _rate_bps(b, np.asarray(snr_per_hz, dtype=float))
    return np.asarray(compute_time_s, dtype=float) + upload_time_s(payload_bits, rate)


def min_bandwidth_hz(snr_per_hz: ArrayLike, rate_bps: ArrayLike, newton_steps: int = 1) -> np.ndarray:
    """Smallest band b (Hz) with b log2(1 + a / b) = r: the inverse of the FDMA Shannon rate.

    With x = b / a and m = r ln 2 / a the equation is x ln(1 + 1/x) = m, whose left side rises
    from 0 to 1 on x in (0, inf). For m < 1, v = 1 + 1/x solves ln v = m (v - 1), so

        v = -W_{-1}(-m e^{-m}) / m,     b = a / (v - 1),

    with W_{-1} the lower branch of the Lambert W function, polished by ``newton_steps`` Newton
    steps on x ln(1 + 1/x) = m. Near saturation (m > 0.999) W_{-1} sits at its branch point and
    loses digits, so there u = 1/x solves 1 - m = 1 - ln(1 + u)/u by its power series instead.
    For m >= 1 the rate exceeds the saturation rate a / ln 2 and no finite band suffices: +inf.

    Parameters
    ----------
    snr_per_hz : (K,) a_k > 0, Hz.
    rate_bps : (K,) required rate r_k >= 0, bit/s.

    Returns
    -------
    (K,) band in Hz (0 where r = 0, +inf where r >= a / ln 2).
    """
    a = np.asarray(snr_per_hz, dtype=float)
    r = np.asarray(rate_bps, dtype=float)
    m = r * LN2 / a
    ok = (m > 0) & (m < 1)
    all_ok = bool(ok.all())
    mm = m if all_ok else np.where(ok, m, 0.5)
    with np.errstate(all="ignore"):
        w = lambertw(-mm * np.exp(-mm), k=-1).real
        x = mm / (-w - mm)  # = 1 / (v - 1) with v = -w / m
        if not (x > 0).all():
            x = np.where(x > 0, x, 1.0)  # NaN and the trivial branch (w = -m) fail x > 0
        for _ in range(newton_steps):
            lg = np.log1p(1.0 / x)
            xn = x - (x * lg - mm) / (lg - 1.0 / (1.0 + x))
            x = xn if (xn > 0).all() else np.where(xn > 0, xn, 0.5 * x)
    near = ok & (m > 1.0 - 1e-3) if (m > 1.0 - 1e-3).any() else None
    if near is not None and near.any():
        # Near saturation Lambert W sits at its branch point and x ln(1 + 1/x) is flat: solve
        # d = 1 - m = D(u), u = 1/x, with D(u) = 1 - ln(1 + u)/u = u/2 - u^2/3 + u^3/4 - ...
        # (series to u^6: truncation < u^7 / 8 < 1e-20 for u <= 2e-3).
        d = 1.0 - m[near]
        u = 2.0 * d
        for _ in range(4):
            dd = u * (1 / 2 - u * (1 / 3 - u * (1 / 4 - u * (1 / 5 - u * (1 / 6 - u / 7)))))
            dp = 1 / 2 - u * (2 / 3 - u * (3 / 4 - u * (4 / 5 - u * (5 / 6 - u * 6 / 7))))
            u = u - (dd - d) / dp
        x = np.array(x, dtype=float, copy=True)
        x[near] = 1.0 / u
    out = a * x
    if not all_ok:
        out = np.where(ok, out, np.where(r <= 0, 0.0, np.inf))
    return out


def _check_inputs(
    snr_per_hz: ArrayLike,
    payload_bits: ArrayLike,
    compute_time_s: ArrayLike,
    bandwidth_total_hz: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Validate and convert; raise ValueError naming the key and the value."""
    bt = _check_bandwidth(bandwidth_total_hz)
    a = np.atleast_1d(np.asarray(snr_per_hz, dtype=float))
    s = np.atleast_1d(np.asarray(payload_bits, dtype=float))
    t = np.atleast_1d(np.asarray(compute_time_s, dtype=float))
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"snr_per_hz has shape {a.shape}: must be a non-empty (K,) array")
    for name, arr in (("payload_bits", s), ("compute_time_s", t)):
        if arr.shape != a.shape:
            raise ValueError(f"{name} has shape {arr.shape}: must match snr_per_hz {a.shape}")
    _check_elements("snr_per_hz", a, positive=True)
    _check_elements("payload_bits", s, positive=False)
    _check_elements("compute_time_s", t, positive=False)
    return a, s, t, bt


def _check_bandwidth(bandwidth_total_hz: float) -> float:
    try:
        bt = float(bandwidth_total_hz)
    except (TypeError, ValueError):
        raise ValueError(f"bandwidth_total_hz={bandwidth_total_hz!r}: must be a finite number > 0") from None
    if not (math.isfinite(bt) and bt > 0):
        raise ValueError(f"bandwidth_total_hz={bandwidth_total_hz!r}: must be a finite number > 0")
    return bt


def _check_num_clients(num_clients: int) -> int:
    if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer) or num_clients < 1:
        raise ValueError(f"num_clients={num_clients!r}: must be an integer >= 1")
    return int(num_clients)


def _check_elements(name: str, arr: np.ndarray, positive: bool) -> None:
    bad = ~np.isfinite(arr) | ((arr <= 0) if positive else (arr < 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        rule = "finite and > 0" if positive else "finite and >= 0"
        raise ValueError(f"{name}[{i}]={float(arr[i])!r}: must be {rule}")


def _result(
    b: np.ndarray,
    a: np.ndarray,
    s: np.ndarray,
    t: np.ndarray,
    status: str,
    t0: float,
    fallback: bool,
    method: str,
) -> AllocationResult:
    lat = client_latency_s(b, a, s, t)
    return AllocationResult(
        bandwidth_hz=_frozen(b),
        latency_s=float(lat.max()),
        per_client_latency_s=_frozen(lat),
        status=status,
        solve_time_s=time.perf_counter() - t0,
        fallback=fallback,
        method=method,
    )


def _deadline_bands_hz(a: np.ndarray, s: np.ndarray, t: np.ndarray, deadline_s: float) -> np.ndarray:
    """Smallest bands (Hz) with which every client finishes by ``deadline_s``: b_k(tau).

        b_k(tau) = min_bandwidth_hz(a_k, S_k / (tau - T_cmp_k))        (+inf when tau <= T_cmp_k)

    For clients with S_k > 0 (the caller passes only those). sum_k b_k(tau) <= B_total iff the
    deadline tau is feasible, which is what :func:`solve_reference` finds the root of and what
    :class:`CvxpyAllocator` uses to polish and to certify its solutions.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        need_bps = np.where(deadline_s > t, s / (deadline_s - t), np.inf)
    return min_bandwidth_hz(a, need_bps)


def _spread_to_total(b: np.ndarray, active: np.ndarray, bandwidth_total_hz: float) -> np.ndarray:
    """Scale the active clients' bands so that they sum to B_total; inactive clients get 0 Hz.

    Scaling by a factor >= 1 only shortens every upload, so leftover band is never wasted; a
    factor slightly < 1 removes a solver's feasibility tolerance.
    """
    out = np.where(active, np.maximum(b, 0.0), 0.0)
    total = out.sum()
    if total > 0:
        out = out * (bandwidth_total_hz / total)
    return out


# --------------------------------------------------------------------------------------------
# Heuristics
# --------------------------------------------------------------------------------------------


def _equal_band(s: np.ndarray, bt: float) -> np.ndarray:
    active = s > 0
    n = int(active.sum())
    return np.where(active, bt / max(n, 1), 0.0)


def equal_split(
    snr_per_hz: ArrayLike, payload_bits: ArrayLike, compute_time_s: ArrayLike, bandwidth_total_hz: float
) -> AllocationResult:
    """Equal split: b_k = B_total / K_a for the K_a clients with a payload, 0 Hz for the others.

    Parameters
    ----------
    snr_per_hz : (K,) a_k = p_k g_k / N0, Hz.
    payload_bits : (K,) S_k >= 0, bits.
    compute_time_s : (K,) T_cmp_k >= 0, seconds.
    bandwidth_total_hz : B_total > 0, Hz.
    """
    t0 = time.perf_counter()
    a, s, t, bt = _check_inputs(snr_per_hz, payload_bits, compute_time_s, bandwidth_total_hz)
    return _result(_equal_band(s, bt), a, s, t, "heuristic", t0, False, "equal")


def _proportional_band(a: np.ndarray, s: np.ndarray, bt: float) -> np.ndarray:
    active = s > 0
    n = int(active.sum())
    if n == 0:
        return np.zeros_like(a)
    eq = bt / n
    se = _rate_bps(np.full_like(a, eq), a) / eq  # log2(1 + a_k K_a / B_total), bit/s/Hz
    w = np.where(active, s / se, 0.0)
    return w * (bt / w.sum())


def proportional_split(
    snr_per_hz: ArrayLike, payload_bits: ArrayLike, compute_time_s: ArrayLike, bandwidth_total_hz: float
) -> AllocationResult:
    """Band proportional to payload over spectral efficiency at an equal split.

        se_k = log2(1 + a_k K_a / B_total)          [bit/s/Hz]
        b_k  = B_total (S_k / se_k) / sum_j (S_j / se_j)

    with K_a the number of clients with a payload (the others get 0 Hz). If every client kept
    the spectral efficiency it has at an equal split, this would equalise the upload times;
    it ignores compute times. It is also the scaling point of :class:`CvxpyAllocator`.

    Parameters
    ----------
    snr_per_hz : (K,) a_k = p_k g_k / N0, Hz.
    payload_bits : (K,) S_k >= 0, bits.
    compute_time_s : (K,) T_cmp_k >= 0, seconds.
    bandwidth_total_hz : B_total > 0, Hz.
    """
    t0 = time.perf_counter()
    a, s, t, bt = _check_inputs(snr_per_hz, payload_bits, compute_time_s, bandwidth_total_hz)
    return _result(_proportional_band(a, s, bt), a, s, t, "heuristic", t0, False, "proportional")


# --------------------------------------------------------------------------------------------
# Reference solver
# --------------------------------------------------------------------------------------------


def solve_reference(
    snr_per_hz: ArrayLike,
    payload_bits: ArrayLike,
    compute_time_s: ArrayLike,
    bandwidth_total_hz: float,
    rtol: float = 1e-9,
) -> AllocationResult:
    """Exact min-max allocation by root finding on the deadline tau: TSFA (fedsim formulation).

    For a deadline tau, client k (S_k > 0) needs the rate r_k = S_k / (tau - T_cmp_k), hence at
    least the band b_k(tau) = :func:`min_bandwidth_hz` (a_k, r_k) (+inf when tau <= T_cmp_k or
    r_k >= a_k / ln 2). b_k(tau) is decreasing in tau, and tau is feasible iff

        h(tau) = sum_k b_k(tau) - B_total <= 0.

    The optimum tau* is the root of h, bracketed by

        tau_lo = max(max_{S_k=0} T_cmp_k, max_{S_k>0} [T_cmp_k + S_k / R_k(B_total)])
        tau_hi = min(equal-split latency, proportional-split latency) over the S_k > 0 clients

    (h(tau_lo) >= 0 unless tau_lo is already feasible, h(tau_hi) <= 0), and found with Brent's
    method (bisection-safeguarded, scipy ``brentq``) to relative tolerance ``rtol`` in tau, on
    the feasible side of the root, so the latency is at most tau* (1 + 2 rtol).
    Leftover band at tau* is spread over the clients in proportion to b_k(tau*) so that
    sum_k b_k = B_total. Independent of cvxpy: the oracle of the property tests.

    Parameters
    ----------
    snr_per_hz : (K,) a_k = p_k g_k / N0 > 0, Hz.
    payload_bits : (K,) S_k >= 0, bits.
    compute_time_s : (K,) T_cmp_k >= 0, seconds.
    bandwidth_total_hz : B_total > 0, Hz.
    rtol : relative tolerance on tau (floored at 4 machine epsilons).

    Returns
    -------
    AllocationResult with method "reference" and status "optimal".

    Raises
    ------
    ValueError
        Invalid inputs (the message names the key and the value).
    RuntimeError
        A numerical failure (non-finite bracket, no sign change); :class:`CvxpyAllocator`
        catches it and falls back to an equal split.
    """
    t0 = time.perf_counter()
    a, s, t, bt = _check_inputs(snr_per_hz, payload_bits, compute_time_s, bandwidth_total_hz)
    active = s > 0
    if not active.any():
        return _result(np.zeros_like(a), a, s, t, "optimal", t0, False, "reference")
    aa, sa, ta = a[active], s[active], t[active]
    floor_s = float(t[~active].max()) if (~active).any() else 0.0

    def bands(tau: float) -> np.ndarray:
        return _deadline_bands_hz(aa, sa, ta, tau)

    def h(tau: float) -> float:
        return float(bands(tau).sum() - bt)

    tau_lo = max(floor_s, float(np.max(ta + sa / _rate_bps(np.full_like(aa, bt), aa))))
    # Both splits are feasible, so the better of the two bounds tau* from above.
    tau_eq = float(np.max(ta + sa / _rate_bps(np.full_like(aa, bt / aa.size), aa)))
    tau_prop = float(np.max(ta + sa / _rate_bps(_proportional_band(aa, sa, bt), aa)))
    tau_hi = max(tau_lo, min(tau_eq, tau_prop))
    if not (math.isfinite(tau_lo) and math.isfinite(tau_hi)):
        raise RuntimeError(f"reference: non-finite deadline bracket [{tau_lo}, {tau_hi}]")
    if h(tau_lo) <= 0:
        tau = tau_lo
    else:
        # Rounding can leave h(tau_hi) a hair above 0 when one client dominates: nudge upward.
        step = max(tau_hi - tau_lo, abs(tau_hi)) * 1e-13
        for _ in range(200):
            if h(tau_hi) <= 0:
                break
            tau_hi += step
            step *= 2.0
        else:
            raise RuntimeError("reference: the equal-split deadline is not feasible (no sign change)")
        rt = max(float(rtol), 4 * np.finfo(float).eps)
        tau = brentq(h, tau_lo, tau_hi, xtol=1e-300, rtol=rt, maxiter=500)
        # Brent's estimate may sit on the infeasible side of the root (h > 0), where scaling
        # the bands down to B_total lengthens the uploads by more than rtol; the root is within
        # rt * tau of it, so step up to the feasible side, and the latency is <= tau* (1 + 2 rt).
        step = rt * abs(tau)
        while h(tau) > 0 and tau < tau_hi:
            tau = min(tau + step, tau_hi)
            step *= 2.0
    b = np.zeros_like(a)
    b[active] = bands(tau)
    if not np.all(np.isfinite(b)):
        raise RuntimeError(f"reference: non-finite band at tau={tau!r}")
    return _result(_spread_to_total(b, active, bt), a, s, t, "optimal", t0, False, "reference")


# --------------------------------------------------------------------------------------------
# cvxpy allocator (DPP, compiled once)
# --------------------------------------------------------------------------------------------


def _polish(b: np.ndarray, a: np.ndarray, s: np.ndarray, t: np.ndarray, bt: float) -> np.ndarray:
    """One closed-form step toward equal latencies; returns the better of ``b`` and the step.

    With U = max_k T_k(b), each active client needs only b_k(U) = min_bandwidth_hz(a_k,
    S_k / (U - T_cmp_k)) <= b_k to finish by U; spreading those bands to B_total shortens every
    upload, and most of all where the solver left band idle in a client that cannot use it (a
    client near its saturation rate, whose band the interior-point tolerances do not pin).
    """
    active = s > 0
    lat = client_latency_s(b, a, s, t)
    u = float(lat.max())
    if not np.isfinite(u):
        return b
    need = np.zeros_like(b)
    need[active] = _deadline_bands_hz(a[active], s[active], t[active], u)
    if not (np.all(np.isfinite(need)) and need.sum() > 0):
        return b
    step = _spread_to_total(need, active, bt)
    return step if client_latency_s(step, a, s, t).max() < u else b


def _certified(a: np.ndarray, s: np.ndarray, t: np.ndarray, bt: float, latency_s: float, rtol: float) -> bool:
    """Whether latency_s <= (1 + rtol) tau* is proven, without the solver's word for it.

    tau_c = latency_s / (1 + rtol) is infeasible, hence tau* > tau_c, when some client's compute
    time alone reaches it (tau_c <= max_k T_cmp_k) or when the least bands that meet it exceed
    the total band: sum_k b_k(tau_c) > B_total (b_k(tau) as in :func:`solve_reference`).
    """
    tau_c = latency_s / (1.0 + rtol)
    if tau_c <= float(t.max()):
        return True
    active = s > 0
    need = _deadline_bands_hz(a[active], s[active], t[active], tau_c)
    return bool(need.sum() > bt)  # +inf (a rate beyond saturation) counts as infeasible


# Measured with cvxpy 1.9 / Clarabel 0.11 in the benchmarks/allocator.py cell (radius 500 m,
# Rayleigh fading, 20 MHz). Clarabel's defaults (max step 0.99, tolerances 1e-8) stopped short
# (InsufficientProgress, MaxIterations, AlmostSolved) in 8%, 22% and 40% of the rounds at
# K = 60, 200, 1000. The hard rounds are those where one client in a deep fade is near its
# saturation rate a_k / ln 2 and takes most of the band (70-99%): its rate then depends on its
# band only at second order (y ln(1 + c/y) = c - c^2 / (2 y) + ..., c ~ 1e-4), its dual
# multiplier is ~1e8 times the others', and the duality gap stalls at 1e-6..1e-5 although the
# primal latency is already within ~1e-5 of the optimum. That is why a solve is accepted on the
# optimality certificate of CvxpyAllocator (a bound computed outside the solver), not on
# Clarabel's status alone. With the certificate, a gap tolerance of 1e-6 (the polish step and
# the certificate tighten the result) and a maximal step of 0.95 need 25-30 iterations (median,
# K = 1000) instead of 35; a smaller static regularisation with looser iterative refinement
# (most of an iteration's time went to refinement solves) cuts the time per iteration by ~15%.
# accept_unknown makes cvxpy hand back Clarabel's last iterate on InsufficientProgress so that
# it can be certified too.
DEFAULT_CLARABEL_OPTIONS: dict = {
    "max_step_fraction": 0.95,
    "tol_gap_abs": 1e-6,
    "tol_gap_rel": 1e-6,
    "tol_feas": 1e-7,
    "static_regularization_constant": 1e-10,
    "iterative_refinement_reltol": 1e-10,
    "iterative_refinement_abstol": 1e-10,
    "accept_unknown": True,
}

# A second attempt, only when the first is not certified: the shorter maximal step of the old
# defaults. On 700 rounds at K = 1000 (seeds 0-6) either setting alone left 1-3 rounds of a
# bad seed uncertified, never the same ones; together none (benchmarks/allocator.py).
CLARABEL_RETRY_OPTIONS: dict = {"max_step_fraction": 0.9}


class _DppProblem:
    """The DPP problem of :class:`CvxpyAllocator` for one K: variables, Parameters, problem."""

    def __init__(self, k: int) -> None:
        self.y = cp.Variable(k, name="y")
        self.ent = cp.Variable(k, name="ent")
        self.tau = cp.Variable(name="tau")
        self.log_beta = cp.Parameter(k, nonneg=True, name="log_beta")
        self.p = cp.Parameter(k, nonneg=True, name="p")
        self.q = cp.Parameter(k, nonneg=True, name="q")
        self.w = cp.Parameter(k, nonneg=True, name="w")
        self.w_tcmp = cp.Parameter(k, name="w_tcmp")
        self.share = cp.Parameter(k, nonneg=True, name="share")
        self.idle = cp.Parameter(k, nonneg=True, name="idle")
        self.idle_cap = cp.Parameter(nonneg=True, name="idle_cap")
        self.tfloor = cp.Parameter(name="tfloor")
        y, ent, tau = self.y, self.ent, self.tau
        # The cones are written out (rather than rel_entr and inv_pos, which cvxpy expands with
        # an extra variable and an inequality per client each): 6 rows and 2 variables per
        # client instead of 9 and 3, a third less work per interior-point iteration.
        rate_nats = cp.multiply(self.log_beta, y) - ent
        slack = cp.multiply(self.w, tau) - self.w_tcmp
        constraints = [
            # ent >= rel_entr(y, p y + q), i.e. (-ent, y, p y + q) in K_exp; implies y >= 0
            cp.constraints.ExpCone(-ent, y, cp.multiply(self.p, y) + self.q),
            # rate_nats * slack >= 1 with both >= 0 (rotated cone): rate_nats >= inv_pos(slack)
            cp.SOC(rate_nats + slack, cp.vstack([np.full(k, 2.0), rate_nats - slack]), axis=0),
            self.share @ y <= 1,
            # bounds the idle clients' y (no band cost, so nothing else does); for the active
            # ones y_k <= 1 / zhat_k already follows from the band row
            self.idle @ y <= self.idle_cap,
            tau >= self.tfloor,
        ]
        self.problem = cp.Problem(cp.Minimize(tau), constraints)
        if not self.problem.is_dpp():  # pragma: no cover - a construction bug, not a runtime state
            raise AssertionError("CvxpyAllocator: the problem is not DPP")

    def set_parameters(self, a: np.ndarray, s: np.ndarray, t: np.ndarray, bt: float) -> tuple[np.ndarray, float]:
        """Scale around the proportional split; return its band shares and latency t_ref."""
        active = s > 0
        b_prop = _proportional_band(a, s, bt)
        t_ref = float(client_latency_s(b_prop, a, s, t).max())
        share = b_prop / bt
        safe_share = np.where(active, share, 1.0)
        c = np.where(active, a / (bt * safe_share), math.exp(2.0) - 1.0)
        beta = 1.0 + c
        w = np.where(active, bt * safe_share * t_ref / (np.where(active, s, 1.0) * LN2), 0.0)
        self.log_beta.value = np.log(beta)
        self.p.value = 1.0 / beta
        self.q.value = c / beta
        self.w.value = w
        self.w_tcmp.value = np.where(active, w * t / t_ref, -1.0)
        self.share.value = share
        self.idle.value = np.where(active, 0.0, 1.0)
        self.idle_cap.value = 2.0 * float((~active).sum()) + 1.0  # > 0: the row keeps an interior
        self.tfloor.value = float(t.max()) / t_ref
        return share, t_ref


class CvxpyAllocator:
    """Min-max allocation as one DPP cvxpy problem, compiled once: TSFA (fedsim formulation).

    Formulation. Let zhat_k be the proportional-split share of the band
    (:func:`proportional_split`; 0 for clients without a payload) and t_ref its round latency
    (an upper bound on the optimum). Every solve rescales the problem around that point, so all
    numbers are O(1) (time in units of t_ref, band in units of B_total zhat_k):

        y_k   = b_k / (B_total zhat_k)                   (variable, ~1 at the scaling point)
        tau'  = tau / t_ref                              (variable, <= 1 at the optimum)
        c_k   = a_k / (B_total zhat_k)                   (SNR at the scaling point)
        beta_k = 1 + c_k,  L_k = ln beta_k,  p_k = 1 / beta_k,  q_k = c_k / beta_k
        w_k   = B_total zhat_k t_ref / (S_k ln 2),  wT_k = w_k T_cmp_k / t_ref

    The rate in nats per scaled band is

        y ln(1 + c / y) = L y - rel_entr(y, p y + q)      (exact: (y + c)/beta = p y + q)

    and the problem, with Parameters L, p, q, w, wT, zhat, idle, idle_cap, tfloor, is

        minimise    tau'
        subject to  (-e_k, y_k, p_k y_k + q_k) in K_exp        (e_k >= rel_entr(y_k, p_k y_k + q_k))
                    r_k s_k >= 1,  r_k, s_k >= 0 (a 3-row SOC)  with  r_k = L_k y_k - e_k,
                                                                     s_k = w_k tau' - wT_k
                    sum_k zhat_k y_k <= 1,   sum_k idle_k y_k <= idle_cap,   tau' >= tfloor.

    The rate constraint r_k >= 1 / s_k is  R_k(b_k) >= S_k / (tau - T_cmp_k)  divided through
    by B_total zhat_k / ln 2. Every Parameter multiplies a variable or stands alone, so the
    problem is DPP (``problem.is_dpp()``) and cvxpy caches its compiled program.

    Relation to the textbook form: it substitutes x_k = b_k / a_k, rate
    a_k (-rel_entr(x_k, x_k + 1)) / ln 2 and band constraint a @ x <= B_total. This is the same
    perspective-of-log rate with the variable rescaled by c_k (y_k = c_k x_k) and the log split
    as ln(beta) plus a rel_entr whose arguments stay O(1). The literal x-form puts 1/SNR (60-100
    dB of spread) into x and the band coefficients: on gains spread over 60 dB Clarabel then
    often reported ``optimal_inaccurate`` and its "optimal" latencies were off by up to 1% at
    K = 5, 20% at K = 20 and over 100% at K = 200; this form stays within 1e-6 of the reference
    (K = 2..1000, status optimal).

    Clients with S_k = 0 are inactive: zhat_k = 0 (no band cost), idle_k = 1 (0 for active
    clients; idle_cap = 2 K_idle + 1 bounds their y), w_k = 0, wT_k = -1 and
    (L, p, q) = (2, e^-2, 1 - e^-2), which makes their constraint slack at y_k = 1; they get
    0 Hz and the constraint tau >= tfloor = max_k T_cmp_k keeps their compute time in the round.

    Polish and certificate. The solver's band is first polished in closed form: with U its
    round latency (recomputed in NumPy), every client gets the least band that meets U,
    b_k(U) = :func:`min_bandwidth_hz` (a_k, S_k / (U - T_cmp_k)), spread to B_total; the better
    of the two allocations is kept. The result is then accepted only with a certificate of
    optimality that does not trust the solver: with tau_c = U / (1 + ``certify_rtol``),

        tau_c <= max_k T_cmp_k   or   sum_k b_k(tau_c) > B_total

    proves that no allocation finishes by tau_c, so U <= (1 + certify_rtol) tau*. Clarabel's
    ``optimal_inaccurate`` (and, with ``accept_unknown``, an InsufficientProgress iterate) is
    accepted when certified, which is what removes the fallbacks at K = 1000 (see
    ``DEFAULT_CLARABEL_OPTIONS``); its status is recorded as "certified:<solver status>".
    An uncertified solution, a status without a solution, an exception, a non-finite band, or a
    latency worse than the proportional split falls back to ``reference`` (default
    :func:`solve_reference`) and then to :func:`equal_split`; the result records
    ``fallback=True`` and the chain in ``status``. ``solve`` never raises for a numerical
    reason (invalid inputs raise ValueError).

    Parameters
    ----------
    num_clients : K >= 1, compiled at construction. A call with another K compiles (once) and
        caches a problem for it, up to ``max_cached_sizes`` sizes; masking clients with payload 0
        keeps one compiled problem.
    bandwidth_total_hz : B_total > 0, Hz.
    solver : cvxpy solver name (default "CLARABEL"). A name that is not installed makes every
        solve fail and fall back: the simplest way to test the fallback.
    solver_options : keyword arguments for the solver; None uses
        ``DEFAULT_CLARABEL_OPTIONS`` for Clarabel and the solver's defaults otherwise.
    reference : the first fallback, with :func:`solve_reference`'s signature (a test hook).
    certify_rtol : relative optimality a solution must be certified to (default 1e-5: at a 20 s
        round, 0.2 ms); the cost is one Lambert-W evaluation per client.
    """

    method = "cvxpy"
    max_cached_sizes = 8

    def __init__(
        self,
        num_clients: int,
        bandwidth_total_hz: float,
        *,
        solver: str = "CLARABEL",
        solver_options: dict | None = None,
        reference: Callable[..., AllocationResult] = solve_reference,
        certify_rtol: float = 1e-5,
        max_polish_steps: int = 8,
        retry_options: dict | None = None,
    ) -> None:
        self.num_clients = _check_num_clients(num_clients)
        self.bandwidth_total_hz = _check_bandwidth(bandwidth_total_hz)
        self.solver = str(solver)
        if solver_options is None:
            solver_options = dict(DEFAULT_CLARABEL_OPTIONS) if self.solver.upper() == "CLARABEL" else {}
        self.solver_options = dict(solver_options)
        self.reference = reference
        self.certify_rtol = float(certify_rtol)
        self.max_polish_steps = int(max_polish_steps)
        if retry_options is None:
            retry_options = dict(CLARABEL_RETRY_OPTIONS) if self.solver.upper() == "CLARABEL" else {}
        self.retry_options = dict(retry_options)
        self.num_solves = 0
        self.num_fallbacks = 0
        self._compiled: dict[int, _DppProblem] = {}
        self._dpp(self.num_clients)

    @property
    def problem(self) -> cp.Problem:
        """The compiled cvxpy problem for ``num_clients``."""
        return self._compiled[self.num_clients].problem

    def problem_for(self, num_clients: int) -> cp.Problem:
        """The compiled problem for K clients (built and cached on first use)."""
        return self._dpp(num_clients).problem

    def is_dpp(self) -> bool:
        """Whether the compiled problem follows DPP (it always does; exposed for tests)."""
        return self.problem.is_dpp()

    def _dpp(self, num_clients: int) -> _DppProblem:
        if num_clients not in self._compiled:
            if len(self._compiled) >= self.max_cached_sizes:
                oldest = next(k for k in self._compiled if k != self.num_clients)
                del self._compiled[oldest]
            self._compiled[num_clients] = _DppProblem(num_clients)
        return self._compiled[num_clients]

    def solve(self, snr_per_hz: ArrayLike, payload_bits: ArrayLike, compute_time_s: ArrayLike) -> AllocationResult:
        """Allocate the band for one round (re-solves the compiled problem).

        Parameters
        ----------
        snr_per_hz : (K,) a_k = p_k g_k / N0 > 0, Hz.
        payload_bits : (K,) S_k >= 0, bits (0: inactive, no band).
        compute_time_s : (K,) T_cmp_k >= 0, seconds.

        Returns
        -------
        AllocationResult (method "cvxpy", or the fallback's method with ``fallback=True``).
        """
        t0 = time.perf_counter()
        bt = self.bandwidth_total_hz
        a, s, t, _ = _check_inputs(snr_per_hz, payload_bits, compute_time_s, bt)
        self.num_solves += 1
        active = s > 0
        n_active = int(active.sum())
        if n_active <= 1:  # nothing to optimise: the single active client takes the whole band
            return _result(_equal_band(s, bt), a, s, t, "optimal", t0, False, self.method)
        chain = []
        for options in self._attempts():
            try:
                res, status = self._attempt(options, a, s, t, t0)
            except Exception as exc:  # noqa: BLE001 - any solver failure must fall back, never crash a run
                res, status = None, f"{type(exc).__name__}({str(exc)[:120]})"
            if res is not None:
                return res
            chain.append(f"cvxpy:{status}")
        return self._fallback(a, s, t, " -> ".join(chain), t0)

    def _attempts(self) -> list[dict]:
        """Solver options per attempt: the configured ones, then ``retry_options`` on top."""
        if not self.retry_options:
            return [self.solver_options]
        return [self.solver_options, {**self.solver_options, **self.retry_options}]

    def _attempt(
        self, options: dict, a: np.ndarray, s: np.ndarray, t: np.ndarray, t0: float
    ) -> tuple[AllocationResult | None, str]:
        """One solve of the compiled problem, polished and certified; (None, status) on failure."""
        bt = self.bandwidth_total_hz
        active = s > 0
        dpp = self._dpp(a.size)
        share, t_ref = dpp.set_parameters(a, s, t, bt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cvxpy warns on inaccurate solutions; we certify instead
            dpp.problem.solve(solver=self.solver, warm_start=False, **options)  # history-free: a resume repeats it
        status = str(dpp.problem.status)
        if status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            return None, status
        y = dpp.y.value
        if y is None or not np.all(np.isfinite(y)):
            return None, f"{status}_without_finite_solution"
        b = _spread_to_total(bt * share * y, active, bt)
        # Polish at least once; more steps only where the solver stopped short of the
        # certificate (a near-saturated client holding most of the band).
        steps, certified = 0, False
        while not certified and steps < max(1, self.max_polish_steps):
            b = _polish(b, a, s, t, bt)
            steps += 1
            lat = float(client_latency_s(b, a, s, t).max())
            certified = _certified(a, s, t, bt, lat, self.certify_rtol)
        if not certified:
            return None, f"{status}_not_certified"
        if not (np.isfinite(lat) and lat <= t_ref * (1 + 1e-6)):
            return None, f"{status}_but_worse_than_proportional"
        label = cp.OPTIMAL if status == cp.OPTIMAL else f"certified:{status}"
        return _result(b, a, s, t, label, t0, False, self.method), status

    def _fallback(self, a: np.ndarray, s: np.ndarray, t: np.ndarray, chain: str, t0: float) -> AllocationResult:
        self.num_fallbacks += 1
        bt = self.bandwidth_total_hz
        try:
            ref = self.reference(a, s, t, bt)
            b = np.asarray(ref.bandwidth_hz, dtype=float)
            if b.shape == a.shape and np.all(np.isfinite(b)) and np.all(b >= 0) and b.sum() <= bt * (1 + 1e-9):
                return _result(b, a, s, t, f"{chain} -> reference:{ref.status}", t0, True, ref.method)
            chain = f"{chain} -> reference:invalid_band"
        except Exception as exc:  # noqa: BLE001
            chain = f"{chain} -> reference:{type(exc).__name__}({str(exc)[:120]})"
        return _result(_equal_band(s, bt), a, s, t, f"{chain} -> equal", t0, True, "equal")


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


class Allocator(Protocol):
    """What a scheduler needs: ``solve(a, payload_bits, compute_time_s) -> AllocationResult``."""

    num_clients: int
    bandwidth_total_hz: float

    def solve(self, snr_per_hz: ArrayLike, payload_bits: ArrayLike, compute_time_s: ArrayLike) -> AllocationResult: ...


@dataclass
class ReferenceAllocator:
    """:func:`solve_reference` behind the :class:`Allocator` interface (any K per call)."""

    num_clients: int
    bandwidth_total_hz: float
    rtol: float = 1e-9
    method: str = field(default="reference", init=False)

    def __post_init__(self) -> None:
        self.num_clients = _check_num_clients(self.num_clients)
        self.bandwidth_total_hz = _check_bandwidth(self.bandwidth_total_hz)

    def solve(self, snr_per_hz: ArrayLike, payload_bits: ArrayLike, compute_time_s: ArrayLike) -> AllocationResult:
        """Exact min-max allocation (no fallback: a RuntimeError here is a bug report)."""
        return solve_reference(snr_per_hz, payload_bits, compute_time_s, self.bandwidth_total_hz, self.rtol)


@dataclass
class SplitAllocator:
    """A closed-form split ("equal" or "proportional") behind the :class:`Allocator` interface (any K)."""

    num_clients: int
    bandwidth_total_hz: float
    method: str = "equal"

    def __post_init__(self) -> None:
        self.num_clients = _check_num_clients(self.num_clients)
        self.bandwidth_total_hz = _check_bandwidth(self.bandwidth_total_hz)
        if self.method not in ("equal", "proportional"):
            raise ValueError(f"method={self.method!r}: must be 'equal' or 'proportional'")

    def solve(self, snr_per_hz: ArrayLike, payload_bits: ArrayLike, compute_time_s: ArrayLike) -> AllocationResult:
        """The heuristic split for one round."""
        fn = equal_split if self.method == "equal" else proportional_split
        return fn(snr_per_hz, payload_bits, compute_time_s, self.bandwidth_total_hz)


ALLOCATORS: dict[str, Callable[[int, float], Allocator]] = {
    "minmax": lambda num_clients, bandwidth_total_hz: CvxpyAllocator(num_clients, bandwidth_total_hz),
    "reference": lambda num_clients, bandwidth_total_hz: ReferenceAllocator(num_clients, bandwidth_total_hz),
    "equal": lambda num_clients, bandwidth_total_hz: SplitAllocator(num_clients, bandwidth_total_hz, "equal"),
    "proportional": lambda num_clients, bandwidth_total_hz: SplitAllocator(
        num_clients, bandwidth_total_hz, "proportional"
    ),
}
"""Allocator factories by name: ``ALLOCATORS[name](num_clients, bandwidth_total_hz)``."""


def make_allocator(name: str, num_clients: int, bandwidth_total_hz: float) -> Allocator:
    """Build a registered allocator; an unknown name raises ValueError listing the known names."""
    try:
        factory = ALLOCATORS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"tsfa.allocator={name!r}: unknown allocator; known: {', '.join(sorted(ALLOCATORS))}"
        ) from None
    return factory(num_clients, bandwidth_total_hz)
