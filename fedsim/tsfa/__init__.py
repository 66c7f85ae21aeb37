"""TSFA (fedsim formulation): bandwidth allocation, Lyapunov control of rho, offline rank planning.

Pure NumPy / SciPy / cvxpy: nothing here imports flwr, ray or torch, so the math is tested
directly. The equations are in each function's docstring.

- :mod:`fedsim.tsfa.allocator`: min-max latency bandwidth split for one round (cvxpy DPP
  problem compiled once, exact reference solver, heuristics, registry ``ALLOCATORS``).
- :mod:`fedsim.tsfa.controller`: online stage, virtual queue and drift-plus-penalty choice of
  rho and band (:class:`TsfaScheduler`), fixed-rho baselines.
- :mod:`fedsim.tsfa.planner`: offline stage, Monte-Carlo choice of the LoRA rank.
"""

from fedsim.tsfa.allocator import (
    ALLOCATORS,
    DEFAULT_CLARABEL_OPTIONS,
    AllocationResult,
    Allocator,
    CvxpyAllocator,
    ReferenceAllocator,
    SplitAllocator,
    client_latency_s,
    equal_split,
    make_allocator,
    min_bandwidth_hz,
    proportional_split,
    solve_reference,
)
from fedsim.tsfa.controller import (
    DEFAULT_RHO_GRID,
    PENALTY_MODES,
    Decision,
    FixedRhoScheduler,
    TsfaScheduler,
)
from fedsim.tsfa.planner import InfeasibleBudgetError, RankPlan, RankPlanRow, plan_rank

__all__ = [
    "ALLOCATORS",
    "DEFAULT_CLARABEL_OPTIONS",
    "DEFAULT_RHO_GRID",
    "PENALTY_MODES",
    "AllocationResult",
    "Allocator",
    "CvxpyAllocator",
    "Decision",
    "FixedRhoScheduler",
    "InfeasibleBudgetError",
    "TsfaScheduler",
    "RankPlan",
    "RankPlanRow",
    "ReferenceAllocator",
    "SplitAllocator",
    "client_latency_s",
    "equal_split",
    "make_allocator",
    "min_bandwidth_hz",
    "plan_rank",
    "proportional_split",
    "solve_reference",
]
