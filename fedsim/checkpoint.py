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

State that clients keep between rounds (``run.method`` fedsa, topk-ef, soft-ef) is not in these
files: each client writes it, versioned by round, in ``client_state/`` of the results folder (or
on its SuperNode), and a resume from round t drops the versions after t
(:mod:`fedsim.client_state`), so checkpoint t and the versions up to t are one consistent state.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from fedsim.results import to_json

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
    _fsync_write(state_tmp, to_json(meta).encode())
    os.replace(state_tmp, d / STATE)
    for old in d.glob("adapter-*.safetensors"):
        if old.name != adapter.name:
            old.unlink()


ADAPTER_NAME = re.compile(r"adapter-(\d{6,})\.safetensors")  # what save_checkpoint writes
STATE_MAX_BYTES = 1 << 30  # every round's records; bounds what a swapped-in file can cost


def load_checkpoint(folder: Path) -> Checkpoint | None:
    """The last committed checkpoint, or None if the run never completed a round.

    Raises CheckpointError when state.json is not what :func:`save_checkpoint` writes (not a
    regular file, not JSON, a field of the wrong type, an adapter named other than
    ``adapter-<round>.safetensors`` for its own round, so never a path outside the checkpoint
    folder) or when the adapter's SHA-256 differs.
    """
    from fedsim.config import ConfigError, read_text_file

    path = folder / FOLDER / STATE
    if not os.path.lexists(path):
        return None
    try:
        meta = json.loads(read_text_file(path, "checkpoint", STATE_MAX_BYTES))
        round_, name, expected = meta["round"], meta["adapter"], meta["adapter_sha256"]
        records, scheduler, config_sha = meta["records"], meta.get("scheduler") or {}, meta["config_sha256"]
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({str(e).split(': ', 1)[-1]})") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(e).__name__})") from None
    typed = (
        isinstance(round_, int) and not isinstance(round_, bool) and round_ >= 1,
        isinstance(records, list) and all(isinstance(r, dict) for r in records),
        isinstance(scheduler, dict),
        isinstance(expected, str) and isinstance(config_sha, str),
    )
    if not all(typed):
        raise CheckpointError(f"checkpoint {path} is corrupt (a field has the wrong type)")
    match = ADAPTER_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None or int(match.group(1)) != round_:
        raise CheckpointError(
            f"checkpoint {path} names adapter {str(name)[:80]!r}; only adapter-{round_:06d}.safetensors is accepted"
        )
    adapter = folder / FOLDER / name
    if adapter.is_symlink() or not adapter.is_file():
        raise CheckpointError(f"checkpoint adapter {adapter} is missing or not a regular file")
    if sha256_file(adapter) != expected:
        raise CheckpointError(f"checkpoint adapter {adapter} is corrupt (SHA-256 mismatch)")
    try:
        state = load_file(str(adapter))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint adapter {adapter} does not load ({e})") from None
    return Checkpoint(round=round_, state=dict(state), records=records, scheduler=scheduler, config_sha256=config_sha)
