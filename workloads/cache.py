"""The on-disk cache of base models that fedsim pretrains itself.

A workload without public offline weights (e.g. ``equation-reasoner``, a T5 trained from
scratch) pretrains its base once and keeps it here, so every later run, every Ray actor and
every client starts from the same frozen weights without training them again.

Layout (``FEDSIM_CACHE`` overrides the root, default ``~/.cache/fedsim``)::

    <root>/<kind>/<key>/model.safetensors   the weights (safetensors: no pickles)
    <root>/<kind>/<key>/meta.json           what determined them, and how pretraining went

``key`` is a SHA-256 content hash of a JSON payload holding everything that determines the
weights: the architecture, the pretraining recipe, the data seed and the code version (a hash of
the source files that build the data and train the model). Changing any of them gives a new
key; nothing is ever overwritten in place. Concurrent processes (the driver and Ray actors)
serialise on a lock file, so exactly one of them pretrains and the others load its result.
Nothing is downloaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

ENV_VAR = "FEDSIM_CACHE"


def cache_root() -> Path:
    """``$FEDSIM_CACHE`` if set, else ``~/.cache/fedsim`` (read at every call, so tests can redirect it)."""
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "fedsim")


def content_hash(payload: Mapping[str, Any]) -> str:
    """First 16 hex digits of SHA-256 over the canonical JSON of ``payload`` (sorted keys)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_digest(*modules: ModuleType) -> str:
    """SHA-256 (16 hex digits) of the modules' source files: the code version of a cached model."""
    h = hashlib.sha256()
    for module in modules:
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


def cached_model(
    kind: str,
    payload: Mapping[str, Any],
    build: Callable[[], nn.Module],
    pretrain: Callable[[nn.Module], dict[str, Any]],
) -> tuple[nn.Module, dict[str, Any]]:
    """The model of ``payload``: loaded from the cache, or built, pretrained, saved and returned.

    Parameters
    ----------
    kind
        Folder name under the cache root (the workload name).
    payload
        JSON-serialisable description of everything that determines the weights.
    build
        Makes the untrained architecture (deterministically); the cached weights load into it.
    pretrain
        Trains the built model in place and returns statistics for ``meta.json``.

    Returns
    -------
    (model, meta): ``meta`` holds ``key``, ``payload``, the pretraining statistics and ``cached``
    (True when the weights were loaded, False when this call pretrained them).
    """
    from safetensors.torch import load_model, save_model

    key = content_hash(payload)
    folder = cache_root() / kind / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        model = build()
        if (folder / "model.safetensors").is_file():
            load_model(model, folder / "model.safetensors")
            meta = json.loads((folder / "meta.json").read_text())
            return model, {**meta, "cached": True}
        t0 = time.perf_counter()
        stats = pretrain(model)
        meta = {"key": key, "payload": dict(payload), "pretrain": stats, "pretrain_wall_s": time.perf_counter() - t0}
        tmp = folder.parent / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))  # handles tied weights
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        os.replace(tmp, folder)  # appears whole or not at all
        return model, {**meta, "cached": False}
