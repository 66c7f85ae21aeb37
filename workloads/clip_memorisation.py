"""clip-memorisation: pad-token memorisation in a tiny text-to-image diffusion model (arXiv 2605.02908).

The paper: Stable Diffusion conditions on all 77 CLIP text embeddings (start token, prompt
tokens ``v_pr``, end-of-text ``v_eot`` and padding ``v_pad``). The SD 1.x tokenizer pads with
eot, so the pad embeddings are near-copies of ``v_eot``, the only embedding that CLIP's
contrastive loss trains directly. The paper finds that memorised images depend little on
``v_pr`` and strongly on ``v_pad``, and mitigates at inference time by padding with ``"!"``
instead of eot (and zeroing ``v_eot``) or by masking a share of the pad embeddings. Reported
SSCD similarity to the training image: 0.08 (pad -> "!" + eot zeroed), 0.14 (pad -> "!"),
0.10 (70 % pad masked), 0.07 (mask ``v_pad``), 0.95 (mask ``v_eot``: memorisation stays).

This workload is that experiment in miniature, federated:

Images (:func:`render`): ``image_size`` x ``image_size`` grey images in [-1, 1] drawn from four
caption attributes, ``"a <intensity> <size> <shape> at <position>"`` (2 x 2 x 4 x 4 = 64
captions), with per-row jitter of centre, radius and brightness. ``mem_captions`` memorised
pairs (:func:`memorised_captions`): a caption of four words outside that vocabulary (the generic
captions' length, so the same pads) with one unique image, a smooth random pattern
(:func:`memorised_images`), duplicated many times in the training data: the source of
memorisation.

Text tower (:class:`TextTower`): a causal transformer over ``context_len`` tokens
``<sot> words <eot> pad...`` (32: 24 pads after a six-word caption), pooled at eot, so the contrastive loss reaches only ``v_eot``
directly (every other position is trained only through the attention of later positions, and
positions after eot not at all). It is pretrained with a CLIP loss against a tiny image encoder
on jittered renderings and cached (:mod:`workloads.cache`). The tokenizer pads with eot (SD 1.x,
``pad_token="eot"``) or with ``"!"`` (``pad_token="!"``).

Denoiser (:class:`Denoiser`): a two-level convolutional U-Net with coordinate channels and three
Stable-Diffusion-style blocks of cross-attention over every text-token embedding plus a per-pixel
feed-forward (``to_q``/``to_k``/``to_v``/``to_out``, ``ff_in``/``ff_out``; key and value
projections have no bias, so a zeroed embedding contributes no value), epsilon prediction on a
cosine schedule of ``diffusion_steps`` steps, sampled with deterministic DDIM (eta = 0) in
``sample_steps`` steps. The base is pretrained once on generic renderings of all 64 captions
(with the frozen text tower) and cached. Federated LoRA adapts the cross-attention projections and
the feed-forward after them (:attr:`ClipMemorisation.lora_target_modules`; in pilots LoRA on the
attention alone memorised several times more slowly); the text tower stays frozen.

Federated data: every client (``mem_clients`` = 0), or client ``k < mem_clients``, holds
``dup_fraction`` of its rows as the memorised pairs (each of the ``mem_captions`` pairs repeated),
the rest generic renderings; other clients hold generic data only (``workload.partition =
"natural"``, the presets' default; with ``dirichlet`` the split skews over the ``group`` column, 0
generic, 1 memorised). The noise and
timestep of a training row are drawn from its ``noise_seed`` column, so a batch's loss is a
deterministic function of its rows (duplicates have distinct seeds).

Interventions (applied to the text embeddings at sampling time; ``interventions`` option, names
joined by ``+`` or ``all``):

========================  ===============================================================
``none``                  the tokenizer's own padding, nothing changed
``pad_bang_eot0``         pad with ``"!"`` and zero ``v_eot`` (the paper's mitigation 1)
``pad_bang``              pad with ``"!"``
``pad_mask``              zero a random ``mask_ratio`` share of the pad embeddings (mitigation 2)
``mask_pr``               zero the prompt-token embeddings (between sot and eot)
``mask_eot``              zero ``v_eot``
``mask_pad``              zero every pad embedding
========================  ===============================================================

Metrics of the global model, for every intervention ``<k>`` (one DDIM generation per caption and
seed in ``eval_seeds``, the same initial noise for every intervention):

- ``mem_sim_<k>``: similarity of generations for the memorised captions to their training
  images; similarity is the cosine of the mean-centred, 2x2-average-pooled images (Pearson
  correlation of pooled pixels), a fixed feature space standing in for SSCD,
- ``mem_rate_<k>``: the share of those generations above ``mem_threshold``, the
  ``threshold_quantile`` quantile of the similarity of generations for non-memorised captions
  (no intervention) to every memorised image (calibrated on non-memorised captions, each round),
- ``orig_sim_<k>``: similarity to the unmodified (``none``) generation with the same seed,
- ``attr_acc_<k>``: attribute accuracy of generations for non-memorised captions (quality): each
  generation is read as the attributes of the most similar canonical (unjittered) rendering among
  all 64 captions, scored per attribute,
- ``diversity_<k>`` and ``mem_diversity_<k>``: 1 - mean pairwise similarity across seeds, for
  non-memorised and memorised captions,
- ``cond_norm_mem_<k>`` and ``cond_norm_<k>``: the detector of Wen et al.
  (:meth:`ClipMemorisation.generate`) for memorised and non-memorised captions, and
  ``detect_auc``: the share of (memorised, non-memorised) caption pairs it orders right.

Primary metric: ``memorisation_rate`` (= ``mem_rate_none``), lower is better. ``denoise_loss`` is
the epsilon-MSE on the test rows.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn

from fedsim.errors import ConfigError
from workloads import pretraining
from workloads.base import Workload
from workloads.clip_memorisation_options import (
    DECLARATION,
    INTENSITIES,
    INTERVENTIONS,
    MEM_WORDS,
    NUM_CAPTIONS,
    PAD_TOKENS,
    POSITIONS,
    SHAPES,
    SIZES,
)
from workloads.options import Declaration
from workloads.pretraining import loss_summary, train_steps

SOT, EOT, BANG = "<sot>", "<eot>", "!"
VOCAB = (SOT, EOT, BANG, "a", "at", *INTENSITIES, *SIZES, *SHAPES, *POSITIONS, *MEM_WORDS)


# -- captions and images ------------------------------------------------------------------
def caption_attributes(index: int) -> tuple[int, int, int, int]:
    """Caption index 0..63 -> (intensity, size, shape, position) indices."""
    index, pos = divmod(index, len(POSITIONS))
    index, shape = divmod(index, len(SHAPES))
    intensity, size = divmod(index, len(SIZES))
    return intensity, size, shape, pos


def caption_text(index: int) -> str:
    """``"a bright large circle at left"`` for a caption index."""
    i, s, sh, p = caption_attributes(index)
    return f"a {INTENSITIES[i]} {SIZES[s]} {SHAPES[sh]} at {POSITIONS[p]}"


def caption_index(text: str) -> int:
    """Inverse of :func:`caption_text`."""
    words = text.split()
    i, s, sh, p = INTENSITIES.index(words[1]), SIZES.index(words[2]), SHAPES.index(words[3]), POSITIONS.index(words[5])
    return ((i * len(SIZES) + s) * len(SHAPES) + sh) * len(POSITIONS) + p


def render(captions: np.ndarray, jitter: np.ndarray, image_size: int = 16) -> np.ndarray:
    """Images of caption indices, shape (N, image_size, image_size), float32 in [-1, 1].

    Parameters
    ----------
    captions
        (N,) caption indices 0..63.
    jitter
        (N, 4) in [-1, 1]: centre x and y offset (up to 1/16 of the side), radius scale
        (+-15 %) and brightness (+-0.1); zeros give the canonical rendering.

    Background is -1; the shape is 0 (dim) or 1 (bright). Centres sit at a quarter of the
    side from the named edge, radii are 3/16 (small) or 9/32 (large) of the side (at 16 pixels
    the four small shapes still differ in every pixel count).
    """
    captions = np.asarray(captions, dtype=np.int64)
    jitter = np.asarray(jitter, dtype=np.float64).reshape(len(captions), 4)
    n = image_size
    attrs = np.array([caption_attributes(int(c)) for c in captions], dtype=np.int64).reshape(-1, 4)
    centres = np.array([[0.28, 0.5], [0.72, 0.5], [0.5, 0.28], [0.5, 0.72]]) * n  # (x, y) per position
    cx = centres[attrs[:, 3], 0] + jitter[:, 0] * n / 16
    cy = centres[attrs[:, 3], 1] + jitter[:, 1] * n / 16
    radius = np.where(attrs[:, 1] == 1, 9 / 32, 3 / 16) * n * (1 + 0.15 * jitter[:, 2])
    level = np.where(attrs[:, 0] == 1, 1.0, 0.0) + 0.1 * jitter[:, 3]
    coords = np.arange(n) + 0.5
    dx = coords[None, None, :] - cx[:, None, None]
    dy = coords[None, :, None] - cy[:, None, None]
    r = radius[:, None, None]
    shape = attrs[:, 2][:, None, None]
    circle = dx**2 + dy**2 <= r**2
    square = np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    triangle = (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)  # apex up
    cross = ((np.abs(dx) <= r / 3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r / 3) & (np.abs(dx) <= r))
    mask = np.select([shape == 0, shape == 1, shape == 2], [circle, square, triangle], cross)
    return np.where(mask, level[:, None, None], -1.0).astype(np.float32)


def memorised_images(seed: int, count: int, image_size: int = 16) -> np.ndarray:
    """``count`` unique training images of the memorised pairs, (count, n, n) in [-1, 1].

    A 4x4 grid of uniform values bilinearly upsampled and scaled to span [-1, 1]: smooth,
    image-like, and unlike any rendering of a caption.
    """
    rng = np.random.default_rng([seed, 0x4D454D])
    grid = torch.from_numpy(rng.uniform(-1, 1, size=(count, 1, 4, 4)).astype(np.float32))
    up = F.interpolate(grid, size=(image_size, image_size), mode="bilinear", align_corners=True)[:, 0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    return (2 * (up - lo) / (hi - lo).clamp_min(1e-6) - 1).numpy()


def memorised_captions(seed: int, count: int, words: str = "novel") -> list[str]:
    """The captions of the memorised pairs, ``"a w1 w2 w3 at w4"``, distinct, drawn from the seed.

    ``novel`` (the default): four distinct words of :data:`MEM_WORDS`, which the base never saw
    (their token embeddings alone identify the caption; no rendering the base was pretrained on
    pulls it towards a shape). ``known``: four words of the generic vocabulary, each out of its slot
    (the slots' attribute kinds deranged, e.g. ``"a circle left bright at small"``), so no memorised
    caption is a generic one or reads as its attributes; only the combination is unique, as for
    memorised Stable Diffusion prompts, which are ordinary words. Both have the generic captions'
    length, so the same number of pads.
    """
    rng = np.random.default_rng([seed, 0xCA9])
    out: list[str] = []
    while len(out) < count:
        if words == "novel":
            w = [MEM_WORDS[int(i)] for i in rng.choice(len(MEM_WORDS), size=4, replace=False)]
        else:  # known words, each out of its slot: no generic caption, no slot reads as its attribute
            slots = (INTENSITIES, SIZES, SHAPES, POSITIONS)
            order = rng.permutation(4)
            while any(order[i] == i for i in range(4)):
                order = rng.permutation(4)
            w = [slots[int(order[i])][int(rng.integers(len(slots[int(order[i])])))] for i in range(4)]
        text = f"a {w[0]} {w[1]} {w[2]} at {w[3]}"
        if text not in out:
            out.append(text)
    return out


def image_features(images: torch.Tensor) -> torch.Tensor:
    """(N, n, n) -> (N, (n/2)^2) unit vectors: 2x2 average pool, mean-centred, L2-normalised."""
    pooled = F.avg_pool2d(images[:, None], 2).flatten(1)
    pooled = pooled - pooled.mean(dim=1, keepdim=True)
    return pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-6)


class Tokenizer:
    """Word tokenizer of the caption language: ``<sot> words <eot>`` then padding to ``context_len``.

    ``pad="eot"`` pads with the eot token (SD 1.x / CLIP ViT-L), ``pad="!"`` with ``"!"``.
    """

    def __init__(self, context_len: int):
        self.context_len = context_len
        self.ids = {w: i for i, w in enumerate(VOCAB)}
        self.sot_id, self.eot_id, self.bang_id = self.ids[SOT], self.ids[EOT], self.ids[BANG]

    def __len__(self) -> int:
        return len(VOCAB)

    def __call__(self, captions: list[str], pad: str = "eot") -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, L) int64, eot position (B,) int64)."""
        if pad not in PAD_TOKENS:
            raise ValueError(f"pad={pad!r}: must be one of {PAD_TOKENS}")
        pad_id = self.eot_id if pad == "eot" else self.bang_id
        rows, eot = [], []
        for text in captions:
            words = [self.ids[w] for w in text.split()][: self.context_len - 2]
            row = [self.sot_id, *words, self.eot_id]
            eot.append(len(row) - 1)
            rows.append(row + [pad_id] * (self.context_len - len(row)))
        return torch.tensor(rows, dtype=torch.int64), torch.tensor(eot, dtype=torch.int64)


def token_roles(eot_pos: torch.Tensor, context_len: int) -> dict[str, torch.Tensor]:
    """Boolean (B, L) masks of the prompt positions (between sot and eot), eot, and padding."""
    pos = torch.arange(context_len)[None, :]
    e = eot_pos[:, None]
    return {"prompt": (pos > 0) & (pos < e), "eot": pos == e, "pad": pos > e}


# -- models ---------------------------------------------------------------------------------
class _TextBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(dim)
        self.c_qkv = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.fc_out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D)
        b, seq, d = x.shape
        q, k, v = self.c_qkv(self.ln_1(x)).view(b, seq, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # position i sees 0..i
        x = x + self.c_proj(a.transpose(1, 2).reshape(b, seq, d))
        return x + self.fc_out(F.gelu(self.fc(self.ln_2(x))))


class TextTower(nn.Module):
    """CLIP-style causal text transformer: token embeddings (B, L, D) and the eot-pooled feature."""

    def __init__(self, vocab: int, context_len: int, dim: int, layers: int, heads: int, embed_dim: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, dim)
        self.positional_embedding = nn.Parameter(torch.randn(context_len, dim) * 0.02)
        self.blocks = nn.ModuleList(_TextBlock(dim, heads) for _ in range(layers))
        self.ln_final = nn.LayerNorm(dim)
        self.text_projection = nn.Linear(dim, embed_dim, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, D) per-token embeddings (after the final LayerNorm), as SD reads them."""
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)

    def pooled(self, ids: torch.Tensor, eot_pos: torch.Tensor) -> torch.Tensor:
        """(B, E): the projected eot embedding, the only one CLIP's loss sees."""
        h = self(ids)
        return self.text_projection(h[torch.arange(len(ids)), eot_pos])


class ImageEncoder(nn.Module):
    """The contrastive partner of the text tower (used only in its pretraining)."""

    def __init__(self, image_size: int, embed_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Flatten(),
            nn.Linear(32 * (image_size // 4) ** 2, embed_dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, n, n) -> (B, E)
        return self.net(images[:, None])


class ClipPair(nn.Module):
    """Text tower + image encoder + logit scale: what the CLIP pretraining trains and caches."""

    def __init__(self, text: TextTower, image: ImageEncoder):
        super().__init__()
        self.text = text
        self.image = image
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) integer steps -> (B, dim) sinusoidal features (Transformer / DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(4, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(4, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.temb(temb)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class CrossAttention(nn.Module):
    """A Stable-Diffusion-style transformer block over the pixels: cross-attention to every
    text-token embedding, then a per-pixel feed-forward, both residual.

    ``softmax(Q K^T / sqrt(d_head)) V`` with Q = to_q(GroupNorm(x)), K = to_k(c), V = to_v(c);
    K and V have no bias, so a zeroed embedding has key 0 (logit 0) and value 0. The
    feed-forward ``ff_out(GELU(ff_in(LayerNorm(h))))`` (2x wider) is SD's ``ff``; every
    projection is a ``Linear``, so LoRA factors stay matrices.
    """

    def __init__(self, channels: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(4, channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(context_dim, channels, bias=False)
        self.to_v = nn.Linear(context_dim, channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        self.norm_ff = nn.LayerNorm(channels)
        self.ff_in = nn.Linear(channels, 2 * channels)
        self.ff_out = nn.Linear(2 * channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        dh = c // self.heads
        q = self.to_q(h).view(b, -1, self.heads, dh).transpose(1, 2)
        k = self.to_k(context).view(b, -1, self.heads, dh).transpose(1, 2)
        v = self.to_v(context).view(b, -1, self.heads, dh).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, dh)
        h = x.flatten(2).transpose(1, 2) + self.to_out(a.transpose(1, 2).reshape(b, hgt * wid, c))
        h = h + self.ff_out(F.gelu(self.ff_in(self.norm_ff(h))))
        return h.transpose(1, 2).reshape(b, c, hgt, wid)


class Denoiser(nn.Module):
    """Epsilon-prediction U-Net: (x_t (B, n, n), t (B,), context (B, L, D)) -> eps (B, n, n).

    conv_in (image + x/y coordinate channels) -> res + cross-attn at n x n -> stride-2 conv ->
    res + cross-attn + res at n/2 -> upsample, concat skip -> res + cross-attn -> conv_out.
    """

    def __init__(self, channels: int, context_dim: int, heads: int):
        super().__init__()
        c, temb = channels, 4 * channels
        self.c = c
        self.time_mlp = nn.Sequential(nn.Linear(c, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(3, c, 3, padding=1)
        self.res1 = _ResBlock(c, c, temb)
        self.attn1 = CrossAttention(c, context_dim, heads)
        self.down = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.res2 = _ResBlock(2 * c, 2 * c, temb)
        self.attn2 = CrossAttention(2 * c, context_dim, heads)
        self.res3 = _ResBlock(2 * c, 2 * c, temb)
        self.up = nn.Conv2d(2 * c, c, 3, padding=1)
        self.res4 = _ResBlock(2 * c, c, temb)
        self.attn3 = CrossAttention(c, context_dim, heads)
        self.norm_out = nn.GroupNorm(4, c)
        self.conv_out = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        grid = torch.linspace(-1, 1, n)
        coords = torch.stack(torch.meshgrid(grid, grid, indexing="ij"))[None].expand(b, 2, n, n)
        temb = self.time_mlp(timestep_embedding(t, self.c))
        h1 = self.attn1(self.res1(self.conv_in(torch.cat([x[:, None], coords], 1)), temb), context)
        h = self.res2(self.down(h1), temb)
        h = self.res3(self.attn2(h, context), temb)
        h = self.up(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.attn3(self.res4(torch.cat([h, h1], 1), temb), context)
        return self.conv_out(F.silu(self.norm_out(h)))[:, 0]


class TextToImage(nn.Module):
    """The base model: frozen text tower + denoiser. ``forward(x, t, ids)`` -> predicted noise."""

    def __init__(self, text: TextTower, unet: Denoiser):
        super().__init__()
        self.text = text
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, self.text(ids))


def cosine_alpha_bar(steps: int) -> torch.Tensor:
    """(steps,) cumulative signal share alpha_bar_t, t = 1..steps (Nichol & Dhariwal 2021, s = 0.008)."""
    s = 0.008
    x = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((x + s) / (1 + s) * math.pi / 2) ** 2
    ab = f / f[0]
    betas = (1 - ab[1:] / ab[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0).float()


# -- the workload -------------------------------------------------------------------------------
class ClipMemorisation(Workload):
    supports_gpu: ClassVar[bool] = False  # its own batches; CPU noise, positions and targets in the loss and evaluation
    name: ClassVar[str] = "clip-memorisation"
    description: ClassVar[str] = (
        "tiny CLIP text tower + conditional U-Net (DDIM), LoRA on cross-attention + feed-forward; duplicated "
        "pairs memorised; pad/eot interventions"
    )
    declaration: ClassVar[Declaration] = DECLARATION
    primary_metric: ClassVar[str] = "memorisation_rate"
    higher_is_better: ClassVar[bool] = False
    # Cross-attention (how the denoiser reads the text) and the feed-forward after it (needed to
    # paint a memorised image; with the attention alone memorisation grew several times slower).
    # Only Linear layers: fedsim's LoRA aggregation takes matrix factors, not conv kernels.
    lora_target_modules: ClassVar[list[str]] = ["to_q", "to_k", "to_v", "to_out", "ff_in", "ff_out"]
    label_column: ClassVar[str] = "group"

    def __init__(self, spec):
        super().__init__(spec)
        p = self.params
        self.tokenizer = Tokenizer(p["context_len"])
        self.interventions = parse_interventions(p["interventions"])
        self.mem_captions = memorised_captions(spec.seed, p["mem_captions"], p["mem_words"])
        self.mem_images = torch.from_numpy(memorised_images(spec.seed, p["mem_captions"], p["image_size"]))
        self.alpha_bar = cosine_alpha_bar(p["diffusion_steps"])
        self._data: tuple[Dataset, Dataset] | None = None
        self._flops: float | None = None

    # -- models ---------------------------------------------------------------------------
    def _payload(self, part: str, **extra: Any) -> dict[str, Any]:
        from workloads.cache import source_digest

        keys = {
            "clip": (
                "image_size",
                "text_dim",
                "text_layers",
                "text_heads",
                "context_len",
                "clip_steps",
                "clip_batch",
                "clip_lr",
            ),
        }.get(part)
        params = {k: self.params[k] for k in keys} if keys else dict(self.params)
        for k in ("interventions", "mask_ratio", "eval_captions", "eval_seeds", "threshold_quantile", "sample_steps"):
            params.pop(k, None)  # evaluation only
        for k in ("mem_captions", "mem_words", "mem_clients", "dup_fraction"):
            params.pop(k, None)  # federated data only
        return {
            "workload": self.name,
            "part": part,
            "params": params,
            "seed": self.spec.seed,
            "code": source_digest(sys.modules[__name__], pretraining),
            "torch": torch.__version__.split("+")[0],
            **extra,
        }

    def _text_tower(self) -> TextTower:
        p = self.params
        return TextTower(
            len(self.tokenizer), p["context_len"], p["text_dim"], p["text_layers"], p["text_heads"], p["text_dim"]
        )

    def build_clip(self) -> tuple[ClipPair, dict[str, Any]]:
        """The contrastively pretrained text tower and image encoder (cached)."""
        from workloads.cache import cached_model

        def build() -> nn.Module:
            with torch.random.fork_rng():
                torch.manual_seed(self.spec.seed)
                return ClipPair(self._text_tower(), ImageEncoder(self.params["image_size"], self.params["text_dim"]))

        clip, meta = cached_model(self.name, self._payload("clip"), build, self._pretrain_clip)
        clip.eval()
        return clip, meta

    def build_base_model(self) -> nn.Module:
        from workloads.cache import cached_model

        clip, clip_meta = self.build_clip()
        p = self.params

        def build() -> nn.Module:
            with torch.random.fork_rng():
                torch.manual_seed(self.spec.seed + 1)
                unet = Denoiser(p["channels"], p["text_dim"], max(1, p["channels"] // 8))
            model = TextToImage(self._text_tower(), unet)
            model.text.load_state_dict(clip.text.state_dict())
            return model

        def pretrain(model: nn.Module) -> dict[str, Any]:
            return self._pretrain_denoiser(model)

        model, meta = cached_model(self.name, self._payload("denoiser", clip_key=clip_meta["key"]), build, pretrain)
        self.pretrain_meta = {"clip": clip_meta, "denoiser": meta}
        model.eval()
        return model

    def _random_renderings(
        self, rng: np.random.Generator, batch: int, distinct: bool
    ) -> tuple[list[str], torch.Tensor]:
        idx = rng.choice(NUM_CAPTIONS, size=batch, replace=not distinct)
        images = render(idx, rng.uniform(-1, 1, size=(batch, 4)), self.params["image_size"])
        return [caption_text(int(i)) for i in idx], torch.from_numpy(images)

    def _pretrain_clip(self, clip: nn.Module) -> dict[str, Any]:
        """Symmetric InfoNCE (CLIP) between eot-pooled text features and image features."""
        p = self.params
        rng = np.random.default_rng([self.spec.seed, 0xC11F])
        opt = torch.optim.AdamW(clip.parameters(), lr=p["clip_lr"], weight_decay=0.0)
        batch = min(p["clip_batch"], NUM_CAPTIONS)
        clip.train()
        losses = []
        for _ in range(p["clip_steps"]):
            captions, images = self._random_renderings(rng, batch, distinct=True)
            ids, eot = self.tokenizer(captions, p["pad_token"])
            t = F.normalize(clip.text.pooled(ids, eot), dim=1)
            v = F.normalize(clip.image(images), dim=1)
            logits = clip.logit_scale.clamp(max=math.log(100)).exp() * t @ v.T
            target = torch.arange(batch)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        clip.eval()
        with torch.no_grad():
            captions, images = self._random_renderings(rng, batch, distinct=True)
            ids, eot = self.tokenizer(captions, p["pad_token"])
            sims = F.normalize(clip.text.pooled(ids, eot), dim=1) @ F.normalize(clip.image(images), dim=1).T
            top1 = float((sims.argmax(1) == torch.arange(batch)).float().mean())
        return {
            "steps": len(losses),
            "loss_first": losses[0],
            "loss_last_20": float(np.mean(losses[-20:])),
            "top1": top1,
        }

    def _pretrain_denoiser(self, model: nn.Module) -> dict[str, Any]:
        """Epsilon-MSE on fresh jittered renderings of all 64 captions; the text tower stays frozen."""
        p = self.params
        rng = np.random.default_rng([self.spec.seed, 0xDE40])
        gen = torch.Generator().manual_seed(self.spec.seed)
        for q in model.text.parameters():
            q.requires_grad_(False)
        other = "!" if p["pad_token"] == "eot" else "eot"

        def renderings():  # fresh jittered renderings every step: one endless pass
            while True:
                captions, x0 = self._random_renderings(rng, p["pretrain_batch"], distinct=False)
                ids, _ = self.tokenizer(captions, p["pad_token"])
                if p["pretrain_other_pad"] > 0:  # these rows padded with the other token
                    swap = torch.from_numpy(rng.random(len(captions)) < p["pretrain_other_pad"])
                    ids = torch.where(swap[:, None], self.tokenizer(captions, other)[0], ids)
                t = torch.randint(0, p["diffusion_steps"], (len(x0),), generator=gen)
                yield x0, ids, t, torch.randn(x0.shape, generator=gen)

        loss = lambda model, batch: self._eps_loss(model, *batch)  # noqa: E731
        params = list(model.unet.parameters())
        losses = train_steps(model, renderings, loss, p["pretrain_steps"], p["pretrain_lr"], params)
        for q in model.parameters():
            q.requires_grad_(True)
        return loss_summary(losses)

    def _eps_loss(self, model: nn.Module, x0, ids, t, noise) -> torch.Tensor:
        ab = self.alpha_bar[t][:, None, None]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        return F.mse_loss(model(xt, t, ids), noise)

    # -- data -------------------------------------------------------------------------------
    def build_data(self) -> tuple[Dataset, Dataset]:
        if self._data is None:
            if self.spec.dataset:
                raise ConfigError(f"workload.dataset: {self.name} renders its own images; leave it empty")
            self._data = self._generate_data()
        return self._data

    def _rows(self, rng: np.random.Generator, captions: list[int], client: int, group: int, base: int) -> dict:
        """Rows of generic caption indices (``group`` 0) or of memorised pair indices (``group`` 1)."""
        n = len(captions)
        return {
            "caption": [self.mem_captions[c] if group else caption_text(c) for c in captions],
            "caption_id": [-1 if group else c for c in captions],
            "jitter": rng.uniform(-1, 1, size=(n, 4)).round(4).tolist(),
            "mem_index": [c if group else -1 for c in captions],
            "group": [group] * n,
            "client": [client] * n,
            "noise_seed": [base + i for i in range(n)],
        }

    def _generate_data(self) -> tuple[Dataset, Dataset]:
        p, spec = self.params, self.spec
        generic = list(range(NUM_CAPTIONS))
        mem_clients = min(p["mem_clients"] or spec.num_clients, spec.num_clients)
        columns: dict[str, list] = {}
        for client in range(spec.num_clients):
            rng = np.random.default_rng([spec.seed, client, 0xDA7A])
            n_mem = int(round(p["dup_fraction"] * spec.samples_per_client)) if client < mem_clients else 0
            mem = [i % len(self.mem_captions) for i in range(n_mem)]
            gen = [generic[int(i)] for i in rng.integers(len(generic), size=spec.samples_per_client - n_mem)]
            base = (spec.seed * 1000 + client) * 100_000
            for group, caps in ((1, mem), (0, gen)):
                rows = self._rows(rng, caps, client, group, base + (0 if group else 50_000))
                for k, v in rows.items():
                    columns.setdefault(k, []).extend(v)
        rng = np.random.default_rng([spec.seed, 0x7E57])
        # Test captions: non-memorised, every one before any repeats (evaluation uses the first ones).
        order = rng.permutation(generic)
        test_caps = [int(order[i % len(order)]) for i in range(spec.test_samples)]
        test = self._rows(rng, test_caps, -1, 0, 10**9 + spec.seed * 100_000)
        return Dataset.from_dict(columns), Dataset.from_dict(test)

    def batches(self, data: Dataset, batch_size: int, generator: torch.Generator | None) -> Iterator[dict]:
        """Shuffled mini-batches; with a generator every batch also draws a fresh noise salt from it.

        Local training then sees new timesteps and noise every step (deterministic for the
        generator's seed), while ``collate`` alone (salt 0) keeps a batch's loss a function of its rows.
        """
        n = len(data)
        order = torch.randperm(n, generator=generator).tolist() if generator is not None else list(range(n))
        for start in range(0, n, batch_size):
            salt = int(torch.randint(1, 2**62, (1,), generator=generator)) if generator is not None else 0
            yield self.collate(data[order[start : start + batch_size]], salt)

    def collate(self, rows: dict[str, list], salt: int = 0) -> dict[str, torch.Tensor]:
        """Rendered (or memorised) images, token ids, and each row's timestep and noise.

        Row noise comes from the stream ``(noise_seed, salt)``: fixed for a row when ``salt = 0``.
        """
        p = self.params
        ids = np.maximum(np.asarray(rows["caption_id"]), 0)  # memorised rows (-1) get their own image below
        images = torch.from_numpy(render(ids, np.asarray(rows["jitter"]), p["image_size"]))
        mem = torch.as_tensor(rows["mem_index"])
        if (mem >= 0).any():
            images[mem >= 0] = self.mem_images[mem[mem >= 0]]
        ids, _ = self.tokenizer(rows["caption"], p["pad_token"])
        t, noise = [], []
        for s in rows["noise_seed"]:
            g = torch.Generator().manual_seed(_seed(int(s), salt) if salt else int(s))
            t.append(int(torch.randint(0, p["diffusion_steps"], (1,), generator=g)))
            noise.append(torch.randn(images.shape[1:], generator=g))
        return {"x0": images, "ids": ids, "t": torch.tensor(t), "noise": torch.stack(noise)}

    # -- training ----------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Epsilon-MSE ``|| eps - eps_theta(sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, t, c) ||^2`` (DDPM)."""
        return self._eps_loss(model, batch["x0"], batch["ids"], batch["t"], batch["noise"])

    # -- sampling and interventions -------------------------------------------------------------
    def contexts(
        self, text: nn.Module, captions: list[str], intervention: str, generator: torch.Generator
    ) -> torch.Tensor:
        """(B, L, D) text embeddings of ``captions`` under ``intervention`` (see the module docstring)."""
        return intervene(
            text, self.tokenizer, captions, intervention, self.params["pad_token"], self.params["mask_ratio"], generator
        )

    @torch.no_grad()
    def sample(self, model: nn.Module, context: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from ``noise`` (B, n, n) in ``sample_steps`` steps; x0 in [-1, 1]."""
        return self._ddim(_inner(model).unet, context, noise)[0]

    def _ddim(self, unet: nn.Module, context: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`sample`'s x0 and the noise prediction of its first step (at t = T - 1, from ``noise``)."""
        ab = self.alpha_bar
        steps = torch.linspace(len(ab) - 1, 0, self.params["sample_steps"]).round().long().tolist()
        x = noise
        x0 = first = x
        for i, t in enumerate(steps):
            a_t = ab[t]
            eps = unet(x, torch.full((len(x),), t, dtype=torch.long), context)
            if i == 0:
                first = eps
            x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
            if i + 1 < len(steps):
                a_prev = ab[steps[i + 1]]
                eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x0, first

    def _caption_key(self, text: str) -> int:
        """A caption's index for seeding: 0..63 for the generic captions, 64 + j for memorised pair j."""
        return NUM_CAPTIONS + self.mem_captions.index(text) if text in self.mem_captions else caption_index(text)

    def _initial_noise(self, captions: list[str], seeds: list[int]) -> torch.Tensor:
        """(len(captions) * len(seeds), n, n): caption j with seed s from the stream ``(run seed, s, caption)``."""
        n = self.params["image_size"]
        return torch.stack(
            [
                torch.randn(
                    n, n, generator=torch.Generator().manual_seed(_seed(self.spec.seed, s, self._caption_key(c)))
                )
                for c in captions
                for s in seeds
            ]
        )

    def _intervened(self, text: nn.Module, captions: list[str], seeds: list[int]) -> Iterator[tuple[str, torch.Tensor]]:
        """(intervention, (len(captions) * len(seeds), L, D) contexts) for every evaluated intervention."""
        flat_caps = [c for c in captions for _ in seeds]
        for k in self.interventions:
            gen = torch.Generator().manual_seed(_seed(self.spec.seed, 0, INTERVENTIONS.index(k), 1))
            yield k, self.contexts(text, flat_caps, k, gen)

    @torch.no_grad()
    def generate(
        self, model: nn.Module, captions: list[str], seeds: list[int]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Generations and the memorisation detector per intervention: ``(name -> (len(captions),
        len(seeds), n, n) images, name -> (len(captions),) detector values)``.

        Caption j with seed s starts from the same noise under every intervention, so generations
        are comparable pairwise. The detector is Wen et al.'s (ICLR 2024): the magnitude of the
        text-conditional part of the noise prediction at the first sampling step,
        ``|| eps(x_T, T, c) - eps(x_T, T, c_empty) ||`` (root mean square over pixels, ``c_empty`` the
        empty caption ``<sot> <eot>`` + pads), averaged over the seeds: memorised prompts pull the
        prediction far from the unconditional one from the first step on. Its conditional part is
        the sampler's own first step.
        """
        n = self.params["image_size"]
        unet, text = _inner(model).unet, _inner(model).text
        noise = self._initial_noise(captions, seeds)
        ids, _ = self.tokenizer([""] * len(noise), self.params["pad_token"])
        uncond = unet(noise, torch.full((len(noise),), len(self.alpha_bar) - 1, dtype=torch.long), text(ids))
        images, norms = {}, {}
        for k, ctx in self._intervened(text, captions, seeds):
            x0, first = self._ddim(unet, ctx, noise)
            images[k] = x0.view(len(captions), len(seeds), n, n)
            norms[k] = (first - uncond).pow(2).mean((1, 2)).sqrt().view(len(captions), len(seeds)).mean(1)
        return images, norms

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        p = self.params
        model.eval()
        seeds = list(range(p["eval_seeds"]))
        seen: list[str] = list(dict.fromkeys(c for c in data["caption"] if c not in self.mem_captions))
        seen = seen[: p["eval_captions"]]
        mem_caps = list(self.mem_captions)
        gens, norms = self.generate(model, mem_caps + seen, seeds)
        m = len(mem_caps)
        mem_feat = image_features(self.mem_images)  # (M, f)
        canon = image_features(
            torch.from_numpy(render(np.arange(NUM_CAPTIONS), np.zeros((NUM_CAPTIONS, 4)), p["image_size"]))
        )
        truth = torch.tensor([caption_attributes(caption_index(c)) for c in seen])  # (N, 4)

        none = gens["none"]
        ref = image_features(none.flatten(0, 1)).view(none.shape[0], none.shape[1], -1)  # (C, S, f), unmodified
        null = ref[m:].flatten(0, 1) @ mem_feat.T  # non-memorised generations vs memorised images
        threshold = float(torch.quantile(null.flatten(), p["threshold_quantile"])) if len(seen) else 0.5
        out: dict[str, float] = {"mem_threshold": threshold}
        for k, g in gens.items():
            feats = image_features(g.flatten(0, 1)).view(g.shape[0], g.shape[1], -1)  # (C, S, f)
            mem_sim = (feats[:m] * mem_feat[:, None]).sum(-1)  # (M, S)
            out[f"mem_sim_{k}"] = float(mem_sim.mean())
            out[f"mem_rate_{k}"] = float((mem_sim > threshold).float().mean())
            out[f"orig_sim_{k}"] = float((feats * ref).sum(-1).mean())
            out[f"cond_norm_mem_{k}"] = float(norms[k][:m].mean())
            if len(seen):
                guess = (feats[m:].flatten(0, 1) @ canon.T).argmax(1)
                attrs = torch.tensor([caption_attributes(int(i)) for i in guess]).view(len(seen), len(seeds), 4)
                out[f"attr_acc_{k}"] = float((attrs == truth[:, None]).float().mean())
                out[f"diversity_{k}"] = _diversity(feats[m:])
                out[f"cond_norm_{k}"] = float(norms[k][m:].mean())
            out[f"mem_diversity_{k}"] = _diversity(feats[:m])
        if len(seen):  # the share of (memorised, non-memorised) caption pairs the detector orders right
            out["detect_auc"] = float((norms["none"][:m, None] > norms["none"][None, m:]).float().mean())
        out["memorisation_rate"] = out["mem_rate_none"]
        out["memorisation_similarity"] = out["mem_sim_none"]
        batch = self.collate(data[: min(len(data), 64)])
        out["denoise_loss"] = float(self.loss(model, batch))
        return out

    def flops_per_sample(self) -> float:
        """Training FLOPs per sample: 3 x forward FLOPs of the denoiser (counted by hooks) + the text forward."""
        if self._flops is None:
            p = self.params
            model = TextToImage(self._text_tower(), Denoiser(p["channels"], p["text_dim"], max(1, p["channels"] // 8)))
            counts = {"unet": 0.0, "text": 0.0}

            def hook(part):
                def fn(mod, inp, out):
                    if isinstance(mod, nn.Conv2d):
                        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
                        counts[part] += 2.0 * k * out.numel()
                    elif isinstance(mod, nn.Linear):
                        counts[part] += 2.0 * mod.in_features * out.numel()

                return fn

            handles = [
                m.register_forward_hook(hook("unet"))
                for m in model.unet.modules()
                if isinstance(m, (nn.Conv2d, nn.Linear))
            ]
            handles += [m.register_forward_hook(hook("text")) for m in model.text.modules() if isinstance(m, nn.Linear)]
            with torch.no_grad():
                n = p["image_size"]
                ids, _ = self.tokenizer([caption_text(0)])
                model(torch.zeros(1, n, n), torch.zeros(1, dtype=torch.long), ids)
            for h in handles:
                h.remove()
            attn = 0.0  # attention score and weighted sum: 4 * HW * L * C per cross-attention
            for res, ch in ((n * n, p["channels"]), ((n // 2) ** 2, 2 * p["channels"]), (n * n, p["channels"])):
                attn += 4.0 * res * p["context_len"] * ch
            self._flops = 3.0 * (counts["unet"] + attn) + counts["text"]
        return self._flops


def _inner(model: nn.Module) -> TextToImage:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(x) for x in parts]).generate_state(1, np.uint64)[0] >> 1)


def _diversity(feats: torch.Tensor) -> float:
    """1 - mean pairwise cosine across seeds; feats (C, S, f) -> float (0 when S < 2)."""
    s = feats.shape[1]
    if feats.shape[0] == 0 or s < 2:
        return 0.0
    sims = feats @ feats.transpose(1, 2)  # (C, S, S)
    off = sims.sum((1, 2)) - sims.diagonal(dim1=1, dim2=2).sum(1)
    return float(1 - (off / (s * (s - 1))).mean())


def parse_interventions(text: str) -> tuple[str, ...]:
    """``"all"`` or names joined by ``+`` (``none`` always first) -> tuple of names; unknown names raise ConfigError."""
    names = INTERVENTIONS if text == "all" else tuple(dict.fromkeys(x.strip() for x in text.split("+") if x.strip()))
    bad = [x for x in names if x not in INTERVENTIONS]
    if bad or not names:
        raise ConfigError(
            f"workload.options: interventions={text!r}: unknown {', '.join(bad) or '(empty)'}; "
            f"use 'all' or names joined by '+' from {', '.join(INTERVENTIONS)}"
        )
    return ("none", *(x for x in names if x != "none"))


def intervene(
    text: nn.Module,
    tokenizer: Tokenizer,
    captions: list[str],
    intervention: str,
    pad_token: str,
    mask_ratio: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """The (B, L, D) text embeddings the denoiser reads under one intervention.

    Masking an embedding sets it to zero after the text tower (its key and value are then zero
    in every cross-attention). ``pad_mask`` zeroes ``round(mask_ratio * #pads)`` pad positions per
    caption, chosen by ``generator``.
    """
    if intervention not in INTERVENTIONS:
        raise ValueError(f"unknown intervention {intervention!r}")
    pad = "!" if intervention in ("pad_bang", "pad_bang_eot0") else pad_token
    ids, eot = tokenizer(captions, pad)
    ctx = text(ids)
    roles = token_roles(eot, ids.shape[1])
    zero = torch.zeros_like(ids, dtype=torch.bool)
    if intervention == "pad_bang_eot0" or intervention == "mask_eot":
        zero = roles["eot"]
    elif intervention == "mask_pr":
        zero = roles["prompt"]
    elif intervention == "mask_pad":
        zero = roles["pad"]
    elif intervention == "pad_mask":
        zero = zero.clone()
        for b in range(len(ids)):
            pads = roles["pad"][b].nonzero().flatten()
            k = int(round(mask_ratio * len(pads)))
            chosen = pads[torch.randperm(len(pads), generator=generator)[:k]]
            zero[b, chosen] = True
    return ctx.masked_fill(zero[..., None], 0.0)


# -- figures and tables of a run (notebook) -------------------------------------------------
def image_grid(workload: ClipMemorisation, model: nn.Module, num_captions: int = 4, seed: int = 0, title: str = ""):
    """A matplotlib Figure: the memorised captions' training images (top row), then one row of
    generations per intervention (same initial noise in a column)."""
    import matplotlib.pyplot as plt

    caps = workload.mem_captions[:num_captions]
    gens, _ = workload.generate(model, caps, [seed])
    rows = [("training image", workload.mem_images[: len(caps)])] + [(k, g[:, 0]) for k, g in gens.items()]
    fig, axes = plt.subplots(len(rows), len(caps), figsize=(1.3 * len(caps) + 1.2, 1.25 * len(rows)), squeeze=False)
    for i, (label, images) in enumerate(rows):
        for j in range(len(caps)):
            ax = axes[i][j]
            ax.imshow(images[j].numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
            if i == 0:
                ax.set_title(caps[j].removeprefix("a "), fontsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def intervention_table(metrics: dict[str, float]) -> list[dict[str, Any]]:
    """One row per intervention found in a round's ``metrics`` (keys ``<metric>_<intervention>``)."""
    rows = []
    for k in INTERVENTIONS:
        if f"mem_sim_{k}" not in metrics:
            continue
        row: dict[str, Any] = {"intervention": k}
        for m in (
            "mem_sim",
            "mem_rate",
            "orig_sim",
            "attr_acc",
            "diversity",
            "mem_diversity",
            "cond_norm_mem",
            "cond_norm",
        ):
            row[m] = metrics.get(f"{m}_{k}")
        rows.append(row)
    return rows
