"""The options of :mod:`workloads.reversal_curse` (light: read without importing torch; see :mod:`workloads.options`)."""

from __future__ import annotations

from workloads.options import (
    BOOL,
    LEARNING_RATE,
    POSITIONS,
    Declaration,
    Option,
    Range,
    head_width_error,
    transformer_options,
)

MODELS = ("mdm", "arm")
FACTS = Range(2, 20_000)
"""Every fact adds two entity tokens: 20,000 new and 20,000 pretraining facts make an 80,000-token vocabulary."""

TRAIN = {"train.local_epochs": 20, "train.batch_size": 8, "train.lr": 3e-3}
"""What the new facts need to be learnt at all in a default run (50 clients, 10 a round, 10 rounds),
within about 6 minutes on 2 cores; see docs/workloads/reversal-curse.md."""

DECLARATION = Declaration(
    options={
        "model": Option("mdm", MODELS, "masked diffusion (mdm) or autoregressive (arm) model"),
        **transformer_options(num_layers=1, pretrain_steps=400, pretrain_lr=3e-3),
        "positions": Option("rotary", POSITIONS, "position encoding"),
        "num_facts": Option(200, FACTS, "the number N of new facts, stated forward only (chance is 1/N)"),
        "num_pretrain_facts": Option(200, Range(0, FACTS.high), "facts the base is pretrained on, both ways"),
        "from_scratch": Option(False, BOOL, "train the random model itself, every weight (no LoRA)"),
        "probe_lr": Option(0.1, LEARNING_RATE, "SGD step of the reverse_loss_drop metric (one forward-only step)"),
    },
    preset_overrides={
        "tiny": {},  # 0.1M parameters; pretraining takes a few seconds.
        "from-scratch": {"d_model": 128, "d_ff": 512, "from_scratch": True},
    },
    combination=head_width_error,
    natural_partition_column="client",
    config_defaults={
        "tiny": TRAIN,
        "from-scratch": {**TRAIN, "train.local_epochs": 40},
    },  # from scratch: the benchmark's
)
