"""reversal-curse: does a masked-diffusion LM's escape from the reversal curse survive federated
LoRA? (arXiv 2602.02133)

The paper: an autoregressive LM trained on "a IS b" cannot answer "b IS ?" with a (the reversal
curse); a masked diffusion LM largely can. The authors trace this to the architecture rather
than to the any-order objective alone: the MDM's objective also trains "[M] IS b -> a" (the
statement with its subject masked), and in a one-layer encoder the query, key and value
weights are shared by every position, so the attention score of that training example (mask
at position 0 attending to b at +2) and of the reverse probe "b IS [M]" (mask at position 2
attending to b at -2) are positively correlated, and the gradients of the forward and the
reverse loss are aligned: minimising the forward loss lowers the reverse loss.

Data (generated in-package; one task per seed): entity tokens in two disjoint pools.

- *pretraining facts*: ``num_pretrain_facts`` pairs (c_j, d_j) stated in both directions
  ("c IS d" and "d IS c"); the base learns the template and the two-way use of IS,
- *new facts*: ``num_facts`` = N pairs (a_j, b_j) of fresh entities, stated forward only
  ("a_j IS b_j"); client k holds the facts with ``j mod num_clients == k`` (natural split).

A statement is the three tokens ``[x, IS, y]``. The MDM is trained with the LLaDA loss on the
two entity positions (the template token is never masked); the ARM with next-token loss.
Probes, never in the training data: forward ``[a, IS, [M]] -> b``, reverse ``[b, IS, [M]] -> a``
for the MDM; the prefixes ``[a, IS]`` and ``[b, IS]`` for the ARM. Chance is 1/N.

Model (option ``model``): ``mdm`` (bidirectional) or ``arm`` (causal), the same transformer of
:mod:`workloads.diffusion_lm`, one layer by default, rotary positions (``positions=learned``:
learned absolute positions, the paper's ablation). The ``tiny`` base is pretrained by fedsim on
the pretraining facts and cached (:mod:`workloads.cache`); federated LoRA (``q k v o up down``)
then teaches the new facts forward only. The new entities' input embeddings and output rows
are untrained in the base, so ``embed`` and ``head`` are trained and uploaded dense beside the
LoRA factors (``extra_trainable``). The ``from-scratch`` preset is the paper's own setting: no
pretraining, every weight trainable and sent dense (d_model 128, the pilot's size).

Metrics each round on the global model (over the test facts, which are trained facts):
``forward_accuracy``, ``reverse_accuracy`` (top-1 over the vocabulary; the primary metric),
``reverse_probability`` (mean probability of the correct reverse answer) and ``chance`` (1/N),
and five of the paper's mechanism, each over the *attention factors*: the trainable weights of
the ``q k v o`` projections, i.e. their LoRA factors (the projections themselves under
``from_scratch``), never the dense embedding and output rows, whose shared "push every other
entity down" part would make any two losses' gradients agree:

- ``grad_cosine``: ``cos(grad L_fwd, grad L_rev)``, with ``L_fwd`` the training loss of the
  forward statements (fixed noise) and ``L_rev`` the cross-entropy of the reverse probes, each
  summed over all test facts (a cosine of sums, not per fact); the paper expects the forward and
  reverse gradients aligned (cosine > 0) in the MDM and not (<= 0) in the ARM,
- ``reverse_loss_drop``: ``L_rev`` before minus after one SGD step of size ``probe_lr`` on
  ``L_fwd`` (the model restored afterwards); positive when learning the forward statements
  lowers the reverse loss (to first order ``probe_lr * grad L_fwd . grad L_rev``),
- ``grad_cosine_matched`` and ``grad_cosine_excess``: the same alignment *per fact*, over the
  first ``FACT_PROBES`` (64) test facts j, each with its own gradients ``g_fwd_j`` (of fact j's
  training loss, its expectation over the masking noise for the MDM: see :meth:`fact_losses`)
  and ``g_rev_j`` (of its reverse probe's cross-entropy). ``grad_cosine_matched`` is the mean over
  j of ``cos(g_fwd_j, g_rev_j)``; ``grad_cosine_excess`` is that minus the mean over j of
  ``cos(g_fwd_j, g_rev_pi(j))``, fact j's forward gradient against *another* fact's reverse
  gradient (pi the cyclic shift ``j -> j + 1 mod n``, a derangement), so that a component
  every fact shares (which dominates ``grad_cosine``, a cosine of sums) cancels: positive when
  learning "a IS b" lowers the loss of "b IS ?" -> a of the same fact more than of another. The
  MDM's should be positive (its training loss also predicts a from ``[M] IS b``, which shares
  its value path b -> a with the probe ``b IS [M]``), the ARM's about 0 (its loss only predicts
  b from ``[a, IS]``; the probe needs a from ``[b, IS]``, which shares no fact-specific
  direction),
- ``score_correlation``: per layer and head, the Pearson correlation over facts of the
  pre-softmax attention score of the mask on b in "[M] IS b" (position 0 -> 2, what the
  forward statement trains) and in the reverse probe "b IS [M]" (position 2 -> 0), then the
  mean over layers and heads; 0 for the ARM, whose position 0 cannot attend forward.

``loss``: the training loss on the test facts.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn

from workloads import diffusion_lm as dlm
from workloads.base import Workload
from workloads.options import Declaration
from workloads.reversal_curse_options import DECLARATION

MASK, IS = 0, 1
FACT_PROBES = 64
"""The per-fact gradient metrics (``grad_cosine_matched``, ``grad_cosine_excess``) use the first this many test facts."""
SPECIAL = ["<mask>", "IS"]


def vocab_size(num_facts: int, num_pretrain_facts: int) -> int:
    return len(SPECIAL) + 2 * (num_facts + num_pretrain_facts)


def make_facts(num_facts: int, num_pretrain_facts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(new, pretrain): (N, 2) and (N_pre, 2) entity token ids, every entity in exactly one fact.

    The new facts use ids ``2 .. 2 + 2N - 1``, the pretraining facts the ids after them; within
    a pool the pairing is a random permutation of the seed.
    """
    rng = np.random.default_rng([seed, 0xFAC7])
    new = len(SPECIAL) + rng.permutation(2 * num_facts).reshape(num_facts, 2)
    first = len(SPECIAL) + 2 * num_facts
    pre = first + rng.permutation(2 * num_pretrain_facts).reshape(num_pretrain_facts, 2)
    return new.astype(np.int64), pre.astype(np.int64)


def statements(pairs: np.ndarray) -> torch.Tensor:
    """(n, 3) ``[x, IS, y]`` for every pair (x, y)."""
    pairs = torch.as_tensor(pairs, dtype=torch.long)
    return torch.stack([pairs[:, 0], torch.full_like(pairs[:, 0], IS), pairs[:, 1]], dim=1)


ATTENTION_WEIGHT = re.compile(r"\.attn\.[qkvo]\.")
"""Matches the parameter names of the attention projections (and of their LoRA factors)."""


def attention_scores(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """(layers, B, H, T, T) pre-softmax attention scores ``q k^T / sqrt(d_head)`` of every layer of a
    :class:`~workloads.diffusion_lm.TransformerLM` (LoRA included), read from each attention's input."""
    inputs: list[tuple] = []
    layers = [m for m in model.modules() if isinstance(m, dlm.Attention)]
    hooks = [m.register_forward_pre_hook(lambda _, args: inputs.append(args[:2])) for m in layers]
    try:
        model(input_ids=input_ids)
    finally:
        for hook in hooks:
            hook.remove()
    scores = []
    for attn, (x, rope) in zip(layers, inputs, strict=True):
        bsz, t, _ = x.shape
        q, k = (z.view(bsz, t, attn.num_heads, attn.d_head).transpose(1, 2) for z in (attn.q(x), attn.k(x)))
        if rope is not None:
            q, k = dlm.apply_rotary(q, *rope), dlm.apply_rotary(k, *rope)
        scores.append(q @ k.transpose(-1, -2) / math.sqrt(attn.d_head))
    return torch.stack(scores)


class ReversalCurse(dlm.PretrainedOrScratch, Workload):
    name: ClassVar[str] = "reversal-curse"
    description: ClassVar[str] = (
        "one-layer MDM or ARM (cached base on two-way facts) + LoRA on new facts stated forward only; "
        "forward/reverse accuracy, gradient cosine"
    )
    declaration: ClassVar[Declaration] = DECLARATION
    primary_metric: ClassVar[str] = "reverse_accuracy"
    lora_target_modules: ClassVar[list[str]] = ["q", "k", "v", "o", "up", "down"]
    extra_trainable: ClassVar[list[str]] = ["embed", "head"]
    label_column: ClassVar[str] = "client"

    def __init__(self, spec):
        super().__init__(spec)
        p = self.params
        self.causal = p["model"] == "arm"
        self.new_facts, self.pretrain_facts = make_facts(p["num_facts"], p["num_pretrain_facts"], spec.seed)
        self._data: tuple[Dataset, Dataset] | None = None

    # -- model ---------------------------------------------------------------------------
    def model_config(self) -> dlm.TransformerConfig:
        p = self.params
        return dlm.TransformerConfig(
            vocab_size=vocab_size(p["num_facts"], p["num_pretrain_facts"]),
            d_model=p["d_model"],
            num_heads=p["num_heads"],
            num_layers=p["num_layers"],
            d_ff=p["d_ff"],
            positions=p["positions"],
            max_len=3,
            causal=self.causal,
        )

    def pretrain_keys(self) -> list[str]:
        """The parameters that determine the pretrained base: all but ``from_scratch`` and ``probe_lr``."""
        return [k for k in self.params if k not in ("from_scratch", "probe_lr")]

    def skips_pretraining(self) -> bool:
        """Nothing to pretrain: no steps, or no facts to state both ways."""
        return self.params["pretrain_steps"] == 0 or self.params["num_pretrain_facts"] == 0

    def _pretrain(self, model: nn.Module) -> dict[str, Any]:
        """Full-batch AdamW on the pretraining facts stated in both directions."""
        p = self.params
        pairs = np.concatenate([self.pretrain_facts, self.pretrain_facts[:, ::-1]])
        batch = self.batch_of(statements(pairs))
        opt = torch.optim.AdamW(model.parameters(), lr=p["pretrain_lr"], weight_decay=0.0)
        model.train()
        losses = []
        for step in range(p["pretrain_steps"]):
            gen = torch.Generator().manual_seed(self.spec.seed * 100003 + step)
            loss = self.statement_loss(model, batch, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        model.eval()
        acc = self.probe_accuracy(model, pairs)
        return {"steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1], "two_way_accuracy": acc}

    # -- data ----------------------------------------------------------------------------
    def client_facts(self, client: int) -> list[int]:
        """Indices j of the new facts client ``client`` holds: ``j mod num_clients == client``."""
        n, num = self.params["num_facts"], self.spec.num_clients
        own = [j for j in range(n) if j % num == client]
        return own or [client % n]  # more clients than facts: share

    def build_data(self) -> tuple[Dataset, Dataset]:
        """Train rows: each client's own facts, cycled to ``samples_per_client`` rows; test: trained facts."""
        if self._data is None:
            spec = self.spec
            columns: dict[str, list] = {"fact": [], "a": [], "b": [], "client": []}
            for client in range(spec.num_clients):
                own = self.client_facts(client)
                for i in range(spec.samples_per_client):
                    j = own[i % len(own)]
                    columns["fact"].append(j)
                    columns["a"].append(int(self.new_facts[j, 0]))
                    columns["b"].append(int(self.new_facts[j, 1]))
                    columns["client"].append(client)
            seen = sorted(set(columns["fact"]))[: spec.test_samples]
            test = {"fact": seen, "a": [int(self.new_facts[j, 0]) for j in seen]}
            test["b"] = [int(self.new_facts[j, 1]) for j in seen]
            self._data = Dataset.from_dict(columns), Dataset.from_dict(test)
        return self._data

    @staticmethod
    def batch_of(ids: torch.Tensor) -> dict[str, torch.Tensor]:
        response = torch.zeros_like(ids, dtype=torch.bool)
        response[:, 0] = response[:, 2] = True  # the entities; the template token is never masked
        return {"input_ids": ids, "response": response}

    def collate(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        """Rows to forward statements ``input_ids`` (B, 3) = ``[a, IS, b]`` and ``response`` (B, 3)."""
        return self.batch_of(statements(np.stack([rows["a"], rows["b"]], axis=1)))

    # -- losses and probes ----------------------------------------------------------------
    def statement_loss(self, model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
        if self.causal:
            return dlm.arm_loss(model, batch["input_ids"], batch["response"])
        return dlm.mdm_loss(model, batch["input_ids"], batch["response"], MASK, generator)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """LLaDA loss on the entities (MDM) or next-token loss (ARM); the noise is a function of the batch."""
        return self.statement_loss(model, batch, dlm.batch_generator(batch["input_ids"], self.spec.seed))

    def answer_logits(self, model: nn.Module, given: torch.Tensor) -> torch.Tensor:
        """(B, V) logits of the answer to ``[given, IS, ?]``: position 2 of ``[x, IS, [M]]`` (MDM), or the
        next token after ``[x, IS]`` (ARM)."""
        if self.causal:
            return model(input_ids=torch.stack([given, torch.full_like(given, IS)], dim=1))[:, -1]
        probe = torch.stack([given, torch.full_like(given, IS), torch.full_like(given, MASK)], dim=1)
        return model(input_ids=probe)[:, 2]

    @torch.no_grad()
    def probe_accuracy(self, model: nn.Module, pairs: np.ndarray) -> float:
        pairs = torch.as_tensor(np.ascontiguousarray(pairs))
        return float((self.answer_logits(model, pairs[:, 0]).argmax(-1) == pairs[:, 1]).float().mean())

    @staticmethod
    def attention_factors(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The trainable weights of the attention projections ``q k v o`` (every layer): their LoRA
        factors (the base weights are frozen), or the projections themselves (``from_scratch``);
        never the embeddings, the output head or the feed-forward."""
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad and ATTENTION_WEIGHT.search(n)]

    def forward_and_reverse_loss(self, model: nn.Module, a: torch.Tensor, b: torch.Tensor):
        """(L_fwd, L_rev): the training loss of the statements ``[a, IS, b]`` (fixed noise) and the
        cross-entropy of the reverse probes' answer ``a`` (see the module docstring)."""
        batch = self.batch_of(statements(torch.stack([a, b], dim=1)))
        return self.loss(model, batch), F.cross_entropy(self.answer_logits(model, b), a)

    def grad_cosine(self, model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> float:
        """cos(grad L_fwd, grad L_rev) over the attention factors (:meth:`attention_factors`); 0 without any."""
        params = [p for _, p in self.attention_factors(model)]
        if not params:
            return 0.0
        with torch.enable_grad():
            fwd_loss, rev_loss = self.forward_and_reverse_loss(model, a, b)
            fwd = torch.autograd.grad(fwd_loss, params, allow_unused=True)
            rev = torch.autograd.grad(rev_loss, params, allow_unused=True)
        flat = [
            torch.cat(
                [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gs, params, strict=True)]
            )
            for gs in (fwd, rev)
        ]
        denom = flat[0].norm() * flat[1].norm()
        return float(flat[0] @ flat[1] / denom) if denom > 0 else 0.0

    def fact_losses(self, model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fwd, rev), each (B,): per fact, the training loss of ``[a, IS, b]`` without noise, and the
        cross-entropy of the reverse probe's answer ``a``.

        ARM: the training loss itself, ``CE(b | [a, IS])``. MDM: the expectation of the LLaDA loss
        over its noise. With ``p = (1 - eps) t + eps`` and each entity masked with probability p,
        the loss ``(1/2) sum_{i masked} CE_i / p`` has the expectation
        ``(1/2) sum_i [E[p] CE_i(other entity masked) + (1 - E[p]) CE_i(other entity shown)]``,
        ``E[p] = (1 + eps) / 2``: the four predictions ``b | [a, IS, M]``, ``a | [M, IS, b]``,
        ``b | [M, IS, M]`` and ``a | [M, IS, M]``.
        """
        rev = F.cross_entropy(self.answer_logits(model, b), a, reduction="none")
        if self.causal:
            return F.cross_entropy(self.answer_logits(model, a), b, reduction="none"), rev
        n, mask, is_ = len(a), torch.full_like(a, MASK), torch.full_like(a, IS)
        rows = [torch.stack([a, is_, mask], 1), torch.stack([mask, is_, b], 1), torch.stack([mask, is_, mask], 1)]
        logits = model(input_ids=torch.cat(rows))
        shown, hidden = logits[:n], logits[n : 2 * n]
        both = logits[2 * n :]
        e_p = (1 + dlm.LLADA_EPS) / 2
        ce = lambda z, y: F.cross_entropy(z, y, reduction="none")  # noqa: E731
        other_shown = ce(shown[:, 2], b) + ce(hidden[:, 0], a)
        other_masked = ce(both[:, 2], b) + ce(both[:, 0], a)
        return 0.5 * (e_p * other_masked + (1 - e_p) * other_shown), rev

    def fact_gradients(self, model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G_fwd, G_rev), each (B, P): row j the gradient of fact j's forward and reverse loss
        (:meth:`fact_losses`) over the attention factors, flattened (P = 0 without any factors)."""
        params = [p for _, p in self.attention_factors(model)]
        n = len(a)
        if not params:
            return torch.zeros(n, 0), torch.zeros(n, 0)
        with torch.enable_grad():
            losses = self.fact_losses(model, a, b)
            rows = torch.eye(n)  # grad_outputs e_j: the gradient of loss j alone (facts never interact)
            grads = [
                torch.autograd.grad(
                    loss, params, grad_outputs=rows, is_grads_batched=True, retain_graph=True, allow_unused=True
                )
                for loss in losses
            ]
        return tuple(
            torch.cat(
                [
                    (g if g is not None else torch.zeros(n, *p.shape)).reshape(n, -1)
                    for g, p in zip(gs, params, strict=True)
                ],
                1,
            )
            for gs in grads
        )

    @staticmethod
    def matched_cosines(g_fwd: torch.Tensor, g_rev: torch.Tensor) -> tuple[float, float]:
        """(matched, mismatched): the mean over rows j of ``cos(g_fwd[j], g_rev[j])`` and of
        ``cos(g_fwd[j], g_rev[j + 1 mod n])``; a zero row's cosines count 0; mismatched is 0 for one row."""
        if g_fwd.shape[1] == 0:
            return 0.0, 0.0
        matched = float(F.cosine_similarity(g_fwd, g_rev, dim=1).mean())
        if len(g_fwd) < 2:
            return matched, 0.0
        return matched, float(F.cosine_similarity(g_fwd, g_rev.roll(-1, 0), dim=1).mean())

    def fact_grad_cosines(self, model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        """``grad_cosine_matched`` and ``grad_cosine_excess`` (module docstring) over the first
        :data:`FACT_PROBES` facts given."""
        matched, mismatched = self.matched_cosines(*self.fact_gradients(model, a[:FACT_PROBES], b[:FACT_PROBES]))
        return {"grad_cosine_matched": matched, "grad_cosine_excess": matched - mismatched}

    def reverse_loss_drop(self, model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> float:
        """L_rev before minus after one SGD step (``probe_lr``) on L_fwd over the attention factors.

        Positive: learning the forward statements lowers the reverse loss. The factors are restored
        afterwards (bit for bit), so the model is unchanged; 0 without any factors.
        """
        params = [p for _, p in self.attention_factors(model)]
        if not params:
            return 0.0
        saved = [p.detach().clone() for p in params]
        try:
            with torch.enable_grad():
                fwd_loss, before = self.forward_and_reverse_loss(model, a, b)
                grads = torch.autograd.grad(fwd_loss, params, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    if g is not None:
                        p.sub_(self.params["probe_lr"] * g)
                _, after = self.forward_and_reverse_loss(model, a, b)
        finally:
            with torch.no_grad():
                for p, old in zip(params, saved, strict=True):
                    p.copy_(old)
        return float(before.detach() - after)

    @torch.no_grad()
    def score_correlation(self, model: nn.Module, b: torch.Tensor) -> float:
        """Per layer and head, the Pearson correlation over facts of the pre-softmax attention score of
        the mask on b in ``[M] IS b`` (0 -> 2) and in ``b IS [M]`` (2 -> 0); their mean. 0 for the ARM
        (position 0 cannot attend forward); a head whose scores do not vary over facts counts 0."""
        if self.causal:
            return 0.0
        subject_masked = torch.stack([torch.full_like(b, MASK), torch.full_like(b, IS), b], dim=1)
        reverse_probe = torch.stack([b, torch.full_like(b, IS), torch.full_like(b, MASK)], dim=1)
        fwd = attention_scores(model, subject_masked)[:, :, :, 0, 2]  # (layers, B, H)
        rev = attention_scores(model, reverse_probe)[:, :, :, 2, 0]
        fwd, rev = fwd - fwd.mean(1, keepdim=True), rev - rev.mean(1, keepdim=True)
        denom = fwd.norm(dim=1) * rev.norm(dim=1)  # (layers, H)
        per_head = torch.where(denom > 0, (fwd * rev).sum(1) / denom.clamp_min(1e-30), torch.zeros_like(denom))
        return float(per_head.mean())

    def evaluate(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        model.eval()
        a, b = torch.tensor(data["a"]), torch.tensor(data["b"])
        with torch.no_grad():
            loss = float(self.loss(model, self.collate(data[:])))
            fwd = self.answer_logits(model, a)
            rev = self.answer_logits(model, b)
            rev_prob = rev.float().softmax(-1).gather(1, a[:, None]).squeeze(1)
        return {
            "loss": loss,
            "forward_accuracy": float((fwd.argmax(-1) == b).float().mean()),
            "reverse_accuracy": float((rev.argmax(-1) == a).float().mean()),
            "reverse_probability": float(rev_prob.mean()),
            "chance": 1.0 / self.params["num_facts"],
            "grad_cosine": self.grad_cosine(model, a, b),
            **self.fact_grad_cosines(model, a, b),
            "reverse_loss_drop": self.reverse_loss_drop(model, a, b),
            "score_correlation": self.score_correlation(model, b),
        }

    def flops_per_sample(self) -> float:
        """Training FLOPs of one three-token statement (:func:`diffusion_lm.training_flops_per_token`)."""
        return 3 * dlm.training_flops_per_token(self.model_config(), 3)
