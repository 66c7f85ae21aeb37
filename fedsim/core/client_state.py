"""State a client keeps between rounds (FedSA-LoRA's personal B, error feedback's residual).

Design: **round-versioned files on the client's own disk**, never in Flower's ``Context``.

Each client writes one safetensors file per round it completes::

    <folder>/client-<id>/round-<t>.safetensors      the state after round t (atomic: tmp + rename)

and reads, at round t, the newest version from a round < t. Where the folder is:

- ``fedsim run`` (Simulation Runtime): ``<results folder>/client_state``; the server names it
  in every message (``fedsim.core.client_state``). ClientApps run in long-lived Ray actors that
  serve whichever clients Ray schedules on them, so nothing may live in the actor's memory or
  in ``context.state`` between rounds: the files are keyed by client id and read afresh each
  call. ``Context`` (shipped to and from the actor with every message) holds no client state,
  so its size does not grow with the number of clients (50 or 50,000 clients: unchanged). On
  disk a client keeps at most two versions: on the tiny text-classify preset a version is 149 kB
  (fedsa's B) or 295 kB (error feedback's residual of A and B), so 15 or 30 MB for 50 clients.
- ``fedsim deploy`` (Deployment Engine): on the SuperNode, under its node-config key
  ``state-dir`` (``--node-config '... state-dir="/data/fedsim-state"'``) in a sub-folder named
  after the run's results folder; the server's path is then only used for that name, so a
  server cannot make a SuperNode write anywhere else. A SuperNode without ``state-dir`` refuses
  a method with client state (its reply is an error: the client fails its rounds). Only the
  Ray processes of ``fedsim run`` (:data:`SIMULATION_ENV`) write to the server's path; with
  ``simulation.ray_address`` on a multi-node Ray cluster, that path must be on a file system
  every node shares.

Checkpoints and ``--resume``: a round's versions are written before the client replies, so
when the server commits checkpoint t every client that trained in a round <= t has its version
on disk. On resume from checkpoint t the server removes the versions newer than t
(:func:`discard_after`; they belong to the interrupted round, possibly under another
configuration with ``--force``), and a redone round rewrites them. A client prunes only the
versions older than the one it has just read, so the version a resumed round needs is never
pruned. Hence a run killed with SIGKILL and resumed produces the records of an uninterrupted one.

What the state costs is never counted as uplink bits: it never leaves the client.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

FOLDER = "client_state"
"""The client-state folder inside a simulated run's results folder."""

NODE_STATE_DIR = "state-dir"
"""The SuperNode node-config key naming where a deployed client keeps its state."""

SIMULATION_ENV = "FEDSIM_SIMULATED_CLIENTS"
"""Set to ``1`` for the Ray processes of ``fedsim run`` (:mod:`fedsim.flower.simulation`): there the
server's path is a folder of the user's own run, so a simulated client may write where it says."""

_VERSION = re.compile(r"round-(\d{6,})\.safetensors")


def client_folder(root: str | Path, client_id: int) -> Path:
    return Path(root) / f"client-{int(client_id):06d}"


def resolve_root(server_path: str, node_config: dict) -> Path:
    """The folder of this client's run: the SuperNode's ``state-dir`` (with the server folder's
    name as a sub-folder) when the node has one; the server's path in a simulation
    (:data:`SIMULATION_ENV`). A SuperNode without ``state-dir`` refuses (RuntimeError): a
    server never chooses where a deployed node writes."""
    node_dir = node_config.get(NODE_STATE_DIR)
    if node_dir:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(server_path).parent.name).lstrip(".")
        return Path(str(node_dir)) / (name or "run")
    if os.environ.get(SIMULATION_ENV) == "1":
        return Path(server_path)
    raise RuntimeError(
        f"this SuperNode has no node-config {NODE_STATE_DIR} for the client state of this run.method "
        f"(start it with --node-config {NODE_STATE_DIR}=PATH, a folder on the node)"
    )


def _versions(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _VERSION.fullmatch(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def load(root: str | Path, client_id: int, round_: int) -> tuple[int, dict[str, np.ndarray] | None]:
    """The newest state of ``client_id`` from a round before ``round_``: (its round, arrays),
    or (0, None) when the client has none yet."""
    from safetensors.numpy import load_file

    older = [(t, p) for t, p in _versions(client_folder(root, client_id)) if t < round_]
    if not older:
        return 0, None
    t, path = older[-1]
    return t, dict(load_file(str(path)))


def save(root: str | Path, client_id: int, round_: int, state: dict[str, np.ndarray], read_round: int) -> None:
    """Write the state after ``round_`` atomically; remove versions older than ``read_round``
    (the version this round started from, which a redone round needs again)."""
    from safetensors.numpy import save_file

    folder = client_folder(root, client_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"round-{round_:06d}.safetensors"
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp))
    with tmp.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for t, old in _versions(folder):
        if t < read_round:
            old.unlink(missing_ok=True)


def discard_after(root: str | Path, round_: int) -> int:
    """Remove every client's versions from rounds after ``round_`` (a resume from checkpoint
    ``round_``) and leftover temporary files; returns how many files were removed."""
    root = Path(root)
    removed = 0
    if not root.is_dir():
        return 0
    for folder in root.glob("client-*"):
        for p in folder.iterdir():
            m = _VERSION.fullmatch(p.name)
            if (m and int(m.group(1)) > round_) or p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def kept_after_resume(root: str | Path, round_: int) -> list[Path]:
    """Every client's versions that a resume from checkpoint ``round_`` keeps (rounds <= ``round_``)."""
    root = Path(root)
    folders = sorted(root.glob("client-*")) if root.is_dir() else []
    return [p for folder in folders for t, p in _versions(folder) if t <= round_]


# ---- the client's side of a round with state (used by fedsim.core.client) ----------------------------


def begin(method, root, client_id: int, round_: int, global_state: dict[str, np.ndarray]):
    """Before local training: ``(start, read_round, client_state)``; ``start`` is the adapter to
    train from (:meth:`~fedsim.core.methods.UploadMethod.start_state`). A method without client
    state, or ``root`` None, trains from the global adapter with no state."""
    if not method.needs_client_state or root is None:
        return global_state, 0, None
    read_round, state = load(root, client_id, round_)
    return method.start_state(global_state, state), read_round, state


def finish(
    method,
    *,
    root: str | Path | None,
    client_id: int,
    round_: int,
    trained: dict[str, np.ndarray],
    global_state: dict[str, np.ndarray] | None,
    previous: dict[str, np.ndarray] | None,
    read_round: int,
    rho: float,
    value_bits: int,
    generator,
    quant_bits: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Encode the upload of ``trained`` at ``rho``; a method with client state writes the client's
    new version (after round ``round_``) before the upload leaves. Returns ``(arrays, stats)``.

    ``global_state`` is the adapter the client received this round, ``previous`` its state from
    round ``read_round`` (:func:`begin`); ``generator`` (a ``torch.Generator``) draws the
    sparsifier's and the quantiser's randomness.
    """
    if not method.needs_client_state:
        return method.encode(trained, rho, value_bits, generator, quant_bits)
    arrays, stats, new = method.encode_stateful(trained, global_state, previous, rho, value_bits, generator, quant_bits)
    if new is not None and root is not None:
        save(root, client_id, round_, new, read_round)
    return arrays, stats
