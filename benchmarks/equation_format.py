"""Equation-only vs natural-language vs answer-only targets (arXiv 2409.12393) at equal steps.

For every model size, target format and seed, with the same budget everywhere:

1. the base T5 is pretrained by the workload on its pretraining problems for
   ``--pretrain-steps`` steps in that format (cached under ``FEDSIM_CACHE``), and evaluated
   (round 0);
2. ``fedsim run`` fine-tunes it with federated LoRA (q, v) on clients with the natural split
   (each client its own template family and operation mix) for ``--rounds`` rounds.

Accuracy is the exact final answer after ``####``, overall and by number of operations. The
claim under test: equation-only beats natural language at equal steps, the gap is largest at 2-3
operations, and answer-only fails beyond one operation. Each run writes
``benchmarks/results/equation_format_runs/<id>.json``; the CSV
(``benchmarks/results/equation_format.csv``) and figure (``equation_format.png``) collect every
run found there.

    python benchmarks/equation_format.py [--sizes tiny small] [--formats equation nl answer]
        [--seeds 0] [--pretrain-steps 1500] [--nl-variability 1] [--clients 10] [--rounds 5] [--clients-per-round 5]
        [--samples-per-client 96] [--local-epochs 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from fedsim.core.results import read_rounds

FORMATS = ("equation", "nl", "answer")
KEYS = ("accuracy", "accuracy_ops1", "accuracy_ops2", "accuracy_ops3")


def overrides(size: str, fmt: str, seed: int, args: argparse.Namespace) -> dict:
    return {
        "workload.name": "equation-reasoner",
        "workload.preset": size,
        "workload.options": f"target_format={fmt},pretrain_steps={args.pretrain_steps}"
        + (f",pretrain_problems={args.pretrain_problems}" if args.pretrain_problems else "")
        + (f",nl_variability={args.nl_variability}" if fmt == "nl" else ""),
        "workload.partition": "natural",
        "workload.test_samples": args.test_samples,
        "workload.samples_per_client": args.samples_per_client,
        "train.local_epochs": args.local_epochs,
        "run.clients": args.clients,
        "run.rounds": args.rounds,
        "run.clients_per_round": args.clients_per_round,
        "run.seed": seed,
    }


def base_metrics(flat: dict) -> tuple[dict, dict, int]:
    """Pretrain (or load) the base in this process and evaluate it: the round-0 point."""
    from fedsim.core.config import build_config
    from fedsim.core.training import workload_spec
    from workloads import get_workload_class

    cfg = build_config(flat)
    wl = get_workload_class("equation-reasoner")(workload_spec(cfg))
    base = wl.build_base_model()
    _, test = wl.build_data()
    return wl.evaluate(base, test), wl.pretrain_meta, sum(p.numel() for p in base.parameters())


def one_run(size: str, fmt: str, seed: int, args: argparse.Namespace) -> dict:
    run_id = f"{size}-{fmt}-seed{seed}-steps{args.pretrain_steps}-c{args.clients}-r{args.rounds}-e{args.local_epochs}"
    if args.pretrain_problems:
        run_id += f"-p{args.pretrain_problems}"
    if fmt == "nl" and args.nl_variability != 1:
        run_id += f"-v{args.nl_variability}"
    path = args.out / "equation_format_runs" / f"{run_id}.json"
    if path.is_file() and not args.force:
        print(f"{run_id}: kept from {path}")
        return json.loads(path.read_text())
    flat = overrides(size, fmt, seed, args)
    t0 = time.perf_counter()
    base, meta, params = base_metrics(flat)
    pretrain_s = time.perf_counter() - t0
    out = args.out / "equation_format_runs" / run_id
    cmd = [sys.executable, "-m", "fedsim", "run", "--out", str(out), "--force", "--quiet"]
    for key, value in flat.items():
        cmd += ["--set", f"{key}={value}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{run_id}: fedsim run failed:\n{proc.stderr[-3000:]}")
    rounds = read_rounds(out)
    record = {
        "id": run_id,
        "size": size,
        "format": fmt,
        "seed": seed,
        "parameters": params,
        "pretrain_steps": args.pretrain_steps,
        "pretrain_problems": meta["payload"]["params"]["pretrain_problems"],
        "pretrain": meta.get("pretrain"),
        "pretrain_wall_s": meta.get("pretrain_wall_s") if not meta.get("cached") else None,
        "base_wall_s": pretrain_s,
        "fl_wall_s": time.perf_counter() - t0,
        "curve": [{"round": 0, **{k: base.get(k) for k in KEYS}}]
        + [{"round": r["round"], **{k: r["metrics"].get(k) for k in KEYS}} for r in rounds],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    final = record["curve"][-1]
    print(
        f"{run_id}: base {base['accuracy']:.3f} -> final {final['accuracy']:.3f} "
        f"(ops 1/2/3: {final['accuracy_ops1']:.2f}/{final['accuracy_ops2']:.2f}/{final['accuracy_ops3']:.2f})",
        flush=True,
    )
    return record


def collect(args: argparse.Namespace) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in sorted((args.out / "equation_format_runs").glob("*.json"))]
    rows = []
    for run in runs:
        for point in (run["curve"][0], run["curve"][-1]):
            stage = "base" if point["round"] == 0 else "federated"
            rows.append(
                {
                    "size": run["size"],
                    "parameters": run["parameters"],
                    "format": run["format"],
                    "seed": run["seed"],
                    "pretrain_steps": run["pretrain_steps"],
                    "pretrain_problems": run.get("pretrain_problems", run["pretrain"]["problems"]),
                    "stage": stage,
                    "round": point["round"],
                    **{k: point[k] for k in KEYS},
                }
            )
    with open(args.out / "equation_format.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def plot(rows: list[dict], args: argparse.Namespace) -> None:
    """One panel per (size, pretraining steps, problems): bars after FL, ticks for the base."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = sorted(
        {(r["parameters"], r["size"], r["pretrain_steps"], r["pretrain_problems"]) for r in rows},
    )
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4.0), sharey=True, squeeze=False)
    labels = ["1 op", "2 ops", "3 ops", "all"]
    keys = ["accuracy_ops1", "accuracy_ops2", "accuracy_ops3", "accuracy"]
    for ax, (params, size, steps, problems) in zip(axes[0], groups, strict=True):
        seeds = set()
        for i, fmt in enumerate(FORMATS):
            for stage in ("federated", "base"):
                sel = [
                    r
                    for r in rows
                    if (r["size"], r["pretrain_steps"], r["pretrain_problems"]) == (size, steps, problems)
                    and r["format"] == fmt
                    and r["stage"] == stage
                ]
                if not sel:
                    continue
                seeds |= {r["seed"] for r in sel}
                means = [np.mean([r[k] for r in sel]) for k in keys]
                x = np.arange(4) + (i - 1) * 0.27
                if stage == "federated":
                    ax.bar(x, means, width=0.26, color=f"C{i}", alpha=0.9, label=fmt)
                else:
                    ax.scatter(
                        x, means, marker="_", s=200, color="k", zorder=3, label="base (round 0)" if i == 0 else None
                    )
        ax.set_title(
            f"{size} ({params / 1e6:.2f}M), {steps} steps, {problems} problems, seeds {sorted(seeds)}", fontsize=9
        )
        ax.set_xticks(range(4), labels)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("exact final-answer accuracy")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("equation-reasoner: target formats at equal steps (bars: after federated LoRA)")
    fig.tight_layout()
    fig.savefig(args.out / "equation_format.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny"])
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--pretrain-problems", type=int, default=0, help="0: the preset's number")
    ap.add_argument("--nl-variability", type=int, default=1, choices=range(4), help="nl targets' variability")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--clients-per-round", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--test-samples", type=int, default=300)
    ap.add_argument("--samples-per-client", type=int, default=96)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for pretraining in this process")
    ap.add_argument("--force", action="store_true", help="redo runs whose JSON exists")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for size in args.sizes:
        for fmt in args.formats:
            for seed in args.seeds:
                one_run(size, fmt, seed, args)
    rows = collect(args)
    plot(rows, args)
    print(f"wrote {args.out / 'equation_format.csv'} and {args.out / 'equation_format.png'}")


if __name__ == "__main__":
    main()
