"""Pad-token memorisation (arXiv 2605.02908): every sampling-time intervention, mean over seeds.

For every seed (the seed draws the memorised captions and images, the pretraining of the text
tower and the base denoiser, and every federated stream):

1. the workload pretrains (or loads from ``FEDSIM_CACHE``) its CLIP-style text tower and base
   denoiser, and the base is evaluated: the round-0 row (no memorisation yet);
2. ``fedsim run`` fine-tunes it with federated LoRA on the natural split: the first
   ``mem_clients`` clients hold the duplicated memorised pairs, the others generic renderings;
3. the final round's metrics are read from ``rounds.jsonl``: for every intervention the
   memorisation similarity and rate, the similarity to the unmodified generation, the attribute
   accuracy of non-memorised captions and the diversity across seeds.

The question checked first: does the toy memorise through the pad and eot embeddings (mask v_pad
removes memorisation, mask v_pr does not), as the paper finds, or through the prompt tokens?

Writes ``<out>/clip_memorisation_runs/<id>.json`` per seed, ``<out>/clip_memorisation.csv``
(one row per seed, stage and intervention, plus ``mean`` and ``std`` rows over seeds),
``<out>/clip_memorisation.png`` (memorisation similarity per intervention, mean +- std over
seeds, beside the paper's numbers) and ``<out>/clip_memorisation_grid.png`` (generations of the
memorised captions under every intervention, first seed).

    python benchmarks/clip_memorisation.py [--seeds 0 1 2] [--clients 4] [--rounds 15]
        [--local-epochs 8] [--samples-per-client 48] [--lr 8e-3] [--options "mem_clients=2"]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fedsim.results import read_rounds

METRICS = ("mem_sim", "mem_rate", "orig_sim", "attr_acc", "diversity", "mem_diversity")
# SSCD similarity of generations for memorised prompts to their training images, from the paper.
PAPER_MEM_SIM = {"pad_bang_eot0": 0.08, "pad_bang": 0.14, "pad_mask": 0.10, "mask_pad": 0.07, "mask_eot": 0.95}


def overrides(seed: int, args: argparse.Namespace) -> dict:
    return {
        "workload.name": "clip-memorisation",
        "workload.preset": args.preset,
        "workload.options": args.options,
        "workload.partition": "natural",
        "workload.samples_per_client": args.samples_per_client,
        "workload.test_samples": args.test_samples,
        "train.local_epochs": args.local_epochs,
        "train.lr": args.lr,
        "lora.rank": args.rank,
        "lora.alpha": 2.0 * args.rank,
        "run.clients": args.clients,
        "run.clients_per_round": args.clients,
        "run.rounds": args.rounds,
        "run.seed": seed,
    }


def run_id(seed: int, args: argparse.Namespace) -> str:
    opts = args.options.replace("=", "").replace(",", "-").replace("+", "")
    return (
        f"{args.preset}-seed{seed}-c{args.clients}-r{args.rounds}-e{args.local_epochs}-n{args.samples_per_client}"
        f"-lr{args.lr:g}-r{args.rank}" + (f"-{opts}" if opts else "")
    )


def one_run(seed: int, args: argparse.Namespace) -> dict:
    from fedsim.config import build_config
    from fedsim.training import load_workload

    rid = run_id(seed, args)
    path = args.out / "clip_memorisation_runs" / f"{rid}.json"
    if path.is_file() and not args.force:
        print(f"{rid}: kept from {path}")
        return json.loads(path.read_text())
    flat = overrides(seed, args)
    t0 = time.perf_counter()
    rt = load_workload(build_config(flat))  # pretrains (or loads) the bases; LoRA B = 0: the base model
    base = rt.workload.evaluate(rt.model, rt.test)
    base_s = time.perf_counter() - t0
    out = args.out / "clip_memorisation_runs" / rid
    cmd = [sys.executable, "-m", "fedsim", "run", "--out", str(out), "--force", "--quiet"]
    for key, value in flat.items():
        cmd += ["--set", f"{key}={value}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{rid}: fedsim run failed:\n{proc.stderr[-3000:]}")
    rounds = read_rounds(out)
    record = {
        "id": rid,
        "seed": seed,
        "overrides": flat,
        "pretrain": rt.workload.pretrain_meta,
        "base_wall_s": base_s,
        "fl_wall_s": time.perf_counter() - t0,
        "results": str(out),
        "base": base,
        "final": rounds[-1]["metrics"],
        "curve": [
            {
                "round": r["round"],
                "memorisation_rate": r["metrics"]["memorisation_rate"],
                "mem_sim_none": r["metrics"]["mem_sim_none"],
            }
            for r in rounds
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=str))
    f = record["final"]
    print(
        f"{rid}: mem_sim none {base['mem_sim_none']:.2f} -> {f['mem_sim_none']:.2f}; after FL: "
        + ", ".join(f"{k} {f[f'mem_sim_{k}']:.2f}" for k in ("mask_pr", "mask_eot", "mask_pad", "pad_bang_eot0")),
        flush=True,
    )
    return record


def table(records: list[dict]) -> list[dict]:
    """Rows per (seed, stage, intervention), then mean and std over seeds per (stage, intervention)."""
    from workloads.clip_memorisation import intervention_table

    rows = []
    for rec in records:
        for stage in ("base", "final"):
            for row in intervention_table(rec[stage]):
                rows.append({"seed": rec["seed"], "stage": stage, **row, "mem_threshold": rec[stage]["mem_threshold"]})
    for stat, fn in (("mean", np.mean), ("std", np.std)):
        for stage in ("base", "final"):
            for k in dict.fromkeys(r["intervention"] for r in rows):
                sel = [r for r in rows if r["stage"] == stage and r["intervention"] == k and isinstance(r["seed"], int)]
                if sel:
                    agg = {m: float(fn([r[m] for r in sel])) for m in (*METRICS, "mem_threshold")}
                    rows.append({"seed": stat, "stage": stage, "intervention": k, **agg})
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["seed", "stage", "intervention", *METRICS, "mem_threshold"])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


def plot(rows: list[dict], records: list[dict], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workloads.clip_memorisation import image_grid, load_global_model

    mean = {(r["stage"], r["intervention"]): r for r in rows if r["seed"] == "mean"}
    std = {(r["stage"], r["intervention"]): r for r in rows if r["seed"] == "std"}
    names = [k for (stage, k) in mean if stage == "final"]
    seeds = sorted(r["seed"] for r in records)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    x = np.arange(len(names))
    for ax, metric, label in (
        (axes[0], "mem_sim", "memorisation similarity"),
        (axes[1], "attr_acc", "attribute accuracy"),
    ):
        ax.bar(
            x - 0.2,
            [mean["base", k][metric] for k in names],
            0.4,
            yerr=[std["base", k][metric] for k in names],
            color="0.7",
            label="base (round 0)",
        )
        ax.bar(
            x + 0.2,
            [mean["final", k][metric] for k in names],
            0.4,
            yerr=[std["final", k][metric] for k in names],
            color="C0",
            label=f"after federated LoRA ({args.rounds} rounds)",
        )
        if metric == "mem_sim":
            px = [i for i, k in enumerate(names) if k in PAPER_MEM_SIM]
            ax.scatter(
                np.array(px) + 0.2,
                [PAPER_MEM_SIM[names[i]] for i in px],
                marker="x",
                color="C3",
                zorder=3,
                label="paper (SSCD, Stable Diffusion)",
            )
        ax.set_xticks(x, names, rotation=30, fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"clip-memorisation: interventions at sampling time, mean +- std over seeds {seeds}", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out / "clip_memorisation.png", dpi=120)
    plt.close(fig)
    first = min(records, key=lambda r: r["seed"])
    wl, model, round_ = load_global_model(first["results"])
    grid = image_grid(wl, model, title=f"seed {first['seed']}, global model after round {round_}")
    grid.savefig(args.out / "clip_memorisation_grid.png", dpi=130)
    plt.close(grid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--options", default="mem_clients=2", help="workload.options, e.g. mem_clients=1,pad_token=!")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--local-epochs", type=int, default=8)
    ap.add_argument("--samples-per-client", type=int, default=48)
    ap.add_argument("--test-samples", type=int, default=64)
    ap.add_argument("--lr", type=float, default=8e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for pretraining in this process")
    ap.add_argument("--force", action="store_true", help="redo runs whose JSON exists")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    records = [one_run(seed, args) for seed in args.seeds]
    rows = table(records)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "clip_memorisation.csv")
    plot(rows, records, args)
    print(f"wrote {args.out / 'clip_memorisation.csv'}, clip_memorisation.png and clip_memorisation_grid.png")
    for r in rows:
        if r["seed"] == "mean" and r["stage"] == "final":
            print(f"{r['intervention']:>14}  " + "  ".join(f"{m} {r[m]:.3f}" for m in METRICS))


if __name__ == "__main__":
    main()
