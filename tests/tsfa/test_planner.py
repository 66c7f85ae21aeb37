"""Offline rank planner: largest feasible rank, the infeasible-budget message, argument checks."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from fedsim.tsfa import InfeasibleBudgetError, RankPlan, plan_rank
from tests.helpers.tsfa import BANDWIDTH_TOTAL_HZ, rayleigh_snr_per_hz, soft_payload_bits

RANKS = (2, 4, 8, 16, 32)
K = 8
DISTANCE_M = np.linspace(30.0, 150.0, K)
COMPUTE_S = np.linspace(0.1, 0.3, K)


def payload_for_rank(rank: int) -> np.ndarray:
    return np.full(K, float(soft_payload_bits(rank, rho=0.5)))


def sample_round(rng: np.random.Generator):
    return rayleigh_snr_per_hz(rng, DISTANCE_M), COMPUTE_S


def plan(budget_s: float, ranks=RANKS, num_samples: int = 20, seed: int = 0) -> RankPlan:
    return plan_rank(
        ranks,
        payload_for_rank,
        sample_round,
        budget_s,
        num_samples,
        np.random.default_rng(seed),
        bandwidth_total_hz=BANDWIDTH_TOTAL_HZ,
    )


@functools.cache
def unconstrained() -> RankPlan:
    return plan(1e6)


def test_chooses_the_largest_feasible_rank():
    table = unconstrained().rows_as_table()
    assert [r["rank"] for r in table] == list(RANKS)
    latency = [r["expected_latency_s"] for r in table]
    assert all(x < y for x, y in zip(latency, latency[1:], strict=False))  # same draws: monotone in payload
    assert all(r["feasible"] for r in table) and unconstrained().chosen_rank == 32
    budget = 0.5 * (latency[2] + latency[3])  # between rank 8 and rank 16
    p = plan(budget)
    assert p.chosen_rank == 8 and p.latency_budget_s == budget and p.num_samples == 20
    assert [r.feasible for r in p.rows] == [True, True, True, False, False]
    row = p.rows[2]
    assert row.payload_bits_total == K * soft_payload_bits(8, 0.5)
    assert row.payload_bits_per_client_mean == soft_payload_bits(8, 0.5)
    assert row.latency_ci95_s == pytest.approx(1.959963984540054 * row.latency_std_s / np.sqrt(20))
    assert set(table[0]) == {
        "rank",
        "payload_bits_total",
        "payload_bits_per_client_mean",
        "expected_latency_s",
        "latency_std_s",
        "latency_ci95_s",
        "feasible",
        "dropped_share",
    }


def test_infeasible_budget_names_the_smallest_feasible_budget():
    smallest = unconstrained().rows[0].expected_latency_s
    with pytest.raises(InfeasibleBudgetError) as err:
        plan(0.5 * smallest)
    assert isinstance(err.value, ValueError)
    assert err.value.smallest_feasible_budget_s == smallest
    assert f"{smallest:.6g} s (rank 2" in str(err.value)
    assert str(err.value).startswith(f"tsfa.latency_budget_s={0.5 * smallest!r}: no candidate rank meets it")
    assert len(err.value.rows) == len(RANKS)
    assert plan(smallest).chosen_rank == 2  # the named budget is indeed feasible


@pytest.mark.parametrize(
    ("ranks", "message"),
    [
        ([], r"tsfa.candidate_ranks=\[\]: must be non-empty"),
        ([4, 0], r"tsfa.candidate_ranks\[1\]=0: must be a positive integer"),
        ([2.5], r"tsfa.candidate_ranks\[0\]=2.5: must be a positive integer"),
        ([True], r"tsfa.candidate_ranks\[0\]=True: must be a positive integer"),
        ("4", r"tsfa.candidate_ranks='4': must be a non-empty list"),
    ],
)
def test_bad_ranks(ranks, message):
    with pytest.raises(ValueError, match=message):
        plan(1.0, ranks=ranks)


def test_bad_budget_and_samples():
    with pytest.raises(ValueError, match=r"tsfa.latency_budget_s=-1.0: must be > 0"):
        plan(-1.0)
    with pytest.raises(ValueError, match=r"tsfa.num_samples=0: must be a positive integer"):
        plan(1.0, num_samples=0)
    with pytest.raises(ValueError, match=r"payload_bits_for_rank\(2\) has shape \(3,\)"):
        plan_rank(
            [2],
            lambda r: np.ones(3),
            sample_round,
            1.0,
            2,
            np.random.default_rng(0),
            bandwidth_total_hz=BANDWIDTH_TOTAL_HZ,
        )


def test_duplicates_are_merged_and_the_plan_is_reproducible():
    a = plan(1e6, ranks=[8, 2, 8], seed=3)
    b = plan(1e6, ranks=[2, 8], seed=3)
    assert [r.rank for r in a.rows] == [2, 8] and a.rows == b.rows


def test_one_plan_answers_for_every_budget():
    """RankPlan.meets(T) is exactly whether planning again at T finds a feasible rank."""
    base = unconstrained()
    latencies = sorted(r.expected_latency_s for r in base.rows)
    for budget_s in (0.5 * latencies[0], latencies[0], 0.5 * (latencies[0] + latencies[1]), 2 * latencies[-1]):
        try:
            again = plan(budget_s)
        except InfeasibleBudgetError:
            again = None
        assert base.meets(budget_s) == (again is not None), budget_s
        if again is not None:  # the rows' latencies never depended on the budget
            assert [r.expected_latency_s for r in again.rows] == [r.expected_latency_s for r in base.rows]
