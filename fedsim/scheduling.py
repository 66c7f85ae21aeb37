"""The round scheduler and the offline rank plan, wired to the run configuration (no Flower here).

``tsfa.scheduler`` picks how each round's sparsification ratio rho_t and bandwidth split b_t are
chosen (TSFA, fedsim formulation; the math lives in :mod:`fedsim.tsfa`):

- ``equal``: rho fixed (``soft.rho``; 0 for ``ideal``), B_total / K each (the default),
- ``fixed``: rho fixed, min-max latency split (cvxpy, reference fallback),
- ``tsfa``: Lyapunov drift-plus-penalty choice of rho from ``tsfa.rho_grid`` and the min-max
  split every round, under the long-term budget ``tsfa.latency_budget_s``; the LoRA rank is
  first chosen offline by :func:`plan_structural_rank`.

Signalling order under ``tsfa`` (what a deployment would do): the server broadcasts the global
adapter; clients train locally and report a few scalars (|D_k| and the SOFT dropped-rank error
at each rho of the grid); the server observes the channels g_k,t and its queue Q_t, decides
rho_t and b_t, and sends them; clients sparsify at rho_t and upload. Under ``equal`` and
``fixed`` rho is known in advance, so training and upload are one message, and the band is
split once the payloads are known.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fedsim.config import Config
from fedsim.soft import keep_count, payload_bits
from fedsim.tsfa import (
    AllocationResult,
    FixedRhoScheduler,
    LyapunovController,
    RankPlan,
    make_allocator,
    plan_rank,
)


class PerSizeAllocator:
    """One allocator per number of clients (a DPP problem is compiled for a fixed K).

    Rounds can have fewer clients than sampled (faults, timeouts); each size is built once.
    """

    def __init__(self, name: str, bandwidth_total_hz: float):
        self.name, self.bandwidth_total_hz = name, bandwidth_total_hz
        self._by_size: dict[int, object] = {}

    def solve(self, a: np.ndarray, payload_bits: np.ndarray, compute_time_s: np.ndarray) -> AllocationResult:
        k = len(a)
        if k not in self._by_size:
            self._by_size[k] = make_allocator(self.name, k, self.bandwidth_total_hz)
        return self._by_size[k].solve(a, payload_bits, compute_time_s)


def build_scheduler(cfg: Config) -> FixedRhoScheduler | LyapunovController:
    t = cfg.tsfa
    deadline = t.deadline_s or None
    if t.scheduler == "tsfa":
        allocator = PerSizeAllocator("minmax", cfg.channel.bandwidth_hz)
        return LyapunovController(allocator, t.latency_budget_s, t.v, t.rho_grid, t.penalty, deadline)
    allocator = PerSizeAllocator("minmax" if t.scheduler == "fixed" else "equal", cfg.channel.bandwidth_hz)
    return FixedRhoScheduler(cfg.fixed_rho, allocator, t.latency_budget_s, deadline)


def adapter_bits(shapes: dict[str, tuple[int, ...]], rank: int, rho: float, value_bits: int, method: str) -> int:
    """Uplink bits of one client's adapter at LoRA rank ``rank`` and ratio ``rho``.

    Per adapted matrix S = k (d_in + d_out) q + min(r, k ceil(log2 r)) (method.md section 3;
    ``svd`` sends ranks 0..k-1 without index bits; ``ideal`` sends all r ranks, no index),
    plus the dense extras (e.g. a classification head) at q bits per value.
    """
    total = 0
    for name, shape in shapes.items():
        if ".lora_A." in name:
            d_in, d_out = shape[1], shapes[name.replace(".lora_A.", ".lora_B.")][0]
            if method == "ideal":
                total += rank * (d_in + d_out) * value_bits
            elif method == "svd":
                total += min(keep_count(rank, rho), d_in, d_out) * (d_in + d_out) * value_bits
            else:
                total += payload_bits(d_in, d_out, rank, keep_count(rank, rho), value_bits)
        elif ".lora_B." not in name:
            total += int(np.prod(shape)) * value_bits
    return total


def plan_structural_rank(
    cfg: Config, shapes: dict[str, tuple[int, ...]], wireless, num_samples: list[int], flops_per_sample: float
) -> RankPlan:
    """TSFA offline stage: the largest candidate rank whose expected optimal latency meets T_avg.

    Monte-Carlo over the configured channel distribution: each draw samples the round's
    clients and a fresh channel state from the planner's own random stream (never the run's
    realisations), and the band is split optimally (exact reference solver) for the SOFT payload
    at ``tsfa.nominal_rho``. Raises ``InfeasibleBudgetError`` naming the smallest feasible budget.
    """
    m = cfg.num_sampled

    def sample_round(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        ids = sorted(int(c) for c in rng.choice(cfg.run.clients, size=m, replace=False))
        a = wireless.sample_snr_per_hz(rng, ids)
        return a, wireless.compute_times_s(ids, [num_samples[c] for c in ids], flops_per_sample)

    def bits_for_rank(rank: int) -> np.ndarray:
        bits = adapter_bits(shapes, rank, cfg.tsfa.nominal_rho, cfg.lora.value_bits, cfg.run.method)
        return np.full(m, float(bits))

    from fedsim.seeding import SERVER, rng

    return plan_rank(
        cfg.tsfa.candidate_ranks,
        bits_for_rank,
        sample_round,
        cfg.tsfa.latency_budget_s,
        cfg.tsfa.plan_samples,
        rng(cfg.run.seed, 0, SERVER, "rank-plan"),
        bandwidth_total_hz=cfg.channel.bandwidth_hz,
    )


def write_plan(plan: RankPlan, path: Path) -> None:
    rows = plan.rows_as_table()
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
