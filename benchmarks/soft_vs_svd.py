"""Client-side selection time: SOFT (norm importance) against SVD truncation.

SOFT (fedsim formulation): s = ||B[:, i]|| ||A[i, :]||, top-k by s, gather A[K, :] and B[:, K];
O(r (d_in + d_out)). SVD truncation: form B A (d_out x d_in), SVD, keep the top-k triplets,
refactor B' = U_k sqrt(S_k), A' = sqrt(S_k) V_k^T; O(d_out d_in min(d_in, d_out)).

Times the math only (no SparseUpdate construction, no dtype casts), d_in = d_out = d, rho = 0.5,
float32, median over repeats, with a fixed number of torch threads (recorded). Writes a JSON
(default benchmarks/results/soft_vs_svd.json) and prints a table.

    python benchmarks/soft_vs_svd.py [--threads 1] [--out PATH] [--dims 256 1024 4096] [--ranks 8 16 32]
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from fedsim.soft import keep_count, rank_importance
from fedsim.soft.sparsify import top_ranks


def soft_select(A: torch.Tensor, B: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kept, _ = top_ranks(rank_importance(A, B), k)
    return kept, A.index_select(0, kept), B.index_select(1, kept)


def svd_select(A: torch.Tensor, B: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    U, S, Vh = torch.linalg.svd(B @ A, full_matrices=False)
    root = S[:k].sqrt()
    return root[:, None] * Vh[:k], U[:, :k] * root


def median_time_s(fn, min_repeats: int, budget_s: float) -> tuple[float, int]:
    """Median wall time of fn() after a warm-up call; at least min_repeats, up to budget_s.

    A warm-up call slower than budget_s (the large SVDs) counts as the first sample.
    """
    t0 = time.perf_counter()
    fn()
    warm_s = time.perf_counter() - t0
    times: list[float] = [warm_s] if warm_s > budget_s else []
    start = time.perf_counter()
    while len(times) < min_repeats or (time.perf_counter() - start < budget_s and len(times) < 1000):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--rho", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=2.0, help="time budget per timed cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "soft_vs_svd.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    rows = []
    print(f"torch {torch.__version__}, threads {args.threads}, rho {args.rho}, float32, median over repeats")
    print(f"{'d':>6} {'r':>4} {'k':>4} {'soft_s':>12} {'svd_s':>12} {'speedup':>10}")
    for d in args.dims:
        for r in args.ranks:
            A, B = torch.randn(r, d, generator=g), torch.randn(d, r, generator=g)
            k = keep_count(r, args.rho)
            soft_s, soft_n = median_time_s(
                functools.partial(soft_select, A, B, k), max(args.min_repeats, 20), args.budget_s
            )
            svd_s, svd_n = median_time_s(functools.partial(svd_select, A, B, k), args.min_repeats, args.budget_s)
            rows.append(
                {
                    "d_in": d,
                    "d_out": d,
                    "rank": r,
                    "k": k,
                    "soft_median_s": soft_s,
                    "svd_median_s": svd_s,
                    "soft_repeats": soft_n,
                    "svd_repeats": svd_n,
                    "speedup": svd_s / soft_s,
                }
            )
            print(f"{d:>6} {r:>4} {k:>4} {soft_s:>12.3e} {svd_s:>12.3e} {svd_s / soft_s:>9.0f}x", flush=True)
    result = {
        "benchmark": "SOFT (fedsim formulation) selection vs SVD truncation, client side",
        "torch": torch.__version__,
        "threads": args.threads,
        "rho": args.rho,
        "dtype": "float32",
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
