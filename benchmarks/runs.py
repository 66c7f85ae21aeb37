"""Shared by the benchmark scripts: one real ``fedsim run`` process per setting, reused if finished."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from fedsim.results import read_rounds


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


def set_args(flat: dict) -> list[str]:
    """``{"workload.name": "dapd", ...}`` -> ``["--set", "workload.name=dapd", ...]`` for :func:`fedsim_run`."""
    return [arg for key, value in flat.items() for arg in ("--set", f"{key}={value}")]


def final_model(folder: Path, flat: dict):
    """(workload, model, test set) of a finished run: its last global adapter loaded into the model.

    ``flat`` is the run's configuration as ``--set`` overrides (the same that :func:`set_args` passed).
    """
    import torch
    from safetensors.numpy import load_file

    from fedsim.config import build_config
    from fedsim.training import workload_spec
    from workloads import get_workload_class
    from workloads.base import load_trainable_state

    cfg = build_config(flat)
    wl = get_workload_class(cfg.workload.name)(workload_spec(cfg))
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the adapter's initial values are overwritten
        model = wl.build_model()
    state = json.loads((folder / "checkpoint" / "state.json").read_text())
    load_trainable_state(model, load_file(folder / "checkpoint" / state["adapter"]))
    model.eval()
    _, test = wl.build_data()
    return wl, model, test
