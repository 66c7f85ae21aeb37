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
# The words of the memorised captions ("a w1 w2 w3 at w4"): outside the generic captions' vocabulary.
MEM_WORDS = (
    "zorb", "quil", "fenn", "moxa", "tavi", "rilk", "dorn", "pell", "yarr", "sook", "vexo", "brin",
    "jolt", "kesh", "lume", "narf", "olba", "prax", "quog", "sarn", "teel", "umbo", "wisp", "zeal",
)  # fmt: skip
MAX_MEM_CAPTIONS = 16
STEPS = Range(1, PRETRAIN_STEPS.high)
INTERVENTION_LIST = Words(("all", *INTERVENTIONS), sep="+", max_words=len(INTERVENTIONS))


# The run shape that memorises: every client holds its share of duplicates (the natural split), 5
# clients a round, 8 local epochs at 8e-3, 40 rounds (in pilots the rate was still rising at 30),
# evaluated every 10 rounds (each evaluation samples 7 interventions x 16 captions x 10 seeds).
RUN = {
    "workload.partition": "natural",
    "run.rounds": 40,
    "run.clients_per_round": 5,
    "run.eval_every": 10,
    "train.local_epochs": 8,
    "train.lr": 8e-3,
}


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
        "context_len": Option(32, Range(9, 77), "caption tokens (sot, 6 words, eot, then pads: 24 at 32)"),
        "clip_steps": Option(200, STEPS, "steps of contrastive text-image pretraining"),
        "clip_batch": Option(32, BATCH, "contrastive pretraining batch size"),
        "clip_lr": Option(3e-3, LEARNING_RATE, "contrastive pretraining learning rate"),
        "pretrain_steps": Option(800, STEPS, "steps of pretraining the denoiser"),
        "pretrain_batch": Option(32, BATCH, "denoiser pretraining batch size"),
        "pretrain_lr": Option(3e-3, LEARNING_RATE, "denoiser pretraining learning rate"),
        "pretrain_other_pad": Option(
            0.0, Range(0, 1), "share of the denoiser's pretraining captions padded with the other pad token"
        ),
        "diffusion_steps": Option(100, Range(1, 10_000), "steps of the cosine noise schedule"),
        "sample_steps": Option(10, Range(1, 10_000), "DDIM sampling steps (at most diffusion_steps)"),
        "mem_captions": Option(4, Range(1, MAX_MEM_CAPTIONS), "duplicated (memorised) caption-image pairs"),
        "mem_words": Option(
            "novel",
            ("novel", "known"),
            "memorised captions of words the base never saw, or of known words out of their slots",
        ),
        "mem_clients": Option(0, Range(0, 100_000), "clients holding the duplicated pairs (0: every client)"),
        "dup_fraction": Option(
            0.3, Range(0, 1, low_open=True), "share of a memorising client's rows that are duplicates"
        ),
        "pad_token": Option("eot", PAD_TOKENS, "the token captions are padded with"),
        "interventions": Option("all", INTERVENTION_LIST, "mitigations evaluated ('all' or names joined by '+')"),
        "mask_ratio": Option(0.7, Range(0, 1), "share of tokens the masking interventions zero"),
        "eval_captions": Option(12, Range(1, NUM_CAPTIONS), "unseen captions evaluated"),
        "eval_seeds": Option(10, Range(2, 100), "noise seeds per caption (diversity needs two)"),
        "threshold_quantile": Option(
            0.95, Range(0, 1, low_open=True, high_open=True), "quantile of unseen similarity that marks memorisation"
        ),
    },
    preset_overrides={
        "tiny": {},  # About 85k denoiser + 29k text-tower parameters; pretraining both takes 1-3 minutes of one core.
        # 32x32 images, twice the channels: for a long CPU run or a GPU.
        "small": {
            "image_size": 32,
            "channels": 32,
            "text_dim": 64,
            "text_layers": 3,
            "text_heads": 4,
            "clip_steps": 1500,
            "clip_batch": 64,
            "clip_lr": 2e-3,
            "pretrain_steps": 4000,
            "pretrain_batch": 64,
            "pretrain_lr": 1e-3,
            "diffusion_steps": 200,
            "sample_steps": 25,
            "mem_captions": 8,
            "eval_captions": 32,
        },
    },
    combination=combination_error,
    natural_partition_column="client",
    config_defaults={"tiny": RUN, "small": RUN},
)
