"""Small diffusion language models: a masked-diffusion LM (MDM), its autoregressive twin (ARM),
their losses and the MDM samplers.

Shared by the diffusion-LM workloads (``rainbow-padding``, ``reversal-curse``, ``dapd``). Pure
torch: no flwr, no transformers, no download.

Model
-----
:class:`TransformerLM` is a pre-norm transformer built from a :class:`TransformerConfig`:
token embedding, optional learned absolute positions or rotary position embeddings (RoPE,
Su et al. 2021, applied to queries and keys of every head), ``num_layers`` blocks
``x <- x + o(attn(ln1(x)))``, ``x <- x + down(gelu(up(ln2(x))))``, a final LayerNorm and an
output projection ``head``. Every projection is a plain :class:`torch.nn.Linear` named ``q``,
``k``, ``v``, ``o`` (attention), ``up``, ``down`` (feed-forward) and ``head``, so peft LoRA
can target any of them by name. ``causal=False`` gives the bidirectional MDM encoder (LLaDA,
Nie et al. 2025, arXiv 2502.09992), ``causal=True`` the ARM of the same size.

Masked diffusion (LLaDA)
------------------------
A sequence is ``[prompt | response]``. Training draws per sequence ``t ~ U(0, 1)``, sets

    p = (1 - eps) t + eps,     eps = 1e-3,

replaces every *response* token by the mask token independently with probability ``p`` (the
prompt is never masked) and scores the model's predictions at the masked positions:

    L = 1/B sum_b 1/L_b sum_{i masked in b} -log p_theta(x_i | x_t) / p_b,

where ``L_b`` is the number of response positions of sequence b (LLaDA's SFT normalisation;
the 1/p weight makes L an upper bound on the negative log-likelihood per response token).

Sampling starts from the prompt followed by a canvas of G mask tokens and unmasks positions
step by step (:func:`mdm_sample`): at every step the network predicts every masked position,
a token is drawn for each (temperature sampling from a seeded :class:`torch.Generator`, or
argmax at temperature 0) and scored by its confidence (its probability under the untempered
prediction); the most confident masked positions are committed, the others stay masked
(LLaDA's *low-confidence remasking*). Variants: ``tokens_per_step=1`` (LLaDA, G network
evaluations), ``tokens_per_step=k`` (top-k per step), ``threshold=tau`` (Fast-dLLM, Wu et al.
2025, arXiv 2505.22618: every position with confidence >= tau, at least the most confident
one) and ``block_length=b`` (semi-autoregressive: blocks of b positions decoded left to
right, each to completion before the next).

Decoders and attention graphs (DAPD, arXiv 2603.12996)
------------------------------------------------------
:func:`decode` runs one of :data:`DECODERS` for any diffusion workload: ``one`` token per
step, ``topk`` (k per step), ``threshold`` (Fast-dLLM) through :func:`mdm_sample`, and ``dapd``:
per step the attention weights averaged over heads and the last ~30% of layers and symmetrised
(:func:`attention_scores`, ``S = (A + A^T) / 2``) give a graph over the masked positions with an
edge where ``S_ij > tau_rel * mean_{i != j} S_ij`` (:func:`dependency_graph`); a maximal
independent set, greedy in Welsh-Powell order (degree, then confidence), is committed
(:func:`independent_set`), and once fewer than half of the canvas is masked every position with
confidence > 0.9 is (the tail switch, :func:`dapd_commit`). :func:`edge_auc` scores attention
against a known dependency graph (Mann-Whitney ROC AUC over position pairs).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workloads.options import POSITIONS

LLADA_EPS = 1e-3


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of a :class:`TransformerLM`.

    Parameters
    ----------
    vocab_size
        Number of token ids (the mask token and any pad tokens included).
    d_model, num_heads, num_layers, d_ff
        Width, attention heads (``d_model % num_heads == 0``; the head width must be even for
        rotary positions), blocks, feed-forward width.
    positions
        ``"rotary"`` (RoPE on queries and keys, nothing learned, any length) or ``"learned"``
        (an absolute position table of ``max_len`` rows added to the token embeddings).
    max_len
        Longest sequence (prompt + canvas) for learned positions; unused by rotary.
    causal
        False: bidirectional encoder (MDM). True: causal decoder (ARM).
    rope_base
        Base of the rotary frequencies ``base^(-2j/d_head)``.
    """

    vocab_size: int
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int = 256
    positions: str = "rotary"
    max_len: int = 512
    causal: bool = False
    rope_base: float = 10000.0

    def __post_init__(self):
        if self.positions not in POSITIONS:
            raise ValueError(f"positions={self.positions!r}: must be one of {', '.join(POSITIONS)}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if self.positions == "rotary" and (self.d_model // self.num_heads) % 2:
            raise ValueError(f"rotary positions need an even head width, not {self.d_model // self.num_heads}")


def rotary_tables(length: int, d_head: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of RoPE, each (length, d_head): angle ``pos * base^(-2j/d_head)``, halves repeated."""
    inv = base ** (-torch.arange(0, d_head, 2, device=device, dtype=torch.float32) / d_head)
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, d_head) by position: ``x cos + rotate_half(x) sin`` (rotate_half: (-x2, x1))."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    """Multi-head self-attention with plain ``nn.Linear`` projections ``q``, ``k``, ``v``, ``o``."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.d_model
        self.num_heads, self.d_head, self.causal = cfg.num_heads, d // cfg.num_heads, cfg.causal
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        key_mask: torch.Tensor | None,
        return_attention: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, d) -> (B, T, d), and the attention weights (B, H, T, T) when asked.

        ``key_mask`` (B, T) bool is True where a key may be attended to (False: padding).
        """
        b, t, d = x.shape

        def heads(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, self.num_heads, self.d_head).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        allowed = None
        if self.causal:
            allowed = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()[None, None]
        if key_mask is not None:
            keys = key_mask[:, None, None, :].bool()
            allowed = keys if allowed is None else allowed & keys
        if return_attention:
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            weights = scores.softmax(dim=-1)
            out = weights @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.o(out.transpose(1, 2).reshape(b, t, d)), weights


class Block(nn.Module):
    """Pre-norm transformer block: attention then a GELU feed-forward (``up``, ``down``)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.up, self.down = nn.Linear(cfg.d_model, cfg.d_ff), nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x, rope, key_mask, return_attention):
        a, weights = self.attn(self.ln1(x), rope, key_mask, return_attention)
        x = x + a
        return x + self.down(F.gelu(self.up(self.ln2(x)))), weights


class TransformerLM(nn.Module):
    """Token ids (B, T) -> logits (B, T, vocab): an MDM (``causal=False``) or an ARM (``causal=True``)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model) if cfg.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_attentions: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, T, vocab); with ``return_attentions`` also one (B, H, T, T) map per layer.

        ``attention_mask`` (B, T): 1 where a token may be attended to, 0 for padding keys.
        """
        t = input_ids.shape[1]
        x = self.embed(input_ids)
        rope = None
        if self.pos is not None:
            if t > self.cfg.max_len:
                raise ValueError(f"sequence of {t} tokens exceeds max_len={self.cfg.max_len} of learned positions")
            x = x + self.pos(torch.arange(t, device=input_ids.device))[None]
        else:
            rope = rotary_tables(t, self.cfg.d_model // self.cfg.num_heads, self.cfg.rope_base, input_ids.device)
        maps = []
        for block in self.blocks:
            x, weights = block(x, rope, attention_mask, return_attentions)
            maps.append(weights)
        logits = self.head(self.ln_f(x))
        return (logits, maps) if return_attentions else logits


def count_parameters(cfg: TransformerConfig) -> int:
    """Parameters of ``TransformerLM(cfg)`` without building it."""
    d, f = cfg.d_model, cfg.d_ff
    block = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
    pos = cfg.max_len * d if cfg.positions == "learned" else 0
    return cfg.vocab_size * d + pos + cfg.num_layers * block + 2 * d + d * cfg.vocab_size + cfg.vocab_size


def training_flops_per_token(cfg: TransformerConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per token: ``6 N`` (N: non-embedding weights and the head) + attention ``12 L T d``."""
    d, f = cfg.d_model, cfg.d_ff
    weights = cfg.num_layers * (4 * d * d + 2 * d * f) + d * cfg.vocab_size
    return 6.0 * weights + 12.0 * cfg.num_layers * seq_len * d


# -- losses ----------------------------------------------------------------------------------------
def batch_generator(input_ids: torch.Tensor, seed: int) -> torch.Generator:
    """A generator seeded by the batch's content and ``seed``: the same batch gets the same noise.

    Makes a loss a deterministic function of (batch, seed) whatever the global RNG state, so
    runs are reproducible under any scheduling; reshuffled batches still get fresh noise.
    """
    digest = zlib.crc32(input_ids.detach().cpu().numpy().tobytes())
    return torch.Generator().manual_seed((digest << 20) ^ (seed & 0xFFFFF))


def mask_response(
    input_ids: torch.Tensor,
    response: torch.Tensor,
    mask_id: int,
    generator: torch.Generator | None = None,
    eps: float = LLADA_EPS,
    t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward (noising) process of masked diffusion, on response positions only.

    Parameters
    ----------
    input_ids
        (B, T) clean tokens.
    response
        (B, T) bool, True at maskable (response) positions; prompt positions are never masked.
    mask_id
        The mask token.
    generator
        Source of ``t`` and of the masks (CPU generator).
    eps
        Floor of the masking probability, ``p = (1 - eps) t + eps``.
    t
        (B,) diffusion times to use instead of drawing ``t ~ U(0, 1)``.

    Returns
    -------
    noisy (B, T) with masked positions set to ``mask_id``; masked (B, T) bool; p (B,).
    """
    b, n = input_ids.shape
    if t is None:
        t = torch.rand(b, generator=generator)
    p = (1 - eps) * t.to(torch.float32) + eps
    draws = torch.rand(b, n, generator=generator).to(input_ids.device)
    masked = (draws < p.to(input_ids.device)[:, None]) & response.bool()
    return input_ids.masked_fill(masked, mask_id), masked, p.to(input_ids.device)


def mdm_loss_from_logits(
    logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, p: torch.Tensor, response: torch.Tensor
) -> torch.Tensor:
    """LLaDA's loss ``1/B sum_b 1/L_b sum_{i masked} CE_i / p_b`` (logits (B, T, V); the rest (B, T) or (B,))."""
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T)
    per_seq = (ce * masked).sum(dim=1) / p / response.sum(dim=1).clamp(min=1)
    return per_seq.mean()


def mdm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    response: torch.Tensor,
    mask_id: int,
    generator: torch.Generator | None = None,
    eps: float = LLADA_EPS,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked-diffusion training loss of a batch (see the module docstring for the equation).

    ``input_ids`` (B, T) clean tokens, ``response`` (B, T) bool maskable positions.
    """
    noisy, masked, p = mask_response(input_ids, response, mask_id, generator, eps)
    logits = model(input_ids=noisy, attention_mask=attention_mask)
    return mdm_loss_from_logits(logits, input_ids, masked, p, response)


def arm_loss(
    model: nn.Module, input_ids: torch.Tensor, response: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token cross-entropy on response positions, averaged over those tokens (causal model)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask)[:, :-1]
    targets, weight = input_ids[:, 1:], response[:, 1:].float()
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (ce * weight).sum() / weight.sum().clamp(min=1)


# -- sampling ------------------------------------------------------------------------------------
def _candidates(logits: torch.Tensor, banned, temperature: float, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs (B, G, V), the token proposed at each position (B, G)): argmax, or a draw at ``temperature``.

    ``logits`` (B, G, V) float; the ``banned`` tokens get probability 0 (modified in place).
    """
    logits[..., banned] = float("-inf")
    probs = logits.softmax(dim=-1)
    if temperature <= 0:
        return probs, probs.argmax(dim=-1)
    b, g, _ = logits.shape
    tempered = (logits / temperature).softmax(dim=-1).flatten(0, 1)
    cand = torch.multinomial(tempered.cpu(), 1, generator=generator).view(b, g).to(logits.device)
    return probs, cand


class PretrainedOrScratch:
    """Mixin for a diffusion workload with a cached pretrained base and a ``from_scratch`` preset.

    The base is pretrained once by the workload's ``_pretrain(model)`` and cached
    (:func:`workloads.cache.cached_model`); with ``from_scratch`` (the papers' own setting) the
    random model itself is the trained model, every weight trainable and sent dense. The class
    provides ``model_config()``, ``pretrain_keys()`` (the parameters that determine the base) and
    ``_pretrain(model)``.
    """

    def pretrain_payload(self) -> dict:
        """What determines the pretrained base (its cache key)."""
        import sys

        from workloads.cache import source_digest

        return {
            "workload": self.name,
            "params": {k: self.params[k] for k in self.pretrain_keys()},
            "seed": self.spec.seed,
            "code": source_digest(sys.modules[type(self).__module__], sys.modules[__name__]),
            "torch": torch.__version__.split("+")[0],
        }

    def _random_model(self) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(self.spec.seed)
            return TransformerLM(self.model_config())

    def skips_pretraining(self) -> bool:
        """True when there is nothing to pretrain (``pretrain_steps = 0``)."""
        return self.params["pretrain_steps"] == 0

    def build_base_model(self) -> nn.Module:
        """The cached pretrained base, or a random model (``from_scratch``, nothing to pretrain)."""
        from workloads.cache import cached_model

        if self.params["from_scratch"] or self.skips_pretraining():
            self.pretrain_meta = {"pretrain": None}
            return self._random_model().eval()
        model, self.pretrain_meta = cached_model(self.name, self.pretrain_payload(), self._random_model, self._pretrain)
        return model.eval()

    def build_model(self) -> nn.Module:
        """peft LoRA on the base; ``from_scratch``: the random model itself, every weight trainable (sent dense)."""
        if not self.params["from_scratch"]:
            return super().build_model()
        model = self.build_base_model()
        for param in model.parameters():
            param.requires_grad_(True)
        return model


@dataclass
class SampleResult:
    """What a sampler returns.

    Attributes
    ----------
    tokens
        (B, P + G) prompt followed by the completed canvas (no mask token left).
    nfe
        (B,) network evaluations spent on each sample (a batched forward counts once for every
        sample that still had a masked position in the current block).
    step
        (B, G) the step (0-based, counting every forward of the batch) at which each canvas
        position was committed.
    num_steps
        Forward passes of the batch in total.
    """

    tokens: torch.Tensor
    nfe: torch.Tensor
    step: torch.Tensor
    num_steps: int


def expected_nfe(gen_length: int, tokens_per_step: int = 1, block_length: int | None = None) -> int:
    """NFE of :func:`mdm_sample` without a threshold: ``sum_blocks ceil(block / k)`` (G when k = 1)."""
    block = block_length or gen_length
    sizes = [min(block, gen_length - s) for s in range(0, gen_length, block)]
    return sum(math.ceil(s / tokens_per_step) for s in sizes)


@torch.no_grad()
def mdm_sample(
    model: nn.Module,
    prompt: torch.Tensor,
    gen_length: int,
    mask_id: int,
    *,
    tokens_per_step: int = 1,
    threshold: float | None = None,
    block_length: int | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    forbidden: tuple[int, ...] = (),
) -> SampleResult:
    """Fill a canvas of ``gen_length`` masks after ``prompt`` by low-confidence remasking.

    Parameters
    ----------
    model
        Maps (B, T) ids to (B, T, V) logits (bidirectional).
    prompt
        (B, P) token ids, kept unchanged.
    gen_length
        G, the allocated response length.
    tokens_per_step
        k: positions committed per step (1: LLaDA's one token per step; the last step of a
        block commits what is left).
    threshold
        Fast-dLLM: commit every masked position whose confidence is >= threshold (at least
        the most confident one); ``tokens_per_step`` is then ignored.
    block_length
        Semi-autoregressive blocks of this many positions, decoded left to right; None: one
        block of G.
    temperature
        0: argmax; > 0: each masked position's token drawn from ``softmax(logits / T)``.
    generator
        The seeded source of the temperature sampling.
    forbidden
        Token ids never produced (the mask token always is).

    Returns
    -------
    :class:`SampleResult`. NFE per sample is :func:`expected_nfe` without a threshold, at most
    G with one.
    """
    if tokens_per_step < 1:
        raise ValueError(f"tokens_per_step={tokens_per_step}: must be at least 1")
    device = prompt.device
    b, plen = prompt.shape
    x = torch.cat([prompt, torch.full((b, gen_length), mask_id, dtype=prompt.dtype, device=device)], dim=1)
    step_of = torch.full((b, gen_length), -1, dtype=torch.long, device=device)
    nfe = torch.zeros(b, dtype=torch.long, device=device)
    banned = torch.tensor(sorted({mask_id, *forbidden}), device=device)
    block = block_length or gen_length
    steps = 0
    for start in range(0, gen_length, block):
        stop = min(start + block, gen_length)
        in_block = torch.zeros(gen_length, dtype=torch.bool, device=device)
        in_block[start:stop] = True
        while True:
            masked = (x[:, plen:] == mask_id) & in_block  # (B, G)
            active = masked.any(dim=1)
            if not active.any():
                break
            logits = model(input_ids=x)[:, plen:].float()  # (B, G, V)
            probs, cand = _candidates(logits, banned, temperature, generator)
            conf = probs.gather(-1, cand[..., None]).squeeze(-1).masked_fill(~masked, float("-inf"))
            if threshold is not None:
                commit = masked & (conf >= threshold)
                best = conf.argmax(dim=1)
                commit[torch.arange(b, device=device), best] |= active
            else:
                k = min(tokens_per_step, gen_length)
                top = conf.topk(k, dim=1).indices  # (B, k)
                commit = torch.zeros_like(masked)
                commit.scatter_(1, top, True)
                commit &= masked
            canvas = x[:, plen:]
            x[:, plen:] = torch.where(commit, cand, canvas)
            step_of[commit] = steps
            nfe += active.long()
            steps += 1
    return SampleResult(tokens=x, nfe=nfe, step=step_of, num_steps=steps)


@torch.no_grad()
def arm_sample(
    model: nn.Module,
    prompt: torch.Tensor,
    gen_length: int,
    *,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    forbidden: tuple[int, ...] = (),
) -> SampleResult:
    """Left-to-right decoding of a causal model (no cache: G forwards, NFE = G per sample)."""
    b, plen = prompt.shape
    x = prompt
    banned = list(forbidden)
    for _ in range(gen_length):
        logits = model(input_ids=x)[:, -1].float()
        if banned:
            logits[:, banned] = float("-inf")
        if temperature > 0:
            nxt = torch.multinomial((logits / temperature).softmax(-1).cpu(), 1, generator=generator).to(x.device)
        else:
            nxt = logits.argmax(dim=-1, keepdim=True)
        x = torch.cat([x, nxt], dim=1)
    step = torch.arange(gen_length, device=x.device).expand(b, gen_length).clone()
    return SampleResult(tokens=x, nfe=torch.full((b,), gen_length, dtype=torch.long), step=step, num_steps=gen_length)


# -- attention graphs and decoders shared by every diffusion workload ------------------------------
DECODERS = ("one", "topk", "threshold", "dapd")
"""``one``: one token per step (LLaDA); ``topk``: k tokens per step; ``threshold``: Fast-dLLM's
confidence threshold; ``dapd``: dependency-aware parallel decoding (arXiv 2603.12996)."""


@torch.no_grad()
def attention_scores(maps: list[torch.Tensor], last_fraction: float = 0.3) -> torch.Tensor:
    """DAPD's dependency scores from a forward's attention maps.

    Parameters
    ----------
    maps
        One (B, H, T, T) attention-weight map per layer (``TransformerLM(..., return_attentions=True)``).
    last_fraction
        Share of the layers, counted from the top, that are averaged (at least one layer).

    Returns
    -------
    (B, T, T) ``S = (A + A^T) / 2`` with ``A`` the weights averaged over heads and over the last
    ``ceil(last_fraction * num_layers)`` layers (symmetrised: a dependency has no direction).
    """
    n = max(1, math.ceil(last_fraction * len(maps)))
    a = torch.stack([m.float().mean(dim=1) for m in maps[-n:]]).mean(dim=0)  # (B, T, T)
    return (a + a.transpose(-1, -2)) / 2


def dependency_graph(scores: torch.Tensor, nodes: torch.Tensor, tau_rel: float) -> torch.Tensor:
    """DAPD's graph over ``nodes``: an edge where the symmetric score exceeds ``tau``.

    ``scores`` (T, T) symmetric, ``nodes`` (T,) bool (the masked positions). ``tau = tau_rel *
    mean`` with ``mean`` the mean off-diagonal score among the nodes (the threshold is relative,
    so it does not depend on the sequence length or the attention's temperature). Returns a
    (T, T) bool adjacency, False on the diagonal and outside the nodes.
    """
    if tau_rel <= 0:
        raise ValueError(f"tau_rel={tau_rel}: must be positive")
    inside = nodes[:, None] & nodes[None, :]
    inside = inside & ~torch.eye(len(nodes), dtype=torch.bool, device=nodes.device)
    if not inside.any():
        return inside
    tau = tau_rel * scores[inside].mean()
    return inside & (scores > tau)


def independent_set(adjacency: torch.Tensor, nodes: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """A maximal independent set of the graph on ``nodes``, greedy in Welsh-Powell order.

    Nodes are visited by decreasing degree, ties by decreasing confidence (the first colour
    class of Welsh-Powell colouring); a node joins when none of its neighbours has. Returns (T,)
    bool; never two adjacent nodes, and every node outside the set has a neighbour inside.
    """
    degree = adjacency.sum(dim=1)
    idx = torch.nonzero(nodes).flatten().tolist()
    idx.sort(key=lambda i: (-int(degree[i]), -float(confidence[i]), i))
    chosen = torch.zeros_like(nodes)
    blocked = torch.zeros_like(nodes)
    for i in idx:
        if not blocked[i]:
            chosen[i] = True
            blocked |= adjacency[i]
            blocked[i] = True
    return chosen


def dapd_commit(
    scores: torch.Tensor,
    masked: torch.Tensor,
    confidence: torch.Tensor,
    tau_rel: float,
    tail: bool = True,
    tail_threshold: float = 0.9,
) -> torch.Tensor:
    """Positions one DAPD step commits, for one sample.

    ``scores`` (G, G) symmetric attention scores of the canvas, ``masked`` (G,) bool,
    ``confidence`` (G,). While at least half of the canvas is masked (or ``tail`` is off) the
    step commits a maximal independent set of :func:`dependency_graph`; once fewer than half
    are masked it commits every masked position with confidence > ``tail_threshold`` (at least
    the most confident one), as the paper's tail switch does.
    """
    if tail and int(masked.sum()) * 2 < len(masked):
        commit = masked & (confidence > tail_threshold)
        best = int(confidence.masked_fill(~masked, float("-inf")).argmax())
        commit[best] = True
        return commit
    adjacency = dependency_graph(scores, masked, tau_rel)
    return independent_set(adjacency, masked, confidence)


@torch.no_grad()
def decode(
    model: nn.Module,
    prompt: torch.Tensor,
    gen_length: int,
    mask_id: int,
    decoder: str,
    *,
    tokens_per_step: int = 2,
    threshold: float = 0.9,
    tau_rel: float = 0.5,
    tail: bool = True,
    last_fraction: float = 0.3,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    forbidden: tuple[int, ...] = (),
) -> SampleResult:
    """Decoding of a canvas of ``gen_length`` masks after ``prompt`` with one of :data:`DECODERS`.

    ``one``, ``topk`` (``tokens_per_step``) and ``threshold`` are :func:`mdm_sample`; ``dapd``
    runs a forward with attention maps per step, builds the dependency graph over the masked
    canvas positions from :func:`attention_scores` (canvas rows and columns only) and commits
    :func:`dapd_commit`'s positions. Tokens are the argmax (``temperature = 0``) or drawn from
    ``softmax(logits / temperature)`` with ``generator``; the confidence of a position is the
    probability of its token. NFE counts forwards per sample.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r}: must be one of {', '.join(DECODERS)}")
    if decoder != "dapd":
        k = 1 if decoder == "one" else tokens_per_step
        thr = threshold if decoder == "threshold" else None
        return mdm_sample(
            model,
            prompt,
            gen_length,
            mask_id,
            tokens_per_step=k,
            threshold=thr,
            temperature=temperature,
            generator=generator,
            forbidden=forbidden,
        )
    device = prompt.device
    b, plen = prompt.shape
    x = torch.cat([prompt, torch.full((b, gen_length), mask_id, dtype=prompt.dtype, device=device)], dim=1)
    step_of = torch.full((b, gen_length), -1, dtype=torch.long, device=device)
    nfe = torch.zeros(b, dtype=torch.long, device=device)
    banned = torch.tensor(sorted({mask_id, *forbidden}), device=device)
    steps = 0
    while True:
        masked = x[:, plen:] == mask_id  # (B, G)
        active = masked.any(dim=1)
        if not active.any():
            break
        logits, maps = model(input_ids=x, return_attentions=True)
        probs, cand = _candidates(logits[:, plen:].float(), banned, temperature, generator)
        conf = probs.gather(-1, cand[..., None]).squeeze(-1)  # (B, G)
        scores = attention_scores(maps, last_fraction)[:, plen:, plen:]
        commit = torch.zeros_like(masked)
        for i in torch.nonzero(active).flatten().tolist():
            commit[i] = dapd_commit(scores[i], masked[i], conf[i], tau_rel, tail)
        x[:, plen:] = torch.where(commit, cand, x[:, plen:])
        step_of[commit] = steps
        nfe += active.long()
        steps += 1
    return SampleResult(tokens=x, nfe=nfe, step=step_of, num_steps=steps)


def edge_auc(scores: torch.Tensor, truth: torch.Tensor, nodes: torch.Tensor | None = None) -> float:
    """ROC AUC of ``scores`` as a detector of the true edges, over unordered pairs of ``nodes``.

    ``scores`` (T, T), ``truth`` (T, T) bool symmetric adjacency, ``nodes`` (T,) bool (default:
    every position). AUC = P(score of a random true edge > score of a random non-edge), ties
    counting one half (the Mann-Whitney statistic). NaN when either class is empty.
    """
    t = scores.shape[0]
    nodes = torch.ones(t, dtype=torch.bool) if nodes is None else nodes.bool().cpu()
    upper = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1) & nodes[:, None] & nodes[None, :]
    s, y = scores.detach().cpu().float()[upper], truth.cpu().bool()[upper]
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).float().sum()
    ties = (pos[:, None] == neg[None, :]).float().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))
