"""Bandwidth allocator solve time per round: DPP re-solve, rebuild every round, reference solver.

TSFA (fedsim formulation), method.md section 4. For each K, clients are dropped once uniformly
in a 500 m disc (min 10 m), PL_dB = 128.1 + 37.6 log10(d_km), and every round draws Rayleigh
block fading (the system-model defaults: p = 23 dBm, N0 = -174 dBm/Hz, B = 20 MHz); payloads
are the SOFT upload of a rank-16 adapter at rho = 0.5 on 12 matrices of 768 x 768; compute
times are uniform in [0.1, 1] s. Per round and K it times

- dpp:        ``CvxpyAllocator`` built once, ``solve`` each round (Parameters updated only);
              the first solve (compilation) is reported apart as ``first_solve_s``;
- rebuild:    a new ``CvxpyAllocator`` every round, then ``solve`` (compiles every time);
- reference:  ``solve_reference`` (Lambert-W minimum bands, Brent's method on the deadline).

Times are of the whole call (status checks and fallbacks included), median and 90th percentile
over the rounds, both wall clock and process CPU time (the latter is less distorted when other
jobs share the CPUs). The JSON (default benchmarks/results/allocator.json) also
records fallbacks, the largest relative latency gap to the reference among non-fallback
solves, Clarabel's own median solve time, and the load average, because the numbers are only
as good as the machine was idle.

    python benchmarks/allocator.py [--sizes 10 50 200 1000] [--rounds 30] [--rebuild-rounds 10] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import cvxpy as cp
import numpy as np

from channels.rate import noise_psd_w_hz, snr_per_hz
from channels.units import db_to_linear, dbm_to_w
from fedsim.tsfa import CvxpyAllocator, solve_reference

BANDWIDTH_TOTAL_HZ = 20e6
GOALS_MEDIAN_S = {50: 5e-3, 1000: 50e-3}


def soft_payload_bits(rank: int = 16, rho: float = 0.5, d: int = 768, matrices: int = 12, q: int = 32) -> int:
    k = max(1, math.ceil((1.0 - rho) * rank - 1e-9))
    return matrices * (k * 2 * d * q + min(rank, k * math.ceil(math.log2(rank))))


def make_rounds(num_clients: int, rounds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng([seed, num_clients])
    radius = np.sqrt(rng.uniform(10.0**2, 500.0**2, num_clients))
    pl_db = 128.1 + 37.6 * np.log10(radius / 1000.0)
    tcmp = rng.uniform(0.1, 1.0, num_clients)
    payload = np.full(num_clients, float(soft_payload_bits()))
    out = []
    for _ in range(rounds):
        gain = db_to_linear(-pl_db) * rng.exponential(1.0, num_clients)
        out.append((snr_per_hz(dbm_to_w(23.0), gain, noise_psd_w_hz()), payload, tcmp))
    return out


class Timer:
    """Wall clock and process CPU time of a block; CPU time is what a busy shared machine distorts least."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> Timer:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall.append(time.perf_counter() - self._w)
        self.cpu.append(time.process_time() - self._c)

    def stats(self) -> dict:
        w, c = np.asarray(self.wall), np.asarray(self.cpu)
        return {
            "median_s": float(np.median(w)),
            "p90_s": float(np.percentile(w, 90)),
            "cpu_median_s": float(np.median(c)),
            "cpu_p90_s": float(np.percentile(c, 90)),
            "rounds": int(w.size),
        }


def bench_size(num_clients: int, rounds: int, rebuild_rounds: int, seed: int) -> list[dict]:
    data = make_rounds(num_clients, rounds + 1, seed)
    ref_lat, ref_timer = [], Timer()
    for a, s, t in data[1:]:
        with ref_timer:
            res = solve_reference(a, s, t, BANDWIDTH_TOTAL_HZ)
        ref_lat.append(res.latency_s)

    def gap(results: list) -> float | None:
        gaps = [abs(r.latency_s - ref) / ref for r, ref in zip(results, ref_lat, strict=False) if not r.fallback]
        return float(max(gaps)) if gaps else None

    alloc = CvxpyAllocator(num_clients, BANDWIDTH_TOTAL_HZ)
    t0 = time.perf_counter()
    alloc.solve(*data[0])  # compiles the parametric program once
    first_s = time.perf_counter() - t0
    dpp_timer, dpp_results, clarabel_s = Timer(), [], []
    for a, s, t in data[1:]:
        with dpp_timer:
            dpp_results.append(alloc.solve(a, s, t))
        if alloc.problem.solver_stats is not None and alloc.problem.solver_stats.solve_time is not None:
            clarabel_s.append(alloc.problem.solver_stats.solve_time)

    rb_timer, rb_results = Timer(), []
    for a, s, t in data[1 : 1 + rebuild_rounds]:
        with rb_timer:
            rb_results.append(CvxpyAllocator(num_clients, BANDWIDTH_TOTAL_HZ).solve(a, s, t))

    return [
        {
            "num_clients": num_clients,
            "method": "dpp",
            **dpp_timer.stats(),
            "first_solve_s": first_s,
            "clarabel_median_s": float(np.median(clarabel_s)) if clarabel_s else None,
            "fallbacks": sum(r.fallback for r in dpp_results),
            "fallback_statuses": sorted({r.status for r in dpp_results if r.fallback}),
            "max_rel_gap_to_reference": gap(dpp_results),
        },
        {
            "num_clients": num_clients,
            "method": "rebuild",
            **rb_timer.stats(),
            "fallbacks": sum(r.fallback for r in rb_results),
            "max_rel_gap_to_reference": gap(rb_results),
        },
        {"num_clients": num_clients, "method": "reference", **ref_timer.stats(), "fallbacks": 0},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200, 1000])
    parser.add_argument("--rounds", type=int, default=30, help="rounds timed for dpp and reference")
    parser.add_argument("--rebuild-rounds", type=int, default=10, help="rounds timed for rebuild (compiles)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/allocator.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    rows = []
    for k in args.sizes:
        rows.extend(bench_size(k, args.rounds, args.rebuild_rounds, args.seed))
    load_after = os.getloadavg()

    goals = {}
    for k, limit in GOALS_MEDIAN_S.items():
        row = next((r for r in rows if r["num_clients"] == k and r["method"] == "dpp"), None)
        if row is not None:
            goals[f"dpp_median_at_K{k}_le_{limit * 1e3:g}ms"] = {
                "wall": bool(row["median_s"] <= limit),
                "cpu": bool(row["cpu_median_s"] <= limit),
            }
    report = {
        "benchmark": "allocator solve time per round, TSFA (fedsim formulation)",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cvxpy": cp.__version__,
            "solver": "CLARABEL",
            "load_average_1_5_15_before": load_before,
            "load_average_1_5_15_after": load_after,
        },
        "settings": {
            "sizes": args.sizes,
            "rounds": args.rounds,
            "rebuild_rounds": args.rebuild_rounds,
            "seed": args.seed,
            "bandwidth_total_hz": BANDWIDTH_TOTAL_HZ,
            "payload_bits_per_client": soft_payload_bits(),
        },
        "results": rows,
        "goals": goals,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} ({os.cpu_count()} CPUs)")
    head = f"{'K':>5} {'method':>9} {'median ms':>10} {'p90 ms':>9} {'cpu med ms':>10} {'cpu p90 ms':>10}"
    print(f"{head} {'rounds':>6} {'fallbacks':>9} {'max gap':>9}")
    for r in rows:
        g = r.get("max_rel_gap_to_reference")
        gap_txt = f"{g:.1e}" if g is not None else "-"
        print(
            f"{r['num_clients']:>5} {r['method']:>9} {r['median_s'] * 1e3:>10.2f} {r['p90_s'] * 1e3:>9.2f} "
            f"{r['cpu_median_s'] * 1e3:>10.2f} {r['cpu_p90_s'] * 1e3:>10.2f} {r['rounds']:>6} "
            f"{r['fallbacks']:>9} {gap_txt:>9}"
        )
    for name, ok in goals.items():
        verdict = ", ".join(f"{kind} {'met' if met else 'NOT met'}" for kind, met in ok.items())
        print(f"goal {name}: {verdict}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
