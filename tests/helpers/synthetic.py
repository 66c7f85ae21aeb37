"""Synthetic results folders and sweep folders, written by fedsim.core.results.ResultsWriter (no Flower, no Ray)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.core.config import build_config
from fedsim.core.records import ClientRecord, RoundRecord, SchedulerOutcome
from fedsim.core.results import ResultsWriter


def _typed(cls: type, **values: Any) -> Any:
    """A record dataclass with ``values`` and None for every other field (the schema stays the engine's)."""
    return cls(**{f.name: None for f in dataclasses.fields(cls)} | values)


def write_run(
    folder: Path,
    overrides: dict[str, Any],
    final_metric: float,
    rounds: int = 3,
    clients: int = 4,
    extra_metrics: dict[str, float] | None = None,
    status: str = "ok",
) -> Path:
    """A results folder whose primary metric rises linearly to ``final_metric`` at the last round.

    The records are the engine's typed records (fields not set here are null). Every round samples
    all clients; rounds that ``run.eval_every`` skips have ``metrics: null``; TSFA runs carry a rising queue_s, and the round latency is ``0.9 * tsfa.latency_budget_s`` plus a seed-dependent wobble.
    """
    cfg = build_config({"run.clients": clients, "run.clients_per_round": clients, "run.rounds": rounds, **overrides})
    writer = ResultsWriter(folder, cfg)
    rng = np.random.default_rng(cfg.run.seed)
    rho = 0.0 if cfg.run.method == "ideal" else cfg.method.rho
    for t in range(1, rounds + 1):
        value = final_metric * t / rounds
        bits = 1_000_000 * (1 - rho) * clients
        clients_ = [
            _typed(
                ClientRecord,
                client_id=k,
                dropped=False,
                bandwidth_hz=cfg.channel.bandwidth_hz * (k + 1) / (clients * (clients + 1) / 2),
                rate_bps=1e7 * (k + 1),
                payload_bits=int(bits / clients),
                straggle_s=0.0,
                train_loss=1.0 / t,
            )
            for k in range(clients)
        ]
        scheduler = _typed(SchedulerOutcome, rho=rho, queue_s=0.05 * t if cfg.run.scheduler == "tsfa" else 0.0)
        record = _typed(
            RoundRecord,
            round=t,
            status="ok",
            clients=clients_,
            failures=[],
            round_latency_s=0.9 * cfg.tsfa.latency_budget_s + 0.01 * float(rng.standard_normal()),
            uplink_bits_total=int(bits),
            downlink_bits=2_000_000,
            downlink_s=0.0,
            metrics=(
                {"accuracy": value, "primary_metric": value, **(extra_metrics or {})}
                if t % cfg.run.eval_every == 0 or t == rounds
                else None  # a round that run.eval_every skips, as the engine records it
            ),
            scheduler=scheduler,
            wall_s=0.1,
        )
        writer.append(record.to_dict())
    writer.finish(
        status=status, error=None if status == "ok" else "synthetic failure", primary_metric="accuracy", wall_s=1.0
    )
    return folder


def write_sweep(folder: Path, runs: list[tuple[str, dict[str, Any], float]], axes: list[str], **kwargs: Any) -> Path:
    """A sweep folder (``sweep.json`` + ``runs/NAME``) as ``fedsim sweep`` leaves it."""
    for name, overrides, final in runs:
        write_run(folder / "runs" / name, overrides, final, **kwargs)
    index = {
        "name": folder.name,
        "axes": axes,
        "runs": [
            {"name": n, "folder": f"runs/{n}", "overrides": o, "status": "done", "returncode": 0} for n, o, _ in runs
        ],
    }
    (folder / "sweep.json").write_text(json.dumps(index))
    return folder
