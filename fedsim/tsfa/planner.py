"""Offline stage of TSFA: choose the structural LoRA rank from channel statistics (fedsim formulation).

For each candidate rank r (default set {2, 4, 8, 16, 32}, docs/schedulers.md, TSFA) the expected
round latency with the optimal bandwidth split is estimated by Monte Carlo over the channel
distribution, at the payloads of a nominal rho (baked into ``payload_bits_for_rank``):

    E[T(r)] ~= (1/N) sum_{n=1..N} min_b max_k (T_cmp_k,n + S_k(r) / R_k,n(b_k))

and the largest r with E[T(r)] <= T_avg is chosen. The same N channel draws are used for
every rank (common random numbers), so the comparison between ranks carries no sampling noise
of its own. The optimal split comes from :func:`~fedsim.tsfa.allocator.solve_reference`
(exact; no cvxpy needed offline).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedsim.tsfa.allocator import AllocationResult, solve_reference
from fedsim.tsfa.controller import deadline_admission

__all__ = ["InfeasibleBudgetError", "RankPlan", "RankPlanRow", "plan_rank"]

_Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class RankPlanRow:
    """One candidate rank of the offline plan.

    Attributes
    ----------
    rank : int
        Candidate structural LoRA rank r.
    payload_bits_total : float
        sum_k S_k(r): the whole cell's uplink bits in one round, at the nominal rho.
    payload_bits_per_client_mean : float
        The same divided by K (mean bits per client per round).
    expected_latency_s : float
        Monte-Carlo mean of the optimal round latency, seconds.
    latency_std_s : float
        Sample standard deviation of the round latency over the draws, seconds.
    latency_ci95_s : float
        Half-width of the normal 95% confidence interval of the mean, 1.96 std / sqrt(N), s.
    feasible : bool
        expected_latency_s <= latency_budget_s (the point estimate).
    dropped_share : float
        Expected fraction of the round's clients dropped by the deadline (0 without one); the
        latencies above are then those of the admitted clients.
    """

    rank: int
    payload_bits_total: float
    payload_bits_per_client_mean: float
    expected_latency_s: float
    latency_std_s: float
    latency_ci95_s: float
    feasible: bool
    dropped_share: float = 0.0


def _table(rows: Sequence[RankPlanRow]) -> list[dict]:
    return [
        {
            "rank": r.rank,
            "payload_bits_total": r.payload_bits_total,
            "payload_bits_per_client_mean": r.payload_bits_per_client_mean,
            "expected_latency_s": r.expected_latency_s,
            "latency_std_s": r.latency_std_s,
            "latency_ci95_s": r.latency_ci95_s,
            "feasible": r.feasible,
            "dropped_share": r.dropped_share,
        }
        for r in rows
    ]


@dataclass(frozen=True)
class RankPlan:
    """The offline plan: one row per candidate rank and the chosen rank.

    Attributes
    ----------
    rows : tuple[RankPlanRow, ...]
        Sorted by rank.
    chosen_rank : int
        The largest feasible rank.
    latency_budget_s : float
        T_avg the rows were judged against, seconds.
    num_samples : int
        Monte-Carlo channel draws per rank (the same draws for every rank).
    """

    rows: tuple[RankPlanRow, ...]
    chosen_rank: int
    latency_budget_s: float
    num_samples: int

    def rows_as_table(self) -> list[dict]:
        """The rows as a list of plain dicts (JSON/CSV ready), sorted by rank."""
        return _table(self.rows)

    def meets(self, latency_budget_s: float) -> bool:
        """Whether some rank of these rows is feasible under another budget (expected latency <= it).

        The rows do not depend on the budget, so one plan answers for every budget of a sweep.
        """
        return any(r.expected_latency_s <= latency_budget_s for r in self.rows)


class InfeasibleBudgetError(ValueError):
    """No candidate rank meets the latency budget; ``smallest_feasible_budget_s`` would.

    Attributes
    ----------
    smallest_feasible_budget_s : float
        The smallest expected round latency in the table (the budget that makes it feasible).
    rows : tuple[RankPlanRow, ...]
        The full table, for printing.
    """

    def __init__(self, latency_budget_s: float, rows: Sequence[RankPlanRow]) -> None:
        best = min(rows, key=lambda r: r.expected_latency_s)
        self.smallest_feasible_budget_s = best.expected_latency_s
        self.rows = tuple(rows)
        super().__init__(
            f"tsfa.latency_budget_s={latency_budget_s!r}: no candidate rank meets it; the smallest feasible "
            f"budget is {best.expected_latency_s:.6g} s (rank {best.rank}, expected round latency "
            f"+- {best.latency_ci95_s:.2g} s at 95%)"
        )


def _check_ranks(candidate_ranks: Sequence[int]) -> list[int]:
    if isinstance(candidate_ranks, str | bytes) or not isinstance(candidate_ranks, Sequence | np.ndarray):
        raise ValueError(f"tsfa.candidate_ranks={candidate_ranks!r}: must be a non-empty list of positive integers")
    if len(candidate_ranks) == 0:
        raise ValueError(f"tsfa.candidate_ranks={list(candidate_ranks)!r}: must be non-empty")
    for i, r in enumerate(candidate_ranks):
        if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 1:
            raise ValueError(f"tsfa.candidate_ranks[{i}]={r!r}: must be a positive integer")
    return sorted({int(r) for r in candidate_ranks})


def _round_latency(
    a: np.ndarray,
    payload: np.ndarray,
    tcmp: np.ndarray,
    bandwidth_total_hz: float,
    allocate: Callable[..., AllocationResult],
    deadline_s: float | None,
) -> tuple[float, float]:
    """(optimal round latency of the admitted clients, share of clients dropped) for one draw."""
    res = allocate(a, payload, tcmp, bandwidth_total_hz)
    if deadline_s is None or res.latency_s <= deadline_s:
        return res.latency_s, 0.0
    dropped = deadline_admission(a, payload, tcmp, deadline_s, bandwidth_total_hz)
    if dropped.all():
        return 0.0, 1.0
    kept = ~dropped
    res = allocate(a[kept], payload[kept], tcmp[kept], bandwidth_total_hz)
    return res.latency_s, float(dropped.mean())


def plan_rank(
    candidate_ranks: Sequence[int],
    payload_bits_for_rank: Callable[[int], np.ndarray],
    sample_round: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]],
    latency_budget_s: float,
    num_samples: int,
    rng: np.random.Generator,
    *,
    bandwidth_total_hz: float,
    allocate: Callable[..., AllocationResult] = solve_reference,
    deadline_s: float | None = None,
) -> RankPlan:
    """Pick the largest LoRA rank whose expected optimal round latency meets T_avg.

    Parameters
    ----------
    candidate_ranks : positive integers (sorted and de-duplicated).
    payload_bits_for_rank : r -> (K,) payload S_k(r) in bits at the nominal rho (e.g. the SOFT
        payload of docs/methods.md summed over the adapted matrices).
    sample_round : rng -> (a (K,) in Hz, compute_time_s (K,) in s): one draw of the channel
        distribution (and compute times); called ``num_samples`` times, once per draw.
    latency_budget_s : T_avg > 0, seconds.
    num_samples : N >= 1 Monte-Carlo draws.
    rng : the only source of randomness (passed to ``sample_round``).
    bandwidth_total_hz : B_total > 0, Hz.
    allocate : the min-max allocator, ``(a, S, T_cmp, B_total) -> AllocationResult``
        (default: the exact reference solver).
    deadline_s : the per-round hard deadline d (None: none). Each draw then admits the clients
        that can all meet d (:func:`~fedsim.tsfa.controller.deadline_admission`, as the run
        does), and its latency is that of the admitted clients, at most d: the expectation is
        finite even under Rayleigh fading, whose unbounded upload times give the plan without
        a deadline a heavy tail.

    Returns
    -------
    RankPlan with ``chosen_rank`` the largest feasible rank.

    Raises
    ------
    ValueError
        Bad arguments (naming the key and value).
    InfeasibleBudgetError
        No rank is feasible; the message gives the smallest feasible budget.
    """
    ranks = _check_ranks(candidate_ranks)
    budget = float(latency_budget_s) if isinstance(latency_budget_s, numbers.Real) else float("nan")
    if isinstance(latency_budget_s, bool) or not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"tsfa.latency_budget_s={latency_budget_s!r}: must be > 0")
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or num_samples < 1:
        raise ValueError(f"tsfa.num_samples={num_samples!r}: must be a positive integer")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng={rng!r}: must be a numpy.random.Generator")

    draws = []
    for _ in range(int(num_samples)):
        a, tcmp = sample_round(rng)
        draws.append((np.asarray(a, dtype=float), np.asarray(tcmp, dtype=float)))

    rows = []
    for r in ranks:
        payload = np.asarray(payload_bits_for_rank(r), dtype=float)
        if payload.shape != draws[0][0].shape:
            raise ValueError(f"payload_bits_for_rank({r}) has shape {payload.shape}: must match a {draws[0][0].shape}")
        outcomes = [_round_latency(a, payload, tcmp, bandwidth_total_hz, allocate, deadline_s) for a, tcmp in draws]
        lat = np.array([latency for latency, _ in outcomes])
        mean = float(lat.mean())
        std = float(lat.std(ddof=1)) if lat.size > 1 else 0.0
        rows.append(
            RankPlanRow(
                rank=r,
                payload_bits_total=float(payload.sum()),
                payload_bits_per_client_mean=float(payload.mean()),
                expected_latency_s=mean,
                latency_std_s=std,
                latency_ci95_s=_Z95 * std / math.sqrt(lat.size),
                feasible=bool(mean <= budget),
                dropped_share=float(np.mean([share for _, share in outcomes])),
            )
        )
    feasible = [row.rank for row in rows if row.feasible]
    if not feasible:
        raise InfeasibleBudgetError(latency_budget_s, rows)
    return RankPlan(rows=tuple(rows), chosen_rank=max(feasible), latency_budget_s=budget, num_samples=int(num_samples))
