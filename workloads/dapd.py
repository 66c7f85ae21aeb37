"""dapd: dependency-aware parallel decoding of a masked-diffusion LM (DAPD, arXiv 2603.12996),
federated.

The paper: one denoising step of a diffusion LM gives per-position marginals only, so
committing several masked positions in one step fails when they depend on each other (each
is drawn from its marginal, the joint is not respected). DAPD reads the dependencies off the
model's own self-attention: the weights averaged over heads and over the last ~30% of layers,
symmetrised, ``S = (A + A^T) / 2``, give a graph over the masked positions with an edge where
``S_ij > tau``; the nodes are ordered by degree and confidence (Welsh-Powell) and a maximal
independent set is committed in one step; once fewer than half of the positions are masked,
every position with confidence > 0.9 is committed. LLaDA: 256 -> 33.8 steps (7.6x fewer) at
similar accuracy. The decoders live in :mod:`workloads.diffusion_lm` (:func:`~workloads.diffusion_lm.decode`).

Task (the paper's toy, generated in-package): ``X_1 .. X_L ~ U{0, 1, 2}`` and
``Y_i = (X_i + X_{i+1}) mod 3`` for i = 1 .. L - 1; a canvas is ``m`` concatenated copies of
``X_1 .. X_L Y_1 .. Y_{L-1}`` (G = m (2L - 1) positions; X and Y values have tokens of their own)
after a one-token prompt ``<bos>``. A sample is *valid* when every X position holds an X
token, every Y position a Y token and every constraint holds. The true dependency graph joins
the three positions of every constraint (X_i, X_{i+1}, Y_i) pairwise; there are no edges
between copies.

Model: a bidirectional transformer MDM (:mod:`workloads.diffusion_lm`; rotary positions, the
prompt token anchors them; tiny: d_model 64, 2 layers, 4 heads, 0.1M parameters) with the LLaDA
loss over the canvas. The base is pretrained by fedsim on uniform-X canvases of the task and
cached (:mod:`workloads.cache`): AdamW, ``pretrain_steps`` of ``pretrain_batch`` canvases, the
learning rate warmed up linearly over ``pretrain_warmup`` steps to ``pretrain_lr`` and decayed by
a cosine to 0 (:func:`pretrain_lr`), the gradient norm clipped at ``pretrain_clip``. The rule is
an XOR-like function of two positions and the loss sits on a plateau at log 3 before it drops; a
base that has not left it cannot model the joint, so cannot show dependency-aware decoding.
Whether a run leaves it is luck of the initialisation and the data order (no fixed step count
brings every seed out: docs/workloads/dapd.md), so pretraining is *restarts kept by validity*
(:meth:`Dapd._pretrain`): attempt 0 starts from the model built from the run's seed; while an
attempt's one-token-per-step validity (:meth:`Dapd.base_validity`, the guard's measurement) is
below ``min_base_validity``, up to ``pretrain_restarts`` more attempts re-initialise the weights and
draw the batches from a seed derived from (seed, attempt) (:func:`attempt_seed`); an attempt stops
early at the first check, every 1,000 steps from step 5,000, that passes. The first attempt that
passes is kept, else the best; the cache entry's meta records every attempt's seed, steps,
validity and wall time (``pretrain.attempts``). With ``pretrain_restarts = 0`` or
``min_base_validity = 0`` it is one plain run of ``pretrain_steps``. The guard: the kept base's
validity below ``min_base_validity`` refuses the run with one line. Federated LoRA
(``q k v o up down head``) then fine-tunes it on the clients' skewed data; the question is
whether the attention graph that DAPD reads, and DAPD's validity, survive that.
``pretrain_task = "format"`` pretrains on the format only (Y drawn independently of X), a base
that knows where the tokens go but not the rule (the guard refuses it unless
``min_base_validity = 0``); the ``from-scratch`` preset trains every weight of a random model,
sent dense. (In pilots neither learnt the rule within a federated budget of a few rounds.)

Non-IID clients: client k draws its X values from its own distribution, ``client_skew`` on its
favourite value ``k mod 3`` and the rest split evenly (the test set is uniform); ``label_column``
is the favourite value, ``natural_partition_column`` the client.

Evaluation on ``eval_samples`` canvases decoded from all masks at ``eval_temperature`` (1: tokens
drawn from the softmax; 0: greedy, which gives every sample the same canvas), for every decoder
of ``eval_decoders`` (``one``: G NFE; ``topk``: ``topk_k`` per step; ``threshold``: Fast-dLLM at
``threshold``; ``dapd``: tau = ``tau_rel`` x mean off-diagonal score with the tail switch;
``dapd_notail``: the same without it): ``validity_{decoder}`` and ``nfe_{decoder}`` (mean
forwards per sample); top-k for every k of ``eval_topk_ks``: ``validity_topk{k}``, ``nfe_topk{k}``.
Top-k at DAPD's NFE: DAPD's mean NFE ``d`` is fractional and top-k's NFE ``ceil(G / k)`` takes
few values (9, 5, 3, 3, 2, ... at G = 9), so the match is a top-k *schedule* (:func:`topk_schedule`):
``n`` steps committing the G positions split as evenly as possible, the larger steps first (each
step the most confident masked positions, as top-k), exactly ``n`` NFE; it is evaluated at
``n = floor(d)`` and ``ceil(d)`` (``validity_topk_sched_lo``, ``nfe_topk_sched_lo`` = that n; ``_hi``
the same) and ``validity_topk_at_dapd_nfe`` is their linear interpolation in NFE at ``d``
(:func:`interpolate_at_nfe`), the validity of the randomised mixture of the two schedules whose
mean NFE is DAPD's (``nfe_topk_at_dapd_nfe`` = ``d``). ``auc_all_masked``: ROC AUC of
the attention scores of an all-mask canvas against the true graph (all position pairs);
``auc_half_masked``: the same over the pairs of masked positions when a random half of a test
canvas is masked, averaged over the samples. ``loss``: the LLaDA loss on the test set.
``base_validity_one``: the pretrained base's one-token-per-step validity that the guard read
(:meth:`Dapd.base_validity`, from the cache entry's meta; absent without a pretrained base).
Primary metric: ``dapd_gain_at_matched_nfe`` = ``validity_dapd - validity_topk_at_dapd_nfe``
(DAPD's validity above top-k's at the same mean NFE; higher is better).
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from fedsim.errors import ConfigError
from workloads import diffusion_lm as dlm
from workloads.base import Workload
from workloads.dapd_options import DECLARATION, DECODER_NAMES, NUM_VALUES, copy_length
from workloads.options import Declaration

VOCAB = ["<mask>", "<bos>", *[f"x{v}" for v in range(NUM_VALUES)], *[f"y{v}" for v in range(NUM_VALUES)]]
ID = {tok: i for i, tok in enumerate(VOCAB)}
MASK, BOS, X0, Y0 = ID["<mask>"], ID["<bos>"], ID["x0"], ID["y0"]
GUARD_SAMPLES = 256
"""Canvases the base's one-token-per-step validity is measured on (``min_base_validity``)."""
CHECK_FROM, CHECK_EVERY = 5_000, 1_000
"""With restarts on, a pretraining attempt's validity is checked every CHECK_EVERY steps from
CHECK_FROM on (before its last step), and the attempt stops at the first check that passes."""


def attempt_seed(seed: int, attempt: int) -> int:
    """The seed of pretraining attempt ``attempt`` (weights and data order): the run's seed for attempt 0."""
    if attempt == 0:
        return seed
    return int(np.random.SeedSequence([seed, attempt, 0x5EED]).generate_state(1)[0])


def canvas_tokens(x: np.ndarray, length: int, rule: bool = True, rng: np.random.Generator | None = None) -> list[int]:
    """Token ids of a canvas from its X values (``m * L`` ints): per copy ``X_1..X_L Y_1..Y_{L-1}``.

    ``rule=False``: the Y values are drawn from ``rng`` uniformly (the format-only pretraining data).
    """
    out: list[int] = []
    for c in range(len(x) // length):
        xs = [int(v) for v in x[c * length : (c + 1) * length]]
        if rule:
            ys = [(a + b) % NUM_VALUES for a, b in zip(xs, xs[1:], strict=False)]
        else:
            ys = [int(v) for v in rng.integers(NUM_VALUES, size=length - 1)]
        out += [X0 + v for v in xs] + [Y0 + v for v in ys]
    return out


def true_graph(length: int, copies: int) -> torch.Tensor:
    """(G, G) bool: positions sharing a constraint ``Y_i = X_i + X_{i+1}`` (three pairs per constraint)."""
    g = copies * copy_length(length)
    adj = torch.zeros(g, g, dtype=torch.bool)
    for c in range(copies):
        base = c * copy_length(length)
        for i in range(length - 1):
            trio = (base + i, base + i + 1, base + length + i)
            for a in trio:
                for b in trio:
                    adj[a, b] |= a != b
    return adj


def is_valid(canvas: list[int], length: int) -> bool:
    """Every X position an X token, every Y position a Y token, every constraint satisfied."""
    n = copy_length(length)
    if len(canvas) % n:
        return False
    for c in range(len(canvas) // n):
        part = canvas[c * n : (c + 1) * n]
        xs = [t - X0 for t in part[:length]]
        ys = [t - Y0 for t in part[length:]]
        if any(not 0 <= v < NUM_VALUES for v in xs + ys):
            return False
        if any((a + b) % NUM_VALUES != y for a, b, y in zip(xs, xs[1:], ys, strict=False)):
            return False
    return True


def client_distribution(client: int, skew: float) -> np.ndarray:
    """(3,) the X distribution of a client: ``skew`` on value ``client mod 3``, the rest shared evenly."""
    probs = np.full(NUM_VALUES, (1.0 - skew) / (NUM_VALUES - 1))
    probs[client % NUM_VALUES] = skew
    return probs


def pretrain_lr(step: int, steps: int, peak: float, warmup: int) -> float:
    """Learning rate of pretraining step ``step`` (0-based) of ``steps``.

    Linear warm-up to ``peak`` over the first ``min(warmup, steps)`` steps, then cosine decay from
    ``peak`` to 0 at step ``steps``.
    """
    warmup = min(warmup, steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def topk_schedule(gen_length: int, steps: int) -> list[int]:
    """Tokens committed at each of ``steps`` steps: G split as evenly as possible, larger steps first.

    ``G = q * steps + r`` gives ``r`` steps of ``q + 1`` then ``steps - r`` of ``q`` (G = 9, 4 steps:
    3, 2, 2, 2); the same split as top-k's ``ceil(G / k)`` steps of k whenever that is even (k = 2,
    3, 5 at G = 9: 2 2 2 2 1, 3 3 3, 5 4).
    """
    if not 1 <= steps <= gen_length:
        raise ValueError(f"steps={steps}: must be in 1 .. G = {gen_length}")
    q, r = divmod(gen_length, steps)
    return [q + 1] * r + [q] * (steps - r)


def nfe_brackets(gen_length: int, nfe: float) -> tuple[int, int]:
    """``(floor(nfe), ceil(nfe))`` within 1 .. G: the schedules' step counts around a mean NFE."""
    near = round(nfe)
    if abs(nfe - near) < 1e-9:  # a whole number of forwards (up to float noise): one schedule
        nfe = near
    lo, hi = math.floor(nfe), math.ceil(nfe)
    return min(max(lo, 1), gen_length), min(max(hi, 1), gen_length)


def interpolate_at_nfe(nfe: float, lo: int, value_lo: float, hi: int, value_hi: float) -> float:
    """The value at ``nfe`` linear between ``(lo, value_lo)`` and ``(hi, value_hi)`` (``value_lo`` when lo == hi).

    Running the ``hi``-step schedule with probability ``w = (nfe - lo) / (hi - lo)`` and the
    ``lo``-step one otherwise spends ``nfe`` forwards on average and is valid with probability
    ``(1 - w) value_lo + w value_hi``: this is that mixture's validity (clipped to the bracket).
    """
    if hi == lo:
        return value_lo
    w = min(max((nfe - lo) / (hi - lo), 0.0), 1.0)
    return (1 - w) * value_lo + w * value_hi


@torch.no_grad()
def schedule_sample(
    model: nn.Module,
    prompt: torch.Tensor,
    gen_length: int,
    sizes: list[int],
    *,
    temperature: float,
    generator: torch.Generator | None,
    forbidden: tuple[int, ...] = (),
) -> dlm.SampleResult:
    """Top-k decoding with ``sizes[i]`` positions committed at step i (the most confident masked
    ones, as :func:`diffusion_lm.mdm_sample`); ``sum(sizes) == gen_length``, so NFE = ``len(sizes)``."""
    if sum(sizes) != gen_length or min(sizes) < 1:
        raise ValueError(f"sizes={sizes}: must be positive and sum to G = {gen_length}")
    b, plen = prompt.shape
    x = torch.cat([prompt, torch.full((b, gen_length), MASK, dtype=prompt.dtype)], dim=1)
    step_of = torch.full((b, gen_length), -1, dtype=torch.long)
    banned = torch.tensor(sorted({MASK, *forbidden}))
    for step, k in enumerate(sizes):
        masked = x[:, plen:] == MASK
        logits = model(input_ids=x)[:, plen:].float()
        probs, cand = dlm._candidates(logits, banned, temperature, generator)
        conf = probs.gather(-1, cand[..., None]).squeeze(-1).masked_fill(~masked, float("-inf"))
        commit = torch.zeros_like(masked)
        commit.scatter_(1, conf.topk(k, dim=1).indices, True)
        commit &= masked
        x[:, plen:] = torch.where(commit, cand, x[:, plen:])
        step_of[commit] = step
    nfe = torch.full((b,), len(sizes), dtype=torch.long)
    return dlm.SampleResult(tokens=x, nfe=nfe, step=step_of, num_steps=len(sizes))


def generate(num: int, length: int, copies: int, rng: np.random.Generator, probs=None, client: int = -1) -> dict:
    """``num`` rows: ``x`` (m * L X values drawn from ``probs``, default uniform), ``client``, ``favourite``."""
    probs = np.full(NUM_VALUES, 1 / NUM_VALUES) if probs is None else probs
    x = rng.choice(NUM_VALUES, size=(num, copies * length), p=probs)
    fav = int(np.argmax(probs)) if client >= 0 else -1
    return {"x": x.tolist(), "client": [client] * num, "favourite": [fav] * num}


class Dapd(dlm.PretrainedOrScratch, Workload):
    name: ClassVar[str] = "dapd"
    description: ClassVar[str] = (
        "masked-diffusion LM on Y_i = X_i + X_{i+1} mod 3 (non-IID clients); DAPD vs one/top-k/Fast-dLLM "
        "decoding: validity, NFE, attention edge AUC"
    )
    declaration: ClassVar[Declaration] = DECLARATION
    primary_metric: ClassVar[str] = "dapd_gain_at_matched_nfe"
    lora_target_modules: ClassVar[list[str]] = ["q", "k", "v", "o", "up", "down", "head"]
    label_column: ClassVar[str] = "favourite"

    def __init__(self, spec):
        super().__init__(spec)
        p = self.params
        self.length, self.copies = p["length"], p["copies"]
        self.gen_length = self.copies * copy_length(self.length)
        self.graph = true_graph(self.length, self.copies)
        self._data: tuple[Dataset, Dataset] | None = None

    # -- model ---------------------------------------------------------------------------
    def model_config(self) -> dlm.TransformerConfig:
        p = self.params
        return dlm.TransformerConfig(
            vocab_size=len(VOCAB),
            d_model=p["d_model"],
            num_heads=p["num_heads"],
            num_layers=p["num_layers"],
            d_ff=p["d_ff"],
            positions=p["positions"],
            max_len=1 + self.gen_length,
        )

    def pretrain_keys(self) -> tuple[str, ...]:
        """The parameters that determine the pretrained base (and the restarts: :meth:`pretrain_payload`)."""
        keys = ("d_model", "num_heads", "num_layers", "d_ff", "positions", "length", "copies")
        pretrain = ("pretrain_task", "pretrain_steps", "pretrain_samples", "pretrain_batch", "pretrain_lr")
        return keys + pretrain + ("pretrain_warmup", "pretrain_clip")

    def restarts(self) -> tuple[int, float]:
        """``(pretrain_restarts, min_base_validity)`` as pretraining uses them: ``(0, 0)`` when either is 0."""
        restarts, floor = self.params["pretrain_restarts"], self.params["min_base_validity"]
        return (restarts, floor) if restarts and floor else (0, 0.0)

    def pretrain_payload(self) -> dict:
        """The cache key's payload: the restarts and the validity they are kept by determine the base too."""
        payload = super().pretrain_payload()
        restarts, floor = self.restarts()
        payload["params"] = {**payload["params"], "pretrain_restarts": restarts, "restart_validity": floor}
        return payload

    def _pretrain(self, model: nn.Module) -> dict[str, Any]:
        """Attempts of :meth:`_pretrain_attempt` kept by validity (restarts), training ``model`` in place.

        Attempt 0 trains the model built from the seed; while an attempt's one-token validity
        (:meth:`base_validity`, the guard's measurement) is below ``min_base_validity`` and restarts
        are left (``pretrain_restarts``), the weights are re-initialised from a seed derived from
        (seed, attempt) and trained again with a data order derived from the same. The first attempt
        that passes is kept, else the best one. The statistics are the kept attempt's, with
        ``attempt`` (its index) and ``attempts`` (every attempt's seed, steps, validity, loss, wall time).
        """
        restarts, floor = self.restarts()
        attempts: list[dict[str, Any]] = []
        best: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None
        for attempt in range(restarts + 1):
            seed = attempt_seed(self.spec.seed, attempt)
            if attempt:
                with torch.random.fork_rng():
                    torch.manual_seed(seed)
                    model.load_state_dict(dlm.TransformerLM(self.model_config()).state_dict())
            t0 = time.perf_counter()
            stats = self._pretrain_attempt(model, seed, floor)
            attempts.append({"attempt": attempt, "seed": seed, **stats, "wall_s": time.perf_counter() - t0})
            if best is None or stats["validity_one"] > best[0]["validity_one"]:
                best = attempts[-1], {k: v.detach().clone() for k, v in model.state_dict().items()}
            if stats["validity_one"] >= floor:
                break
        kept, state = best
        model.load_state_dict(state)
        return {
            **{k: kept[k] for k in ("steps", "loss_first", "loss_last_50", "validity_one")},
            "attempt": kept["attempt"],
            "attempts": attempts,
        }

    def _pretrain_attempt(self, model: nn.Module, seed: int, floor: float) -> dict[str, Any]:
        """Centralised AdamW on uniform-X canvases (Y uniform for ``format``, the rule for ``rule``).

        The learning rate follows :func:`pretrain_lr` (linear warm-up, cosine decay to 0) and the
        gradient norm is clipped at ``pretrain_clip``; ``seed`` draws the batches and the masks. With
        ``floor > 0`` (restarts on) the attempt stops early at the first check, every
        :data:`CHECK_EVERY` steps from :data:`CHECK_FROM` on, whose validity reaches ``floor``. The
        statistics end with the base's one-token-per-step validity (:meth:`base_validity`), which the
        guard reads from the cache.
        """
        p = self.params
        rng = np.random.default_rng([self.spec.seed, 0xBA5E])
        rows = generate(p["pretrain_samples"], self.length, self.copies, rng)["x"]
        rule = p["pretrain_task"] == "rule"
        ids = torch.tensor([[BOS, *canvas_tokens(np.array(x), self.length, rule, rng)] for x in rows])
        response = torch.ones_like(ids, dtype=torch.bool)
        response[:, 0] = False
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=p["pretrain_lr"], weight_decay=0.0)
        model.train()
        losses, validity = [], None
        for step in range(p["pretrain_steps"]):
            for group in opt.param_groups:
                group["lr"] = pretrain_lr(step, p["pretrain_steps"], p["pretrain_lr"], p["pretrain_warmup"])
            pick = torch.randint(len(ids), (p["pretrain_batch"],), generator=gen)
            loss = dlm.mdm_loss(model, ids[pick], response[pick], MASK, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if p["pretrain_clip"] > 0:
                nn.utils.clip_grad_norm_(model.parameters(), p["pretrain_clip"])
            opt.step()
            losses.append(float(loss.detach()))
            done = step + 1
            if floor > 0 and done >= CHECK_FROM and done % CHECK_EVERY == 0 and done < p["pretrain_steps"]:
                validity = self.base_validity(model.eval())
                model.train()
                if validity >= floor:
                    break
                validity = None
        model.eval()
        return {
            "steps": len(losses),
            "loss_first": losses[0],
            "loss_last_50": float(np.mean(losses[-50:])),
            "validity_one": self.base_validity(model) if validity is None else validity,
        }

    def base_validity(self, model: nn.Module) -> float:
        """One-token-per-step validity of :data:`GUARD_SAMPLES` canvases drawn at temperature 1 (fixed noise)."""
        prompt = torch.full((GUARD_SAMPLES, 1), BOS, dtype=torch.long)
        result = dlm.decode(
            model,
            prompt,
            self.gen_length,
            MASK,
            "one",
            temperature=1.0,
            generator=torch.Generator().manual_seed(self.spec.seed * 7919 + 2),
            forbidden=(BOS,),
        )
        return self.validity(result)

    def build_base_model(self) -> nn.Module:
        """The cached base; refuses (one-line ConfigError) one whose validity is below ``min_base_validity``."""
        model = super().build_base_model()
        stats = self.pretrain_meta.get("pretrain")
        floor = self.params["min_base_validity"]
        if stats is not None and stats["validity_one"] < floor:
            raise ConfigError(
                f"workload.options: min_base_validity={floor!r}: the pretrained base's one-token-per-step validity "
                f"is {stats['validity_one']:.3f} ({GUARD_SAMPLES} canvases, temperature 1), below it: the base does "
                "not model the task (pretrain longer, with more pretrain_restarts, or set min_base_validity=0)"
            )
        return model

    # -- data ----------------------------------------------------------------------------
    def build_data(self) -> tuple[Dataset, Dataset]:
        if self._data is None:
            spec, p = self.spec, self.params
            columns: dict[str, list] = {}
            for client in range(spec.num_clients):
                rng = np.random.default_rng([spec.seed, client, 0xDA7A])
                probs = client_distribution(client, p["client_skew"])
                for k, v in generate(spec.samples_per_client, self.length, self.copies, rng, probs, client).items():
                    columns.setdefault(k, []).extend(v)
            test = generate(spec.test_samples, self.length, self.copies, np.random.default_rng([spec.seed, 0x7E57]))
            self._data = Dataset.from_dict(columns), Dataset.from_dict(test)
        return self._data

    def collate(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        """Rows to ``input_ids`` (B, 1 + G) = ``<bos>`` + canvas and ``response`` (B, 1 + G) bool."""
        ids = torch.tensor([[BOS, *canvas_tokens(np.array(x), self.length)] for x in rows["x"]], dtype=torch.long)
        response = torch.ones_like(ids, dtype=torch.bool)
        response[:, 0] = False
        return {"input_ids": ids, "response": response}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """LLaDA loss over the canvas; the noise is a function of the batch and the seed."""
        gen = dlm.batch_generator(batch["input_ids"], self.spec.seed)
        return dlm.mdm_loss(model, batch["input_ids"], batch["response"], MASK, gen)

    # -- evaluation ----------------------------------------------------------------------
    def decode(self, model: nn.Module, num: int, decoder: str, tokens_per_step: int | None = None) -> dlm.SampleResult:
        """``num`` canvases decoded from all masks at ``eval_temperature`` (``dapd_notail``: DAPD without the tail switch)."""
        p = self.params
        prompt = torch.full((num, 1), BOS, dtype=torch.long)
        return dlm.decode(
            model,
            prompt,
            self.gen_length,
            MASK,
            "dapd" if decoder.startswith("dapd") else decoder,
            tokens_per_step=tokens_per_step or p["topk_k"],
            threshold=p["threshold"],
            tau_rel=p["tau_rel"],
            tail=decoder != "dapd_notail",
            last_fraction=p["last_fraction"],
            temperature=p["eval_temperature"],
            generator=torch.Generator().manual_seed(
                self.spec.seed * 1000003 + DECODER_NAMES.index(decoder) * 101 + num
            ),
            forbidden=(BOS,),
        )

    def decode_schedule(self, model: nn.Module, num: int, steps: int) -> dlm.SampleResult:
        """``num`` canvases decoded by the top-k schedule of ``steps`` steps (:func:`topk_schedule`)."""
        return schedule_sample(
            model,
            torch.full((num, 1), BOS, dtype=torch.long),
            self.gen_length,
            topk_schedule(self.gen_length, steps),
            temperature=self.params["eval_temperature"],
            generator=torch.Generator().manual_seed(self.spec.seed * 1000003 + 997 * steps + num),
            forbidden=(BOS,),
        )

    def validity(self, result: dlm.SampleResult) -> float:
        return float(np.mean([is_valid(c, self.length) for c in result.tokens[:, 1:].tolist()]))

    @torch.no_grad()
    def attention_auc(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        """Edge AUC of the attention scores against :func:`true_graph`, all masked and half masked."""
        p, g = self.params, self.gen_length
        all_masked = torch.full((1, 1 + g), MASK, dtype=torch.long)
        all_masked[0, 0] = BOS
        _, maps = model(input_ids=all_masked, return_attentions=True)
        scores = dlm.attention_scores(maps, p["last_fraction"])[0, 1:, 1:]
        out = {"auc_all_masked": dlm.edge_auc(scores, self.graph)}
        batch = self.collate(data[: p["eval_samples"]])["input_ids"]
        gen = torch.Generator().manual_seed(self.spec.seed * 7919 + 1)
        order = torch.rand(len(batch), g, generator=gen).argsort(dim=1)
        masked = torch.zeros(len(batch), g, dtype=torch.bool)
        masked.scatter_(1, order[:, : g // 2 + g % 2], True)
        noisy = batch.clone()
        noisy[:, 1:] = batch[:, 1:].masked_fill(masked, MASK)
        _, maps = model(input_ids=noisy, return_attentions=True)
        scores = dlm.attention_scores(maps, p["last_fraction"])[:, 1:, 1:]
        aucs = [dlm.edge_auc(scores[i], self.graph, masked[i]) for i in range(len(batch))]
        out["auc_half_masked"] = float(np.nanmean(aucs)) if not all(math.isnan(a) for a in aucs) else 0.5
        return out

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        model.eval()
        p = self.params
        losses, count = 0.0, 0
        for start in range(0, len(data), 128):
            batch = self.collate(data[start : start + 128])
            losses += float(self.loss(model, batch)) * len(batch["input_ids"])
            count += len(batch["input_ids"])
        out: dict[str, float] = {"loss": losses / max(count, 1)}
        num = min(p["eval_samples"], len(data))
        decoders = str(p["eval_decoders"]).split()
        for decoder in decoders:
            result = self.decode(model, num, decoder)
            out[f"validity_{decoder}"] = self.validity(result)
            out[f"nfe_{decoder}"] = float(result.nfe.float().mean())
        dapd = "dapd" if "dapd" in decoders else "dapd_notail" if "dapd_notail" in decoders else None
        if dapd is None:
            result = self.decode(model, num, "dapd")
            out["validity_dapd"], out["nfe_dapd"] = self.validity(result), float(result.nfe.float().mean())
            dapd = "dapd"
        for k in sorted({int(k) for k in str(p["eval_topk_ks"]).split()}):
            result = self.decode(model, num, "topk", tokens_per_step=k)
            out[f"validity_topk{k}"], out[f"nfe_topk{k}"] = self.validity(result), float(result.nfe.float().mean())
        nfe = out[f"nfe_{dapd}"]
        lo, hi = nfe_brackets(self.gen_length, nfe)
        for name, steps in (("lo", lo), ("hi", hi)):
            if name == "hi" and hi == lo:
                valid = out["validity_topk_sched_lo"]
            else:
                valid = self.validity(self.decode_schedule(model, num, steps))
            out[f"validity_topk_sched_{name}"], out[f"nfe_topk_sched_{name}"] = valid, float(steps)
        out["validity_topk_at_dapd_nfe"] = interpolate_at_nfe(
            nfe, lo, out["validity_topk_sched_lo"], hi, out["validity_topk_sched_hi"]
        )
        out["nfe_topk_at_dapd_nfe"] = nfe
        out["dapd_gain_at_matched_nfe"] = out[f"validity_{dapd}"] - out["validity_topk_at_dapd_nfe"]
        out.update(self.attention_auc(model, data))
        stats = (getattr(self, "pretrain_meta", None) or {}).get("pretrain")
        if stats is not None:  # the cached base's one-token validity, as the guard read it
            out["base_validity_one"] = float(stats["validity_one"])
        return out

    def flops_per_sample(self) -> float:
        """Training FLOPs of one canvas (:func:`diffusion_lm.training_flops_per_token`)."""
        tokens = 1 + self.gen_length
        return tokens * dlm.training_flops_per_token(self.model_config(), tokens)
