"""The options of :mod:`workloads.instruct` (light: read without importing torch; see :mod:`workloads.options`)."""

from __future__ import annotations

from workloads.options import (
    BATCH,
    BOOL,
    LEARNING_RATE,
    PRETRAIN_STEPS,
    Declaration,
    Option,
    Range,
    Text,
    Words,
    head_width_error,
    transformer_options,
)

TINY_MODEL = "tiny"
"""The value of ``model`` that means fedsim's own small Llama-architecture decoder (built, pretrained and cached)."""

TASKS = ("reverse", "sort", "add", "replace", "count", "last")
"""The generated instruction tasks (each row's ``category``): see :mod:`workloads.instruct`."""

MODEL = Text(
    r"[A-Za-z0-9_.~/-]{1,300}",
    "'tiny' (fedsim's own decoder), a Hugging Face model name (owner/name) or a local folder of a saved "
    "causal LM (letters, digits and _ . ~ / -)",
)
COLUMN = Text(r"[A-Za-z_][A-Za-z0-9_ .-]{0,63}", "a column name (a letter or _ first, at most 64 characters)")
OPTIONAL_COLUMN = Text(r"|[A-Za-z_][A-Za-z0-9_ .-]{0,63}", "a column name, or empty for none")
TARGETS = Text(
    r"auto|[A-Za-z0-9_.]{1,64}( [A-Za-z0-9_.]{1,64}){0,31}",
    "'auto' (peft's default modules for the model's architecture) or module names separated by spaces "
    "(e.g. q_proj v_proj)",
)


def combination_error(p: dict) -> tuple[str, str] | None:
    """The tiny decoder's head width, and a prompt-and-answer length that holds at least a few tokens."""
    if p["generation_samples"] > 0 and p["max_new_tokens"] >= p["max_length"]:
        return "max_new_tokens", f"must be below max_length={p['max_length']} (the prompt needs room)"
    return head_width_error(p)


DECLARATION = Declaration(
    options={
        "model": Option(TINY_MODEL, MODEL, "the causal LM to fine-tune: its weights, tokenizer and chat template"),
        "lora_targets": Option("auto", TARGETS, "the modules LoRA adapts (nn.Linear layers, by their last name)"),
        "max_length": Option(
            96, Range(16, 32768), "tokens per training sequence (prompt + response; longer ones are cut)"
        ),
        "packing": Option(False, BOOL, "pack several examples into each sequence of max_length tokens"),
        "gradient_checkpointing": Option(False, BOOL, "recompute each layer's activations in the backward pass"),
        "prompt_format": Option(
            "auto", ("auto", "plain"), "auto: the tokenizer's chat template when it has one; plain: ### Instruction"
        ),
        "weights_dtype": Option(
            "float32", ("float32", "bfloat16"), "dtype of the frozen base weights (bfloat16 halves them; for a GPU)"
        ),
        "tasks": Option(
            " ".join(TASKS), Words(choices=TASKS, max_words=len(TASKS)), "the generated tasks (default data only)"
        ),
        "instruction_column": Option("instruction", COLUMN, "column of the instruction (workload.dataset)"),
        "input_column": Option("input", OPTIONAL_COLUMN, "column of the optional input; empty for none"),
        "output_column": Option("output", COLUMN, "column of the expected response"),
        "category_column": Option(
            "category", OPTIONAL_COLUMN, "column of each row's category: the natural split and Dirichlet's labels"
        ),
        "generation_samples": Option(
            64, Range(0, 100_000), "held-out rows decoded greedily for exact match and ROUGE-L (0: none)"
        ),
        "max_new_tokens": Option(24, Range(1, 4096), "token budget of each greedy decoding"),
        "memory_limit_gb": Option(
            0.0, Range(0, 100_000), "refuse a run whose per-client estimate exceeds this (0: the device's free memory)"
        ),
        # The tiny decoder (model=tiny only): a Llama config with nn.Linear projections.
        **transformer_options(num_layers=2, pretrain_steps=2500, pretrain_lr=3e-3),
        "d_model": Option(96, Range(8, 1024), "model width (model=tiny)"),
        "d_ff": Option(256, Range(8, 4096), "feed-forward width (model=tiny)"),
        "pretrain_steps": Option(
            2500, Range(1, PRETRAIN_STEPS.high), "steps of pretraining the cached base (model=tiny)"
        ),
        "pretrain_samples": Option(20_000, Range(1, 1_000_000), "generated pretraining rows (model=tiny)"),
        "pretrain_batch": Option(32, BATCH, "pretraining batch size (model=tiny)"),
        "pretrain_lr": Option(3e-3, LEARNING_RATE, "pretraining learning rate, AdamW (model=tiny)"),
        "pretrain_task_share": Option(
            0.1, Range(0, 1), "share of pretraining rows from the clients' tasks, the rest other tasks (model=tiny)"
        ),
    },
    preset_overrides={
        "tiny": {},
        # A real model on a GPU: Qwen2.5-0.5B-Instruct (in the local Hugging Face cache there), bf16 weights.
        "qwen-0.5b": {
            "model": "Qwen/Qwen2.5-0.5B-Instruct",
            "max_length": 512,
            "weights_dtype": "bfloat16",
            "gradient_checkpointing": True,
            "max_new_tokens": 64,
            "generation_samples": 200,
        },
    },
    combination=combination_error,
    natural_partition_column="client",
    config_defaults={
        "tiny": {
            "train.local_epochs": 2,
            "train.batch_size": 16,
            "train.lr": 0.004,
            "workload.partition": "natural",
            "workload.samples_per_client": 96,
            "workload.test_samples": 128,
            "run.clients_per_round": 12,
            "run.rounds": 10,
            "run.eval_every": 1,
        },
        "qwen-0.5b": {
            "train.local_epochs": 1,
            "train.batch_size": 8,
            "train.lr": 0.0002,
            "workload.partition": "natural",
            "workload.samples_per_client": 500,
            "workload.test_samples": 200,
            "run.clients_per_round": 3,
            "run.rounds": 10,
            "run.eval_every": 2,
        },
    },
)
