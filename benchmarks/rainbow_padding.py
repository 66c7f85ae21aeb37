"""<eos> vs single-pad vs rainbow padding of a masked-diffusion LM (arXiv 2510.03680), same budget.

For every seed:

1. the base MDM is pretrained by the workload with ``eos`` padding (cached under
   ``FEDSIM_CACHE``) and evaluated at every allocated length G: the reference before any LoRA;
2. for every padding scheme (``eos``, ``single``, ``rainbow`` with K = 1, 3, 7), ``fedsim run``
   fine-tunes that base with federated LoRA (r = 32, alpha = 64 as in the paper) on the same
   clients, rounds and local epochs, and the last round's metrics are kept.

Metrics per G (see :mod:`workloads.rainbow_padding`): validity (a program checks the walk),
response length over the data's mean, early-termination rate and the share of <eos> among the
tokens committed in the first half of the denoising steps. The paper's claims under test:
``eos`` shortens answers and loses validity as G grows, ``single`` behaves like ``eos``, and
``rainbow`` with K >= 7 keeps both. Each run writes
``benchmarks/results/rainbow_padding_runs/<id>.json`` (the id names the budget); the CSV
(``benchmarks/results/rainbow_padding<tag>.csv``) and the figure (``rainbow_padding<tag>.png``)
collect the runs of the given seeds and budget found there. The rounds of ``fedsim run`` evaluate
on ``--round-eval-samples`` prompts only; the reported numbers come from evaluating each run's
last global adapter (its checkpoint) on ``--eval-samples`` prompts in this process.

    python benchmarks/rainbow_padding.py [--seeds 0 1 2] [--schemes eos single rainbow1 rainbow3 rainbow7]
        [--clients 10] [--rounds 5] [--clients-per-round 5] [--samples-per-client 48] [--local-epochs 2]
        [--options pretrain_steps=800,eval_samples=64]
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

from fedsim.results import read_rounds

SCHEMES = {
    "eos": "padding=eos",
    "single": "padding=single",
    "rainbow1": "padding=rainbow,pad_tokens=1",
    "rainbow3": "padding=rainbow,pad_tokens=3",
    "rainbow7": "padding=rainbow,pad_tokens=7",
}
KEYS = ("validity", "length_ratio", "early_termination", "eos_first_half")


def overrides(scheme: str, seed: int, args: argparse.Namespace, eval_samples: int) -> dict:
    options = ",".join(filter(None, [SCHEMES[scheme], args.options, f"eval_samples={eval_samples}"]))
    return {
        "workload.name": "rainbow-padding",
        "workload.preset": args.preset,
        "workload.options": options,
        "workload.partition": args.partition,
        "workload.samples_per_client": args.samples_per_client,
        "workload.test_samples": args.test_samples,
        "train.local_epochs": args.local_epochs,
        "train.lr": args.lr,
        "lora.rank": args.lora_rank,
        "lora.alpha": args.lora_alpha,
        "run.clients": args.clients,
        "run.rounds": args.rounds,
        "run.clients_per_round": args.clients_per_round,
        "run.seed": seed,
    }


def by_length(metrics: dict) -> list[dict]:
    """``{validity_g32: ..}`` -> ``[{"G": 32, "validity": ..}, ...]``."""
    lengths = sorted({int(k.rsplit("_g", 1)[1]) for k in metrics if k.startswith("validity_g")})
    return [{"G": g, **{k: metrics.get(f"{k}_g{g}") for k in KEYS}} for g in lengths]


def base_run(seed: int, args: argparse.Namespace) -> dict:
    """Pretrain (or load) the base in this process and evaluate it: the reference before LoRA."""
    run_id = f"base-{args.preset}-seed{seed}{args.tag}"
    path = args.out / "rainbow_padding_runs" / f"{run_id}.json"
    if path.is_file() and not args.force:
        print(f"{run_id}: kept from {path}")
        return json.loads(path.read_text())
    from fedsim.config import build_config
    from fedsim.training import workload_spec
    from workloads import get_workload_class

    cfg = build_config(overrides("eos", seed, args, args.eval_samples))
    wl = get_workload_class("rainbow-padding")(workload_spec(cfg))
    t0 = time.perf_counter()
    base = wl.build_base_model()
    _, test = wl.build_data()
    metrics = wl.evaluate(base, test)
    meta = wl.pretrain_meta
    record = {
        "id": run_id,
        "scheme": "base",
        "seed": seed,
        "parameters": sum(p.numel() for p in base.parameters()),
        "pretrain": meta.get("pretrain"),
        "pretrain_wall_s": None if meta.get("cached") else meta.get("pretrain_wall_s"),
        "wall_s": time.perf_counter() - t0,
        "metrics": metrics,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    print(f"{run_id}: " + summary(metrics), flush=True)
    return record


def final_metrics(out: Path, scheme: str, seed: int, args: argparse.Namespace) -> dict:
    """The run's last global adapter (its checkpoint) evaluated here on ``--eval-samples`` prompts.

    The rounds themselves evaluate on ``--round-eval-samples`` prompts only, to keep the runs
    short; the numbers reported come from this evaluation.
    """
    from safetensors.numpy import load_file

    from fedsim.config import build_config
    from fedsim.training import workload_spec
    from workloads import get_workload_class
    from workloads.base import load_trainable_state

    state = json.loads((out / "checkpoint" / "state.json").read_text())
    name = state["adapter"]
    cfg = build_config(overrides(scheme, seed, args, args.eval_samples))
    wl = get_workload_class("rainbow-padding")(workload_spec(cfg))
    model = wl.build_model()
    load_trainable_state(model, load_file(out / "checkpoint" / name))
    _, test = wl.build_data()
    return wl.evaluate(model, test)


def summary(metrics: dict) -> str:
    return "  ".join(
        f"G={r['G']}: valid {r['validity']:.2f} len {r['length_ratio']:.2f} eos1/2 {r['eos_first_half']:.2f}"
        for r in by_length(metrics)
    )


def fl_run(scheme: str, seed: int, args: argparse.Namespace) -> dict:
    run_id = f"{scheme}-{args.preset}-seed{seed}-c{args.clients}-r{args.rounds}-e{args.local_epochs}{args.tag}"
    path = args.out / "rainbow_padding_runs" / f"{run_id}.json"
    if path.is_file() and not args.force:
        print(f"{run_id}: kept from {path}")
        return json.loads(path.read_text())
    out = args.out / "rainbow_padding_runs" / run_id
    cmd = [sys.executable, "-m", "fedsim", "run", "--out", str(out), "--force", "--quiet"]
    for key, value in overrides(scheme, seed, args, args.round_eval_samples).items():
        cmd += ["--set", f"{key}={value}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{run_id}: fedsim run failed:\n{proc.stderr[-3000:]}")
    fl_wall_s = time.perf_counter() - t0
    rounds = read_rounds(out)
    t0 = time.perf_counter()
    record = {
        "id": run_id,
        "scheme": scheme,
        "seed": seed,
        "fl_wall_s": fl_wall_s,
        "train_loss": [mean_train_loss(r) for r in rounds],
        "metrics": final_metrics(out, scheme, seed, args),
        "eval_wall_s": time.perf_counter() - t0,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    print(f"{run_id} ({record['fl_wall_s']:.0f} s): " + summary(record["metrics"]), flush=True)
    return record


def mean_train_loss(record: dict) -> float | None:
    losses = [c["train_loss"] for c in record.get("clients", []) if "train_loss" in c]
    return sum(losses) / len(losses) if losses else None


def collect(args: argparse.Namespace) -> list[dict]:
    """Rows of every run of this budget (clients, rounds, epochs, tag) and of the bases found on disk."""
    suffix = f"-c{args.clients}-r{args.rounds}-e{args.local_epochs}{args.tag}"
    rows = []
    for p in sorted((args.out / "rainbow_padding_runs").glob("*.json")):
        run = json.loads(p.read_text())
        mine = run["id"] == f"base-{args.preset}-seed{run['seed']}{args.tag}" or run["id"].endswith(suffix)
        if not mine or run["seed"] not in args.seeds:
            continue
        for point in by_length(run["metrics"]):
            rows.append({"scheme": run["scheme"], "seed": run["seed"], "run": run["id"], **point})
    name = f"rainbow_padding{args.tag}.csv"
    with open(args.out / name, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["scheme", "seed", "run", "G", *KEYS])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table: mean (min-max over seeds) of validity and length ratio per scheme and G."""
    import numpy as np

    order = ["base", *SCHEMES]
    lengths = sorted({r["G"] for r in rows})
    lines = [
        "| scheme | "
        + " | ".join(f"valid G={g}" for g in lengths)
        + " | "
        + " | ".join(f"len G={g}" for g in lengths)
        + " |",
        "|---" * (1 + 2 * len(lengths)) + "|",
    ]
    for scheme in [s for s in order if any(r["scheme"] == s for r in rows)]:
        cells = []
        for key in ("validity", "length_ratio"):
            for g in lengths:
                vals = [r[key] for r in rows if r["scheme"] == scheme and r["G"] == g]
                cells.append(f"{np.mean(vals):.2f}" if vals else "")
        seeds = len({r["seed"] for r in rows if r["scheme"] == scheme})
        lines.append(f"| {scheme} ({seeds} seeds) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Length ratio and validity against G: mean over seeds, bars from the lowest to the highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for i, scheme in enumerate(["base", *SCHEMES]):
        sel = [r for r in rows if r["scheme"] == scheme]
        if not sel:
            continue
        lengths = sorted({r["G"] for r in sel})
        style = dict(color="k", ls="--") if scheme == "base" else dict(color=f"C{i - 1}")
        for ax, key in zip(axes, ("length_ratio", "validity", "eos_first_half"), strict=True):
            vals = [[r[key] for r in sel if r["G"] == g] for g in lengths]
            mean = np.array([np.mean(v) for v in vals])
            lo, hi = np.array([min(v) for v in vals]), np.array([max(v) for v in vals])
            ax.errorbar(lengths, mean, yerr=[mean - lo, hi - mean], marker="o", capsize=3, label=scheme, **style)
    for ax, label in zip(
        axes, ("response length / data mean", "validity", "<eos> share, first half of steps"), strict=True
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("allocated length G")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle("rainbow-padding: eos / single / rainbow K after federated LoRA (base: eos-pretrained, no LoRA)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--options", default="", help="extra workload.options for every run (e.g. pretrain_steps=2000)")
    ap.add_argument("--tag", default="", help="suffix of the run ids (a different design)")
    ap.add_argument("--partition", default="natural")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--clients-per-round", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--samples-per-client", type=int, default=48)
    ap.add_argument("--test-samples", type=int, default=256)
    ap.add_argument("--eval-samples", type=int, default=64, help="prompts of the final evaluation, per G")
    ap.add_argument(
        "--round-eval-samples", type=int, default=8, help="prompts of each round's evaluation in fedsim run"
    )
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--lora-alpha", type=float, default=64.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for pretraining in this process")
    ap.add_argument("--force", action="store_true", help="redo runs whose JSON exists")
    ap.add_argument("--collect-only", action="store_true", help="only rebuild the CSV, figure and table")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    for seed in [] if args.collect_only else args.seeds:
        base_run(seed, args)
        for scheme in args.schemes:
            fl_run(scheme, seed, args)
    rows = collect(args)
    plot(rows, args.out / f"rainbow_padding{args.tag}.png")
    print(table(rows))
    print(f"wrote {args.out / f'rainbow_padding{args.tag}.csv'} and the figure ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
