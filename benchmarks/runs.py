"""Shared by the benchmark scripts: one real ``fedsim run`` process per setting, reused if finished."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from fedsim.core.results import read_rounds


def fedsim_run(folder: Path, clients: int, rounds: int, per_round: int, *extra: str) -> tuple[dict, list[dict]]:
    """Run ``fedsim run`` into ``folder`` unless it already holds a finished run; (summary, records)."""
    if not (folder / "summary.json").exists():
        cmd = [sys.executable, "-m", "fedsim", "run", "--clients", str(clients), "--rounds", str(rounds),
               "--clients-per-round", str(per_round), *extra, "--out", str(folder), "--force", "--quiet"]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{folder.name} failed: {proc.stderr.strip().splitlines()[-1:]}")
        print(f"{folder.name}: {time.perf_counter() - t0:.0f} s", flush=True)
    summary = json.loads((folder / "summary.json").read_text())
    records = read_rounds(folder)
    return summary, records
