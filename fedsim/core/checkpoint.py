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

An asynchronous run (:mod:`fedsim.core.asynchronous`) also keeps, in the adapter file, the older
global versions its clients in flight started from (``asynchronous.v<version>.<tensor>``), and in
state.json its clock under ``scheduler.asynchronous``; its client-state versions are numbered by
dispatch (:func:`client_state_round`).

State that clients keep between rounds (``run.method`` fedsa, topk-ef, soft-ef) is not in these
files: each client writes it, versioned by round, in ``client_state/`` of the results folder (or
on its SuperNode), and a resume from round t drops the versions after t
(:mod:`fedsim.core.client_state`), so checkpoint t and the versions up to t are one consistent state.

What ``--resume`` trusts. The adapter's SHA-256 in state.json only says that the adapter file is
the one state.json names (a torn or bit-flipped file is refused): anyone who can rewrite the
adapter can rewrite state.json too. So a resume also checks what the checkpoint does not attest
itself, and refuses (exit 2, one line, nothing written) where it differs:

- :func:`check_folders`: no symbolic link in ``checkpoint/`` or ``client_state/`` (a resume
  deletes files there); before any heavy import, like
- :func:`check_records`: records of rounds 1..t, each of the round record's type
  (:func:`fedsim.core.records.json_problem`), equal to the first t lines of ``rounds.jsonl``;
- :func:`check_tensors`, once the model is built and before Ray starts: the adapter's tensor
  names, shapes and dtypes are those of the adapter the configuration builds, and each kept
  client-state version holds tensors of the adapter with its shapes.

The values of the tensors cannot be checked: a checkpoint is trusted for them (and for the
scheduler's state) as much as the results folder it lies in.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from fedsim.core import client_state
from fedsim.core.records import json_problem
from fedsim.core.results import to_json

FOLDER = "checkpoint"
STATE = "state.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted (missing, corrupt, or from another configuration)."""


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
    adapter = d / adapter_name(ckpt.round)
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

ASYNC_KEY = "asynchronous"
"""The scheduler entry of an asynchronous run's checkpoint: its clock (:mod:`fedsim.core.asynchronous`)."""
OLD_VERSION = re.compile(r"asynchronous\.v(\d+)\.(.+)")
"""Names of the older global adapters an asynchronous checkpoint keeps beside the current one
(``asynchronous.v<version>.<tensor>``): the versions its clients in flight started from."""


def client_state_round(ckpt: Checkpoint) -> int:
    """The last client-state version a resume from ``ckpt`` keeps: the round, or for an asynchronous
    run the last dispatch number (the round its requests carry)."""
    clock = ckpt.scheduler.get(ASYNC_KEY) if isinstance(ckpt.scheduler, dict) else None
    return int(clock["dispatches"]) if isinstance(clock, dict) else ckpt.round


def adapter_name(round_: int) -> str:
    """The file name of the adapter after round ``round_`` in the checkpoint folder."""
    return f"adapter-{round_:06d}.safetensors"


STATE_MAX_BYTES = 1 << 30  # every round's records; bounds what a swapped-in file can cost


def load_checkpoint(folder: Path) -> Checkpoint | None:
    """The last committed checkpoint, or None if the run never completed a round.

    Raises CheckpointError when state.json is not what :func:`save_checkpoint` writes (not a
    regular file, not JSON, a field of the wrong type, an adapter named other than
    ``adapter-<round>.safetensors`` for its own round, so never a path outside the checkpoint
    folder) or when the adapter's SHA-256 differs.
    """
    from fedsim.core.config import ConfigError, parse_json, read_text_file

    path = folder / FOLDER / STATE
    if not os.path.lexists(path):
        return None
    try:
        meta = parse_json(read_text_file(path, "checkpoint", STATE_MAX_BYTES), f"checkpoint={str(path)!r}")
        round_, name, expected = meta["round"], meta["adapter"], meta["adapter_sha256"]
        records, scheduler, config_sha = meta["records"], meta.get("scheduler") or {}, meta["config_sha256"]
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({str(e).split(': ', 1)[-1]})") from None
    except (KeyError, TypeError) as e:
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
            f"checkpoint {path} names adapter {str(name)[:80]!r}; only {adapter_name(round_)} is accepted"
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


# ---- what a resume checks before it trusts a checkpoint (see the module docstring) -----------------


def check_folders(folder: Path) -> None:
    """Raise CheckpointError when ``checkpoint/`` or ``client_state/`` of results folder ``folder``,
    or anything in them, is a symbolic link.

    A resume reads these folders and replaces and deletes files in them, so nothing there may
    lead outside the results folder; with no link, every path in them resolves inside it.
    """
    for top in (folder / FOLDER, folder / client_state.FOLDER):
        for path in (top, *(top.rglob("*") if top.is_dir() and not top.is_symlink() else ())):
            if path.is_symlink():
                raise CheckpointError(
                    f"{path} is a symbolic link, not a regular file or folder; a resume reads and writes only "
                    "inside the results folder"
                )


def check_records(folder: Path, ckpt: Checkpoint) -> None:
    """Raise CheckpointError unless ``ckpt`` holds the records of rounds 1 to ``ckpt.round``, each a
    round record (:func:`fedsim.core.records.json_problem`), and ``rounds.jsonl``, where it exists,
    starts with the same records (it may hold a round after them: the round a crash interrupted)."""
    from fedsim.core.config import ConfigError, parse_json, read_text_file

    where = folder / FOLDER / STATE
    rounds = [r.get("round") for r in ckpt.records]
    if rounds != list(range(1, ckpt.round + 1)):
        shown = str(rounds) if len(rounds) <= 8 else f"[{rounds[0]!r}, ..., {rounds[-1]!r}] ({len(rounds)} records)"
        raise CheckpointError(f"checkpoint {where} holds the records of rounds {shown[:120]}, not 1 to {ckpt.round}")
    for record in ckpt.records:
        problem = json_problem(record)
        if problem is not None:
            raise CheckpointError(f"checkpoint {where}: the record of round {record['round']} {problem}")
    path = folder / "rounds.jsonl"
    if not os.path.lexists(path):
        return
    try:
        lines = [line for line in read_text_file(path, "rounds.jsonl", STATE_MAX_BYTES).splitlines() if line.strip()]
    except ConfigError as e:
        raise CheckpointError(f"{path} is unreadable ({str(e).split(': ', 1)[-1]})") from None
    if len(lines) < ckpt.round:
        raise CheckpointError(f"{path} holds {len(lines)} rounds; checkpoint {where} holds {ckpt.round}")
    for record, line in zip(ckpt.records, lines, strict=False):
        try:
            same = parse_json(line, str(path)) == record
        except ConfigError:  # not JSON, or nested too deep
            same = False
        if not same:
            raise CheckpointError(f"{path}: round {record['round']} differs from its record in checkpoint {where}")


def check_tensors(folder: Path, ckpt: Checkpoint, expected: dict[str, np.ndarray], with_client_state: bool) -> None:
    """Raise CheckpointError naming the first tensor that does not fit the adapter a run builds.

    Parameters
    ----------
    folder : the results folder of ``ckpt``.
    ckpt : the checkpoint to resume from.
    expected : the global adapter of round 0 that the configuration builds
        (:func:`fedsim.core.training.initial_state`): the checkpoint's adapter must have exactly its
        tensor names, shapes and dtypes.
    with_client_state : the method keeps client state (:mod:`fedsim.core.client_state`): every
        client's version that the resume keeps must hold only tensors of the adapter, with its
        shapes (read from the safetensors header, not loaded).
    """
    from safetensors import safe_open

    what = f"checkpoint adapter {folder / FOLDER / adapter_name(ckpt.round)}"
    versions: dict[str, dict[str, tuple]] = {}
    for name, a in ckpt.state.items():
        old = OLD_VERSION.fullmatch(name)
        version, tensor = (old[1], old[2]) if old else ("", name)
        versions.setdefault(version, {})[tensor] = (tuple(a.shape), a.dtype)
    for version, found in sorted(versions.items()):
        _check_tensors(f"{what}{f' (version {version})' if version else ''}", found, expected, whole=True)
    if not with_client_state:
        return
    for path in client_state.kept_after_resume(folder / client_state.FOLDER, client_state_round(ckpt)):
        try:
            with safe_open(str(path), framework="numpy") as f:
                found = {name: (tuple(f.get_slice(name).get_shape()), None) for name in f.keys()}  # header only
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"client state {path} does not load ({' '.join(str(e).split())[:120]})") from None
        _check_tensors(f"client state {path}", found, expected, whole=False)


def _check_tensors(what: str, found: dict[str, tuple], expected: dict[str, np.ndarray], whole: bool) -> None:
    """``found``: name -> (shape, dtype or None: not checked) of the tensors of ``what``; ``whole``:
    it must hold every tensor of ``expected``, else some of them (client state: B, or A and B)."""
    for name in sorted(found.keys() | (expected.keys() if whole else set())):
        if name not in expected:
            raise CheckpointError(f"{what} has tensor {name!r}, which the configuration does not build")
        if name not in found:
            raise CheckpointError(f"{what} lacks tensor {name!r}, which the configuration builds")
        shape, dtype = found[name]
        if shape != expected[name].shape:
            raise CheckpointError(
                f"{what}: tensor {name!r} has shape {shape}; the configuration builds {expected[name].shape}"
            )
        if dtype is not None and dtype != expected[name].dtype:
            raise CheckpointError(
                f"{what}: tensor {name!r} is {dtype}; the configuration builds {expected[name].dtype}"
            )
