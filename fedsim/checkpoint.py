"""Checkpoints: everything needed to continue a run after the last completed round.

Written after every round, atomically, in the results folder::

    checkpoint/adapter-<round>.safetensors   the global adapter after that round
    checkpoint/state.json                    written last (tmp file + fsync + rename): round,
                                             records so far, scheduler state, the adapter's
                                             file name and SHA-256, the config's SHA-256

``state.json`` is the commit point: until it is renamed into place the previous checkpoint is
the valid one, so a crash at any moment leaves a checkpoint that ``--resume`` can trust. The
random streams are keyed by (seed, round, client, purpose) and carry no state, so the round
number is the whole RNG state. Nothing here unpickles anything: safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

FOLDER = "checkpoint"
STATE = "state.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted (missing, corrupt, or from another configuration)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _fsync_write(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@dataclass
class Checkpoint:
    round: int
    state: dict[str, np.ndarray]
    records: list[dict[str, Any]]
    scheduler: dict[str, Any]
    config_sha256: str


def save_checkpoint(folder: Path, ckpt: Checkpoint) -> None:
    """Write the adapter, then commit by atomically replacing state.json; prune older adapters."""
    d = folder / FOLDER
    d.mkdir(exist_ok=True)
    adapter = d / f"adapter-{ckpt.round:06d}.safetensors"
    tmp = adapter.with_suffix(".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in ckpt.state.items()}, str(tmp))
    with tmp.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, adapter)
    meta = {
        "round": ckpt.round,
        "adapter": adapter.name,
        "adapter_sha256": sha256_file(adapter),
        "config_sha256": ckpt.config_sha256,
        "scheduler": ckpt.scheduler,
        "records": ckpt.records,
    }
    state_tmp = d / (STATE + ".tmp")
    _fsync_write(state_tmp, json.dumps(meta).encode())
    os.replace(state_tmp, d / STATE)
    for old in d.glob("adapter-*.safetensors"):
        if old.name != adapter.name:
            old.unlink()


def load_checkpoint(folder: Path) -> Checkpoint | None:
    """The last committed checkpoint, or None if the run never completed a round.

    Raises CheckpointError when state.json does not parse or the adapter's hash differs.
    """
    path = folder / FOLDER / STATE
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
        adapter = folder / FOLDER / meta["adapter"]
        expected = meta["adapter_sha256"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(e).__name__})") from None
    if not adapter.exists():
        raise CheckpointError(f"checkpoint adapter {adapter} is missing")
    if sha256_file(adapter) != expected:
        raise CheckpointError(f"checkpoint adapter {adapter} is corrupt (SHA-256 mismatch)")
    try:
        state = load_file(str(adapter))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint adapter {adapter} does not load ({e})") from None
    return Checkpoint(
        round=int(meta["round"]),
        state=dict(state),
        records=list(meta["records"]),
        scheduler=dict(meta.get("scheduler") or {}),
        config_sha256=str(meta["config_sha256"]),
    )
