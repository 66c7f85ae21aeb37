"""Workload options (``workload.options``): each one's default, allowed values and meaning, in one table.

A workload declares a :class:`Declaration`: its options (:class:`Option`: the ``tiny`` preset's
default, a :class:`Range` for numbers or a tuple of choices / :class:`Words` for strings, and what
the option means), its presets as overrides of those defaults, a check of the options that only
make sense together (e.g. ``d_model`` a multiple of ``num_heads``), its natural-partition
column, and the ``train.*`` defaults a preset needs (e.g. the local epochs that show its paper's
effect; checked against those keys' own ranges when the simulator reads them, overridden by any value the user
gives: :func:`fedsim.core.config.build_config`). The declaration lives in a light module (no torch, numpy or datasets), so that
:func:`workloads.declaration` and :meth:`Declaration.resolve` refuse a bad option in well under a
second, before any heavy import; ``fedsim workloads --options NAME`` prints the table, the
presets' ``train.*`` defaults included.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedsim.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (both finite; ends open where said), optionally multiples of a step."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    multiple_of: int = 1

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"a Range has finite ends, not [{self.low}, {self.high}]")

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below and (self.multiple_of == 1 or value % self.multiple_of == 0)

    def __str__(self) -> str:
        interval = f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        return f"in {interval}" + (f" and a multiple of {self.multiple_of}" if self.multiple_of > 1 else "")


@dataclass(frozen=True)
class Words:
    """A string of 1 to ``max_words`` items joined by ``sep``: each one of ``choices``, or an integer in ``numbers``."""

    choices: tuple[str, ...] = ()
    numbers: Range | None = None
    sep: str = " "
    max_words: int = 8

    def items(self, text: str) -> list[str]:
        """The items of ``text`` (split at any whitespace when ``sep`` is a space)."""
        return text.split() if self.sep == " " else [w.strip() for w in text.split(self.sep)]

    def __contains__(self, text: str) -> bool:
        items = self.items(text)
        return 1 <= len(items) <= self.max_words and all(self._item_ok(w) for w in items)

    def _item_ok(self, word: str) -> bool:
        if self.numbers is not None:
            return word.isdigit() and int(word) in self.numbers
        return word in self.choices

    def __str__(self) -> str:
        item = f"an integer {self.numbers}" if self.numbers is not None else f"one of {', '.join(self.choices)}"
        return f"of 1 to {self.max_words} items separated by {self.sep!r}, each {item}"


@dataclass(frozen=True)
class Text:
    """A free string that matches ``pattern`` in full (e.g. a model name or a folder): ``what`` says it in words."""

    pattern: str
    what: str

    def __contains__(self, text: str) -> bool:
        import re

        return isinstance(text, str) and re.fullmatch(self.pattern, text) is not None

    def __str__(self) -> str:
        return self.what


@dataclass(frozen=True)
class Option:
    """One option: its default (the ``tiny`` preset's), what it may be, and what it means."""

    default: Any
    allowed: Range | Words | Text | tuple
    """Numbers: a Range; strings: a tuple of choices, Words or Text; booleans: ``(False, True)``."""
    meaning: str

    @property
    def kind(self) -> str:
        return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[type(self.default)]

    def rule(self) -> str:
        """What a value must be, e.g. ``an integer in [8, 1024]``."""
        if isinstance(self.allowed, Text):
            return f"a string: {self.allowed}"
        if isinstance(self.allowed, tuple):
            return f"one of {', '.join(str(v).lower() if isinstance(v, bool) else str(v) for v in self.allowed)}"
        return f"{self.kind} {self.allowed}"

    def accepts(self, value: Any) -> bool:
        """True when ``value`` has the default's type (an int may set a float) and is allowed."""
        if type(value) is not type(self.default):
            return False
        return value in self.allowed


Combination = Callable[[dict[str, Any]], "tuple[str, str] | None"]
"""Options -> the first option that does not fit the others, as ``(key, why)``; None when all fit."""


@dataclass(frozen=True)
class Declaration:
    """What a workload declares that the simulator reads without importing it (see the module doc)."""

    options: dict[str, Option]
    preset_overrides: dict[str, dict[str, Any]] = field(default_factory=lambda: {"tiny": {}})
    """Preset name -> the options it sets differently from the defaults; ``tiny`` first."""
    combination: Combination | None = None
    natural_partition_column: str | None = None
    """Column whose values 0..num_clients-1 name each row's client (``partition = "natural"``)."""
    config_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Preset name -> defaults of the configuration keys it needs (``train.*``, the partition, the run
    shape: :data:`fedsim.core.config.PRESET_KEYS`), e.g. ``{"tiny": {"train.local_epochs": 40}}``. The
    simulator checks them against those keys' ranges when it reads them
    (:func:`fedsim.core.config.preset_defaults`)."""

    def __post_init__(self):
        for preset in self.config_defaults:
            if preset not in self.preset_overrides:
                raise ValueError(f"config_defaults: preset {preset!r} is not one of {', '.join(self.preset_overrides)}")

    def defaults_of(self, preset: str) -> dict[str, Any]:
        """The configuration defaults ``preset`` declares (``{"train.local_epochs": 40}``); ``{}`` for none."""
        return dict(self.config_defaults.get(preset, {}))

    @property
    def presets(self) -> dict[str, dict[str, Any]]:
        """Preset name -> every option's value."""
        defaults = {k: o.default for k, o in self.options.items()}
        return {name: {**defaults, **over} for name, over in self.preset_overrides.items()}

    def resolve(self, name: str, preset: str, text: str = "") -> dict[str, Any]:
        """The preset's options with ``workload.options`` (``text``) applied, each checked.

        Raises a one-line :class:`ConfigError` naming the option, the value and what is allowed.
        """
        if preset not in self.preset_overrides:
            raise ConfigError(f"workload.preset={preset!r}: {name} has presets {', '.join(self.preset_overrides)}")
        params = self.presets[preset]
        for key, value in parse_options(text).items():
            option = self.options.get(key)
            if option is None:
                raise ConfigError(f"workload.options: {key}={value!r}: {name} has options {', '.join(self.options)}")
            if isinstance(option.default, float) and type(value) is int:
                value = float(value)
            if isinstance(option.allowed, Words) and type(value) is int:
                value = str(value)  # a list of one number reads as a number: eval_lengths=64
            if not option.accepts(value):
                raise ConfigError(f"workload.options: {key}={value!r}: must be {option.rule()} ({option.meaning})")
            params[key] = value
        if self.combination is not None and (problem := self.combination(params)):
            key, why = problem
            raise ConfigError(f"workload.options: {key}={params[key]!r}: {why}")
        return params

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(option, defaults by preset, allowed values, meaning) of each option, for ``fedsim
        workloads --options`` (which adds the configuration keys a preset sets)."""
        rows = []
        for key, option in self.options.items():
            by_preset = {name: values[key] for name, values in self.presets.items()}
            rows.append((key, by_preset_text(by_preset), option.rule(), option.meaning))
        return rows


def by_preset_text(values: dict[str, Any]) -> str:
    """``'3'`` when every preset has the value 3, else ``'tiny: 3, base: 5'``."""
    if len(set(map(repr, values.values()))) == 1:
        return repr(next(iter(values.values())))
    return ", ".join(f"{name}: {value!r}" for name, value in values.items())


def parse_options(text: str) -> dict[str, Any]:
    """``"a=1, b=nl"`` -> ``{"a": 1, "b": "nl"}``; values read as TOML would (else kept as strings)."""
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"workload.options={text!r}: expected key=value pairs separated by commas")
        out[key.strip()] = _toml_value(value.strip())
    return out


def _toml_value(text: str) -> Any:
    """``3`` -> 3, ``0.5`` -> 0.5, ``true`` -> True, ``nl`` -> 'nl' (what TOML reads, else the text)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# -- options several workloads share ---------------------------------------------------------------
BOOL = (False, True)
LEARNING_RATE = Range(0, 1, low_open=True)
BATCH = Range(1, 4096)
PRETRAIN_STEPS = Range(0, 200_000)
"""Up to about a day of a small model on one GPU; the largest preset (t5-tiny) takes 20,000."""
POSITIONS = ("rotary", "learned")


def transformer_options(num_layers: int, pretrain_steps: int, pretrain_lr: float) -> dict[str, Option]:
    """The shape and pretraining options of fedsim's small transformers (tiny defaults given).

    Widths up to 1024 and 24 layers (hundreds of millions of parameters at most) still build on one
    GPU; the presets use 64 to 256.
    """
    return {
        "d_model": Option(64, Range(8, 1024), "model width"),
        "num_heads": Option(4, Range(1, 16), "attention heads (d_model must be a multiple)"),
        "num_layers": Option(num_layers, Range(1, 24), "transformer layers"),
        "d_ff": Option(256, Range(8, 4096), "feed-forward width"),
        "pretrain_steps": Option(pretrain_steps, PRETRAIN_STEPS, "steps of pretraining the cached base"),
        "pretrain_lr": Option(pretrain_lr, LEARNING_RATE, "pretraining learning rate (AdamW)"),
    }


def head_width_error(p: dict[str, Any], width: str = "d_model", heads: str = "num_heads") -> tuple[str, str] | None:
    """The width must be a multiple of the heads (an even head width for rotary positions)."""
    rotary = p.get("positions") == "rotary"
    if p[width] % p[heads] or (rotary and (p[width] // p[heads]) % 2):
        return width, f"must be a multiple of {heads}={p[heads]}{' with an even quotient (rotary)' if rotary else ''}"
    return None
