"""TSFA's offline stage wired to a run: the LoRA rank chosen from channel statistics (no Flower here).

The math (Monte-Carlo expected optimal latency per candidate rank) is
:func:`fedsim.tsfa.plan_rank`; this module feeds it the run's cell, payload formula and data sizes.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.core.config import Config
from fedsim.core.methods import get_method
from fedsim.core.seeding import SERVER, rng
from fedsim.tsfa import RankPlan, plan_rank


def plan_structural_rank(
    cfg: Config, shapes: dict[str, tuple[int, ...]], wireless: Any, num_samples: list[int], flops_per_sample: float
) -> RankPlan:
    """The largest candidate rank whose expected optimal latency meets T_avg.

    Monte-Carlo over the configured channel distribution: each draw samples the round's
    clients and a fresh channel state from the planner's own random stream (never the run's
    realisations), and the band is split optimally (exact reference solver) for the method's
    payload at ``tsfa.nominal_rho``; with ``tsfa.deadline_s`` the clients that cannot meet it
    are dropped first, as in the run. Raises ``InfeasibleBudgetError`` naming the smallest
    feasible budget.
    """
    m = cfg.num_sampled
    method = get_method(cfg.run.method)

    def sample_round(rng_: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        ids = sorted(int(c) for c in rng_.choice(cfg.run.clients, size=m, replace=False))
        a = wireless.sample_snr_per_hz(rng_, ids)
        return a, wireless.compute_times_s(ids, [num_samples[c] for c in ids], flops_per_sample)

    def bits_for_rank(rank: int) -> np.ndarray:
        bits = method.adapter_bits(shapes, rank, cfg.tsfa.nominal_rho, cfg.lora.value_bits, cfg.lora.quant_bits)
        return np.full(m, float(bits))

    return plan_rank(
        cfg.tsfa.candidate_ranks,
        bits_for_rank,
        sample_round,
        cfg.tsfa.latency_budget_s,
        cfg.tsfa.plan_samples,
        rng(cfg.run.seed, 0, SERVER, "rank-plan"),
        bandwidth_total_hz=cfg.channel.bandwidth_hz,
        deadline_s=cfg.tsfa.deadline_s or None,
    )


def plan_for(cfg: Config, wireless: Any, host: Any) -> RankPlan:
    """The offline plan of this run; ``host`` is a :class:`fedsim.core.training.WorkloadHost` (or a stub)."""
    shapes = {k: v.shape for k, v in host.initial_state(cfg).items()}
    return plan_structural_rank(cfg, shapes, wireless, host.partition_sizes(cfg), host.flops_per_sample(cfg))


def write_plan(plan: RankPlan, path: Path) -> None:
    """The plan's table (one row per candidate rank) as CSV."""
    rows = plan.rows_as_table()
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
