"""TSFA (fedsim formulation) experiment: latency control against the budget, and accuracy against V.

Part A (controller only, seconds): the run's own cell (``fedsim.core.wireless.WirelessModel``: drop,
path loss, Rayleigh fading per round, device speeds) and the default workload's SOFT payloads at
rank r, with each client's dropped-rank error from a geometric importance spectrum
s_i = 0.8^i, and a per-round deadline (``--deadline``, clients that cannot make it are dropped). For each budget T_avg the Lyapunov controller runs ``--controller-rounds`` rounds;
we report the time-average latency against T_avg, and rho fixed at 0 as the reference.
Part B (real ``fedsim run --scheduler tsfa`` runs): final metric, time-average latency and the
queue / rho trajectories for several V.

Writes benchmarks/results/tsfa/{latency_vs_budget.csv, metric_vs_v.csv, trajectories.csv,
tsfa.png, tsfa.json}.

    python benchmarks/tsfa_experiment.py                      # both parts
    python benchmarks/tsfa_experiment.py --skip-runs          # part A only
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from runs import fedsim_run

from fedsim.core.config import build_config
from fedsim.core.methods import get_method
from fedsim.core.seeding import sample_clients
from fedsim.core.wireless import WirelessModel
from fedsim.tsfa import FixedRhoScheduler, TsfaScheduler, make_allocator

GRID = (0.0, 0.25, 0.5, 0.75)


def lora_shapes(rank: int) -> dict[str, tuple[int, ...]]:
    """The default workload's adapter: LoRA on query/value of 6 layers (384 wide) + a 384x4 head."""
    shapes = {}
    for layer in range(6):
        for proj in ("query", "value"):
            shapes[f"l{layer}.{proj}.lora_A.default.weight"] = (rank, 384)
            shapes[f"l{layer}.{proj}.lora_B.default.weight"] = (384, rank)
    shapes["head.weight"], shapes["head.bias"] = (4, 384), (4,)
    return shapes


def controller_run(cfg, scheduler, rounds: int, rank: int) -> dict:
    wireless = WirelessModel(cfg)
    shapes = lora_shapes(rank)
    bits = {rho: get_method("soft").adapter_bits(shapes, rank, rho, 32) for rho in GRID}
    s = 0.8 ** np.arange(rank)
    err = {rho: float(np.sum(s[max(1, int(np.ceil((1 - rho) * rank - 1e-9))) :] ** 2)) for rho in GRID}
    flops = 3 * 2 * 6 * (4 * 384 * 384 + 2 * 384 * 1536) * 20
    lat, rhos, queues = [], [], []
    for t in range(1, rounds + 1):
        ids = sample_clients(cfg.run.seed, t, cfg.run.clients, cfg.num_sampled)
        a = wireless.snr_per_hz(t, ids)
        tcmp = wireless.compute_times_s(ids, [cfg.workload.samples_per_client] * len(ids), flops)
        d = scheduler.decide(
            a, tcmp, {r: np.full(len(ids), float(bits[r])) for r in GRID}, {r: np.full(len(ids), err[r]) for r in GRID}
        )
        queues.append(scheduler.queue_s)
        scheduler.update(d.round_latency_s)
        lat.append(d.round_latency_s)
        rhos.append(d.rho)
    return {"latency_s": lat, "rho": rhos, "queue": queues}


def part_a(args, out: Path) -> list[dict]:
    cfg = build_config({"run.clients": 50, "run.clients_per_round": 10, "run.seed": args.seed})
    rows = []
    baseline = controller_run(
        cfg, FixedRhoScheduler(0.0, make_allocator("reference", 10, 20e6)), args.controller_rounds, args.rank
    )
    base_avg = float(np.mean(baseline["latency_s"]))
    for budget in args.budgets:
        ctl = TsfaScheduler(
            make_allocator("reference", 10, 20e6), budget, args.v_controller, GRID, deadline_s=args.deadline or None
        )
        res = controller_run(cfg, ctl, args.controller_rounds, args.rank)
        burn = args.controller_rounds // 5
        rows.append(
            {
                "latency_budget_s": budget,
                "time_avg_latency_s": float(np.mean(res["latency_s"])),
                "time_avg_after_burn_in_s": float(np.mean(res["latency_s"][burn:])),
                "mean_rho": float(np.mean(res["rho"])),
                "rho0_time_avg_latency_s": base_avg,
            }
        )
        print(
            f"T_avg={budget:.3f}: time-average {rows[-1]['time_avg_latency_s']:.3f} s, mean rho "
            f"{rows[-1]['mean_rho']:.2f} (rho=0: {base_avg:.3f} s)",
            flush=True,
        )
    with (out / "latency_vs_budget.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def part_b(args, out: Path) -> tuple[list[dict], list[dict]]:
    rows, traj = [], []
    for v in args.vs:
        folder = out / "runs" / f"v{v:g}"
        summary, recs = fedsim_run(
            folder, args.clients, args.rounds, args.clients_per_round, "--method", "soft", "--scheduler", "tsfa",
            "--seed", str(args.seed), "--set", f"tsfa.v={v}", "--set", f"tsfa.latency_budget_s={args.run_budget}",
            "--set", f"tsfa.deadline_s={args.deadline}", "--set", "run.min_clients_per_round=1",
        )  # fmt: skip
        rows.append(
            {
                "v": v,
                "final_metric": summary["final_metrics"]["primary_metric"],
                "time_avg_latency_s": summary["mean_round_latency_s"],
                "latency_budget_s": args.run_budget,
                "lora_rank": summary["lora_rank"],
                "cumulative_uplink_bits": summary["cumulative_uplink_bits"],
            }
        )
        traj += [
            {
                "v": v,
                "round": r["round"],
                "rho": r["rho"],
                "queue_s": r["queue_s"],
                "round_latency_s": r["round_latency_s"],
            }
            for r in recs
        ]
        print(
            f"V={v:g}: final {rows[-1]['final_metric']:.4f}, time-average latency "
            f"{rows[-1]['time_avg_latency_s']:.3f} s (T_avg {args.run_budget})",
            flush=True,
        )
    for name, data in (("metric_vs_v.csv", rows), ("trajectories.csv", traj)):
        with (out / name).open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
    return rows, traj


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/tsfa"))
    p.add_argument("--budgets", type=float, nargs="+", default=[0.15, 0.2, 0.25, 0.3, 0.4])
    p.add_argument("--controller-rounds", type=int, default=500)
    p.add_argument("--v-controller", type=float, default=0.05)
    p.add_argument(
        "--deadline",
        type=float,
        default=1.0,
        help="per-round hard deadline in s (0: none). Under Rayleigh fading E[1/|h|^2] is infinite, so without "
        "one a time-average latency has no finite mean and never settles",
    )
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--vs", type=float, nargs="+", default=[0.0, 0.05, 1.0])
    p.add_argument("--run-budget", type=float, default=0.3)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--clients-per-round", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-runs", action="store_true")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    a_rows = part_a(args, args.out)
    b_rows, traj = ([], []) if args.skip_runs else part_b(args, args.out)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if b_rows else 1, figsize=(15 if b_rows else 5, 4), squeeze=False)
    ax = axes[0][0]
    budgets = [r["latency_budget_s"] for r in a_rows]
    ax.plot(budgets, [r["time_avg_latency_s"] for r in a_rows], "o-", label="TSFA time-average")
    ax.plot(budgets, budgets, "k--", label="T_avg")
    ax.axhline(a_rows[0]["rho0_time_avg_latency_s"], color="grey", ls=":", label="rho = 0")
    ax.set(xlabel="T_avg (s)", ylabel="time-average latency (s)", title="latency control")
    ax.legend()
    if b_rows:
        axes[0][1].plot([r["v"] for r in b_rows], [r["final_metric"] for r in b_rows], "o-")
        axes[0][1].set(xlabel="V", ylabel="final metric", title="accuracy against V", xscale="symlog")
        for v in args.vs:
            t = [r for r in traj if r["v"] == v]
            axes[0][2].plot([r["round"] for r in t], [r["queue_s"] for r in t], label=f"Q, V={v:g}")
            axes[0][2].plot([r["round"] for r in t], [r["rho"] for r in t], ls="--", label=f"rho, V={v:g}")
        axes[0][2].set(xlabel="round", title="queue and rho trajectories")
        axes[0][2].legend(fontsize=7)
    fig.suptitle("TSFA (fedsim formulation)")
    fig.tight_layout()
    fig.savefig(args.out / "tsfa.png", dpi=110)
    (args.out / "tsfa.json").write_text(json.dumps({"latency_vs_budget": a_rows, "metric_vs_v": b_rows}, indent=2))


if __name__ == "__main__":
    main()
