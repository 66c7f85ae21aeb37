"""The on-disk cache of what fedsim builds itself: pretrained base models and large generated data.

A workload without public offline weights (e.g. ``equation-reasoner``, a T5 trained from
scratch) pretrains its base once and keeps it here, so every later run, every Ray actor and
every client starts from the same frozen weights without training them again. A large
generated train pool (``text-classify`` with 10,000 clients: 480,000 sentences, about 17 s to
generate) is kept here too, so the driver generates it once and every Ray actor and later run
memory-maps it instead of generating it again.

Layout (``FEDSIM_CACHE`` overrides the root, default ``~/.cache/fedsim``)::

    <root>/<kind>/<key>/model.safetensors   the weights (safetensors: no pickles)
    <root>/<kind>/<key>/data/               a dataset (Arrow, as ``datasets`` saves it)
    <root>/<kind>/<key>/meta.json           what determined it, and how it was made

``key`` is a SHA-256 content hash of a JSON payload holding everything that determines the
entry: the architecture, the pretraining recipe or generator parameters, the seed and the code
version (a hash of the source files that build the data and train the model). Changing any of
them gives a new key; nothing is ever overwritten in place. Concurrent processes (the driver and
Ray actors) serialise on a lock file, so exactly one of them makes an entry and the others load
its result. Nothing is downloaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from datasets import Dataset

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

    with _entry(kind, payload) as (folder, tmp):
        model = build()
        if (folder / "model.safetensors").is_file():
            load_model(model, folder / "model.safetensors")
            meta = json.loads((folder / "meta.json").read_text())
            return model, {**meta, "cached": True}
        t0 = time.perf_counter()
        stats = pretrain(model)
        meta = {"key": folder.name, "payload": dict(payload), "pretrain": stats}
        meta["pretrain_wall_s"] = time.perf_counter() - t0
        save_model(model, str(tmp / "model.safetensors"))  # handles tied weights
        _publish(tmp, folder, meta)
        return model, {**meta, "cached": False}


def cached_dataset(kind: str, payload: Mapping[str, Any], generate: Callable[[], Dataset]) -> Dataset:
    """The dataset of ``payload``: memory-mapped from the cache, or generated, saved and returned.

    ``payload`` describes everything that determines the rows (generator, parameters, seed, code
    version); the returned dataset has the same rows, in the same order, as ``generate()``.
    """
    import datasets

    with _entry(kind, payload) as (folder, tmp):
        if (folder / "data").is_dir():
            return datasets.load_from_disk(str(folder / "data"))
        t0 = time.perf_counter()
        data = generate()
        quiet = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # no "Saving the dataset" bar on a run's terminal
        try:
            data.save_to_disk(str(tmp / "data"))
        finally:
            if not quiet:
                datasets.enable_progress_bars()
        meta = {"key": folder.name, "payload": dict(payload), "rows": len(data)}
        meta["generate_wall_s"] = time.perf_counter() - t0
        _publish(tmp, folder, meta)
        return datasets.load_from_disk(str(folder / "data"))  # memory-mapped: processes share its pages


@contextmanager
def _entry(kind: str, payload: Mapping[str, Any]) -> Iterator[tuple[Path, Path]]:
    """Hold the lock of ``payload``'s entry; yields its folder and an empty staging folder beside it.

    Only the lock's holder stages an entry, so a staging folder of this key found under the lock
    was left by a process killed while it built the entry; it is removed.
    """
    key = content_hash(payload)
    folder = cache_root() / kind / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{key}.{os.getpid()}.tmp"
    with open(folder.parent / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        for stale in folder.parent.glob(f".{key}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        staging.mkdir()
        try:
            yield folder, staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already once published


def _publish(staging: Path, folder: Path, meta: Mapping[str, Any]) -> None:
    """Write ``meta.json`` and move the staged entry into place: it appears whole or not at all."""
    (staging / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    os.replace(staging, folder)
