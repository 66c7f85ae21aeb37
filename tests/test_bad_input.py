"""Every kind of bad input, as a user types it: exit 2, one line, no traceback, nothing written, fast.

One real ``fedsim`` process per command line (two at a time): every configuration key with a
wrong type, a value outside its range and a non-finite value; malformed configuration files;
bad ``--resume`` folders; malformed sweep files; bad environments (``FEDSIM_CACHE``, ``FLWR_HOME``).
A refusal must not wait for torch or a workload to load. The report, sweep and plan families are in
``test_bad_input_files.py``, the workload options and datasets in ``test_bad_input_workloads.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedsim.core.config import SECTIONS, describe_keys
from tests.helpers.refusals import CAMPAIGN, problems_of, run_campaign, run_case, snapshot

RANGE = re.compile(r"in ([\[\(])(-?[0-9.e+]+), (-?[0-9.e+]+)([\]\)])")
REGISTRY_KEYS = {
    "run.method",
    "workload.name",
    "run.scheduler",
    "channel.drop",
    "channel.mobility",
    "channel.pathloss",
    "channel.shadowing",
    "channel.fading",
    "compute.device_speed",
    "hetero.rank_rule",
    "hetero.aggregation",
}


def hint_of(key: str):
    section, name = key.split(".")
    return SECTIONS[section].__annotations__[name]


def key_cases() -> list[tuple[str, list[str]]]:
    """(name, --set arguments) for every key: wrong type, outside its range, non-finite."""
    cases = []
    for key, default, allowed, _ in describe_keys():
        hint = str(hint_of(key))
        if "tuple" in hint:
            cases += [(f"{key} not a list", [f"{key}=5"]), (f"{key} empty", [f"{key}=[]"])]
            cases.append((f"{key} bad item", [f'{key}=["x"]']))
            continue
        if isinstance(default, str):
            cases.append((f"{key} wrong type", [f"{key}=7"]))
            if key in REGISTRY_KEYS:
                cases.append((f"{key} unknown name", [f'{key}="nosuch"']))
            continue
        if isinstance(default, bool):
            cases.append((f"{key} wrong type", [f"{key}=1"]))
            continue
        integer = isinstance(default, int)
        cases.append((f"{key} wrong type", [f"{key}=true"] if integer else [f'{key}="x"']))
        if isinstance(default, float):
            cases.append((f"{key} not finite", [f"{key}={'nan' if len(cases) % 2 else '-inf'}"]))
        m = RANGE.search(allowed)
        if m:
            low, high = float(m.group(2)), float(m.group(3))
            outside = (int(high) + 1 if integer else high * 10 + 1) if len(cases) % 2 else (int(low) - 1)
            cases.append((f"{key} out of range", [f"{key}={outside}"]))
    return [(name, [a for s in sets for a in ("--set", s)]) for name, sets in cases]


def option_cases() -> list[tuple[str, list[str]]]:
    return [
        ("--clients 0", ["--clients", "0"]),
        ("--clients huge", ["--clients", "100000000000000000000"]),
        ("--clients text", ["--clients", "x"]),
        ("--rounds 0", ["--rounds", "0"]),
        ("--seed -1", ["--seed", "-1"]),
        ("--clients-per-round 1.5", ["--clients-per-round", "1.5"]),
        ("--clients-per-round above clients", ["--clients", "4", "--clients-per-round", "9"]),
        ("--method unknown", ["--method", "foo"]),
        ("--scheduler unknown", ["--scheduler", "foo"]),
        ("--workload unknown", ["--workload", "nosuch"]),
        ("tsfa with ideal", ["--method", "ideal", "--scheduler", "tsfa"]),
        ("tsfa with fedsa", ["--method", "fedsa", "--scheduler", "tsfa"]),
        ("hetero rank rule unknown", ["--set", "hetero.rank_rule=memory"]),
        ("hetero levels not increasing", ["--set", "hetero.rank_levels=[8, 4]"]),
        ("hetero levels above lora.rank", ["--set", "hetero.rank_rule=compute", "--set", "hetero.rank_levels=[4, 16]"]),
        ("hetero with client state", ["--method", "topk-ef", "--set", "hetero.rank_rule=compute"]),
        ("hetero with tsfa", ["--method", "soft", "--scheduler", "tsfa", "--set", "hetero.rank_rule=channel"]),
        ("--set without =", ["--set", "run.rounds"]),
        ("--set unknown section", ["--set", "nosuch.key=1"]),
        ("--set unknown key", ["--set", "run.nosuch=1"]),
        ("min clients above sampled", ["--set", "run.min_clients_per_round=99"]),
        ("device speeds inverted", ["--set", "compute.device_flops_min=3e12"]),
        ("inner radius above cell", ["--set", "channel.min_distance_m=600"]),
        ("too many training rows", ["--clients", "100000", "--set", "workload.samples_per_client=1000"]),
        ("cpus above this machine", ["--set", "simulation.cpus_per_client=4096"]),
        ("concurrency above this machine", ["--set", "simulation.max_concurrent_clients=4096"]),
        ("ray address not host:port", ["--ray-address", "nowhere"]),
        ("positions csv missing", ["--set", "channel.drop=csv", "--set", "channel.positions_csv=/nonexistent.csv"]),
        ("trace csv missing", ["--set", "channel.trace_csv=/nonexistent.csv"]),
        ("dataset is a URL", ["--set", "workload.dataset=http://example.com/x.csv"]),
        (
            "nl_variability out of range",
            ["--workload", "equation-reasoner", "--set", "workload.options=target_format=nl,nl_variability=9"],
        ),
        (
            "nl_variability not a level",
            ["--workload", "equation-reasoner", "--set", "workload.options=nl_variability=high"],
        ),
        ("unknown option", ["--nosuch"]),
        ("--out empty", ["--out", ""]),
        ("quant bits far above 16", ["--set", "lora.quant_bits=40"]),
        ("downlink quant bits far above 16", ["--set", "lora.downlink_quant_bits=40"]),
        ("packet error m negative", ["--set", "channel.packet_error_m=-0.023"]),
        ("packet errors unknown mode", ["--set", "channel.packet_errors=sometimes"]),
        ("packet errors wrong case", ["--set", "channel.packet_errors=Drop"]),
        ("client timeout below a client's start-up", ["--set", "run.client_timeout_s=5"]),
        ("renamed key out of range", ["--set", "soft.rho=2"]),
        ("both names of a renamed key", ["--set", "tsfa.scheduler=fixed", "--set", "run.scheduler=tsfa"]),
        ("asynchronous mode unknown", ["--set", "run.aggregation=async"]),
        ("asynchronous with tsfa", ["--method", "soft", "--scheduler", "tsfa", "--set", "run.aggregation=fedbuff"]),
        (
            "fedbuff buffer above concurrency",
            ["--set", "run.aggregation=fedbuff", "--set", "asynchronous.buffer_size=11"],
        ),
        ("fedbuff buffer 0", ["--set", "run.aggregation=fedbuff", "--set", "asynchronous.buffer_size=0"]),
        ("negative staleness exponent", ["--set", "asynchronous.staleness_exponent=-0.5"]),
        (
            "asynchronous concurrency above clients",
            ["--set", "run.aggregation=fedasync", "--set", "asynchronous.concurrency=51"],
        ),
        (
            "device class unknown",
            ["--set", "compute.device_speed=classes", "--set", "compute.device_mix=laptop=1,toaster=1"],
        ),
        ("device mix malformed", ["--set", "compute.device_speed=classes", "--set", "compute.device_mix=laptop"]),
        (
            "device catalogue missing",
            ["--set", "compute.device_speed=classes", "--set", "compute.device_catalogue=/no.toml"],
        ),
        ("device classes csv without classes", ["--set", "compute.device_classes_csv=/no.csv"]),
        (
            "asynchronous with packet errors",
            ["--set", "run.aggregation=fedasync", "--set", "channel.packet_errors=drop"],
        ),
    ]


def file_cases(tmp: Path) -> list[tuple[str, list[str]]]:
    classes_csv, catalogue = tmp / "classes.csv", tmp / "catalogue.toml"
    classes_csv.write_text("client_id,device_class\n0,laptop\n0,tablet\n")
    catalogue.write_text("[laptop]\nflops = 1e12\n")

    def config(name: str, text: str) -> list[str]:
        path = tmp / f"{name}.toml"
        path.write_text(text)
        return ["--config", str(path)]

    return [
        ("toml syntax", config("syntax", "[run\nclients = 3\n")),
        (
            "device classes csv malformed",
            ["--set", "compute.device_speed=classes", "--set", f"compute.device_classes_csv={classes_csv}"],
        ),
        (
            "device catalogue malformed",
            ["--set", "compute.device_speed=classes", "--set", f"compute.device_catalogue={catalogue}"],
        ),
        ("toml top-level value", config("toplevel", "clients = 3\n")),
        ("toml unknown section", config("section", "[nosuch]\nx = 1\n")),
        ("toml wrong type", config("type", '[run]\nclients = "many"\n')),
        ("toml out of range", config("range", "[channel]\ntx_power_dbm = 1e308\n")),
        ("toml not utf-8", ["--config", str(_bytes(tmp / "latin.toml", b"[run]\nseed = 1 # \xe9\n"))]),
        ("config missing", ["--config", str(tmp / "missing.toml")]),
        ("config is a folder", ["--config", str(tmp)]),
        ("config is /dev/zero", ["--config", "/dev/zero"]),
    ]


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def resume_cases(tmp: Path) -> list[tuple[str, list[str]]]:
    def folder(name: str, files: dict[str, str]) -> Path:
        d = tmp / name
        d.mkdir()
        for rel, text in files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_text(text)
        return d

    good = "[run]\nclients = 4\nclients_per_round = 2\n"
    state = {"round": 1, "records": [], "adapter": "../../etc/hostname", "adapter_sha256": "0" * 64}
    return [
        ("resume missing", ["--resume", str(tmp / "none")]),
        ("resume not a results folder", ["--resume", str(folder("empty", {"x.txt": "x"}))]),
        ("resume config not toml", ["--resume", str(folder("badtoml", {"config.toml": "[[[", "rounds.jsonl": ""}))]),
        ("resume config out of range", ["--resume", str(folder("range", {"config.toml": "[run]\nclients = 0\n"}))]),
        (
            "resume state not json",
            ["--resume", str(folder("state", {"config.toml": good, "checkpoint/state.json": "{"}))],
        ),
        (
            "resume adapter outside",
            ["--resume", str(folder("escape", {"config.toml": good, "checkpoint/state.json": json.dumps(state)}))],
        ),
        ("resume with --out", ["--resume", str(folder("without", {"config.toml": good})), "--out", str(tmp / "o")]),
        (
            "resume state nested 10^5 deep",
            [
                "--resume",
                str(folder("nested", {"config.toml": good, "checkpoint/state.json": "[" * 100_000 + "]" * 100_000})),
            ],
        ),
        (
            "resume summary not json",
            ["--resume", str(folder("summary", {"config.toml": good, "summary.json": "not json"}))],
        ),
    ]


def sweep_cases(tmp: Path) -> list[tuple[str, list[str]]]:
    def sweep(name: str, text: str) -> list[str]:
        path = tmp / f"sweep-{name}.toml"
        path.write_text(text)
        return ["sweep", str(path)]

    base = "[run]\nclients = 4\nrounds = 1\n"
    return [
        ("sweep syntax", sweep("syntax", "[sweep\n")),
        ("sweep unknown axis key", sweep("axis", base + '[sweep.grid]\n"run.nosuch" = [1, 2]\n')),
        ("sweep empty axis", sweep("empty", base + '[sweep.grid]\n"run.method" = []\n')),
        ("sweep rejected value", sweep("value", base + '[sweep.grid]\n"channel.tx_power_dbm" = [20, 1e308]\n')),
        ("sweep unknown method", sweep("method", base + '[sweep.grid]\n"run.method" = ["soft", "nosuch"]\n')),
        ("sweep bad seeds", sweep("seeds", base + '[sweep]\nseeds = ["a"]\n')),
        ("sweep missing", ["sweep", str(tmp / "none.toml")]),
    ]


@pytest.mark.parametrize("every", CAMPAIGN)
def test_at_least_150_distinct_bad_command_lines_are_refused_fast_with_one_line(tmp_path, every):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cases = key_cases() + option_cases() + file_cases(inputs) + resume_cases(inputs) + sweep_cases(inputs)
    assert len({tuple(a) for _, a in cases}) == len(cases) >= 150
    before = snapshot(tmp_path)
    results = run_campaign(cases, every, tmp_path)
    assert problems_of(results) == [], "\n".join(problems_of(results))
    assert snapshot(tmp_path) == sorted([*before, "cwd"]), "a refusal wrote files"


@pytest.mark.parametrize("name, args", option_cases()[:3])
def test_the_refusal_names_the_value(name, args, tmp_path):
    code, text, *_ = run_case(args, tmp_path / "out", tmp_path)
    assert code == 2 and args[-1] in text


def environment_cases(tmp: Path) -> list[tuple[str, list[str], dict[str, str]]]:
    """Bad environments: (name, arguments, environment). Each is refused before anything runs."""
    a_file = tmp / "a-file"
    a_file.write_text("x")
    empty_home = tmp / "flwr-home"
    empty_home.mkdir()
    local_home = tmp / "flwr-local"
    local_home.mkdir()
    (local_home / "config.toml").write_text('[superlink]\ndefault = "local"\n[superlink.local]\naddress = ":local:"\n')
    return [
        ("FEDSIM_CACHE is a file", ["--clients", "4"], {"FEDSIM_CACHE": str(a_file)}),
        ("FEDSIM_CACHE below a file", ["--clients", "4"], {"FEDSIM_CACHE": str(a_file / "cache")}),
        ("sweep with FEDSIM_CACHE a file", ["sweep", str(EXAMPLE_SWEEP), "--dry-run"], {"FEDSIM_CACHE": str(a_file)}),
        ("plan with FEDSIM_CACHE a file", ["plan"], {"FEDSIM_CACHE": str(a_file)}),
        (
            "deploy run without a SuperLink connection",
            ["deploy", "run", "--clients", "2"],
            {"FLWR_HOME": str(empty_home)},
        ),
        (
            "deploy run on Flower's local connection",
            ["deploy", "run", "--clients", "2"],
            {"FLWR_HOME": str(local_home)},
        ),
        ("deploy run --superlink unknown", ["deploy", "run", "--superlink", "nosuch"], {"FLWR_HOME": str(local_home)}),
    ]


EXAMPLE_SWEEP = Path(__file__).resolve().parents[1] / "examples" / "sweep.toml"


def test_bad_environments_are_refused_fast_with_one_line(tmp_path):
    from tests.helpers.refusals import Refusal

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    work = tmp_path / "cwd"
    work.mkdir()
    results = []
    for i, (name, args, env) in enumerate(environment_cases(inputs)):
        out = tmp_path / f"out{i}"
        results.append(Refusal(name, tuple(args), out, *run_case(args, out, work, env)))
    assert problems_of(results) == [], "\n".join(problems_of(results))
    assert snapshot(work) == []
    named = {r.name: r.text for r in results}
    assert all("FEDSIM_CACHE" in named[n] for n in named if n.startswith(("FEDSIM", "sweep", "plan")))
    assert all("fedsim deploy connect" in named[n] for n in named if n.startswith("deploy"))
