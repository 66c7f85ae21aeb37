"""rainbow-padding: how a diffusion LM's <eos> padding shortens its answers as the allocated
length grows, and the fix (Rainbow Padding, arXiv 2510.03680).

The paper: instruction-tuned masked-diffusion LLMs (LLaDA, Dream) fill the unused tail of the
response canvas with <eos>. <eos> then holds most probability mass at late positions; the
sampler, which commits the most confident positions first, fills the tail with <eos> early and
that mass propagates backward, so the longer the allocated length G, the shorter (and more often
wrong) the answers (LLaDA: MATH 17.1% at G = 128 -> 2.9% at 256; mean length 119.9 -> 1.4
tokens at 1024). Rainbow padding writes one <eos> and then a repeating cycle of K distinct pad
tokens; no single pad token is confident at a given position any more, and a short LoRA
fine-tune moves an <eos>-padded model onto it (K = 7 suffices).

This workload is that experiment in miniature, federated.

Task (generated in-package; the content decides the length, a short answer is wrong): 16
symbols ``a`` .. ``p`` and two fixed successor maps ``f0``, ``f1`` (a 16-cycle and a
derangement; the same for every seed). The prompt ``<bos> s <to:t> <sep>`` names a start ``s``
and a target ``t`` (the target has tokens of its own, so attention finds it by content at any
distance); the response is a walk ``s = x0, x1, ..., xn = t`` with every ``x_{i+1}`` in
``{f0(x_i), f1(x_i)}``, then the stop symbol ``.`` and <eos>. Training walks are random walks
stopped at their first visit of ``t``, 5 to 30 tokens long (mean about 14). An answer is *valid*
when a program accepts it: it starts at ``s``, every transition is legal, ``t`` is visited, and it
ends with ``.`` directly followed by <eos>. The shortest valid answer to a prompt is
``d(s, t) + 2`` tokens (``d``: graph distance), so an answer cut before the target fails.

Padding (option ``padding``): the canvas after the response is filled with

- ``eos``      ``<eos> <eos> <eos> ...``
- ``single``   ``<eos> <pad> <pad> ...``
- ``rainbow``  ``<eos> <pad0> <pad1> ... <pad{K-1}> <pad0> ...`` (``pad_tokens = K``, default 7).

Pad positions are trained like answer positions. Training canvases are ``canvas_min`` ..
``canvas_max`` positions (one per batch, in steps of 16; 32 .. 64 on ``tiny``).

Model: a bidirectional transformer MDM (:mod:`workloads.diffusion_lm`; rotary positions; tiny:
d_model 64, 2 layers, 0.11M parameters) with the LLaDA loss. The base is pretrained by fedsim
with ``eos`` padding (it is the instruction-tuned model that suffers) and cached
(:mod:`workloads.cache`; ``pretrain_steps`` 3000 on ``tiny``, about four minutes of one CPU core:
with 1000 the base's walks break the successor maps too often for any padding to be valid); the
``<pad>`` and ``<pad0..15>`` tokens are in its
vocabulary but never seen in pretraining. Federated LoRA (attention ``q k v o``, feed-forward
``up down`` and the output ``head``) then trains with the run's padding on the clients' data;
the token embedding is trained and uploaded dense beside it (``extra_trainable``: 54 x 64
values), because a 0.1M-parameter model cannot give the never-seen pad tokens usable input
embeddings through LoRA alone within a few rounds (an 8B LLaDA can). The ``tiny`` preset's train
defaults (32 local epochs, lr 5e-3) give a default run about 1,000 LoRA steps.

Evaluation: for each allocated length G in ``eval_lengths`` (default 32 48 64: inside the
training canvases, so that a change with G is the padding's and not the model's extrapolation
to positions it never saw), the first ``eval_samples`` test prompts are answered from an
all-mask canvas by low-confidence remasking. The default sampler is Fast-dLLM's threshold
(``eval_threshold`` 0.9: every masked position at least that confident is committed, else the
most confident one) with temperature sampling (``eval_temperature`` 1: a walk has two legal
successors at every step, and greedy decoding commits a deterministic cycle that may never reach
the target); ``eval_threshold = 0`` uses ``eval_steps`` steps of G / eval_steps tokens instead
(``eval_steps = 0``: LLaDA's one token per step, G network evaluations). The round's metrics
get, per G:

- ``validity_g{G}``: share of valid answers (``validity``, the primary metric, is at the largest G),
- ``length_ratio_g{G}``: mean response length (tokens before the first <eos>; G when there is
  none) over the test data's mean,
- ``early_termination_g{G}``: share of answers shorter than the prompt's shortest valid answer,
- ``pad_first_half_g{G}``: share of padding (<eos>, <pad> or a rainbow pad) among the tokens
  committed in the first half of the sample's denoising steps (the paper's mechanism: an
  <eos>-padded model fills the canvas's tail with padding before it writes the answer),
- ``nfe_g{G}``: mean network evaluations per answer,

and ``loss``, the LLaDA loss on the test set (with the run's padding).

Natural split (``workload.partition = "natural"``): client k draws its prompts' start symbols
from its own subset (``s mod min(num_clients, 16) == k mod 16``). ``dirichlet`` skews over the
start symbol.
"""

from __future__ import annotations

import sys
import zlib
from collections import deque
from typing import Any, ClassVar

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from workloads import diffusion_lm as dlm
from workloads import pretraining
from workloads.base import Workload
from workloads.options import Declaration
from workloads.pretraining import loss_summary, train_steps
from workloads.rainbow_padding_options import (
    DECLARATION,
    MAX_PAD_TOKENS,
    MAX_RESPONSE,
    MIN_RESPONSE,
    PADDINGS,
    parse_lengths,
)

NUM_SYMBOLS = 16
SYMBOLS = [chr(ord("a") + i) for i in range(NUM_SYMBOLS)]
STOP = "."
SPECIAL = ["<mask>", "<eos>", "<pad>", "<bos>", "<sep>"]
TARGETS = [f"<to:{x}>" for x in SYMBOLS]
"""The prompt names the target with its own tokens, so attention finds it by content at any distance."""
VOCAB = SPECIAL + [STOP] + SYMBOLS + [f"<pad{j}>" for j in range(MAX_PAD_TOKENS)] + TARGETS
ID = {tok: i for i, tok in enumerate(VOCAB)}
MASK, EOS, PAD, BOS, SEP, STOP_ID = (ID[t] for t in [*SPECIAL, STOP])
SYM0 = ID["a"]
TARGET0 = ID["<to:a>"]
PAD0 = ID["<pad0>"]
PROMPT_LEN = 4
TASK_SEED = 0x5A1B0  # the successor maps: one task for every run seed


def successor_maps(seed: int = TASK_SEED) -> np.ndarray:
    """(2, 16) int: ``f0`` a random 16-cycle (every symbol reaches every other), ``f1`` a permutation
    with ``f1(x) != x`` and ``f1(x) != f0(x)``."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(NUM_SYMBOLS)
    f0 = np.empty(NUM_SYMBOLS, dtype=np.int64)
    f0[order] = np.roll(order, -1)
    while True:
        f1 = rng.permutation(NUM_SYMBOLS)
        if np.all(f1 != np.arange(NUM_SYMBOLS)) and np.all(f1 != f0):
            return np.stack([f0, f1])


MAPS = successor_maps()


def distances(maps: np.ndarray = MAPS) -> np.ndarray:
    """(16, 16) shortest number of legal transitions from s to t (breadth-first search)."""
    n = maps.shape[1]
    out = np.full((n, n), -1, dtype=np.int64)
    for s in range(n):
        out[s, s] = 0
        queue = deque([s])
        while queue:
            x = queue.popleft()
            for y in maps[:, x]:
                if out[s, y] < 0:
                    out[s, y] = out[s, x] + 1
                    queue.append(y)
    return out


DIST = distances()


def shortest_valid_length(start: int, target: int) -> int:
    """Tokens of the shortest valid answer: ``d(s, t) + 1`` symbols and the stop symbol."""
    return int(DIST[start, target]) + 2


def random_walk(rng: np.random.Generator, start: int, target: int) -> list[int] | None:
    """Symbols of a random walk from ``start`` stopped at its first visit of ``target``; None if
    the response would be longer than :data:`MAX_RESPONSE`."""
    walk = [start]
    while walk[-1] != target:
        if len(walk) + 1 >= MAX_RESPONSE:  # one more symbol and the stop symbol would not fit
            return None
        walk.append(int(MAPS[int(rng.integers(2)), walk[-1]]))
    return walk


def generate_walks(
    num: int, rng: np.random.Generator, starts: list[int] | None = None, client: int = -1
) -> dict[str, list]:
    """``num`` prompts and walk answers as dataset columns ``start``, ``target``, ``walk`` (symbol
    indices), ``length`` (response tokens), ``min_length`` (shortest valid) and ``client``."""
    pool = list(range(NUM_SYMBOLS)) if starts is None else starts
    rows: dict[str, list] = {k: [] for k in ("start", "target", "walk", "length", "min_length", "client")}
    while len(rows["start"]) < num:
        s = pool[int(rng.integers(len(pool)))]
        t = int(rng.integers(NUM_SYMBOLS - 1))
        t += t >= s
        walk = random_walk(rng, s, t)
        if walk is None or len(walk) + 1 < MIN_RESPONSE:
            continue
        rows["start"].append(s)
        rows["target"].append(t)
        rows["walk"].append(walk)
        rows["length"].append(len(walk) + 1)
        rows["min_length"].append(shortest_valid_length(s, t))
        rows["client"].append(client)
    return rows


def pad_canvas(response: list[int], canvas: int, padding: str, pad_tokens: int = 7) -> list[int]:
    """Token ids of a canvas of ``canvas`` positions: the response, <eos>, then the padding's fill."""
    fill = canvas - len(response) - 1
    if fill < 0:
        raise ValueError(f"a response of {len(response)} tokens and <eos> do not fit in {canvas}")
    if padding == "eos":
        tail = [EOS] * fill
    elif padding == "single":
        tail = [PAD] * fill
    elif padding == "rainbow":
        tail = [PAD0 + j % pad_tokens for j in range(fill)]
    else:
        raise ValueError(f"padding={padding!r}: must be one of {', '.join(PADDINGS)}")
    return [*response, EOS, *tail]


def response_tokens(walk: list[int]) -> list[int]:
    return [SYM0 + x for x in walk] + [STOP_ID]


def prompt_tokens(start: int, target: int) -> list[int]:
    return [BOS, SYM0 + start, TARGET0 + target, SEP]


def answer_length(canvas: list[int]) -> int:
    """Tokens before the first <eos> (the whole canvas when there is none)."""
    return canvas.index(EOS) if EOS in canvas else len(canvas)


def is_valid(canvas: list[int], start: int, target: int) -> bool:
    """The program check: starts at ``start``, legal transitions, visits ``target``, ends ``. <eos>``."""
    if EOS not in canvas:
        return False
    answer = canvas[: canvas.index(EOS)]
    if len(answer) < 2 or answer[-1] != STOP_ID:
        return False
    walk = [tok - SYM0 for tok in answer[:-1]]
    if any(not 0 <= x < NUM_SYMBOLS for x in walk) or walk[0] != start or target not in walk:
        return False
    return all(y in MAPS[:, x] for x, y in zip(walk, walk[1:], strict=False))


def is_padding(tokens: torch.Tensor) -> torch.Tensor:
    """Where ``tokens`` are padding of any scheme: ``<eos>``, ``<pad>`` or a rainbow ``<pad{j}>``."""
    return (tokens == EOS) | (tokens == PAD) | ((tokens >= PAD0) & (tokens < PAD0 + MAX_PAD_TOKENS))


def first_half_mask(step: torch.Tensor) -> torch.Tensor:
    """(B, G) bool: positions committed in the first half of their sample's steps.

    A sample's steps are the distinct steps at which it committed tokens (its NFE of them);
    the first half are the first ``ceil(n / 2)``.
    """
    out = torch.zeros_like(step, dtype=torch.bool)
    for b in range(step.shape[0]):
        steps = torch.unique(step[b])  # sorted
        cut = steps[(len(steps) + 1) // 2 - 1]
        out[b] = step[b] <= cut
    return out


class RainbowPadding(Workload):
    supports_gpu: ClassVar[bool] = False  # CPU generators and prompts in the LLaDA loss and sampler
    name: ClassVar[str] = "rainbow-padding"
    description: ClassVar[str] = (
        "masked-diffusion LM pretrained by fedsim with <eos> padding (cached) + LoRA; eos/single/rainbow "
        "padding, validity and answer length vs allocated length"
    )
    declaration: ClassVar[Declaration] = DECLARATION
    primary_metric: ClassVar[str] = "validity"
    lora_target_modules: ClassVar[list[str]] = ["q", "k", "v", "o", "up", "down", "head"]
    extra_trainable: ClassVar[list[str]] = ["embed"]
    label_column: ClassVar[str] = "start"

    def __init__(self, spec):
        super().__init__(spec)
        self.eval_lengths = parse_lengths(self.params["eval_lengths"])
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
            max_len=PROMPT_LEN + max(*self.eval_lengths, p["canvas_max"]),
        )

    def pretrain_payload(self) -> dict[str, Any]:
        """Everything that determines the pretrained base (its cache key); the run's padding is not in it."""
        from workloads.cache import source_digest

        p = self.params
        keys = [k for k in p if not k.startswith("eval_") and k not in ("padding", "pad_tokens")]
        return {
            "workload": self.name,
            "params": {k: p[k] for k in keys},
            "pretrain_padding": "eos",
            "vocab": VOCAB,
            "seed": self.spec.seed,
            "code": source_digest(sys.modules[__name__], dlm, pretraining),
            "torch": torch.__version__.split("+")[0],
        }

    def build_base_model(self) -> nn.Module:
        from workloads.cache import cached_model

        def build() -> nn.Module:
            with torch.random.fork_rng():
                torch.manual_seed(self.spec.seed)
                return dlm.TransformerLM(self.model_config())

        model, self.pretrain_meta = cached_model(self.name, self.pretrain_payload(), build, self._pretrain)
        model.eval()
        return model

    def _pretrain(self, model: nn.Module) -> dict[str, Any]:
        """Centralised training of the whole base with ``eos`` padding (AdamW, one-cycle schedule)."""
        p = self.params
        rng = np.random.default_rng([self.spec.seed, 0xBA5E])
        data = generate_walks(p["pretrain_samples"], rng)
        num = len(data["start"])
        gen = torch.Generator().manual_seed(self.spec.seed)

        def passes():
            for order in torch.randperm(num, generator=gen).split(p["pretrain_batch"]):
                yield self.collate({k: [v[i] for i in order.tolist()] for k, v in data.items()}, padding="eos")

        losses = train_steps(model, passes, self.loss, p["pretrain_steps"], p["pretrain_lr"])
        return {**loss_summary(losses), "samples": num}

    # -- data ----------------------------------------------------------------------------
    def build_data(self) -> tuple[Dataset, Dataset]:
        if self._data is None:
            spec = self.spec
            columns: dict[str, list] = {}
            groups = min(spec.num_clients, NUM_SYMBOLS)
            for client in range(spec.num_clients):
                starts = [s for s in range(NUM_SYMBOLS) if s % groups == client % NUM_SYMBOLS % groups]
                rng = np.random.default_rng([spec.seed, client, 0xDA7A])
                for k, v in generate_walks(spec.samples_per_client, rng, starts, client).items():
                    columns.setdefault(k, []).extend(v)
            test = generate_walks(spec.test_samples, np.random.default_rng([spec.seed, 0x7E57]))
            self._data = Dataset.from_dict(columns), Dataset.from_dict(test)
        return self._data

    def canvas_for(self, rows: dict[str, list]) -> int:
        """The batch's training canvas: canvas_min..canvas_max in steps of 16, picked by a CRC of the rows."""
        p = self.params
        choices = list(range(p["canvas_min"], p["canvas_max"] + 1, 16))
        key = zlib.crc32(repr((rows["start"], rows["target"], rows["length"])).encode())
        return choices[key % len(choices)]

    def collate(self, rows: dict[str, list], padding: str | None = None, canvas: int | None = None) -> dict:
        """Rows to ``input_ids`` (B, 4 + C) = prompt + padded canvas and ``response`` (B, 4 + C) bool."""
        padding = padding or self.params["padding"]
        canvas = canvas or self.canvas_for(rows)
        ids = [
            prompt_tokens(s, t) + pad_canvas(response_tokens(w), canvas, padding, self.params["pad_tokens"])
            for s, t, w in zip(rows["start"], rows["target"], rows["walk"], strict=True)
        ]
        input_ids = torch.tensor(ids, dtype=torch.long)
        response = torch.zeros_like(input_ids, dtype=torch.bool)
        response[:, PROMPT_LEN:] = True
        return {"input_ids": input_ids, "response": response}

    # -- training and evaluation ----------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """LLaDA loss (:func:`workloads.diffusion_lm.mdm_loss`); the noise is a function of the batch and seed."""
        gen = dlm.batch_generator(batch["input_ids"], self.spec.seed)
        return dlm.mdm_loss(model, batch["input_ids"], batch["response"], MASK, gen)

    def tokens_per_step(self, gen_length: int) -> int:
        steps = self.params["eval_steps"]
        return 1 if steps == 0 else max(1, gen_length // steps)

    @torch.no_grad()
    def sample(self, model: nn.Module, rows: dict[str, list], gen_length: int) -> dlm.SampleResult:
        """Answers to the rows' prompts on a canvas of ``gen_length`` masks (the evaluation's sampler).

        ``eval_threshold > 0``: Fast-dLLM's confidence threshold; else ``eval_steps`` steps of
        G / eval_steps tokens (``eval_steps = 0``: LLaDA's one token per step).
        """
        p = self.params
        prompt = torch.tensor([prompt_tokens(s, t) for s, t in zip(rows["start"], rows["target"], strict=True)])
        gen = torch.Generator().manual_seed(self.spec.seed * 100003 + gen_length)
        return dlm.mdm_sample(
            model,
            prompt,
            gen_length,
            MASK,
            tokens_per_step=self.tokens_per_step(gen_length),
            threshold=p["eval_threshold"] if p["eval_threshold"] > 0 else None,
            temperature=p["eval_temperature"],
            generator=gen,
            forbidden=(BOS, SEP, *range(TARGET0, TARGET0 + NUM_SYMBOLS)),
        )

    @staticmethod
    def answer_metrics(result: dlm.SampleResult, rows: dict[str, list], data_mean_length: float) -> dict[str, float]:
        """validity, length_ratio, early_termination, pad_first_half and nfe of one batch of samples."""
        canvases = result.tokens[:, PROMPT_LEN:].tolist()
        lengths = np.array([answer_length(c) for c in canvases], dtype=float)
        valid = [is_valid(c, s, t) for c, s, t in zip(canvases, rows["start"], rows["target"], strict=True)]
        committed = result.tokens[:, PROMPT_LEN:][first_half_mask(result.step)]
        return {
            "validity": float(np.mean(valid)),
            "length_ratio": float(lengths.mean() / data_mean_length),
            "early_termination": float(np.mean(lengths < np.asarray(rows["min_length"]))),
            "pad_first_half": float(is_padding(committed).float().mean()) if committed.numel() else 0.0,
            "nfe": float(result.nfe.float().mean()),
        }

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        model.eval()
        losses, count = 0.0, 0
        for start in range(0, len(data), 64):
            rows = data[start : start + 64]
            n = len(rows["start"])
            losses += float(self.loss(model, self.collate(rows, canvas=self.params["canvas_max"]))) * n
            count += n
        out: dict[str, float] = {"loss": losses / max(count, 1)}
        rows = data[: self.params["eval_samples"]]
        mean_length = float(np.mean(data["length"]))
        for g in self.eval_lengths:
            for key, value in self.answer_metrics(self.sample(model, rows, g), rows, mean_length).items():
                out[f"{key}_g{g}"] = value
        out["validity"] = out[f"validity_g{max(self.eval_lengths)}"]
        return out

    def flops_per_sample(self) -> float:
        """Training FLOPs of one sample on the mean training canvas (:func:`diffusion_lm.training_flops_per_token`)."""
        p = self.params
        tokens = PROMPT_LEN + (p["canvas_min"] + p["canvas_max"]) / 2
        return tokens * dlm.training_flops_per_token(self.model_config(), int(tokens))
