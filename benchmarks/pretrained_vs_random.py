"""Does the pretrained encoder matter? text-classify with pretrained vs randomly initialised MiniLM.

Runs the same federated job (the default: 50 clients, Dirichlet(1.0), 10 rounds of 10 clients,
LoRA r=8 on query/value plus the dense head) through ``fedsim run`` twice per seed: preset
``tiny`` (the real all-MiniLM-L6-v2 weights) and preset ``random-init`` (the same architecture
with random weights), and records accuracy, macro-F1 and accuracy on test sentences with topic
words never seen in training and with unseen templates, per round. Writes
``benchmarks/results/pretrained_vs_random.{csv,json,png}``.

    python benchmarks/pretrained_vs_random.py [--seeds 0 1] [--clients 50] [--rounds 10]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from fedsim.core.results import read_rounds

PRESETS = ("tiny", "random-init")
METRICS = ("accuracy", "macro_f1", "accuracy_unseen_words", "accuracy_unseen_templates")


def run(preset: str, seed: int, args: argparse.Namespace, out: Path) -> tuple[list[dict], float]:
    cmd = [sys.executable, "-m", "fedsim", "run", "--clients", str(args.clients), "--rounds", str(args.rounds)]
    cmd += ["--seed", str(seed), "--set", f"workload.preset={preset}", "--out", str(out), "--force", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    records = read_rounds(out)
    return records, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    rows, walls = [], {}
    for seed in args.seeds:
        for preset in PRESETS:
            records, wall = run(preset, seed, args, args.out / "pretrained_vs_random_runs" / f"{preset}-seed{seed}")
            walls[f"{preset}-seed{seed}"] = wall
            for r in records:
                rows.append(
                    {"preset": preset, "seed": seed, "round": r["round"], **{m: r["metrics"][m] for m in METRICS}}
                )
            print(f"{preset:12s} seed {seed}: final accuracy {records[-1]['metrics']['accuracy']:.3f} ({wall:.0f} s)")

    with open(args.out / "pretrained_vs_random.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["preset", "seed", "round", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
    final = {}
    for preset in PRESETS:
        last = [r for r in rows if r["preset"] == preset and r["round"] == args.rounds]
        final[preset] = {m: sum(r[m] for r in last) / len(last) for m in METRICS}
    summary = {
        "clients": args.clients,
        "rounds": args.rounds,
        "seeds": args.seeds,
        "final_mean": final,
        "wall_s": walls,
    }
    (args.out / "pretrained_vs_random.json").write_text(json.dumps({**summary, "rows": rows}, indent=1))
    plot(rows, args)
    print(json.dumps(final, indent=1))


def plot(rows: list[dict], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    panels = (("accuracy", "all test sentences"), ("accuracy_unseen_words", "unseen topic words"))
    panels += (("accuracy_unseen_templates", "unseen templates"),)
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for preset, color in zip(PRESETS, ("C0", "C3"), strict=True):
            for seed in args.seeds:
                pts = [(r["round"], r[metric]) for r in rows if r["preset"] == preset and r["seed"] == seed]
                label = preset if seed == args.seeds[0] else None
                ax.plot(*zip(*pts, strict=True), color=color, marker="o", ms=3, alpha=0.8, label=label)
        ax.axhline(1 / 8, color="gray", lw=0.8, ls=":")
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (8 topics; dotted: chance)")
    axes[0].legend()
    fig.suptitle(f"text-classify: pretrained vs random-init MiniLM, {args.clients} clients, seeds {args.seeds}")
    fig.tight_layout()
    fig.savefig(args.out / "pretrained_vs_random.png", dpi=120)


if __name__ == "__main__":
    main()
