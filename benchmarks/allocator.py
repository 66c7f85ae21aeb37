"""Bandwidth allocator solve time per round: DPP re-solve, rebuild every round, reference solver.

TSFA (fedsim formulation), docs/schedulers.md, TSFA. For each K, clients are dropped once uniformly
in a 500 m disc (min 10 m), PL_dB = 128.1 + 37.6 log10(d_km), and every round draws Rayleigh
block fading (the system-model defaults: p = 23 dBm, N0 = -174 dBm/Hz, B = 20 MHz); payloads
are the SOFT upload of a rank-16 adapter at rho = 0.5 on 12 matrices of 768 x 768; compute
times are uniform in [0.1, 1] s. Per round and K it times

- dpp:        ``CvxpyAllocator`` built once, ``solve`` each round (Parameters updated only);
              the first solve (compilation) is reported apart as ``first_solve_s``;
- baseline:   (with ``--baseline REV``) the same, with ``fedsim/tsfa/allocator.py`` as it was
              at git revision REV, solved on the same draws in the same loop (the two
              alternate which goes first), so that the ratio dpp / baseline is measured side by
              side on a shared, noisy machine;
- rebuild:    a new ``CvxpyAllocator`` every round, then ``solve`` (compiles every time);
- reference:  ``solve_reference`` (Lambert-W minimum bands, Brent's method on the deadline).

Times are of the whole call (status checks, polish, certificate and fallbacks included): mean,
median and 95th percentile over the rounds, both wall clock and process CPU time (the latter is
less distorted when other jobs share the CPUs). The JSON (default
benchmarks/results/allocator.json, and a CSV next to it) also records fallbacks, the largest
relative latency gap to the reference among non-fallback solves, Clarabel's own median solve
time and iteration count, and the load average, because the numbers are only as good as the
machine was idle.

    python benchmarks/allocator.py [--sizes 10 50 200 1000] [--rounds 100] [--rebuild-rounds 3]
                                   [--baseline REV] [--out PATH]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
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
            "mean_s": float(w.mean()),
            "median_s": float(np.median(w)),
            "p95_s": float(np.percentile(w, 95)),
            "cpu_mean_s": float(c.mean()),
            "cpu_median_s": float(np.median(c)),
            "cpu_p95_s": float(np.percentile(c, 95)),
            "rounds": int(w.size),
        }


def load_baseline(rev: str):
    """The allocator module as it was at git revision ``rev`` (imported under another name)."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(
        ["git", "show", f"{rev}:fedsim/tsfa/allocator.py"], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="allocator_baseline_")) / "allocator_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("allocator_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _solver_stat(alloc, name: str) -> float | None:
    stats = alloc.problem.solver_stats
    value = getattr(stats, name, None) if stats is not None else None
    return float(value) if value is not None else None


def bench_size(num_clients: int, rounds: int, rebuild_rounds: int, seed: int, baseline=None) -> list[dict]:
    data = make_rounds(num_clients, rounds + 1, seed)
    ref_lat, ref_timer = [], Timer()
    for a, s, t in data[1:]:
        with ref_timer:
            res = solve_reference(a, s, t, BANDWIDTH_TOTAL_HZ)
        ref_lat.append(res.latency_s)

    def gap(results: list) -> float | None:
        gaps = [abs(r.latency_s - ref) / ref for r, ref in zip(results, ref_lat, strict=False) if not r.fallback]
        return float(max(gaps)) if gaps else None

    contenders = {"dpp": CvxpyAllocator(num_clients, BANDWIDTH_TOTAL_HZ)}
    if baseline is not None:
        contenders["baseline"] = baseline.CvxpyAllocator(num_clients, BANDWIDTH_TOTAL_HZ)
    first_s = {}
    for name, alloc in contenders.items():
        t0 = time.perf_counter()
        alloc.solve(*data[0])  # compiles the parametric program once
        first_s[name] = time.perf_counter() - t0
    timers = {name: Timer() for name in contenders}
    results = {name: [] for name in contenders}
    solver_s = {name: [] for name in contenders}
    iters = {name: [] for name in contenders}
    order = list(contenders)
    for i, (a, s, t) in enumerate(data[1:]):
        for name in order if i % 2 == 0 else order[::-1]:  # alternate who runs first
            with timers[name]:
                results[name].append(contenders[name].solve(a, s, t))
            solver_s[name].append(_solver_stat(contenders[name], "solve_time"))
            iters[name].append(_solver_stat(contenders[name], "num_iters"))

    rows = []
    for name in contenders:
        clarabel = [x for x in solver_s[name] if x is not None]
        its = [x for x in iters[name] if x is not None]
        rows.append(
            {
                "num_clients": num_clients,
                "method": name,
                **timers[name].stats(),
                "first_solve_s": first_s[name],
                "clarabel_median_s": float(np.median(clarabel)) if clarabel else None,
                "clarabel_iterations_median": float(np.median(its)) if its else None,
                "clarabel_iterations_max": float(np.max(its)) if its else None,
                "fallbacks": sum(r.fallback for r in results[name]),
                "fallback_statuses": sorted({r.status for r in results[name] if r.fallback}),
                "certified_not_optimal": sum(r.status.startswith("certified:") for r in results[name]),
                "max_rel_gap_to_reference": gap(results[name]),
            }
        )
    if baseline is not None:
        new, old = rows[0], rows[1]
        for key in ("mean_s", "median_s", "p95_s", "cpu_mean_s", "cpu_median_s", "cpu_p95_s"):
            new[f"{key}_ratio_to_baseline"] = new[key] / old[key]

    rb_timer, rb_results = Timer(), []
    for a, s, t in data[1 : 1 + rebuild_rounds]:
        with rb_timer:
            rb_results.append(CvxpyAllocator(num_clients, BANDWIDTH_TOTAL_HZ).solve(a, s, t))
    if rebuild_rounds > 0:
        rows.append(
            {
                "num_clients": num_clients,
                "method": "rebuild",
                **rb_timer.stats(),
                "fallbacks": sum(r.fallback for r in rb_results),
                "max_rel_gap_to_reference": gap(rb_results),
            }
        )
    rows.append({"num_clients": num_clients, "method": "reference", **ref_timer.stats(), "fallbacks": 0})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200, 1000])
    parser.add_argument("--rounds", type=int, default=100, help="rounds timed for dpp, baseline and reference")
    parser.add_argument("--rebuild-rounds", type=int, default=3, help="rounds timed for rebuild (compiles)")
    parser.add_argument("--baseline", metavar="REV", help="git revision whose allocator runs side by side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/allocator.json"))
    args = parser.parse_args()

    baseline = load_baseline(args.baseline) if args.baseline else None
    load_before = os.getloadavg()
    rows = []
    for k in args.sizes:
        rows.extend(bench_size(k, args.rounds, args.rebuild_rounds, args.seed, baseline))
    load_after = os.getloadavg()

    goals = {}
    for k, limit in GOALS_MEDIAN_S.items():
        row = next((r for r in rows if r["num_clients"] == k and r["method"] == "dpp"), None)
        if row is not None:
            goals[f"dpp_median_at_K{k}_le_{limit * 1e3:g}ms_no_fallback"] = {
                "wall": bool(row["median_s"] <= limit and row["fallbacks"] == 0),
                "cpu": bool(row["cpu_median_s"] <= limit and row["fallbacks"] == 0),
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
            "baseline_revision": args.baseline,
            "seed": args.seed,
            "bandwidth_total_hz": BANDWIDTH_TOTAL_HZ,
            "payload_bits_per_client": soft_payload_bits(),
        },
        "results": rows,
        "goals": goals,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    columns = ["num_clients", "method", "mean_s", "median_s", "p95_s", "cpu_mean_s", "cpu_median_s", "cpu_p95_s"]
    columns += ["rounds", "fallbacks", "max_rel_gap_to_reference", "clarabel_iterations_median"]
    columns += ["median_s_ratio_to_baseline", "cpu_median_s_ratio_to_baseline"]
    with args.out.with_suffix(".csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    print(f"load average before {load_before}, after {load_after} ({os.cpu_count()} CPUs)")
    head = f"{'K':>5} {'method':>9} {'mean ms':>8} {'median ms':>9} {'p95 ms':>8} {'cpu med ms':>10}"
    print(f"{head} {'cpu p95 ms':>10} {'rounds':>6} {'fallbacks':>9} {'max gap':>8} {'iters':>5} {'ratio':>6}")
    for r in rows:
        g = r.get("max_rel_gap_to_reference")
        gap_txt = f"{g:.1e}" if g is not None else "-"
        it = r.get("clarabel_iterations_median")
        ratio = r.get("median_s_ratio_to_baseline")
        print(
            f"{r['num_clients']:>5} {r['method']:>9} {r['mean_s'] * 1e3:>8.2f} {r['median_s'] * 1e3:>9.2f} "
            f"{r['p95_s'] * 1e3:>8.2f} {r['cpu_median_s'] * 1e3:>10.2f} {r['cpu_p95_s'] * 1e3:>10.2f} "
            f"{r['rounds']:>6} {r['fallbacks']:>9} {gap_txt:>8} {it if it is not None else '-':>5} "
            f"{f'{ratio:.2f}' if ratio is not None else '-':>6}"
        )
    for name, ok in goals.items():
        verdict = ", ".join(f"{kind} {'met' if met else 'NOT met'}" for kind, met in ok.items())
        print(f"goal {name}: {verdict}")
    print(f"wrote {args.out} and {args.out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
