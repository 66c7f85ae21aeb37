"""Solver failures fall back and are recorded; bad inputs raise one-line errors naming key and value."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.tsfa import (
    CvxpyAllocator,
    FixedRhoScheduler,
    TsfaScheduler,
    equal_split,
    make_allocator,
    proportional_split,
    solve_reference,
)
from tests.helpers.tsfa import BANDWIDTH_TOTAL_HZ, random_instance

B = BANDWIDTH_TOTAL_HZ


def _valid(res, a, s, t):
    assert res.bandwidth_hz.shape == a.shape and np.all(np.isfinite(res.bandwidth_hz))
    assert np.all(res.bandwidth_hz >= 0) and res.bandwidth_hz.sum() <= B * (1 + 1e-9)
    assert np.isfinite(res.latency_s)


def test_missing_solver_falls_back_to_reference():
    a, s, t = random_instance(np.random.default_rng(0), 6)
    alloc = CvxpyAllocator(6, B, solver="NOT_A_SOLVER")
    res = alloc.solve(a, s, t)
    assert res.fallback and res.method == "reference"
    assert res.status.startswith("cvxpy:SolverError(") and res.status.endswith("-> reference:optimal")
    _valid(res, a, s, t)
    assert res.latency_s == pytest.approx(solve_reference(a, s, t, B).latency_s, rel=1e-12)
    assert alloc.num_fallbacks == 1 and alloc.num_solves == 1


def test_non_optimal_status_falls_back():
    """An iteration limit gives a status other than optimal: it is not trusted."""
    a, s, t = random_instance(np.random.default_rng(1), 12)
    res = CvxpyAllocator(12, B, solver_options={"max_iter": 2}).solve(a, s, t)
    assert res.fallback and res.method == "reference"
    assert res.status.startswith("cvxpy:") and "optimal ->" not in res.status
    _valid(res, a, s, t)


def test_reference_failure_falls_back_to_equal_split():
    def broken(*args, **kwargs):
        raise RuntimeError("injected")

    a, s, t = random_instance(np.random.default_rng(2), 5)
    res = CvxpyAllocator(5, B, solver="NOT_A_SOLVER", reference=broken).solve(a, s, t)
    assert res.fallback and res.method == "equal"
    assert "-> reference:RuntimeError(injected) -> equal" in res.status
    _valid(res, a, s, t)
    np.testing.assert_allclose(res.bandwidth_hz, equal_split(a, s, t, B).bandwidth_hz)


def test_fallback_is_recorded_by_the_controller():
    a, s, t = random_instance(np.random.default_rng(3), 4)
    ctrl = TsfaScheduler(CvxpyAllocator(4, B, solver="NOT_A_SOLVER"), 1.0, 1.0, penalty="rho")
    dec = ctrl.decide(a, t, {r: s * (1 - r) for r in ctrl.rho_grid})
    assert dec.fallback and "reference:optimal" in dec.solver_status


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bandwidth_total_hz": -1.0}, r"bandwidth_total_hz=-1.0: must be a finite number > 0"),
        ({"bandwidth_total_hz": float("nan")}, r"bandwidth_total_hz=nan"),
        ({"a": [1e9, 0.0]}, r"snr_per_hz\[1\]=0.0: must be finite and > 0"),
        ({"a": [1e9, np.inf]}, r"snr_per_hz\[1\]=inf"),
        ({"s": [1e6, -1.0]}, r"payload_bits\[1\]=-1.0: must be finite and >= 0"),
        ({"t": [np.nan, 0.0]}, r"compute_time_s\[0\]=nan"),
        ({"s": [1e6]}, r"payload_bits has shape \(1,\): must match snr_per_hz \(2,\)"),
        ({"a": []}, r"snr_per_hz has shape \(0,\)"),
    ],
)
@pytest.mark.parametrize("fn", [solve_reference, equal_split, proportional_split])
def test_bad_allocation_inputs(fn, kwargs, message):
    args = {"a": [1e9, 1e10], "s": [1e6, 2e6], "t": [0.1, 0.0], "bandwidth_total_hz": B} | kwargs
    with pytest.raises(ValueError, match=message):
        fn(args["a"], args["s"], args["t"], args["bandwidth_total_hz"])


def test_cvxpy_allocator_input_errors_are_raised_not_swallowed():
    alloc = CvxpyAllocator(3, B)
    with pytest.raises(ValueError, match=r"payload_bits\[2\]=-5.0"):
        alloc.solve([1e9, 1e9, 1e9], [1e6, 1e6, -5.0], [0, 0, 0])
    with pytest.raises(ValueError, match=r"num_clients=0: must be an integer >= 1"):
        CvxpyAllocator(0, B)
    with pytest.raises(ValueError, match=r"bandwidth_total_hz=0: must be a finite number > 0"):
        make_allocator("reference", 3, 0)


def _alloc():
    return make_allocator("reference", 2, B)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"latency_budget_s": -1}, r"^tsfa.latency_budget_s=-1: must be > 0$"),
        ({"latency_budget_s": 0.0}, r"^tsfa.latency_budget_s=0.0: must be > 0$"),
        ({"latency_budget_s": float("inf")}, r"^tsfa.latency_budget_s=inf: must be a finite number$"),
        ({"latency_budget_s": True}, r"^tsfa.latency_budget_s=True: must be a finite number$"),
        ({"v": -0.5}, r"^tsfa.v=-0.5: must be >= 0$"),
        ({"v": "big"}, r"^tsfa.v='big': must be a finite number$"),
        ({"rho_grid": []}, r"^tsfa.rho_grid=\[\]: must be non-empty$"),
        ({"rho_grid": [0.0, 1.0]}, r"^tsfa.rho_grid\[1\]=1.0: must be in \[0, 1\)$"),
        ({"rho_grid": [-0.1]}, r"^tsfa.rho_grid\[0\]=-0.1: must be in \[0, 1\)$"),
        ({"rho_grid": "0.5"}, r"^tsfa.rho_grid='0.5': must be a non-empty list"),
        ({"penalty": "mse"}, r"^tsfa.penalty='mse': must be one of dropped_error, rho$"),
        ({"deadline_s": 0}, r"^tsfa.deadline_s=0: must be > 0$"),
    ],
)
def test_bad_controller_parameters(kwargs, message):
    args = {"latency_budget_s": 1.0, "v": 1.0} | kwargs
    with pytest.raises(ValueError, match=message):
        TsfaScheduler(_alloc(), **args)


def test_bad_fixed_scheduler_and_decide_inputs():
    with pytest.raises(ValueError, match=r"^method.rho=1: must be in \[0, 1\)$"):
        FixedRhoScheduler(1, _alloc())
    with pytest.raises(ValueError, match=r"^allocator='minmax': must have a solve"):
        FixedRhoScheduler(0.0, "minmax")
    ctrl = TsfaScheduler(_alloc(), 1.0, 1.0, rho_grid=(0.0, 0.5))
    a, t = [1e9, 1e10], [0.1, 0.2]
    with pytest.raises(ValueError, match=r"payload_bits_by_rho has no entry for rho=0.5"):
        ctrl.decide(a, t, {0.0: [1e6, 1e6]}, {0.0: 0.0, 0.5: 1.0})
    with pytest.raises(ValueError, match=r"penalty_by_rho=None: tsfa.penalty='dropped_error' needs"):
        ctrl.decide(a, t, {0.0: [1e6, 1e6], 0.5: [5e5, 5e5]})
    with pytest.raises(ValueError, match=r"penalty_by_rho\[0.5\]=-1.0: must be finite and >= 0"):
        ctrl.decide(a, t, {0.0: [1e6, 1e6], 0.5: [5e5, 5e5]}, {0.0: 0.0, 0.5: -1.0})
    with pytest.raises(ValueError, match=r"payload_bits_by_rho\[0.5\] has shape \(3,\)"):
        ctrl.decide(a, t, {0.0: [1e6, 1e6], 0.5: [5e5, 5e5, 1.0]}, {0.0: 0.0, 0.5: 1.0})
    with pytest.raises(ValueError, match=r"^round_latency_s=-1.0: must be >= 0$"):
        ctrl.update(-1.0)
    with pytest.raises(ValueError, match=r"scheduler state keys="):
        ctrl.load_state_dict({"queue_s": 1.0})
    bad = ctrl.state_dict() | {"queue_s": -2.0}
    with pytest.raises(ValueError, match=r"state.queue_s=-2.0"):
        ctrl.load_state_dict(bad)
