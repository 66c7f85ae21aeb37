"""Bad files and extreme values, as a user types them: ``fedsim report`` on malformed or huge results
folders, sweep and config files nested past any use or with grids too large to build, sweeps whose
runs would share a folder, and links that cannot carry a bit in any round fedsim allows.

Each command line is a real process (two at a time): exit 2, one line, no traceback, nothing
written, little CPU (see ``tests/helpers/refusals.py``).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from channels.rate import shannon_rate_bps
from fedsim.app.report import MAX_SEARCH_DEPTH
from fedsim.app.sweep import MAX_RUNS
from fedsim.core.config import MAX_TOML_DEPTH, nesting_depth
from fedsim.core.results import MAX_JSON_BYTES, MAX_ROUNDS_BYTES
from tests.helpers.refusals import CAMPAIGN, problems_of, run_campaign, run_cases, snapshot

RECORD = {"round": 1, "uplink_bits_total": 1000, "metrics": {"accuracy": 0.5}, "clients": []}
RUN_FILES = {
    "config.toml": "[run]\nseed = 0\n",
    "rounds.jsonl": json.dumps(RECORD) + "\n",
    "summary.json": json.dumps({"status": "ok", "primary_metric": "accuracy"}),
}


def run_folder(root: Path, name: str, **files: str | bytes) -> Path:
    """A results folder as a run writes it, with ``files`` (by name, dots as underscores) replaced."""
    folder = root / name
    folder.mkdir(parents=True)
    for file, content in (RUN_FILES | {k.replace("_", "."): v for k, v in files.items()}).items():
        path = folder / file
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return folder


def sparse_file(path: Path, size: int) -> Path:
    """A file of ``size`` zero bytes and no newline (one line), taking no disk space."""
    with path.open("wb") as f:
        f.truncate(size)
    return path


@pytest.fixture
def deep(tmp_path_factory):
    """A folder tree 1500 levels deep, made and removed one level at a time (``mkdir(parents=True)``
    and ``shutil.rmtree`` recurse, as would pytest's clean-up of it), outside ``tmp_path``."""
    root = tmp_path_factory.mktemp("deep")
    folder = root
    for _ in range(1500):
        folder = folder / "d"
        folder.mkdir()
    yield root
    while folder != root:
        folder.rmdir()
        folder = folder.parent


def report_cases(tmp: Path, deep: Path) -> list[tuple[str, list[str]]]:
    """``deep``: a folder tree 1500 levels deep (see the fixture)."""

    def report(name: str, **files: str | bytes) -> list[str]:
        return ["report", str(run_folder(tmp, name, **files))]

    deep_json = "[" * 100_000
    good = run_folder(tmp, "good")
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.md").write_text("the user's own notes\n")
    (tmp / "a-file").write_text("x")
    sweep = run_folder(tmp, "sweep-garbage")
    (sweep / "sweep.json").write_text("{")
    sweep_deep = run_folder(tmp, "sweep-deep")
    (sweep_deep / "sweep.json").write_text(deep_json)
    huge_line = run_folder(tmp, "huge-line")
    sparse_file(huge_line / "rounds.jsonl", 1 << 30)
    long_line = run_folder(tmp, "long-line")
    sparse_file(long_line / "rounds.jsonl", MAX_JSON_BYTES + 1000)
    huge_summary = run_folder(tmp, "huge-summary")
    sparse_file(huge_summary / "summary.json", MAX_JSON_BYTES + 1)
    return [
        ("summary not json", report("summary-syntax", summary_json="not json")),
        ("summary truncated", report("summary-truncated", summary_json='{"status": "ok"')),
        ("summary not utf-8", report("summary-latin", summary_json=b'{"status": "\xe9"}')),
        ("summary binary garbage", report("summary-binary", summary_json=bytes(range(256)))),
        ("summary deeply nested", report("summary-deep", summary_json=deep_json)),
        ("summary a list", report("summary-list", summary_json="[]")),
        ("summary a string", report("summary-string", summary_json='"ok"')),
        ("summary a number", report("summary-number", summary_json="3")),
        (
            "summary final_metrics a list",
            report("summary-finals", summary_json='{"status": "ok", "final_metrics": [1]}'),
        ),
        ("summary status a number", report("summary-status", summary_json='{"status": 1}')),
        ("summary too large", ["report", str(huge_summary)]),
        ("rounds line not json", report("rounds-syntax", rounds_jsonl="{\n")),
        ("rounds line not utf-8", report("rounds-latin", rounds_jsonl=b'{"round": 1, "x": "\xff"}\n')),
        ("rounds line deeply nested", report("rounds-deep", rounds_jsonl=deep_json + "\n")),
        ("rounds line a list", report("rounds-list", rounds_jsonl="[1, 2]\n")),
        ("rounds line without bits", report("rounds-fields", rounds_jsonl='{"round": 1}\n')),
        ("rounds clients not a list", report("rounds-clients", rounds_jsonl=json.dumps(RECORD | {"clients": 5}))),
        ("rounds 1 GiB line", ["report", str(huge_line)]),
        ("rounds line over the limit", ["report", str(long_line)]),
        ("config not utf-8", report("config-latin", config_toml=b"[run]\nseed = 0 # \xe9\n")),
        ("config deeply nested", report("config-deep", config_toml="[run]\nx = " + "[" * 100_000)),
        ("sweep.json garbage", ["report", str(sweep)]),
        ("sweep.json deeply nested", ["report", str(sweep_deep)]),
        ("folder tree 1500 deep", ["report", str(deep), "--out", str(tmp / "deep-report")]),
        ("--out in /proc", ["report", str(good), "--out", "/proc/x"]),
        ("--out the user's folder", ["report", str(good), "--out", str(tmp / "mine")]),
        ("--out a file", ["report", str(good), "--out", str(tmp / "a-file")]),
    ]


def sweep_cases(tmp: Path) -> list[tuple[str, list[str]]]:
    def toml(name: str, text: str) -> str:
        path = tmp / f"{name}.toml"
        path.write_text(text)
        return str(path)

    base = "[run]\nclients = 4\nrounds = 1\n"
    values = ", ".join(str(i) for i in range(1, 1001))
    grid6 = toml("grid6", base + f'[sweep.grid]\n"run.rounds" = [{values}]\n"train.batch_size" = [{values}]\n')
    grid12 = toml(
        "grid12",
        base + f"[sweep]\nseeds = [{values}]\n[sweep.grid.run]\nrounds = [{values}]\n"
        f"eval_every = [{values}]\n[sweep.grid.train]\nbatch_size = [{values}]\n",
    )
    dotted = toml("dotted", base + "[sweep.grid]\n" + "a." * 3000 + "b = [1]\n")
    dotted_run = toml("dotted-run", base + "a." * 3000 + "b = 1\n")
    array = toml("array", base + '[sweep.grid]\n"run.seed" = ' + "[" * 100_000 + "\n")
    closed = toml("closed", base + "[sweep]\nseeds = " + "[" * 20 + "0" + "]" * 20 + "\n")
    long = "x" * 250
    return [
        ("grid of 10^6 runs, dry run", ["sweep", grid6, "--dry-run"]),
        ("grid of 10^6 runs", ["sweep", grid6]),
        ("grid of 10^12 runs", ["sweep", grid12, "--dry-run"]),
        ("dotted key 3000 deep", ["sweep", dotted]),
        ("array nested 10^5 deep", ["sweep", array]),
        ("array nested 20 deep", ["sweep", closed]),
        ("--set nested 10^5 deep", ["sweep", toml("plain", base), "--set", "run.rounds=" + "[" * 100_000]),
        ("names equal", ["sweep", toml("same", base + '[sweep.grid]\n"workload.options" = ["a=1", "a/1"]\n')]),
        ("names equal but case", ["sweep", toml("case", base + '[sweep.grid]\n"workload.options" = ["A", "a"]\n')]),
        ("names equal as %g", ["sweep", toml("g", base + '[sweep.grid]\n"method.rho" = [0.1234561, 0.1234562]\n')]),
        (
            "names cut at 200",
            ["sweep", toml("cut", base + f'[sweep.grid]\n"workload.options" = ["{long}1", "{long}2"]\n')],
        ),
        ("run --config dotted key 3000 deep", ["--config", dotted_run]),
        ("run --config array nested 10^5 deep", ["--config", array]),
        ("run --set nested 10^5 deep", ["--set", "run.rounds=" + "[" * 100_000]),
    ]


def plan_cases(tmp: Path) -> list[tuple[str, list[str]]]:
    quiet = ["--set", "channel.tx_power_dbm=-100", "--set", "channel.noise_psd_dbm_hz=0"]
    tiny_band = ["--set", "channel.bandwidth_hz=1e-300"]
    return [
        ("plan band 1e-300 Hz", ["plan", *tiny_band]),
        ("plan -100 dBm into 0 dBm/Hz noise", ["plan", *quiet]),
        (
            "plan noise figure 100 dB",
            [
                "plan",
                "--set",
                "channel.tx_power_dbm=-100",
                "--set",
                "channel.noise_figure_db=100",
                "--set",
                "channel.noise_psd_dbm_hz=-100",
            ],
        ),
        ("plan with a deadline, band 1e-300 Hz", ["plan", *tiny_band, "--set", "tsfa.deadline_s=1e9"]),
        ("plan free space, band 1e-300 Hz", ["plan", *tiny_band, "--set", "channel.pathloss=free-space"]),
        ("run band 1e-300 Hz", tiny_band),
        ("run tsfa band 1e-300 Hz", ["--method", "soft", "--scheduler", "tsfa", *tiny_band]),
        ("run -100 dBm into 0 dBm/Hz noise", quiet),
        (
            "sweep -100 dBm into 0 dBm/Hz noise",
            ["sweep", str(_write(tmp / "quiet.toml", "[channel]\ntx_power_dbm = -100\nnoise_psd_dbm_hz = 0\n"))],
        ),
    ]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("every", CAMPAIGN)
def test_bad_files_and_extreme_values_are_refused_fast_with_one_line(tmp_path, deep, every):
    inputs = tmp_path / "inputs"
    families = {"report": lambda tmp: report_cases(tmp, deep), "sweep": sweep_cases, "plan": plan_cases}
    cases, family_of = [], {}
    for family, make in families.items():
        (inputs / family).mkdir(parents=True)
        for name, args in make(inputs / family):
            cases.append((name, args))
            family_of[name] = family
    assert len({tuple(a) for _, a in cases}) == len(cases) >= 35
    before = snapshot(tmp_path)
    results = run_campaign(cases, every, tmp_path)
    assert problems_of(results) == [], "\n".join(problems_of(results))
    assert snapshot(tmp_path) == sorted([*before, "cwd"]), "a refusal wrote files"
    for family in families:  # the CPU time of each family's refusals (shown with pytest -s)
        cpu = [r.cpu_s for r in results if family_of[r.name] == family] or [math.nan]
        print(f"{family}: {len(cpu)} refusals, CPU median {statistics.median(cpu):.2f} s, max {max(cpu):.2f} s")


def test_the_refusals_name_the_limit(tmp_path):
    sweeps, plans = sweep_cases(tmp_path), plan_cases(tmp_path)
    cases = [("grid", sweeps[0][1]), ("names", sweeps[7][1]), ("band", plans[0][1])]
    grid, names, band = (r.text for r in run_cases(cases, tmp_path))
    assert f"1000 x 1000 = 1000000 runs, more than the {MAX_RUNS}" in grid
    assert "runs 'options-a-1' and 'options-a-1' would share one run folder" in names
    assert "channel.bandwidth_hz=1e-300" in band and "one bit takes longer than 1e+09 s" in band


def test_limits_are_stated_and_sensible():
    assert MAX_TOML_DEPTH >= 5 and MAX_SEARCH_DEPTH >= 3
    assert MAX_JSON_BYTES >= 4 * 10_000 * 1000  # a round record of 10,000 clients (under 1 kB each), 4 times over
    assert MAX_ROUNDS_BYTES >= 8 * MAX_JSON_BYTES
    assert nesting_depth(1) == 0 and nesting_depth({"a": [1, {"b": []}]}) == 4
    nested: list = []
    for _ in range(100_000):  # no recursion
        nested = [nested]
    assert nesting_depth(nested) == 100_001


def test_a_tiny_snr_keeps_its_rate():
    """b log2(1 + a/b) at a/b below 1e-16 is a / ln 2, not 0; at a/b past the float range it stays finite."""
    assert np.isclose(shannon_rate_bps(20e6, 1e-10, 1.0, 1.0), 1e-10 / np.log(2), rtol=1e-6)
    tiny_band = shannon_rate_bps(1e-300, 1e10, 1.0, 1.0)
    assert np.isfinite(tiny_band) and np.isclose(tiny_band, 1e-300 * 310 * np.log2(10), rtol=1e-12)
    assert shannon_rate_bps(0.0, 1.0, 1.0, 1.0) == 0.0
