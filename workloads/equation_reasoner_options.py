"""The options of :mod:`workloads.equation_reasoner` (light: read without importing torch; see :mod:`workloads.options`)."""

from __future__ import annotations

from workloads.options import BATCH, PRETRAIN_STEPS, Declaration, Option, Range, head_width_error, transformer_options

FORMATS = ("equation", "nl", "answer")
NL_VARIABILITY = (0, 1, 2, 3)
NL_OPERANDS = ("restate", "free")


def combination_error(p: dict) -> tuple[str, str] | None:
    """The heads' width, and free-form steps as their own variant (at variability 1)."""
    if p["nl_operands"] == "free" and p["nl_variability"] != 1:
        return "nl_operands", "free-form steps are their own variant: leave nl_variability at 1"
    return head_width_error(p)


DECLARATION = Declaration(
    options={
        **transformer_options(num_layers=2, pretrain_steps=400, pretrain_lr=3e-3),
        # At least one step: the one-cycle schedule needs a length.
        "pretrain_steps": Option(400, Range(1, PRETRAIN_STEPS.high), "steps of pretraining the cached base"),
        "pretrain_problems": Option(12800, Range(1, 1_000_000), "generated pretraining problems (held in memory)"),
        "pretrain_batch": Option(32, BATCH, "pretraining batch size"),
        "target_format": Option(
            "equation", FORMATS, "what the model writes: equations, natural language or the answer"
        ),
        "nl_variability": Option(1, NL_VARIABILITY, "how varied the natural-language solutions are (0: one template)"),
        "nl_operands": Option(
            "restate", NL_OPERANDS, "nl steps restate their operand in words, or name the operation only (free)"
        ),
        # Values of up to three digits keep a three-step problem and its solution within the
        # 96 source and 128 target tokens.
        "max_value": Option(99, Range(10, 999), "largest value a problem's numbers reach"),
    },
    preset_overrides={
        "tiny": {},  # 0.24M parameters; pretraining takes about 30 s of one CPU core.
        # 1.4M parameters: about 10 minutes of pretraining on one CPU core.
        "small": {
            "d_model": 128,
            "d_ff": 512,
            "num_layers": 3,
            "pretrain_steps": 3000,
            "pretrain_problems": 60000,
            "pretrain_batch": 64,
            "pretrain_lr": 2e-3,
        },
        # The paper's T5-Tiny shape (d_model 256, d_ff 1024, 4 heads, 4+4 layers), 7.4M parameters: for a GPU.
        "t5-tiny": {
            "d_model": 256,
            "d_ff": 1024,
            "num_layers": 4,
            "pretrain_steps": 20000,
            "pretrain_problems": 400000,
            "pretrain_batch": 128,
            "pretrain_lr": 1e-3,
        },
    },
    combination=combination_error,
    natural_partition_column="client",
)
