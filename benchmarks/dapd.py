"""Validity against NFE of every decoder of a federated masked-diffusion LM (DAPD, arXiv 2603.12996).

For every seed:

1. ``fedsim run --workload dapd`` (natural split: clients draw X from skewed, different
   distributions) fine-tunes the cached base with federated LoRA; its rounds record validity and
   NFE per decoder and the attention edge AUCs (see :mod:`workloads.dapd`);
2. the base (before LoRA) and the run's last global model are decoded here on
   ``--eval-samples`` uniform-X canvases along each decoder's knob: top-k for every k (NFE =
   ceil(G / k)), Fast-dLLM for several thresholds, DAPD for several tau (relative to the mean
   off-diagonal score), with and without the tail switch, giving a validity-against-NFE curve.

With ``--rainbow-seeds`` the same decoders are also run on the ``rainbow-padding`` base (pretrained
with <eos> padding and cached by that workload) at allocated length ``--rainbow-g``: what DAPD
does to its NFE and validity.

Writes ``benchmarks/results/dapd.csv`` (seed, model, decoder, knob, nfe, validity), the rounds
(``dapd_rounds.csv``) and ``dapd.png`` (validity against NFE, mean over seeds; AUC per round).
The reference pilot (centralised, 2 layers, d 64, L = 5): AUC 0.99 (all masked) / 0.945 (half);
DAPD tau = 0.5 x mean: validity 0.82 at 3.6 NFE against top-k 0.71 at 5 NFE and 0.39 at 3;
Fast-dLLM 8 of 9 NFE.

    python benchmarks/dapd.py [--seeds 0 1 2] [--clients 10] [--rounds 5] [--local-epochs 2]
        [--eval-samples 512] [--options ...] [--rainbow-seeds 0]
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import fedsim_run, final_model, set_args  # noqa: E402

THRESHOLDS = (0.5, 0.7, 0.9, 0.95)
TAUS = (0.25, 0.5, 1.0, 1.5, 2.0)
ROUND_KEYS = ("validity_dapd", "nfe_dapd", "validity_topk_at_dapd_nfe", "auc_all_masked", "auc_half_masked")


def overrides(seed: int, args: argparse.Namespace) -> dict:
    return {
        "workload.name": "dapd",
        "workload.preset": args.preset,
        "workload.options": args.options,
        "workload.partition": "natural",
        "workload.samples_per_client": args.samples_per_client,
        "train.local_epochs": args.local_epochs,
        "train.lr": args.lr,
        "run.seed": seed,
    }


@torch.no_grad()
def curve(decode, validity, gen_length: int) -> list[dict]:
    """Validity and NFE of every decoder along its knob; ``decode(decoder, **knobs) -> SampleResult``."""
    out = []

    def add(decoder: str, knob: float, result) -> None:
        out.append(
            {"decoder": decoder, "knob": knob, "nfe": float(result.nfe.float().mean()), "validity": validity(result)}
        )

    for k in sorted({math.ceil(gen_length / s) for s in range(1, gen_length + 1)}):
        add("topk", k, decode("topk", tokens_per_step=k))
    for thr in THRESHOLDS:
        add("threshold", thr, decode("threshold", threshold=thr))
    for tau in TAUS:
        add("dapd", tau, decode("dapd", tau_rel=tau, tail=True))
        add("dapd_notail", tau, decode("dapd", tau_rel=tau, tail=False))
    return out


def dapd_curve(wl, model, num: int, seed: int) -> list[dict]:
    from workloads import dapd
    from workloads import diffusion_lm as dlm

    def decode(decoder: str, **knobs):
        prompt = torch.full((num, 1), dapd.BOS, dtype=torch.long)
        gen = torch.Generator().manual_seed(seed)
        return dlm.decode(
            model,
            prompt,
            wl.gen_length,
            dapd.MASK,
            decoder,
            temperature=1.0,
            generator=gen,
            forbidden=(dapd.BOS,),
            **knobs,
        )

    return curve(decode, wl.validity, wl.gen_length)


def rainbow_curve(seed: int, args: argparse.Namespace) -> list[dict]:
    """The decoders on the rainbow-padding base (eos-pretrained, cached), greedy as that workload samples."""
    from fedsim.config import build_config
    from fedsim.training import workload_spec
    from workloads import diffusion_lm as dlm
    from workloads import rainbow_padding as rp

    cfg = build_config({"workload.name": "rainbow-padding", "workload.options": args.rainbow_options, "run.seed": seed})
    wl = rp.RainbowPadding(workload_spec(cfg))
    model = wl.build_base_model()
    _, test = wl.build_data()
    rows = test[: args.rainbow_samples]
    prompt = torch.tensor([rp.prompt_tokens(s, t) for s, t in zip(rows["start"], rows["target"], strict=True)])
    forbidden = (rp.BOS, rp.SEP, *range(rp.TARGET0, rp.TARGET0 + rp.NUM_SYMBOLS))

    def decode(decoder: str, **knobs):
        return dlm.decode(model, prompt, args.rainbow_g, rp.MASK, decoder, forbidden=forbidden, **knobs)

    def validity(result) -> float:
        canvases = result.tokens[:, rp.PROMPT_LEN :].tolist()
        return float(
            np.mean([rp.is_valid(c, s, t) for c, s, t in zip(canvases, rows["start"], rows["target"], strict=True)])
        )

    out = []
    g = args.rainbow_g
    for k in (1, 2, 4, 8):
        result = decode("topk", tokens_per_step=k)
        out.append(
            {"decoder": "topk", "knob": k, "nfe": float(result.nfe.float().mean()), "validity": validity(result)}
        )
    for thr in (0.7, 0.9):
        result = decode("threshold", threshold=thr)
        out.append(
            {"decoder": "threshold", "knob": thr, "nfe": float(result.nfe.float().mean()), "validity": validity(result)}
        )
    for tau in (0.5, 1.0, 2.0):
        for tail in (True, False):
            result = decode("dapd", tau_rel=tau, tail=tail)
            name = "dapd" if tail else "dapd_notail"
            out.append(
                {"decoder": name, "knob": tau, "nfe": float(result.nfe.float().mean()), "validity": validity(result)}
            )
    print(
        f"rainbow-padding base seed {seed}, G={g}: "
        + ", ".join(f"{r['decoder']}({r['knob']}) {r['validity']:.2f}@{r['nfe']:.1f}" for r in out),
        flush=True,
    )
    return out


def collect(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    rows, rounds = [], []
    for seed in args.seeds:
        flat = overrides(seed, args)
        rid = f"{args.preset}-seed{seed}-c{args.clients}-r{args.rounds}-e{args.local_epochs}-lr{args.lr:g}"
        rid += f"-{args.options.replace('=', '').replace(',', '-')}" if args.options else ""
        folder = args.out / "dapd_runs" / rid
        _, records = fedsim_run(folder, args.clients, args.rounds, args.clients, *set_args(flat))
        for r in records:
            rounds.append({"seed": seed, "round": r["round"], **{k: r["metrics"][k] for k in ROUND_KEYS}})
        wl, model, _ = final_model(folder, flat)
        base = wl.build_base_model()
        for stage, m in (("base", base), ("final", model)):
            for row in dapd_curve(wl, m, args.eval_samples, seed):
                rows.append({"seed": seed, "model": f"dapd-{stage}", **row})
            auc = wl.attention_auc(m, wl.build_data()[1])
            rows.append(
                {
                    "seed": seed,
                    "model": f"dapd-{stage}",
                    "decoder": "auc_all_masked",
                    "knob": 0,
                    "nfe": 0,
                    "validity": auc["auc_all_masked"],
                }
            )
            rows.append(
                {
                    "seed": seed,
                    "model": f"dapd-{stage}",
                    "decoder": "auc_half_masked",
                    "knob": 0,
                    "nfe": 0,
                    "validity": auc["auc_half_masked"],
                }
            )
        fin = [r for r in rows if r["seed"] == seed and r["model"] == "dapd-final"]
        print(
            f"{rid}: " + ", ".join(f"{r['decoder']}({r['knob']}) {r['validity']:.2f}@{r['nfe']:.1f}" for r in fin),
            flush=True,
        )
        if seed in args.rainbow_seeds:
            for row in rainbow_curve(seed, args):
                rows.append({"seed": seed, "model": f"rainbow-padding-g{args.rainbow_g}", **row})
    return rows, rounds


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


def table(rows: list[dict]) -> str:
    """Markdown: validity and NFE per (model, decoder, knob), mean +- std over seeds."""
    lines = ["| model | decoder | knob | NFE | validity |", "|---|---|---|---|---|"]
    keys = dict.fromkeys((r["model"], r["decoder"], r["knob"]) for r in rows)
    for model, decoder, knob in keys:
        sel = [r for r in rows if (r["model"], r["decoder"], r["knob"]) == (model, decoder, knob)]
        nfe, val = np.array([r["nfe"] for r in sel]), np.array([r["validity"] for r in sel])
        lines.append(f"| {model} | {decoder} | {knob:g} | {nfe.mean():.2f} | {val.mean():.3f} ± {val.std():.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], rounds: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in dict.fromkeys(r["model"] for r in rows)]
    fig, axes = plt.subplots(1, len(models) + 1, figsize=(4.6 * (len(models) + 1), 3.8))
    for ax, model in zip(axes, models, strict=False):
        for i, decoder in enumerate(("topk", "threshold", "dapd", "dapd_notail")):
            sel = [r for r in rows if r["model"] == model and r["decoder"] == decoder]
            knobs = list(dict.fromkeys(r["knob"] for r in sel))
            nfe = [np.mean([r["nfe"] for r in sel if r["knob"] == k]) for k in knobs]
            val = [np.mean([r["validity"] for r in sel if r["knob"] == k]) for k in knobs]
            ax.plot(nfe, val, marker="o", color=f"C{i}", label=decoder)
        ax.set(xlabel="mean NFE per sample", ylabel="validity", title=model)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[-1]
    for key, color in (("auc_all_masked", "C0"), ("auc_half_masked", "C1"), ("validity_dapd", "C2")):
        ts = sorted({r["round"] for r in rounds})
        ax.plot(
            ts, [np.mean([r[key] for r in rounds if r["round"] == t]) for t in ts], marker="o", color=color, label=key
        )
    ax.set(xlabel="round", title="federated rounds (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--samples-per-client", type=int, default=48)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--options", default="", help="workload.options of the runs")
    ap.add_argument("--eval-samples", type=int, default=512)
    ap.add_argument(
        "--rainbow-seeds", type=int, nargs="*", default=[], help="also decode the rainbow-padding base of these seeds"
    )
    ap.add_argument("--rainbow-options", default="")
    ap.add_argument("--rainbow-g", type=int, default=64)
    ap.add_argument("--rainbow-samples", type=int, default=64)
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    rows, rounds = collect(args)
    write_csv(rows, args.out / f"dapd{args.tag}.csv")
    write_csv(rounds, args.out / f"dapd_rounds{args.tag}.csv")
    plot(rows, rounds, args.out / f"dapd{args.tag}.png")
    print(table(rows))


if __name__ == "__main__":
    main()
