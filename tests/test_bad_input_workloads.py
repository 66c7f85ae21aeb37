"""Bad workload input, as a user types it: ``workload.options``, presets, partitions and ``workload.dataset``.

Each command line is one real ``fedsim`` process (:mod:`tests.helpers.refusals`): exit 2, one line
naming the key, no traceback, nothing written (the Hugging Face cache included). The option cases
are generated from every workload's declared option table, so a new option is covered at once.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.errors import ConfigError
from tests.helpers.refusals import CAMPAIGN, REPO, problems_of, run_campaign, run_cases, snapshot
from workloads import declaration, registry
from workloads.options import Option, Range, Text

WORKLOADS = sorted(registry())


def bad_values(option: Option) -> dict[str, str]:
    """What to try for an option (as typed in ``workload.options``): a wrong type, a value outside what
    it allows and, for a float, a non-finite value."""
    default, allowed = option.default, option.allowed
    if isinstance(default, bool):
        return {"wrong type": "1"}
    if isinstance(allowed, Text):  # a free string (a model name, a column): one character it refuses
        return {"wrong type": "true", "not allowed": "nosuch?"}
    if isinstance(default, str):  # "7" may be right: a list of numbers of one item (eval_lengths=64)
        return {"wrong type": "true", "not allowed": "nosuch"}
    bad = {"wrong type": "true" if isinstance(default, int) else '"x"'}
    if isinstance(allowed, Range):
        big = int(allowed.high) + 1 if isinstance(default, int) else allowed.high * 10 + 1
        bad |= {"above its range": f"{big:g}" if isinstance(default, float) else str(big)}
        bad |= {"below its range": str(int(allowed.low) - 1 if isinstance(default, int) else allowed.low - 1)}
        if allowed.multiple_of > 1:
            bad |= {"not a multiple": str(int(allowed.low) + 1)}
    else:  # numbers from a set of choices
        bad |= {"not allowed": str(max(allowed) + 1)}
    if isinstance(default, float):
        bad |= {"nan": "nan", "inf": "inf"}
    return bad


def option_cases() -> list[tuple[str, str, str, str]]:
    """(workload, option, what, value) for every option of every workload and each bad value."""
    return [
        (name, key, what, value)
        for name in WORKLOADS
        for key, option in declaration(name).options.items()
        for what, value in bad_values(option).items()
    ]


def command_line_cases() -> list[tuple[str, list[str]]]:
    """One bad value of every option of every workload, as command lines: outside its range or not
    finite, rotating through the kinds (a wrong type where nothing else is possible)."""
    cases = []
    for name in WORKLOADS:
        for i, (key, option) in enumerate(declaration(name).options.items()):
            kinds = list(bad_values(option).items())
            what, value = kinds[1 + i % (len(kinds) - 1)] if len(kinds) > 1 else kinds[0]
            cases.append((f"{name} {key} {what}", ["--workload", name, "--set", f"workload.options={key}={value}"]))
    return cases


COMBINATIONS = [
    ("clip-memorisation", "text_heads=0"),
    ("clip-memorisation", "text_dim=30, text_heads=4"),
    ("clip-memorisation", "channels=28"),
    ("clip-memorisation", "sample_steps=200"),
    ("clip-memorisation", "interventions=all+none"),
    ("dapd", "d_model=66"),
    ("dapd", "topk_k=100"),
    ("dapd", "pretrain_lr=nan"),
    ("rainbow-padding", "canvas_min=64, canvas_max=48"),
    ("rainbow-padding", "eval_steps=7"),
    ("rainbow-padding", "eval_lengths=32 64 1000000"),
    ("reversal-curse", "d_model=68"),
    ("reversal-curse", "num_facts=1e9"),
    ("equation-reasoner", "num_heads=3"),
    ("equation-reasoner", "pretrain_steps=0"),
    ("equation-reasoner", "d_model=100000000"),
    ("equation-reasoner", "pretrain_steps=1000000000000"),
]


def other_cases(tmp: Path) -> list[tuple[str, list[str]]]:
    """Invalid option combinations, presets, partitions and ``--out`` paths."""
    (tmp / "a-file").write_text("x")
    (tmp / "full").mkdir()
    (tmp / "full" / "x").write_text("x")
    cases = [(f"{w} {o}", ["--workload", w, "--set", f"workload.options={o}"]) for w, o in COMBINATIONS]
    return cases + [
        ("unknown preset", ["--workload", "dapd", "--set", "workload.preset=huge"]),
        ("unknown option", ["--workload", "dapd", "--set", "workload.options=nosuch=1"]),
        ("options not key=value", ["--workload", "dapd", "--set", "workload.options=d_model"]),
        ("no natural split", ["--workload", "text-classify", "--set", "workload.partition=natural"]),
        ("--out is a file", ["--workload", "dapd", "--out", str(tmp / "a-file")]),
        ("--out not empty", ["--workload", "dapd", "--out", str(tmp / "full")]),
    ]


def dataset_cases(tmp: Path) -> list[tuple[str, list[str]]]:
    """``workload.dataset`` files that cannot be used (text-classify reads them)."""
    (tmp / "empty-folder").mkdir()
    files = {
        "empty.csv": b"",
        "binary.csv": bytes(range(256)) * 64,
        "columns.csv": b"foo,bar\n1,2\n3,4\n",
        "broken.jsonl": b'{"text": "a", "label": 1}\nnot json at all\n',
    }
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    paths = [tmp / "empty-folder", *(tmp / name for name in files)]
    return [(f"dataset {p.name}", ["--workload", "text-classify", "--set", f"workload.dataset={p}"]) for p in paths]


@pytest.fixture
def roots(tmp_path):
    """(inputs, outputs, env): outputs and an empty Hugging Face cache, to show nothing is written."""
    inputs, outputs, hf = tmp_path / "inputs", tmp_path / "outputs", tmp_path / "hf"
    for d in (inputs, outputs, hf):
        d.mkdir()
    env = {"HF_HOME": str(hf), "HF_DATASETS_CACHE": str(hf / "datasets"), "FEDSIM_CACHE": str(tmp_path / "fedsim")}
    return inputs, outputs, hf, env


def test_every_option_of_every_workload_is_checked_in_process():
    """Every option refuses a wrong type, a value outside its range and a non-finite number, naming it."""
    for name, key, what, value in option_cases():
        with pytest.raises(ConfigError) as err:
            declaration(name).resolve(name, "tiny", f"{key}={value}")
        message = str(err.value)
        assert f"workload.options: {key}=" in message and "\n" not in message, (name, key, what, message)


def test_every_preset_is_within_its_options_ranges():
    for name in WORKLOADS:
        declared = declaration(name)
        for preset, values in declared.presets.items():
            assert declared.resolve(name, preset) == values
            for key, value in values.items():
                assert declared.options[key].accepts(value), (name, preset, key, value)


def test_a_range_is_finite():
    with pytest.raises(ValueError):
        Range(0, math.inf)


@pytest.mark.parametrize("every", CAMPAIGN)
def test_bad_options_combinations_presets_and_out_are_refused_in_one_line_fast(roots, every):
    inputs, outputs, hf, env = roots
    cases = command_line_cases() + other_cases(inputs)
    assert len(cases) >= 30 and {name.split()[0] for name, _ in cases} >= set(WORKLOADS)
    before = snapshot(outputs.parent)
    results = run_campaign(cases, every, outputs, env)
    assert problems_of(results) == [], "\n".join(problems_of(results))
    missing = [r.name for r in results if "workload.options" in " ".join(r.args) and "workload.options" not in r.text]
    assert missing == [], f"the refusal does not name workload.options: {missing}"
    assert snapshot(outputs.parent) == sorted([*before, "outputs/cwd"]), "a refusal wrote files"
    cpu = sorted(r.cpu_s for r in results)
    print(f"CPU per refusal: median {cpu[len(cpu) // 2]:.2f} s, max {cpu[-1]:.2f} s over {len(cpu)}")


@pytest.mark.parametrize("every", CAMPAIGN)
def test_bad_datasets_are_refused_in_one_line_and_leave_the_hugging_face_cache_empty(roots, every):
    inputs, outputs, hf, env = roots
    every_case = dataset_cases(inputs)
    cases = every_case[::every]
    results = run_campaign(every_case, every, outputs, env)
    assert problems_of(results) == [], "\n".join(problems_of(results))
    unnamed = [r.text for r, (_, args) in zip(results, cases, strict=True) if args[-1].split("=", 1)[1] not in r.text]
    assert unnamed == [], f"the refusal does not name the dataset: {unnamed}"
    assert snapshot(hf) == [], "the Hugging Face cache was written"
    assert snapshot(outputs) == ["cwd"], "a refusal wrote files"


@pytest.mark.slow  # the plan needs the model; test_sweep checks the planner's refusal in the fast tier
def test_an_infeasible_rank_plan_is_refused_in_one_line_without_its_table(roots):
    inputs, outputs, hf, env = roots
    args = ["--workload", "reversal-curse", "--set", "workload.options=pretrain_steps=0", "--clients", "4"]
    args += [
        "--clients-per-round",
        "2",
        "--method",
        "soft",
        "--scheduler",
        "tsfa",
        "--set",
        "tsfa.latency_budget_s=1e-6",
    ]
    results = run_cases([("infeasible budget", args)], outputs, env)
    # The plan needs the model (torch, peft): about 16 s of CPU on the shared 2-core machine.
    assert problems_of(results, cpu_limit_s=30) == [], "\n".join(problems_of(results, cpu_limit_s=30))
    assert "tsfa.latency_budget_s" in results[0].text


def fedsim(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "fedsim", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("name", WORKLOADS)
def test_workloads_options_lists_every_option_with_default_range_and_meaning(name):
    done = fedsim("workloads", "--options", name)
    assert done.returncode == 0, done.stderr
    header = done.stdout.split("\n", 3)[:3]
    assert all(column in "".join(header) for column in ("option", "default", "allowed", "meaning")), header
    decl = declaration(name)
    preset_keys = [key for preset in decl.preset_overrides for key in decl.defaults_of(preset)]
    assert all(f" {key} " in done.stdout for key in [*decl.options, *preset_keys])


def test_workloads_options_refuses_an_unknown_workload_in_one_line():
    done = fedsim("workloads", "--options", "nosuch")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("fedsim: --options='nosuch'") and len(done.stderr.splitlines()) == 1
