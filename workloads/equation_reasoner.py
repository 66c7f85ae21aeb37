"""equation-reasoner: a small T5 solving arithmetic word problems (Small Language Models are
Equation Reasoners, arXiv 2409.12393).

The paper fine-tunes T5 models (T5-Tiny, about 16M parameters, up to 220M) on arithmetic word
problems in three solution formats and finds that equation-only solutions beat natural-language
chain of thought, most of all for the smallest models. This workload is that experiment in
miniature, federated:

Data: generated in-package from the seed. A problem starts from a small integer and applies 1 to
3 operations (+, -, x) with small operands (intermediate values stay in 1..``max_value``). Its
question text comes from one of four template families (a person's story, a shop's stock, a
one-sentence "if ..." question, a container), with names, objects and verbs drawn from synonym
lists. The same solution is rendered in three target formats::

    equation  5+3=8 8*2=16 #### 16
    nl        we begin with 5 coins . 3 more makes 5+3=8 . multiplying by 2 gives 8*2=16 . so the answer is 16 . #### 16
    answer    #### 16

``target_format`` (a preset key; ``--set workload.options=target_format=nl``) picks one.
``nl_variability`` (0-3, default 1) sets how varied the ``nl`` solutions are, to test the paper's
hypothesis that this variability is what hurts small models: 0 writes one fixed phrasing per
sentence; 1 (the default) draws each sentence from 3 phrasings; 2 from larger sets of paraphrases
(clauses x verbs: 16-24 phrasings of a step, 8 openings, 6 closings); 3 also puts the equation
or number first in half of the sentences and a connective before half of the steps (170-250
phrasings of a step, 11 openings, 9 closings). The questions, equations and answers are the same at every level (the paraphrases have
their own generator, seeded from the seed), and the paraphrases use only words the tokenizer
already has, so the model is the same too. Problems
are split by a hash of their numbers and operations into three disjoint sets: one to pretrain the
base on, one for the clients, and held-out test problems with number combinations seen by
neither.

Model: ``T5ForConditionalGeneration`` from a ``T5Config`` (ReLU feed-forward, no dropout) with a
word-level tokenizer made in code (:class:`workloads.text_tools.WordTokenizer`; one token per
digit). Presets run from a 0.24M-parameter ``tiny`` (pretrains in about 30 s on one CPU core)
to the paper's T5-Tiny shape (d_model 256, d_ff 1024, 4 heads, 4+4 layers; 7.4M parameters here,
the paper's 16M include a 32k-token vocabulary). There are no offline
T5 weights, so the workload pretrains its base once on the pretraining problems (same target
format) and caches it (:mod:`workloads.cache`, keyed by a content hash of the architecture,
recipe, seed and this module's source); federated LoRA on the attention ``q`` and ``v``
projections then starts from that base.

Metric: exact final-answer accuracy, the integer after ``####`` in the greedy decoding compared
with the true answer (parsed with a regular expression, never evaluated), overall and by number
of operations (``accuracy_ops1`` .. ``accuracy_ops3``). For targets with equations (``equation``,
``nl``) two more separate the reasoning chain from its arithmetic: ``plan_accuracy``, the share
of problems whose generated equations start from the right number and apply the right operations
with the right operands in the right order (whatever their results), and
``equation_arithmetic``, the share of generated equations ``a op b = c`` that are true.

Natural split (``workload.partition = "natural"``): client k has its own template family and an
operation mix dominated by one operation. ``dirichlet`` skews over the template family.

Real data (``workload.dataset``): question/answer columns (GSM8K's layout: the answer ends with
``#### <number>``); words outside the generated vocabulary become ``<unk>``.
"""

from __future__ import annotations

import re
import sys
import zlib
from typing import Any, ClassVar

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from workloads import pretraining
from workloads.base import Workload
from workloads.equation_reasoner_options import DECLARATION
from workloads.options import Declaration
from workloads.pretraining import loss_summary, train_steps
from workloads.text_tools import WordTokenizer

OPS = ("+", "-", "*")
PRETRAIN_BUCKETS, CLIENT_BUCKETS, TEST_BUCKETS = range(1, 5), range(5, 10), range(0, 1)

PEOPLE = [
    ("anna", "she"),
    ("ben", "he"),
    ("carla", "she"),
    ("dev", "he"),
    ("elena", "she"),
    ("farid", "he"),
    ("grace", "she"),
    ("hugo", "he"),
    ("ines", "she"),
    ("jonas", "he"),
    ("kemi", "she"),
    ("liam", "he"),
    ("maya", "she"),
    ("omar", "he"),
    ("priya", "she"),
    ("sami", "he"),
]
OBJECTS = (
    "apples marbles stickers books coins cookies pencils stamps cards shells candles balloons toys flowers eggs bottles"
).split()
SHOPS = ["shop", "store", "market stall", "bakery", "kiosk", "warehouse"]
CONTAINERS = ["a basket", "the garage", "a drawer", "the shelf", "a big box", "the cupboard"]
GAIN = ["buys", "finds", "gets", "receives", "collects", "wins", "is given"]
LOSS = ["gives away", "loses", "sells", "eats", "drops", "donates", "uses"]

# Template families: (opening, {op: step sentences}, questions). {n} name, {p} pronoun, {o} object,
# {s} shop, {c} container, {a} start, {b} operand.
FAMILIES: list[tuple[list[str], dict[str, list[str]], list[str]]] = [
    (
        ["{n} has {a} {o} .", "{n} owns {a} {o} .", "{n} starts the day with {a} {o} ."],
        {
            "+": ["then {p} {gain} {b} more .", "later {n} {gain} {b} more {o} .", "next {p} {gain} another {b} ."],
            "-": ["then {p} {loss} {b} .", "later {n} {loss} {b} of them .", "next {p} {loss} {b} {o} ."],
            "*": [
                "then {p} ends up with {b} times as many .",
                "later the number of {o} becomes {b} times as big .",
                "next {n} multiplies the collection by {b} .",
            ],
        },
        [
            "how many {o} does {n} have now ?",
            "how many {o} does {p} have in the end ?",
            "what is the number of {o} now ?",
        ],
    ),
    (
        ["a {s} has {a} {o} in stock .", "there are {a} {o} in a {s} .", "the {s} keeps {a} {o} ."],
        {
            "+": ["a delivery brings {b} more .", "the owner orders {b} more .", "then {b} more {o} arrive ."],
            "-": ["customers buy {b} .", "then {b} are sold .", "{b} get damaged and are thrown out ."],
            "*": [
                "then the stock grows to {b} times its size .",
                "the manager makes the stock {b} times larger .",
                "after a big order there are {b} times as many .",
            ],
        },
        ["how many {o} does the {s} have now ?", "how many {o} are in stock now ?", "what is the stock of {o} now ?"],
    ),
    (
        ["if {n} starts with {a} {o}", "suppose {n} has {a} {o}", "imagine {n} holds {a} {o}"],
        {
            "+": [", {gain} {b} more", ", then {gain} {b} more", ", and later {gain} {b} more"],
            "-": [", {loss} {b}", ", then {loss} {b} of them", ", and later {loss} {b}"],
            "*": [
                ", then has {b} times as many",
                ", and later gets {b} times as many",
                ", then multiplies them by {b}",
            ],
        },
        [", how many {o} does {p} have ?", ", how many {o} are left with {n} ?", ", what is the final count ?"],
    ),
    (
        ["there are {a} {o} in {c} .", "{c} holds {a} {o} .", "someone puts {a} {o} in {c} ."],
        {
            "+": ["someone adds {b} more .", "then {b} more {o} are put in .", "{b} extra {o} are added ."],
            "-": ["{b} are taken out .", "then someone removes {b} .", "{b} {o} fall out ."],
            "*": [
                "then the amount is multiplied by {b} .",
                "the number of {o} is {b} times bigger after that .",
                "then it holds {b} times as many .",
            ],
        },
        ["how many {o} are in {c} now ?", "what is the total now ?", "how many {o} are there at the end ?"],
    ),
]
# Natural-language solution sentences around the same equations ({eq} is e.g. "5+3=8").
NL_OPEN = ["we begin with {a} {o} .", "at first there are {a} .", "the starting amount is {a} ."]
NL_STEP = {
    "+": ["adding {b} gives {eq} .", "after {b} more there are {eq} .", "{b} more makes {eq} ."],
    "-": ["taking away {b} leaves {eq} .", "removing {b} gives {eq} .", "after {b} are gone there are {eq} ."],
    "*": ["{b} times as many is {eq} .", "multiplying by {b} gives {eq} .", "growing {b} times makes {eq} ."],
}
NL_CLOSE = ["so the answer is {r} .", "the final number is {r} .", "that leaves {r} in the end ."]
# Free-form steps (``nl_operands = "free"``): the operation in words, its operand only inside the
# equation, so the sentence is no scaffold that restates the question's number.
NL_FREE = {
    "+": ["then there are more , {eq} .", "the number gets bigger , {eq} .", "so the count grows , {eq} ."],
    "-": ["then it loses , {eq} .", "the count drops , {eq} .", "after that the total drops , {eq} ."],
    "*": ["then there are many times as many , {eq} .", "the count is multiplied , {eq} .", "so it grows , {eq} ."],
}
# More varied natural-language solutions (``nl_variability`` 2 and 3), from the words above only, so
# the vocabulary (hence the model) does not depend on the level. A step is a clause naming the
# operation and its operand, a verb, and the equation; level 3 also puts the equation first,
# prefixes a connective, and reorders the opening and closing clauses.
NL_OPEN_MORE = [
    *NL_OPEN,
    "there are {a} {o} at first .",
    "first we have {a} .",
    "the number of {o} starts at {a} .",
    "first there are {a} .",
    "at first the total is {a} .",
]
NL_OPEN_FIRST = ["{a} {o} at first .", "{a} is the starting amount .", "{a} is the number at first ."]
NL_CLAUSE = {
    "+": ["adding {b}", "after {b} more", "{b} more", "with {b} more", "with {b} extra", "after adding {b}"],
    "-": ["taking away {b}", "removing {b}", "after {b} are gone", "after removing {b}", "with {b} taken out"],
    "*": ["{b} times as many", "multiplying by {b}", "growing {b} times", "after multiplying by {b}"],
}
NL_VERB = ["gives", "makes", "leaves", "is"]
NL_AFTER = ["by {c}", ", {c}", ", that is {c}"]
NL_LINK = ["then", "next", "later", "and", "so"]
NL_CLOSE_MORE = [*NL_CLOSE, "the total is {r} .", "so there are {r} .", "in the end we have {r} ."]
NL_CLOSE_FIRST = ["{r} is the answer .", "{r} is the final number .", "{r} in the end ."]
_ANSWER = re.compile(r"####\s*(\d+)")
_EQUATION = re.compile(r"(\d+)\s*([-+*])\s*(\d+)\s*=\s*(\d+)")


def parse_answer(text: str) -> int | None:
    """The integer after the first ``####`` (a regular expression; the text is never evaluated)."""
    m = _ANSWER.search(text)
    return int(m.group(1)) if m else None


def parse_equations(text: str) -> list[tuple[int, str, int, int]]:
    """Every ``a op b = c`` before the ``####`` of ``text``, as ``(a, op, b, c)`` (read, never evaluated)."""
    body = text.split("####")[0]
    return [(int(a), op, int(b), int(c)) for a, op, b, c in _EQUATION.findall(body)]


def chain_scores(generated: str, target: str) -> tuple[bool, list[bool]] | None:
    """How a generated solution's equations compare with the target's; None if the target has none.

    Returns ``(plan, arithmetic)``: ``plan`` is True when the generation has the target's number of
    equations, starts from the target's first number and applies the same operations with the same
    operands in order (whatever its results: the chain is set up right); ``arithmetic`` has one
    entry per generated equation, True when ``a op b`` equals its ``c``.
    """
    want = parse_equations(target)
    if not want:
        return None
    got = parse_equations(generated)
    plan = len(got) == len(want) and got[0][0] == want[0][0]
    plan = plan and all(g[1:3] == w[1:3] for g, w in zip(got, want, strict=True))
    value = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    return plan, [value[op](a, b) == c for a, op, b, c in got]


def vocabulary_texts() -> list[str]:
    """Every word the generator can write (placeholders removed): the tokenizer's vocabulary."""
    texts: list[str] = [*OBJECTS, *SHOPS, *CONTAINERS, *GAIN, *LOSS, "+ - * = ####"]
    texts += [name + " " + pron for name, pron in PEOPLE]
    for opening, steps, questions in FAMILIES:
        texts += opening + questions + [s for options in steps.values() for s in options]
    texts += NL_OPEN + NL_CLOSE + [s for options in NL_STEP.values() for s in options]
    return [re.sub(r"\{\w+\}", " ", t) for t in texts]


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def draw_numbers(
    rng: np.random.Generator, num_ops: int, op_weights: np.ndarray, max_value: int
) -> tuple[int, list[tuple[str, int, int]]]:
    """A start value and ``num_ops`` steps ``(op, operand, result)``, every value in 1..max_value.

    Operands: +, - take 1..20 (a subtraction leaves at least 1), x takes 2..5; an operation that
    cannot stay in range is replaced (x by -, - by +, + by -).
    """
    start = value = int(rng.integers(2, 21))
    steps = []
    for _ in range(num_ops):
        op = OPS[int(rng.choice(3, p=op_weights))]
        if op == "*" and value * 2 > max_value:
            op = "-"
        if op == "-" and value < 2:
            op = "+"
        if op == "+" and value >= max_value:
            op = "-"
        if op == "+":
            b = int(rng.integers(1, min(20, max_value - value) + 1))
            result = value + b
        elif op == "-":
            b = int(rng.integers(1, min(20, value - 1) + 1))
            result = value - b
        else:
            b = int(rng.integers(2, min(5, max_value // value) + 1))
            result = value * b
        steps.append((op, b, result))
        value = result
    return start, steps


def combination_bucket(start: int, steps: list[tuple[str, int, int]]) -> int:
    """0..9 from a CRC of the numbers and operations: which split a problem may belong to."""
    key = f"{start}" + "".join(f"{op}{b}" for op, b, _ in steps)
    return zlib.crc32(key.encode()) % 10


def nl_solution(
    rng: np.random.Generator | None,
    level: int,
    start: int,
    steps: list[tuple[str, int, int]],
    equations: list[str],
    obj: str,
    free: bool = False,
) -> list[str]:
    """The sentences of a natural-language solution at ``nl_variability`` ``level`` 0, 2 or 3, or free-form.

    0: one fixed phrasing per sentence (no draws). 2: the opening, each step and the closing drawn
    from larger sets of paraphrases (clause, verb, equation). 3: as 2, and each sentence's clauses
    in either order (the equation or number first), steps with or without a leading connective.
    ``free`` (level 1's three phrasings per sentence): each step names its operation in words
    (:data:`NL_FREE`) and writes its operand only inside the equation. The same equations and answer
    at every level; level 1 is :func:`render`'s own drawing.
    """
    answer = steps[-1][2]
    if free:
        assert rng is not None
        return [
            _pick(rng, NL_OPEN).format(a=start, o=obj),
            *(_pick(rng, NL_FREE[op]).format(eq=eq) for (op, _, _), eq in zip(steps, equations, strict=True)),
            _pick(rng, NL_CLOSE).format(r=answer),
        ]
    if level == 0:
        return [
            NL_OPEN[1].format(a=start),
            *(NL_STEP[op][0].format(b=b, eq=eq) for (op, b, _), eq in zip(steps, equations, strict=True)),
            NL_CLOSE[0].format(r=answer),
        ]
    assert rng is not None and level in (2, 3)
    flip = (lambda: bool(rng.integers(2))) if level == 3 else (lambda: False)
    out = [_pick(rng, NL_OPEN_FIRST if flip() else NL_OPEN_MORE).format(a=start, o=obj)]
    for (op, b, _), eq in zip(steps, equations, strict=True):
        clause = _pick(rng, NL_CLAUSE[op]).format(b=b)
        if flip():
            sentence = f"{eq} {_pick(rng, NL_AFTER).format(c=clause)}"
        else:
            sentence = f"{clause} {_pick(rng, NL_VERB)} {eq}"
        if flip():
            sentence = f"{_pick(rng, NL_LINK)} {sentence}"
        out.append(sentence + " .")
    out.append(_pick(rng, NL_CLOSE_FIRST if flip() else NL_CLOSE_MORE).format(r=answer))
    return out


def render(
    rng: np.random.Generator,
    start: int,
    steps: list[tuple[str, int, int]],
    family: int,
    nl_variability: int = 1,
    nl_rng: np.random.Generator | None = None,
    nl_free: bool = False,
) -> tuple[str, dict[str, str]]:
    """Question text and the solution in every format, with names and phrasings drawn from ``rng``.

    ``nl_variability`` other than 1, or ``nl_free``, renders the natural-language solution with
    :func:`nl_solution`, drawing from ``nl_rng``, so the questions, equations and answers (and
    every draw from ``rng``) are the same at every level.
    """
    name, pron = PEOPLE[int(rng.integers(len(PEOPLE)))]
    fill = {
        "n": name,
        "p": pron,
        "o": _pick(rng, OBJECTS),
        "s": _pick(rng, SHOPS),
        "c": _pick(rng, CONTAINERS),
        "a": start,
    }
    opening, step_texts, questions = FAMILIES[family]
    parts = [_pick(rng, opening).format(**fill)]
    for op, b, _ in steps:
        parts.append(_pick(rng, step_texts[op]).format(**fill, b=b, gain=_pick(rng, GAIN), loss=_pick(rng, LOSS)))
    parts.append(_pick(rng, questions).format(**fill))
    question = " ".join(parts)

    answer = steps[-1][2]
    equations, value = [], start
    for op, b, result in steps:
        equations.append(f"{value}{op}{b}={result}")
        value = result
    nl = [_pick(rng, NL_OPEN).format(**fill)]
    nl += [_pick(rng, NL_STEP[op]).format(b=b, eq=eq) for (op, b, _), eq in zip(steps, equations, strict=True)]
    nl.append(_pick(rng, NL_CLOSE).format(r=answer))
    if nl_variability != 1 or nl_free:
        nl = nl_solution(nl_rng, nl_variability, start, steps, equations, fill["o"], free=nl_free)
    targets = {
        "equation": " ".join(equations) + f" #### {answer}",
        "nl": " ".join(nl) + f" #### {answer}",
        "answer": f"#### {answer}",
    }
    return question, targets


def generate_problems(
    num: int,
    rng: np.random.Generator,
    buckets: range,
    target_format: str,
    max_value: int,
    families: list[int] | None = None,
    op_weights: np.ndarray | None = None,
    client: int = -1,
    nl_variability: int = 1,
    nl_rng: np.random.Generator | None = None,
    nl_free: bool = False,
) -> dict[str, list]:
    """``num`` problems whose number combinations fall in ``buckets``, as dataset columns.

    Columns: ``question``, ``target`` (in ``target_format``), ``answer`` (int), ``num_ops``
    (1..3, uniform), ``family``, ``client``. ``nl_variability``, ``nl_rng`` and ``nl_free``: see :func:`render`.
    """
    weights = np.full(3, 1 / 3) if op_weights is None else op_weights
    rows: dict[str, list] = {k: [] for k in ("question", "target", "answer", "num_ops", "family", "client")}
    while len(rows["question"]) < num:
        num_ops = int(rng.integers(1, 4))
        start, steps = draw_numbers(rng, num_ops, weights, max_value)
        if combination_bucket(start, steps) not in buckets:
            continue
        family = int(rng.integers(len(FAMILIES))) if families is None else families[int(rng.integers(len(families)))]
        question, targets = render(rng, start, steps, family, nl_variability, nl_rng, nl_free)
        rows["question"].append(question)
        rows["target"].append(targets[target_format])
        rows["answer"].append(steps[-1][2])
        rows["num_ops"].append(num_ops)
        rows["family"].append(family)
        rows["client"].append(client)
    return rows


def client_profile(seed: int, client: int) -> tuple[int, np.ndarray]:
    """Client ``client``'s template family and operation weights (0.6 on its main operation)."""
    rng = np.random.default_rng([seed, client, 0x5EED])
    family = (client + seed) % len(FAMILIES)
    weights = np.full(3, 0.2)
    weights[int(rng.integers(3))] = 0.6
    return family, weights


class EquationReasoner(Workload):
    name: ClassVar[str] = "equation-reasoner"
    description: ClassVar[str] = (
        "T5 pretrained by fedsim (cached) + LoRA(q, v) on 1-3 step word problems; equation / nl / answer targets"
    )
    declaration: ClassVar[Declaration] = DECLARATION
    primary_metric: ClassVar[str] = "accuracy"
    lora_target_modules: ClassVar[list[str]] = ["q", "v"]
    label_column: ClassVar[str] = "family"

    max_src_len: ClassVar[int] = 96
    max_tgt_len: ClassVar[int] = 128

    def __init__(self, spec):
        super().__init__(spec)
        self.tokenizer = WordTokenizer(vocabulary_texts())
        self._data: tuple[Dataset, Dataset] | None = None

    # -- model ---------------------------------------------------------------------------
    def t5_config(self):
        from transformers import T5Config

        p = self.params
        return T5Config(
            vocab_size=len(self.tokenizer),
            d_model=p["d_model"],
            d_kv=p["d_model"] // p["num_heads"],
            d_ff=p["d_ff"],
            num_layers=p["num_layers"],
            num_decoder_layers=p["num_layers"],
            num_heads=p["num_heads"],
            dropout_rate=0.0,  # local training is then a deterministic function of the data order
            feed_forward_proj="relu",
            pad_token_id=self.tokenizer.pad_id,
            eos_token_id=self.tokenizer.eos_id,
            decoder_start_token_id=self.tokenizer.pad_id,
            tie_word_embeddings=True,
        )

    def pretrain_payload(self) -> dict[str, Any]:
        """Everything that determines the pretrained base (its cache key)."""
        import transformers

        from workloads import text_tools
        from workloads.cache import source_digest

        params = dict(self.params)
        if params["target_format"] != "nl":  # these change nl targets only: other formats share one base
            del params["nl_variability"], params["nl_operands"]
        return {
            "workload": self.name,
            "params": params,
            "vocab": self.tokenizer.vocab,
            "seed": self.spec.seed,
            "code": source_digest(sys.modules[__name__], text_tools, pretraining),
            "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__,
        }

    def build_base_model(self) -> nn.Module:
        from transformers import T5ForConditionalGeneration
        from transformers.utils import logging as hf_logging

        from workloads.cache import cached_model

        hf_logging.set_verbosity_error()

        def build() -> nn.Module:
            with torch.random.fork_rng():
                torch.manual_seed(self.spec.seed)
                return T5ForConditionalGeneration(self.t5_config())

        model, self.pretrain_meta = cached_model(self.name, self.pretrain_payload(), build, self._pretrain)
        model.eval()
        return model

    def _pretrain(self, model: nn.Module) -> dict[str, Any]:
        """Centralised training of the whole base on the pretraining problems (AdamW, cosine decay)."""
        p = self.params
        rng = np.random.default_rng([self.spec.seed, 0xBA5E])
        rows = generate_problems(
            p["pretrain_problems"],
            rng,
            PRETRAIN_BUCKETS,
            p["target_format"],
            p["max_value"],
            **self._nl_args(0xBA5E),
        )
        data = Dataset.from_dict(rows)
        gen = torch.Generator().manual_seed(self.spec.seed)
        passes = lambda: self.batches(data, p["pretrain_batch"], gen)  # noqa: E731
        losses = train_steps(model, passes, self.loss, p["pretrain_steps"], p["pretrain_lr"])
        return {**loss_summary(losses), "problems": len(data)}

    # -- data ----------------------------------------------------------------------------
    def build_data(self) -> tuple[Dataset, Dataset]:
        if self._data is None:
            self._data = self._load_data() if self.spec.dataset else self._generate_data()
        return self._data

    def _nl_args(self, *stream: int) -> dict[str, Any]:
        """``nl_variability``, ``nl_operands`` and the nl generator (seed, ``stream``) for :func:`generate_problems`."""
        return {
            "nl_variability": self.params["nl_variability"],
            "nl_free": self.params["nl_operands"] == "free",
            "nl_rng": np.random.default_rng([self.spec.seed, *stream, 0x4E1]),
        }

    def _generate_data(self) -> tuple[Dataset, Dataset]:
        p, spec = self.params, self.spec
        columns: dict[str, list] = {}
        for client in range(spec.num_clients):
            family, weights = client_profile(spec.seed, client)
            rng = np.random.default_rng([spec.seed, client, 0xDA7A])
            rows = generate_problems(
                spec.samples_per_client,
                rng,
                CLIENT_BUCKETS,
                p["target_format"],
                p["max_value"],
                [family],
                weights,
                client,
                **self._nl_args(client, 0xDA7A),
            )
            for k, v in rows.items():
                columns.setdefault(k, []).extend(v)
        rng = np.random.default_rng([spec.seed, 0x7E57])
        test = generate_problems(
            spec.test_samples, rng, TEST_BUCKETS, p["target_format"], p["max_value"], **self._nl_args(0x7E57)
        )
        return Dataset.from_dict(columns), Dataset.from_dict(test)

    def _load_data(self) -> tuple[Dataset, Dataset]:
        from workloads.data import load_for_spec

        train, test = load_for_spec(
            self.spec,
            text_candidates=("question", "input", "problem", "text"),
            label_candidates=("answer", "target", "solution", "output"),
        )

        def shape(d: Dataset) -> Dataset:
            targets = [str(t) for t in d["label"]]
            answers = [parse_answer(t) for t in targets]
            return Dataset.from_dict(
                {
                    "question": [str(q) for q in d["text"]],
                    "target": targets,
                    "answer": [-1 if a is None else a for a in answers],
                    "num_ops": [t.count("=") or 0 for t in targets],
                    "family": [0] * len(d),
                    "client": [-1] * len(d),
                }
            )

        return shape(train), shape(test)

    def collate(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        ids, mask = self.tokenizer.batch(rows["question"], self.max_src_len)
        labels, label_mask = self.tokenizer.batch(rows["target"], self.max_tgt_len)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels.masked_fill(label_mask == 0, -100)}

    # -- training and evaluation ----------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token-level cross-entropy of the target given the question (teacher forcing)."""
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss

    @torch.no_grad()
    def generate(self, model: nn.Module, questions: list[str], max_new_tokens: int | None = None) -> list[str]:
        """Greedy decodings of ``questions`` (LoRA active when ``model`` carries it)."""
        t5 = model.get_base_model() if hasattr(model, "get_base_model") else model
        ids, mask = self.tokenizer.batch(questions, self.max_src_len)
        if self.device.type != "cpu":
            ids, mask = ids.to(self.device), mask.to(self.device)
        out = t5.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens or self.max_tgt_len,
            do_sample=False,
            num_beams=1,
        )
        return [self.tokenizer.decode(row[1:]) for row in out]  # row[0] is the decoder start token

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        model.eval()
        longest = max(len(self.tokenizer.encode(t)) for t in data["target"])
        correct, plans, arithmetic, losses, tokens = [], [], [], 0.0, 0
        for start in range(0, len(data), 64):
            rows = data[start : start + 64]
            batch = self.place(self.collate(rows))
            n_tok = int((batch["labels"] != -100).sum())
            losses += float(self.loss(model, batch)) * n_tok
            tokens += n_tok
            texts = self.generate(model, rows["question"], longest + 8)
            for text, answer, target in zip(texts, rows["answer"], rows["target"], strict=True):
                correct.append(parse_answer(text) == answer)
                scores = chain_scores(text, target)
                if scores is not None:
                    plans.append(scores[0])
                    arithmetic += scores[1]
        correct_a = np.asarray(correct, dtype=bool)
        ops = np.asarray(data["num_ops"])
        out = {"accuracy": float(correct_a.mean()), "loss": losses / max(tokens, 1)}
        if plans:  # targets with equations (equation, nl): the chain's set-up and its arithmetic apart
            out["plan_accuracy"] = float(np.mean(plans))
            out["equation_arithmetic"] = float(np.mean(arithmetic)) if arithmetic else 0.0
        for k in (1, 2, 3):
            if (ops == k).any():
                out[f"accuracy_ops{k}"] = float(correct_a[ops == k].mean())
        return out

    def flops_per_sample(self) -> float:
        """6 N T: N non-embedding parameters (plus the output projection), T source + target tokens."""
        p = self.params
        d, f, layers = p["d_model"], p["d_ff"], p["num_layers"]
        enc_layer = 4 * d * d + 2 * d * f
        dec_layer = 8 * d * d + 2 * d * f
        train, _ = self.build_data()
        sample = train.select(range(min(len(train), 256)))
        src = float(np.mean([len(self.tokenizer.encode(q)) for q in sample["question"]]))
        tgt = float(np.mean([len(self.tokenizer.encode(t)) for t in sample["target"]]))
        return 6.0 * (layers * enc_layer * src + (layers * dec_layer + d * len(self.tokenizer)) * tgt)
