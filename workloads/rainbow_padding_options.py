"""The options of :mod:`workloads.rainbow_padding` (light: read without importing torch; see :mod:`workloads.options`)."""

from __future__ import annotations

from typing import Any

from workloads.options import BATCH, POSITIONS, Declaration, Option, Range, Words, head_width_error, transformer_options

MAX_PAD_TOKENS = 16
MIN_RESPONSE, MAX_RESPONSE = 5, 30
"""Response lengths in tokens (walk symbols + the stop symbol, <eos> not counted)."""
PADDINGS = ("eos", "single", "rainbow")
CANVAS = Range(MAX_RESPONSE + 1, 2048)
"""A canvas holds the longest answer and <eos>; attention is quadratic in it, so 2048 is a GPU's size."""


def parse_lengths(text: str) -> list[int]:
    """``"32 64 128"`` -> ``[32, 64, 128]``."""
    return [int(v) for v in str(text).split()]


def combination_error(p: dict[str, Any]) -> tuple[str, str] | None:
    """Canvas sizes in order, eval_steps dividing every allocated length, the head width."""
    if p["canvas_max"] < p["canvas_min"]:
        return "canvas_max", f"must be at least canvas_min={p['canvas_min']}"
    lengths = parse_lengths(p["eval_lengths"])
    if any(p["eval_steps"] and g % p["eval_steps"] for g in lengths):
        return "eval_steps", f"must be 0 (one token per step) or divide every allocated length {lengths}"
    return head_width_error(p)


TRAIN = {"train.local_epochs": 32, "train.lr": 5e-3}
"""About 1,000 LoRA steps in a default run (10 rounds x 32 epochs x 3 batches of 16 of a client's 48
samples): what the fine-tune from <eos> to the run's padding needs (docs/workloads/rainbow-padding.md)."""

DECLARATION = Declaration(
    options={
        **transformer_options(num_layers=2, pretrain_steps=3000, pretrain_lr=3e-3),
        "positions": Option("rotary", POSITIONS, "position encoding"),
        "padding": Option("rainbow", PADDINGS, "how the fine-tuning canvases are padded"),
        "pad_tokens": Option(7, Range(1, MAX_PAD_TOKENS), "the number K of rainbow pad tokens"),
        "canvas_min": Option(32, CANVAS, "shortest training canvas"),
        "canvas_max": Option(64, CANVAS, "longest training canvas"),
        "pretrain_samples": Option(25600, Range(1, 1_000_000), "pretraining rows (held in memory)"),
        "pretrain_batch": Option(32, BATCH, "pretraining batch size"),
        "eval_lengths": Option("32 48 64", Words(numbers=CANVAS), "allocated lengths evaluated"),
        "eval_threshold": Option(0.9, Range(0, 1, high_open=True), "confidence threshold (0: eval_steps steps)"),
        "eval_steps": Option(0, Range(0, CANVAS.high), "decoding steps (0: one token per step)"),
        "eval_samples": Option(128, Range(1, 10_000), "prompts decoded per evaluation"),
        "eval_temperature": Option(1.0, Range(0, 10), "sampling temperature (0: greedy)"),
    },
    preset_overrides={
        "tiny": {},  # 0.11M parameters; pretraining takes about four minutes of one CPU core.
        # 0.8M parameters, canvases up to 128 and longer pretraining: for a GPU (not measured here).
        "small": {
            "d_model": 128,
            "num_layers": 4,
            "d_ff": 512,
            "canvas_max": 128,
            "pretrain_steps": 3000,
            "pretrain_samples": 96000,
            "pretrain_lr": 2e-3,
            "eval_lengths": "32 64 128",
            "eval_samples": 256,
        },
    },
    combination=combination_error,
    natural_partition_column="client",
    config_defaults={"tiny": TRAIN, "small": TRAIN},
)
