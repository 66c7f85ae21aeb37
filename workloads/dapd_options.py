"""The options of :mod:`workloads.dapd` (light: read without importing torch; see :mod:`workloads.options`)."""

from __future__ import annotations

from typing import Any

from workloads.options import (
    BATCH,
    BOOL,
    POSITIONS,
    PRETRAIN_STEPS,
    Declaration,
    Option,
    Range,
    Words,
    head_width_error,
    transformer_options,
)

NUM_VALUES = 3
DECODER_NAMES = ("one", "topk", "threshold", "dapd", "dapd_notail")
PRETRAIN_TASKS = ("format", "rule")
SAMPLES = Range(1, 1_000_000)
"""Generated rows held in memory at once (a million short canvases is a few hundred MB)."""


def copy_length(length: int) -> int:
    """Positions of one copy: L X values and L - 1 Y values."""
    return 2 * length - 1


def combination_error(p: dict[str, Any]) -> tuple[str, str] | None:
    """The head width, and every top-k's tokens per step within the G generated positions."""
    g = p["copies"] * copy_length(p["length"])
    for key, ks in (("topk_k", [p["topk_k"]]), ("eval_topk_ks", [int(k) for k in p["eval_topk_ks"].split()])):
        if max(ks) > g:
            return key, f"tokens per step must be at most G = copies * (2 length - 1) = {g}"
    return head_width_error(p)


DECLARATION = Declaration(
    options={
        **transformer_options(num_layers=2, pretrain_steps=10_000, pretrain_lr=5e-3),
        "positions": Option("rotary", POSITIONS, "position encoding"),
        "length": Option(5, Range(2, 32), "the number L of X values per copy (L - 1 constraints)"),
        "copies": Option(1, Range(1, 16), "independent copies of the task on one canvas"),
        "client_skew": Option(
            0.6, Range(1 / NUM_VALUES, 1, high_open=True), "a client's favourite value's probability"
        ),
        "from_scratch": Option(False, BOOL, "train the random model itself, every weight (no LoRA)"),
        "pretrain_task": Option("rule", PRETRAIN_TASKS, "pretraining data: Y by the rule, or uniform (format only)"),
        "pretrain_samples": Option(4096, SAMPLES, "pretraining canvases"),
        "pretrain_batch": Option(128, BATCH, "pretraining batch size"),
        "pretrain_warmup": Option(
            500,
            PRETRAIN_STEPS,
            "pretraining steps of linear learning-rate warm-up (at most pretrain_steps), then cosine decay to 0",
        ),
        "pretrain_clip": Option(1.0, Range(0, 100), "pretraining gradient-norm clip (0: none)"),
        "pretrain_restarts": Option(
            3,
            Range(0, 20),
            "pretraining attempts after the first while the base's one-token validity is below min_base_validity "
            "(each from weights and a data order of a seed derived from the run's seed and the attempt; an attempt "
            "stops at a passing check every 1,000 steps from step 5,000; the first passing attempt is kept, else "
            "the best; 0: one run)",
        ),
        "min_base_validity": Option(
            0.9,
            Range(0, 1),
            "refuse a base whose one-token-per-step validity (256 canvases, temperature 1) is lower (0: never)",
        ),
        "eval_decoders": Option(
            "one topk threshold dapd dapd_notail",
            Words(DECODER_NAMES, max_words=len(DECODER_NAMES)),
            "decoders evaluated",
        ),
        "eval_samples": Option(128, Range(1, 10_000), "canvases decoded per evaluation"),
        "eval_temperature": Option(1.0, Range(0, 10), "sampling temperature (0: greedy)"),
        "topk_k": Option(2, Range(1, 1024), "top-k decoder's tokens per step"),
        "eval_topk_ks": Option(
            "3 5", Words(numbers=Range(1, 1024)), "more top-k tokens per step evaluated (validity_topk{k}, nfe_topk{k})"
        ),
        "threshold": Option(0.9, Range(0, 1, low_open=True, high_open=True), "Fast-dLLM's confidence threshold"),
        "tau_rel": Option(0.5, Range(0, 100, low_open=True), "DAPD's threshold relative to the mean score"),
        "last_fraction": Option(
            0.3, Range(0, 1, low_open=True), "share of the last layers whose attention is averaged"
        ),
    },
    preset_overrides={
        # 0.1M parameters; pretraining: up to 10,000 steps of 128 (26 ms a step on a free CPU core) per
        # attempt, restarted from a derived seed while the base is below the guard: a fixed step count
        # leaves some seed below it (10,000: seed 2; 15,000: seeds 0 and 1), docs/workloads/dapd.md.
        "tiny": {},
        "from-scratch": {"from_scratch": True, "pretrain_steps": 0},
        "small": {"d_model": 128, "num_layers": 4, "d_ff": 512, "copies": 4},
    },
    combination=combination_error,
    natural_partition_column="client",
)
