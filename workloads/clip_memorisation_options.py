"""The options of :mod:`workloads.clip_memorisation` (light: read without importing torch; see :mod:`workloads.options`)."""

from __future__ import annotations

from typing import Any

from workloads.options import BATCH, LEARNING_RATE, PRETRAIN_STEPS, Declaration, Option, Range, Words

SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom")
INTENSITIES = ("dim", "bright")
INTERVENTIONS = ("none", "pad_bang_eot0", "pad_bang", "pad_mask", "mask_pr", "mask_eot", "mask_pad")
PAD_TOKENS = ("eot", "!")
NUM_CAPTIONS = len(INTENSITIES) * len(SIZES) * len(SHAPES) * len(POSITIONS)
STEPS = Range(1, PRETRAIN_STEPS.high)
INTERVENTION_LIST = Words(("all", *INTERVENTIONS), sep="+", max_words=len(INTERVENTIONS))


def combination_error(p: dict[str, Any]) -> tuple[str, str] | None:
    """The text tower's head width, DDIM's steps within the schedule, ``all`` alone."""
    if p["text_dim"] % p["text_heads"]:
        return "text_dim", f"must be a multiple of text_heads={p['text_heads']}"
    if p["sample_steps"] > p["diffusion_steps"]:
        return "sample_steps", f"must be at most diffusion_steps={p['diffusion_steps']}"
    if "all" in INTERVENTION_LIST.items(p["interventions"]) and p["interventions"] != "all":
        return "interventions", "'all' stands alone"
    return None


DECLARATION = Declaration(
    options={
        "image_size": Option(16, (16, 32), "image side in pixels"),
        # GroupNorm(4) and cross-attention heads of 8 channels each (channels // 8 heads).
        "channels": Option(16, Range(8, 256, multiple_of=8), "denoiser width"),
        "text_dim": Option(32, Range(8, 512), "text tower width (and the denoiser's context width)"),
        "text_layers": Option(2, Range(1, 12), "text tower layers"),
        "text_heads": Option(2, Range(1, 16), "text tower attention heads (text_dim must be a multiple)"),
        "context_len": Option(12, Range(9, 77), "caption tokens (sot, 6 words, eot and at least one pad)"),
        "clip_steps": Option(200, STEPS, "steps of contrastive text-image pretraining"),
        "clip_batch": Option(32, BATCH, "contrastive pretraining batch size"),
        "clip_lr": Option(3e-3, LEARNING_RATE, "contrastive pretraining learning rate"),
        "pretrain_steps": Option(800, STEPS, "steps of pretraining the denoiser"),
        "pretrain_batch": Option(32, BATCH, "denoiser pretraining batch size"),
        "pretrain_lr": Option(3e-3, LEARNING_RATE, "denoiser pretraining learning rate"),
        "diffusion_steps": Option(100, Range(1, 10_000), "steps of the cosine noise schedule"),
        "sample_steps": Option(10, Range(1, 10_000), "DDIM sampling steps (at most diffusion_steps)"),
        "mem_captions": Option(4, Range(1, NUM_CAPTIONS // 2), "duplicated (memorised) captions"),
        "mem_clients": Option(1, Range(1, 100_000), "clients holding the duplicated pairs"),
        "dup_fraction": Option(
            1.0, Range(0, 1, low_open=True), "share of a memorising client's rows that are duplicates"
        ),
        "pad_token": Option("eot", PAD_TOKENS, "the token captions are padded with"),
        "interventions": Option("all", INTERVENTION_LIST, "mitigations evaluated ('all' or names joined by '+')"),
        "mask_ratio": Option(0.7, Range(0, 1), "share of tokens the masking interventions zero"),
        "eval_captions": Option(12, Range(1, NUM_CAPTIONS), "unseen captions evaluated"),
        "eval_seeds": Option(3, Range(2, 100), "noise seeds per caption (diversity needs two)"),
        "threshold_quantile": Option(
            0.95, Range(0, 1, low_open=True, high_open=True), "quantile of unseen similarity that marks memorisation"
        ),
    },
    preset_overrides={
        "tiny": {},  # About 80k denoiser + 30k text-tower parameters; pretraining both takes under a minute of one core.
        # 32x32 images, twice the channels: for a long CPU run or a GPU.
        "small": {
            "image_size": 32,
            "channels": 32,
            "text_dim": 64,
            "text_layers": 3,
            "text_heads": 4,
            "context_len": 16,
            "clip_steps": 1500,
            "clip_batch": 64,
            "clip_lr": 2e-3,
            "pretrain_steps": 4000,
            "pretrain_batch": 64,
            "pretrain_lr": 1e-3,
            "diffusion_steps": 200,
            "sample_steps": 25,
            "mem_captions": 8,
            "mem_clients": 2,
            "eval_captions": 32,
            "eval_seeds": 5,
        },
    },
    combination=combination_error,
    natural_partition_column="client",
)
