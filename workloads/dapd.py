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
cached (:mod:`workloads.cache`; ``pretrain_steps`` 3000 of 128 canvases on ``tiny``, about a
minute of one CPU core: the rule is an XOR-like function of two positions, and the loss sits at
log 3 for the first ~1500 steps before it drops). Federated LoRA (``q k v o up down head``) then
fine-tunes it on the clients' skewed data; the question is whether the attention graph that DAPD
reads, and DAPD's validity, survive that. ``pretrain_task = "format"`` pretrains on the format
only (Y drawn independently of X), a base that knows where the tokens go but not the rule; the
``from-scratch`` preset trains every weight of a random model, sent dense. (In pilots neither
learnt the rule within a federated budget of a few rounds.)

Non-IID clients: client k draws its X values from its own distribution, ``client_skew`` on its
favourite value ``k mod 3`` and the rest split evenly (the test set is uniform); ``label_column``
is the favourite value, ``natural_partition_column`` the client.

Evaluation on ``eval_samples`` canvases decoded greedily from all masks, for every decoder of
``eval_decoders`` (``one``: G NFE; ``topk``: ``topk_k`` per step; ``threshold``: Fast-dLLM at
``threshold``; ``dapd``: tau = ``tau_rel`` x mean off-diagonal score with the tail switch;
``dapd_notail``: the same without it): ``validity_{decoder}`` and ``nfe_{decoder}`` (mean
forwards per sample). ``validity_topk_at_dapd_nfe``: top-k with as many steps as DAPD's mean NFE
(rounded; ``k = ceil(G / steps)``), ``nfe_topk_at_dapd_nfe`` its NFE. ``auc_all_masked``: ROC
AUC of the attention scores of an all-mask canvas against the true graph (all position pairs);
``auc_half_masked``: the same over the pairs of masked positions when a random half of a test
canvas is masked, averaged over the samples. ``loss``: the LLaDA loss on the test set.
Primary metric: ``validity_dapd``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from workloads import diffusion_lm as dlm
from workloads.base import Workload
from workloads.dapd_options import DECLARATION, DECODER_NAMES, NUM_VALUES, copy_length
from workloads.options import Declaration

VOCAB = ["<mask>", "<bos>", *[f"x{v}" for v in range(NUM_VALUES)], *[f"y{v}" for v in range(NUM_VALUES)]]
ID = {tok: i for i, tok in enumerate(VOCAB)}
MASK, BOS, X0, Y0 = ID["<mask>"], ID["<bos>"], ID["x0"], ID["y0"]


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
    primary_metric: ClassVar[str] = "validity_dapd"
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
        """The parameters that determine the pretrained base."""
        keys = ("d_model", "num_heads", "num_layers", "d_ff", "positions", "length", "copies")
        return keys + ("pretrain_task", "pretrain_steps", "pretrain_samples", "pretrain_batch", "pretrain_lr")

    def _pretrain(self, model: nn.Module) -> dict[str, Any]:
        """Centralised AdamW on uniform-X canvases (Y uniform for ``format``, the rule for ``rule``)."""
        p = self.params
        rng = np.random.default_rng([self.spec.seed, 0xBA5E])
        rows = generate(p["pretrain_samples"], self.length, self.copies, rng)["x"]
        rule = p["pretrain_task"] == "rule"
        ids = torch.tensor([[BOS, *canvas_tokens(np.array(x), self.length, rule, rng)] for x in rows])
        response = torch.ones_like(ids, dtype=torch.bool)
        response[:, 0] = False
        gen = torch.Generator().manual_seed(self.spec.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=p["pretrain_lr"], weight_decay=0.0)
        model.train()
        losses = []
        for _ in range(p["pretrain_steps"]):
            pick = torch.randint(len(ids), (p["pretrain_batch"],), generator=gen)
            loss = dlm.mdm_loss(model, ids[pick], response[pick], MASK, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        model.eval()
        return {"steps": len(losses), "loss_first": losses[0], "loss_last_50": float(np.mean(losses[-50:]))}

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
        """``num`` canvases decoded greedily from all masks (``dapd_notail``: DAPD without the tail switch)."""
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
        steps = max(1, round(out[f"nfe_{dapd}"]))
        result = self.decode(model, num, "topk", tokens_per_step=math.ceil(self.gen_length / steps))
        out["validity_topk_at_dapd_nfe"] = self.validity(result)
        out["nfe_topk_at_dapd_nfe"] = float(result.nfe.float().mean())
        out.update(self.attention_auc(model, data))
        return out

    def flops_per_sample(self) -> float:
        """Training FLOPs of one canvas (:func:`diffusion_lm.training_flops_per_token`)."""
        tokens = 1 + self.gen_length
        return tokens * dlm.training_flops_per_token(self.model_config(), tokens)
