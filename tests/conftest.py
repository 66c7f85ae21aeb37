import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_args(clients: int, rounds: int, per_round: int, *extra: str) -> list[str]:
    """``fedsim run`` arguments for a small, fast run (16 samples per client, 64 test samples)."""
    return [
        "run",
        "--clients",
        str(clients),
        "--rounds",
        str(rounds),
        "--clients-per-round",
        str(per_round),
        *SMALL,
        *extra,
    ]


CLIENT_FIELDS = {
    "client_id",
    "dropped",
    "distance_m",
    "gain_db",
    "bandwidth_hz",
    "rate_bps",
    "payload_bits",
    "num_samples",
    "compute_time_s",
    "upload_time_s",
    "train_loss",
    "train_wall_s",
}
"""Per-client fields every round record carries, simulated or deployed."""

SMALL = [
    "--set",
    "workload.samples_per_client=16",
    "--set",
    "workload.test_samples=64",
]


def run_fedsim(args: list[str], timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """The fedsim CLI in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


WALL_CLOCK_KEYS = ("sparsify_time_s", "solve_time_s")


def records_without_wall_clock(folder: Path) -> list[dict]:
    """rounds.jsonl without its wall-clock fields (names ending in wall_s, and the timers above)."""

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if not (k.endswith("wall_s") or k in WALL_CLOCK_KEYS)}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return [strip(json.loads(line)) for line in (folder / "rounds.jsonl").read_text().splitlines()]


SMALL_RUN = run_args(4, 2, 3, "--seed", "7")
"""The configuration of the shared ``small_run``: tests that must reproduce it use exactly this."""


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """One 4-client, 2-round run through Flower and Ray, shared by the end-to-end tests."""
    out = tmp_path_factory.mktemp("runs") / "small"
    proc = run_fedsim([*SMALL_RUN, "--out", str(out), "--quiet"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(out)
    return out
