"""instruct: LoRA instruction tuning of any causal LM (``AutoModelForCausalLM``), offline by default.

What the field fine-tunes federatedly (FlowerTune's LLM leaderboard, OpenFedLLM, FederatedScope-LLM):
a decoder LLM (Llama, Qwen, Mistral families) with LoRA on instruction data, scored by what it
generates, next to the communication cost. fedsim puts that job on a wireless channel.

Model (``workload.options=model=...``): a Hugging Face name (from the local Hugging Face cache;
nothing is downloaded when ``HF_HUB_OFFLINE=1``) or a local folder of a saved causal LM, loaded
with ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained``. The prompt is the tokenizer's
chat template when it has one (``prompt_format=auto``), else a plain Alpaca-style format::

    ### Instruction:
    reverse the order of the words .

    ### Input:
    stone river apple

    ### Response:
    apple river stone<eos>

LoRA adapts peft's default modules for the model's architecture (``q_proj``, ``v_proj`` for
Llama and Qwen2; peft's ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``), or the modules
``lora_targets`` names. The loss is the causal-LM cross-entropy of the response tokens only
(prompt tokens carry the label -100), over sequences of at most ``max_length`` tokens, optionally
packed several to a sequence (``packing``) and with gradient checkpointing.

The ``tiny`` model (``model=tiny``, the default): no public weights ship offline, so fedsim builds a
small Llama-architecture decoder (``LlamaConfig``, 2 layers, width 96: nn.Linear projections, so
the payload formulas of every upload method hold) and a word-level tokenizer made in code (a
``tokenizers`` WordLevel model wrapped as ``PreTrainedTokenizerFast``, with pad/eos/bos/unk
tokens), pretrains it once on generated instructions, mostly of *other* tasks (copy the words,
give the first word, drop the first word: the format and attending to the input) and a small share
(``pretrain_task_share``, 10 %) of the clients' tasks, as a published model has seen some of what
it is later tuned for, saves both with ``save_pretrained`` in fedsim's cache (:func:`workloads.cache.cached_folder`,
keyed by the shape, the recipe and this module's code; the same base for every run seed, as a
published model would be) and loads them back with ``from_pretrained(folder)``: the loading path
that a local folder or a hub name takes.

Data (default): generated instructions with Alpaca's columns ``instruction``/``input``/``output``
and a ``category``, one of six small tasks (``tasks`` picks them): ``reverse`` the words,
``sort`` numbers, ``add`` two numbers, ``replace`` a word while copying, ``count`` the words, give
the ``last`` word. Every instruction has a few paraphrases. Client ``k`` of the natural split holds
task ``k mod (number of tasks)`` (a strongly non-IID split, one skill per client); the test set
mixes all tasks. ``workload.dataset``: a local JSON/JSONL/CSV/Parquet file or folder, or a
Hugging Face dataset name (from the local cache offline), with the columns ``instruction_column``,
``input_column`` (empty: none) and ``output_column``; ``category_column`` gives the natural split
(categories onto clients) and Dirichlet's labels. Columns, empty rows, rows per client and a
``max_length`` that leaves no room for a response are checked before a model is built.

Evaluation (every ``run.eval_every`` rounds): ``loss`` (mean response-token cross-entropy) and
``perplexity`` on the test set; the first ``generation_samples`` test rows decoded greedily
(``max_new_tokens`` at most) and scored by ``exact_match`` (after whitespace normalisation) and
``rouge_l`` (ROUGE-L F1 from Google's ``rouge-score`` package, the primary metric), overall and
per category. The uplink bits of each round are in fedsim's records beside them.

Memory: :meth:`Instruct.memory_estimate` gives a client's bytes (frozen weights, LoRA factors and
their gradients, AdamW's two moments, activations at the batch size and ``max_length``) from the
architecture alone (built on the meta device: no weights read); fedsim prints it when a run starts
and refuses a run whose estimate exceeds the device's free memory (or ``memory_limit_gb``).
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from fedsim.errors import ConfigError
from workloads import pretraining
from workloads.base import Workload
from workloads.instruct_options import DECLARATION, TASKS, TINY_MODEL
from workloads.options import Declaration
from workloads.pretraining import loss_summary, train_steps

# -- the generated instruction tasks ----------------------------------------------------------------
WORDS = (
    "apple river stone cloud tiger lamp garden pencil window rocket forest candle mirror bridge "
    "violin jacket island orange planet ladder basket dragon helmet rabbit castle engine feather "
    "honey kettle lemon marble needle ocean pillow quilt saddle tomato umbrella wagon zebra"
).split()
NUMBER_MAX = 199
"""Numbers 0..199 are single words of the tiny tokenizer (a sum of two numbers below 100 fits)."""

INSTRUCTIONS: dict[str, list[str]] = {
    "reverse": [
        "reverse the order of the words .",
        "write the words backwards , last word first .",
        "give the words in reverse order .",
    ],
    "sort": [
        "sort the numbers from smallest to largest .",
        "put the numbers in increasing order .",
        "arrange the numbers in ascending order .",
    ],
    "add": ["add the two numbers .", "what is the sum of the numbers ?", "give the total of the two numbers ."],
    "replace": [
        "copy the words but write {new} instead of {old} .",
        "repeat the words and replace {old} with {new} .",
        "rewrite the words with {new} in place of {old} .",
    ],
    "count": ["how many words are there ?", "count the words .", "give the number of words ."],
    "last": ["what is the last word ?", "give the last word .", "which word comes at the end ?"],
}
PRETRAIN_INSTRUCTIONS: dict[str, list[str]] = {
    "copy": ["copy the words .", "repeat the words exactly .", "write the same words again ."],
    "first": ["what is the first word ?", "give the first word .", "which word comes first ?"],
    "drop": ["copy the words without the first one .", "repeat the words but skip the first ."],
}
PLAIN_FORMAT = ("### Instruction:\n{instruction}\n\n", "### Input:\n{input}\n\n", "### Response:\n")
"""The plain prompt format (Alpaca's sections): instruction, the input when there is one, the response."""


def make_example(task: str, rng: np.random.Generator) -> tuple[str, str, str]:
    """One ``(instruction, input, output)`` of ``task`` (a fine-tuning task or a pretraining one).

    Words and numbers are separated by spaces, so the tiny tokenizer's decoding gives the text back.
    """
    words = lambda k: [WORDS[i] for i in rng.choice(len(WORDS), size=k, replace=False)]  # noqa: E731
    table = INSTRUCTIONS.get(task) or PRETRAIN_INSTRUCTIONS[task]
    instruction = table[int(rng.integers(len(table)))]
    if task in ("sort", "add"):
        nums = [int(v) for v in rng.integers(0, 100, size=2 if task == "add" else int(rng.integers(3, 6)))]
        out = [str(sum(nums))] if task == "add" else [str(v) for v in sorted(nums)]
        return instruction, " ".join(map(str, nums)), " ".join(out)
    seq = words(int(rng.integers(3, 7)))
    if task == "reverse":
        out = seq[::-1]
    elif task == "replace":
        old = seq[int(rng.integers(len(seq)))]
        new = next(w for w in (WORDS[int(i)] for i in rng.permutation(len(WORDS))) if w not in seq)
        instruction = instruction.format(old=old, new=new)
        out = [new if w == old else w for w in seq]
    elif task == "count":
        out = [str(len(seq))]
    elif task == "last":
        out = [seq[-1]]
    elif task == "copy":
        out = seq
    elif task == "first":
        out = [seq[0]]
    elif task == "drop":
        out = seq[1:]
    else:
        raise ValueError(f"unknown task {task!r}")
    return instruction, " ".join(seq), " ".join(out)


def generate_rows(tasks: list[str], num: int, rng: np.random.Generator, client: int = -1) -> dict[str, list]:
    """``num`` rows drawing each one's task uniformly from ``tasks``; Alpaca's columns plus ``category``."""
    rows: dict[str, list] = {"instruction": [], "input": [], "output": [], "category": [], "client": []}
    for _ in range(num):
        task = tasks[int(rng.integers(len(tasks)))]
        instruction, given, out = make_example(task, rng)
        rows["instruction"].append(instruction)
        rows["input"].append(given)
        rows["output"].append(out)
        rows["category"].append(task)
        rows["client"].append(client)
    return rows


# -- the tiny tokenizer -----------------------------------------------------------------------------
SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>"}


def tiny_vocabulary() -> list[str]:
    """Every word the generated data and the plain format can hold (lower case), specials first."""
    texts = [*WORDS, *PLAIN_FORMAT, *(i for table in INSTRUCTIONS.values() for i in table)]
    texts += [i for table in PRETRAIN_INSTRUCTIONS.values() for i in table]
    words = {w for t in texts for w in re.sub(r"\{\w+\}", " ", t).lower().split()}
    numbers = [str(i) for i in range(NUMBER_MAX + 1)]
    return [*SPECIAL_TOKENS.values(), *numbers, *sorted(words - set(numbers))]


def build_tiny_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` made in code: lower-cased, split at whitespace, one id per word.

    Decoding joins the words with single spaces, so generated text (space-separated words) comes back
    as it was. ``save_pretrained`` writes ``tokenizer.json``, which ``AutoTokenizer`` loads back.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(tiny_vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS, add_bos_token=False)


# -- memory ------------------------------------------------------------------------------------------
ACTIVATION_WIDTHS_PER_LAYER = (8, 3, 4)
"""Values a decoder layer keeps per token for the backward pass, in units of (d_model, kv width, d_ff):
the two RMSNorms' inputs and outputs, q, k, v and their rotated copies, the attention output, the
MLP's gate, up, activation and product."""
ATTENTION_COPIES = 3
"""Per token, layer and head, attention rows of the sequence's length kept: the scores, their softmax
and the masked copy (PyTorch's math attention, which a padded batch takes on the CPU; a fused
kernel keeps less, so the estimate is an upper bound there)."""
LOGIT_COPIES = 4
"""Per token, the logits in float32, their log-softmax, its gradient and the logits' gradient."""


def memory_estimate(
    *,
    weight_bytes: int,
    lora_params: int,
    num_layers: int,
    d_model: int,
    kv_width: int,
    d_ff: int,
    heads: int,
    vocab: int,
    batch: int,
    length: int,
    activation_bytes: int = 4,
    checkpointing: bool = False,
) -> dict[str, int]:
    """A client's training memory in bytes, by part, and their ``total``.

    - ``weights_bytes``: the frozen base (its dtype's bytes per parameter);
    - ``lora_bytes``: the LoRA factors and their gradients, float32 (2 x 4 bytes per value);
    - ``optimiser_bytes``: AdamW's two moments, float32 (8 bytes per trainable value);
    - ``activations_bytes``: at ``batch`` sequences of ``length`` tokens, what the forward pass keeps
      for the backward pass, one layer's worth of gradients in flight, and the head's
      :data:`LOGIT_COPIES` vocabulary-wide rows per token. A layer keeps
      :data:`ACTIVATION_WIDTHS_PER_LAYER` and :data:`ATTENTION_COPIES` rows of attention; with
      gradient checkpointing only each layer's input is kept and one layer is recomputed at a time
      (its activations and their gradients).

    Checked against the peak resident memory of a training step on the CPU
    (``tests/workloads/test_instruct.py``, within 50 %).
    """
    a, b, c = ACTIVATION_WIDTHS_PER_LAYER
    layer = (a * d_model + b * kv_width + c * d_ff + ATTENTION_COPIES * heads * length) * activation_bytes
    if checkpointing:
        kept = num_layers * d_model * activation_bytes + 2 * layer
    else:
        kept = num_layers * layer + layer
    activations = batch * length * (kept + LOGIT_COPIES * vocab * 4 + 2 * d_model * activation_bytes)
    parts = {
        "weights_bytes": int(weight_bytes),
        "lora_bytes": 8 * int(lora_params),
        "optimiser_bytes": 8 * int(lora_params),
        "activations_bytes": int(activations),
    }
    return {**parts, "total_bytes": sum(parts.values())}


# -- loading ----------------------------------------------------------------------------------------
def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def offline() -> bool:
    """True when the Hugging Face hub must not be asked (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def load_pretrained(loader, model: str, **kwargs):
    """``loader.from_pretrained(model)`` from a local folder or the local Hugging Face cache, then
    (unless offline) the hub; a model that cannot be had is a one-line ConfigError."""
    if Path(model).expanduser().is_dir():
        try:
            return loader.from_pretrained(str(Path(model).expanduser()), **kwargs)
        except Exception as e:  # a folder without config.json, unreadable weights ...
            raise ConfigError(f"workload.options: model={model!r}: cannot load the folder ({_first_line(e)})") from None
    if model.startswith((".", "/", "~")):
        raise ConfigError(f"workload.options: model={model!r}: no such folder")
    try:
        return loader.from_pretrained(model, local_files_only=True, **kwargs)
    except Exception as local_error:
        if offline():
            raise ConfigError(f"cannot load {model}: no network and not in the local cache") from None
        try:
            return loader.from_pretrained(model, **kwargs)
        except OSError as e:
            text = str(e)
            if "connect" in text.lower() or "offline" in text.lower() or "resolve" in text.lower():
                raise ConfigError(f"cannot load {model}: no network and not in the local cache") from None
            raise ConfigError(f"cannot load {model}: {_first_line(e)}") from None
        except Exception:
            raise ConfigError(f"cannot load {model}: {_first_line(local_error)}") from None


def _first_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


class Instruct(Workload):
    name: ClassVar[str] = "instruct"
    description: ClassVar[str] = (
        "Any causal LM (tiny: a Llama decoder fedsim pretrains) + LoRA, instruction tuning; ROUGE-L, exact match"
    )
    declaration: ClassVar[Declaration] = DECLARATION
    primary_metric: ClassVar[str] = "rouge_l"
    lora_target_modules: ClassVar[list[str]] = ["q_proj", "v_proj"]
    """peft's default for Llama; an instance holds the modules of its own model (:meth:`__init__`)."""

    PRETRAIN_LENGTH: ClassVar[int] = 64
    PRETRAIN_SEED: ClassVar[int] = 0x1257
    """The tiny base's own seed: one base for every run seed, as a published model is."""
    EVAL_BATCH: ClassVar[int] = 32

    def __init__(self, spec):
        super().__init__(spec)
        _quiet_transformers()
        p = self.params
        self.label_column = "category_id"  # Dirichlet's labels
        self._data: tuple[Dataset, Dataset] | None = None
        self.tiny = p["model"] == TINY_MODEL
        if self.tiny:
            self.tokenizer = build_tiny_tokenizer()
            self.config = self.tiny_config()
        else:
            from transformers import AutoConfig, AutoTokenizer

            self.tokenizer = load_pretrained(AutoTokenizer, p["model"])
            self.config = load_pretrained(AutoConfig, p["model"])
        self._prepare_tokenizer()
        self.skeleton = self._meta_model()
        self.lora_target_modules = self._targets()

    # -- model ---------------------------------------------------------------------------------
    def tiny_config(self):
        """The tiny decoder: a ``LlamaConfig`` (RMSNorm, rotary positions, SwiGLU MLP, tied embeddings)."""
        from transformers import LlamaConfig

        p, tok = self.params, self.tokenizer
        return LlamaConfig(
            vocab_size=len(tok),
            hidden_size=p["d_model"],
            intermediate_size=p["d_ff"],
            num_hidden_layers=p["num_layers"],
            num_attention_heads=p["num_heads"],
            num_key_value_heads=p["num_heads"],
            max_position_embeddings=max(256, p["max_length"]),
            rms_norm_eps=1e-6,
            # Weights drawn at 1/sqrt(width), not Llama's 0.02 (made for widths near 4096): at width 96
            # the tied embeddings would give logits of about 0.2, which LoRA moves only slowly.
            initializer_range=p["d_model"] ** -0.5,
            tie_word_embeddings=True,
            attention_dropout=0.0,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )

    def _prepare_tokenizer(self) -> None:
        tok = self.tokenizer
        if tok.eos_token is None:
            raise ConfigError(
                f"workload.options: model={self.params['model']!r}: its tokenizer has no end-of-sequence token"
            )
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token  # the usual choice for decoder LMs without one (Llama)
        self.chat = self.params["prompt_format"] == "auto" and bool(getattr(tok, "chat_template", None))

    def _meta_model(self) -> nn.Module:
        """The architecture without weights (meta device): module names, shapes and parameter counts."""
        from transformers import AutoModelForCausalLM

        try:
            with torch.device("meta"):
                return AutoModelForCausalLM.from_config(self.config)
        except ValueError as e:
            raise ConfigError(
                f"workload.options: model={self.params['model']!r}: not a causal LM ({_first_line(e)})"
            ) from None

    def linear_modules(self) -> list[str]:
        """The last names of the model's linear layers (nn.Linear, and GPT-2's Conv1D), lm_head excluded."""
        names = set()
        for name, module in self.skeleton.named_modules():
            kind = type(module).__name__
            if name and (isinstance(module, nn.Linear) or kind == "Conv1D") and name.split(".")[-1] != "lm_head":
                names.add(name.split(".")[-1])
        return sorted(names)

    def _targets(self) -> list[str]:
        """The modules LoRA adapts: ``lora_targets``, or peft's default for the model type; each must be linear."""
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

        given = self.params["lora_targets"]
        linear = self.linear_modules()
        if given == "auto":
            kind = self.config.model_type
            if kind not in DEFAULTS:
                raise ConfigError(
                    f"workload.options: lora_targets='auto': peft has no default modules for model type {kind!r}; "
                    f"name them (its linear modules: {' '.join(linear)})"
                )
            return list(DEFAULTS[kind])
        targets = given.split()
        missing = [t for t in targets if t not in linear]
        if missing:
            raise ConfigError(
                f"workload.options: lora_targets={given!r}: {missing[0]} matches no linear module of "
                f"{self.params['model']} (its linear modules: {' '.join(linear)})"
            )
        return targets

    def pretrain_payload(self) -> dict[str, Any]:
        """Everything that determines the tiny base (its cache key): shape, recipe, vocabulary, code."""
        import transformers

        keys = ("d_model", "num_heads", "num_layers", "d_ff", "pretrain_steps", "pretrain_samples")
        keys += ("pretrain_batch", "pretrain_lr", "pretrain_task_share")
        return {
            "workload": self.name,
            "params": {k: self.params[k] for k in keys},
            "vocab": tiny_vocabulary(),
            "seed": self.PRETRAIN_SEED,
            "code": _source_digest(),
            "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__,
        }

    def tiny_folder(self) -> Path:
        """The cached folder of the tiny base (``save_pretrained``: config, weights, tokenizer), made once."""
        from workloads.cache import cached_folder

        folder, self.pretrain_meta = cached_folder(self.name, self.pretrain_payload(), self._make_tiny)
        return folder

    def _make_tiny(self, folder: Path) -> dict[str, Any]:
        """Build the tiny decoder, pretrain it on the pretraining tasks, save it and its tokenizer in ``folder``."""
        from transformers import LlamaForCausalLM

        p = self.params
        with torch.random.fork_rng():
            torch.manual_seed(self.PRETRAIN_SEED)
            model = LlamaForCausalLM(self.tiny_config())
        rng = np.random.default_rng([self.PRETRAIN_SEED, 0xBA5E])
        n_tasks = int(round(p["pretrain_samples"] * p["pretrain_task_share"]))
        rows = generate_rows(list(PRETRAIN_INSTRUCTIONS), p["pretrain_samples"] - n_tasks, rng)
        for k, v in generate_rows(list(TASKS), n_tasks, rng).items():  # every task, whatever ``tasks`` says
            rows[k] += v
        data = Dataset.from_dict(rows)
        gen = torch.Generator().manual_seed(self.PRETRAIN_SEED)
        examples = self.examples(data, self.PRETRAIN_LENGTH)

        def passes():
            order = torch.randperm(len(examples), generator=gen).tolist()
            for start in range(0, len(order), p["pretrain_batch"]):
                yield self.pad([examples[i] for i in order[start : start + p["pretrain_batch"]]])

        losses = train_steps(model, passes, self._lm_loss, p["pretrain_steps"], p["pretrain_lr"])
        model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        return {**loss_summary(losses), "rows": len(data)}

    def build_base_model(self) -> nn.Module:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = str(self.tiny_folder()) if self.tiny else self.params["model"]
        dtype = torch.bfloat16 if self.params["weights_dtype"] == "bfloat16" else torch.float32
        if self.tiny:  # the tokenizer saved beside the weights: the same as the one made in code
            self.tokenizer = load_pretrained(AutoTokenizer, source)
            self._prepare_tokenizer()
        model = load_pretrained(AutoModelForCausalLM, source, dtype=dtype)
        model.config.use_cache = False  # training; generation turns the cache on
        if self.params["gradient_checkpointing"]:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.eval()
        return model

    # -- data ----------------------------------------------------------------------------------
    def build_data(self) -> tuple[Dataset, Dataset]:
        if self._data is None:
            train, test = self._load_data() if self.spec.dataset else self._generate_data()
            train, test = self._with_categories(train, test)
            self._check_lengths(train, test)
            self._data = train, test
        return self._data

    def _generate_data(self) -> tuple[Dataset, Dataset]:
        spec, tasks = self.spec, self.params["tasks"].split()
        columns: dict[str, list] = {}
        for client in range(spec.num_clients):
            rng = np.random.default_rng([spec.seed, client, 0xDA7A])
            rows = generate_rows([tasks[client % len(tasks)]], spec.samples_per_client, rng, client)
            for k, v in rows.items():
                columns.setdefault(k, []).extend(v)
        test = generate_rows(tasks, spec.test_samples, np.random.default_rng([spec.seed, 0x7E57]))
        return Dataset.from_dict(columns), Dataset.from_dict(test)

    def _load_data(self) -> tuple[Dataset, Dataset]:
        """``workload.dataset``'s rows as ``instruction``/``input``/``output``/``category`` (see the module doc)."""
        from workloads.data import TEST_SPLITS, open_dataset

        p, spec, name = self.params, self.spec, self.spec.dataset
        splits = open_dataset(name)
        train_name = "train" if "train" in splits else next(iter(splits))
        columns = splits[train_name].column_names
        wanted = {"instruction": p["instruction_column"], "output": p["output_column"]}
        if p["input_column"]:
            wanted["input"] = p["input_column"]
        for role, column in wanted.items():
            if column not in columns:
                raise ConfigError(
                    f"workload.options: {role}_column={column!r}: {name} has columns {', '.join(columns)}"
                    + (" (input_column= for none)" if role == "input" else "")
                )
        category = p["category_column"] if p["category_column"] in columns else ""
        if p["category_column"] and not category and p["category_column"] != "category":
            raise ConfigError(
                f"workload.options: category_column={p['category_column']!r}: {name} has columns {', '.join(columns)}"
            )

        def canonical(d: Dataset) -> Dataset:
            def text(column: str) -> list[str]:
                return ["" if v is None else str(v).strip() for v in d[column]] if column else [""] * len(d)

            rows = {role: text(column) for role, column in wanted.items()}
            rows.setdefault("input", [""] * len(d))
            rows["category"] = text(category) if category else ["all"] * len(d)
            keep = [i for i in range(len(d)) if rows["instruction"][i] and rows["output"][i]]
            return Dataset.from_dict({k: [v[i] for i in keep] for k, v in rows.items()})

        train = canonical(splits[train_name]).shuffle(seed=spec.seed)
        if len(train) == 0:
            raise ConfigError(
                f"workload.dataset={name!r}: no row has both an instruction ({wanted['instruction']!r}) "
                f"and an output ({wanted['output']!r})"
            )
        test_name = next((s for s in TEST_SPLITS if s in splits and s != train_name), None)
        if test_name is None:
            n_test = min(spec.test_samples, len(train) // 5)
            test, train = train.select(range(n_test)), train.select(range(n_test, len(train)))
        else:
            test = canonical(splits[test_name]).shuffle(seed=spec.seed + 1)
        train = train.select(range(min(len(train), spec.num_clients * spec.samples_per_client)))
        test = test.select(range(min(len(test), spec.test_samples)))
        if len(train) < spec.num_clients or len(test) == 0:
            raise ConfigError(
                f"workload.dataset={name!r}: {len(train)} training and {len(test)} test rows for "
                f"run.clients={spec.num_clients}; every client needs at least one row and the test set one"
            )
        return train.add_column("client", [-1] * len(train)), test.add_column("client", [-1] * len(test))

    def _with_categories(self, train: Dataset, test: Dataset) -> tuple[Dataset, Dataset]:
        """Add ``category_id`` (Dirichlet's labels) and, for loaded data, the natural split's ``client``.

        A category's rows go to the clients ``k``, ``k + C``, ``k + 2C``, ... (``C`` categories; in turn),
        so that with fewer clients than categories a client holds several, and with more, a category
        is shared by several clients.
        """
        names = sorted(set(train["category"]))
        index = {n: i for i, n in enumerate(names)}
        ids = [index[c] for c in train["category"]]
        train = train.add_column("category_id", ids)
        test = test.add_column("category_id", [index.get(c, -1) for c in test["category"]])
        if self.spec.dataset:
            n, c = self.spec.num_clients, len(names)
            seen = [0] * c
            clients = []
            for k in ids:
                sharing = list(range(k, n, c)) or [k % n]
                clients.append(sharing[seen[k] % len(sharing)])
                seen[k] += 1
            if self.spec.partition == "natural" and len(set(clients)) < n:
                raise ConfigError(
                    f"workload.partition='natural': the {c} categories of column "
                    f"{self.params['category_column']!r} leave {n - len(set(clients))} of run.clients={n} without rows"
                )
            train = train.remove_columns("client").add_column("client", clients)
        return train, test

    def _check_lengths(self, train: Dataset, test: Dataset) -> None:
        """Refuse a ``max_length`` that leaves no response token for the longest prompt of the data."""
        sample = [train[i] for i in range(min(len(train), 512))] + [test[i] for i in range(min(len(test), 512))]
        longest = max(len(self.prompt_ids(r["instruction"], r["input"])) for r in sample)
        if longest + 1 >= self.params["max_length"]:
            raise ConfigError(
                f"workload.options: max_length={self.params['max_length']}: the longest prompt of the data has "
                f"{longest} tokens; at least {longest + 2} leaves room for a response"
            )

    # -- tokens ---------------------------------------------------------------------------------
    def prompt_text(self, instruction: str, given: str) -> str:
        """The prompt of one row: the chat template's user turn and assistant start, or the plain format."""
        if self.chat:
            content = f"{instruction}\n\n{given}" if given else instruction
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        head, middle, tail = PLAIN_FORMAT
        return head.format(instruction=instruction) + (middle.format(input=given) if given else "") + tail

    def prompt_ids(self, instruction: str, given: str) -> list[int]:
        text = self.prompt_text(instruction, given)
        ids = self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"]  # a chat template writes its own
        return list(ids)

    def examples(self, rows: Dataset | dict, length: int) -> list[tuple[list[int], int]]:
        """Each row as ``(token ids, prompt length)``: prompt, response and end-of-sequence, cut to ``length``."""
        rows = rows if isinstance(rows, dict) else rows.to_dict()
        eos = self.tokenizer.eos_token_id
        out = []
        for instruction, given, answer in zip(rows["instruction"], rows["input"], rows["output"], strict=True):
            prompt = self.prompt_ids(instruction, given)
            response = list(self.tokenizer(answer, add_special_tokens=False)["input_ids"]) + [eos]
            out.append(((prompt + response)[:length], min(len(prompt), length)))
        return out

    def pad(self, examples: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding)."""
        width = max(len(ids) for ids, _ in examples)
        ids = torch.full((len(examples), width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, (row, prompt) in enumerate(examples):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
            labels[i, prompt : len(row)] = torch.tensor(row[prompt:])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def pack(self, examples: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        """The examples one after another, cut into sequences of ``max_length`` tokens.

        Positions restart at each example (``position_ids``); attention spans the sequence (the
        classic packing of TRL's ``packing=True``: less padding, examples see their predecessors).
        """
        length = self.params["max_length"]
        ids, labels, positions = [], [], []
        for row, prompt in examples:
            ids += row
            labels += [-100] * prompt + row[prompt:]
            positions += list(range(len(row)))
        chunks = [slice(s, s + length) for s in range(0, len(ids), length)]
        batch = self.pad([(ids[c], 0) for c in chunks])
        width = batch["input_ids"].shape[1]
        for i, c in enumerate(chunks):
            n = len(ids[c])
            batch["labels"][i, :n] = torch.tensor(labels[c])
            batch["labels"][i, n:] = -100
        pos = torch.zeros_like(batch["input_ids"])
        for i, c in enumerate(chunks):
            pos[i, : len(positions[c])] = torch.tensor(positions[c])
            pos[i, len(positions[c]) : width] = torch.arange(len(positions[c]), width)
        batch["position_ids"] = pos
        return batch

    def collate(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        examples = self.examples(rows, self.params["max_length"])
        return self.pack(examples) if self.params["packing"] else self.pad(examples)

    # -- training and evaluation ------------------------------------------------------------
    @staticmethod
    def _lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy of the response tokens (the labels that are not -100), next-token shifted."""
        return self._lm_loss(model, batch)

    @torch.no_grad()
    def generate(self, model: nn.Module, rows: dict[str, list]) -> list[str]:
        """Greedy decodings of the rows' prompts (at most ``max_new_tokens`` each), special tokens dropped."""
        prompts = [self.prompt_ids(i, g) for i, g in zip(rows["instruction"], rows["input"], strict=True)]
        width = max(map(len, prompts))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=self.params["max_new_tokens"],
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        return [self.tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out.cpu()]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        model.eval()
        total, tokens = 0.0, 0
        for start in range(0, len(data), self.EVAL_BATCH):
            batch = self.place(
                self.pad(self.examples(data[start : start + self.EVAL_BATCH], self.params["max_length"]))
            )
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(self.loss(model, batch)) * n
            tokens += n
        loss = total / max(tokens, 1)
        out = {"loss": loss, "perplexity": float(math.exp(min(loss, 50.0)))}
        n_gen = min(self.params["generation_samples"], len(data))
        if n_gen == 0:
            out["rouge_l"] = out["exact_match"] = 0.0
            return out
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        rows = data[:n_gen]
        texts: list[str] = []
        for start in range(0, n_gen, self.EVAL_BATCH):
            texts += self.generate(model, {k: v[start : start + self.EVAL_BATCH] for k, v in rows.items()})
        exact = np.array([normalise(t) == normalise(r) for t, r in zip(texts, rows["output"], strict=True)])
        rouge = np.array([scorer.score(r, t)["rougeL"].fmeasure for t, r in zip(texts, rows["output"], strict=True)])
        out["exact_match"], out["rouge_l"] = float(exact.mean()), float(rouge.mean())
        categories = np.array(rows["category"])
        for c in sorted(set(rows["category"])):
            if re.fullmatch(r"[A-Za-z0-9_-]{1,40}", c):  # metric names from the data only when they are plain
                out[f"exact_match_{c}"] = float(exact[categories == c].mean())
        return out

    def flops_per_sample(self) -> float:
        """6 N T: N the non-embedding parameters plus the output head, T the mean tokens of a training row."""
        embed = self.skeleton.get_input_embeddings().weight.numel()
        tied = self.skeleton.get_output_embeddings().weight is self.skeleton.get_input_embeddings().weight
        n = sum(p.numel() for p in self.skeleton.parameters()) - (0 if tied else embed)  # the lookup costs nothing
        train, _ = self.build_data()
        sample = self.examples(train.select(range(min(len(train), 128))), self.params["max_length"])
        return 6.0 * n * float(np.mean([len(ids) for ids, _ in sample]))

    # -- memory -----------------------------------------------------------------------------
    def memory_estimate(self, batch_size: int) -> dict[str, int]:
        """A client's training memory at ``batch_size`` sequences of ``max_length`` tokens (:func:`memory_estimate`)."""
        cfg, p = self.config, self.params
        weight_bytes = 2 if p["weights_dtype"] == "bfloat16" else 4
        rank = self.spec.lora_rank
        lora = 0
        for name, module in self.skeleton.named_modules():
            if name.split(".")[-1] in self.lora_target_modules and hasattr(module, "weight"):
                d_out, d_in = module.weight.shape[:2]
                lora += rank * (d_in + d_out)
        d = cfg.hidden_size
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or d // heads
        return memory_estimate(
            weight_bytes=weight_bytes * sum(t.numel() for t in self.skeleton.parameters()),
            lora_params=lora,
            num_layers=cfg.num_hidden_layers,
            d_model=d,
            kv_width=kv * head_dim,
            d_ff=getattr(cfg, "intermediate_size", None) or 4 * d,
            heads=heads,
            vocab=cfg.vocab_size,
            batch=batch_size,
            length=p["max_length"],
            activation_bytes=2 if self.bf16 else 4,
            checkpointing=p["gradient_checkpointing"],
        )

    def memory_limit_bytes(self) -> int | None:
        """``memory_limit_gb`` when set (> 0), else None: the device's free memory applies."""
        gb = self.params["memory_limit_gb"]
        return int(gb * 1e9) if gb > 0 else None


def normalise(text: str) -> str:
    """Lower case with single spaces: what exact match compares."""
    return " ".join(text.lower().split())


def _source_digest() -> str:
    from workloads.cache import source_digest

    return source_digest(sys.modules[__name__], pretraining)
