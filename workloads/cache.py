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
    <root>/<kind>/<key>/meta.json           what determined it, how it was made, and the SHA-256
                                            of each file of the entry ("sha256")

``key`` is a SHA-256 content hash of a JSON payload holding everything that determines the
entry: the architecture, the pretraining recipe or generator parameters, the seed and the code
version (a hash of the source files that build the data and train the model). Changing any of
them gives a new key; nothing is ever overwritten in place. Concurrent processes (the driver and
Ray actors) serialise on a lock file, so exactly one of them makes an entry and the others load
its result. Nothing is downloaded.

Every load checks the entry's files against the SHA-256 in its meta.json (a key is a hash of
what determines an entry, not of its bytes, so a bit flip or a truncated file would otherwise be
loaded, or fail with a traceback). An entry that differs, cannot be read, or has no hashes (made
by an older fedsim) is removed and built again, with one warning line on stderr. The check
reads the files once more: 84 ms for the largest cached base (equation-reasoner ``t5-tiny``,
29.6 MB), about 4% of its load (2.0 s: build, check, load; a busy 2-core machine).
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset
    from torch import nn

ENV_VAR = "FEDSIM_CACHE"

TORCH_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
"""Where torch keeps its compile cache; torch makes the folder when ``torch._dynamo`` is first
imported (peft imports it), by default ``<temp folder>/torchinductor_<user>``."""


def cache_root() -> Path:
    """``$FEDSIM_CACHE`` if set, else ``~/.cache/fedsim`` (read at every call, so tests can redirect it)."""
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "fedsim")


def keep_torch_cache_here() -> None:
    """Put torch's compile cache in ``<cache root>/torchinductor`` unless ``TORCHINDUCTOR_CACHE_DIR`` is set.

    Call before torch is imported. Processes started afterwards inherit the variable (Ray's
    workers: :mod:`fedsim.flower.simulation`), so a run leaves nothing in the temp folder.
    """
    os.environ.setdefault(TORCH_CACHE_ENV, os.path.abspath(cache_root() / "torchinductor"))


def content_hash(payload: Mapping[str, Any]) -> str:
    """First 16 hex digits of SHA-256 over the canonical JSON of ``payload`` (sorted keys)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_digest(*modules: ModuleType) -> str:
    """SHA-256 (16 hex digits) of the modules' code: the code version of a cached model.

    The code is each module's syntax tree without its docstrings and bare string statements (and
    so without comments, line numbers or formatting): editing documentation keeps the cached
    models, any change of what the code does makes new ones.
    """
    h = hashlib.sha256()
    for module in modules:
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            for field in ("body", "orelse", "finalbody"):
                statements = getattr(node, field, None)
                if isinstance(statements, list):
                    setattr(node, field, [s for s in statements if not _is_bare_string(s)])
        h.update(ast.dump(tree).encode())
    return h.hexdigest()[:16]


def _is_bare_string(statement: ast.AST) -> bool:
    """A docstring or any other string literal standing alone as a statement."""
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


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


def cached_folder(
    kind: str, payload: Mapping[str, Any], make: Callable[[Path], dict[str, Any]]
) -> tuple[Path, dict[str, Any]]:
    """The folder of ``payload``: found in the cache, or made by ``make(staging_folder)`` and published.

    For what a library saves as a folder of its own files (a Hugging Face model and tokenizer
    through ``save_pretrained``), so that it loads back through that library's own loader
    (``from_pretrained(folder)``), exactly as a user's local folder does. ``make`` writes the files
    into the empty folder it is given and returns statistics for ``meta.json``. Returns the
    published folder and its meta (``cached``: True when it was found, False when this call made it).
    """
    with _entry(kind, payload) as (folder, tmp):
        if (folder / "meta.json").is_file():
            meta = json.loads((folder / "meta.json").read_text())
            return folder, {**meta, "cached": True}
        t0 = time.perf_counter()
        stats = make(tmp)
        meta = {"key": folder.name, "payload": dict(payload), "made": stats, "make_wall_s": time.perf_counter() - t0}
        _publish(tmp, folder, meta)
        return folder, {**meta, "cached": False}


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

    The folder, when it exists, is a published entry whose files have the SHA-256 that its
    meta.json lists: one that does not (or an entry of an older fedsim, without them) is removed,
    with one warning line on stderr, and the caller builds it again. Only the lock's holder stages
    an entry, so a staging folder of this key found under the lock was left by a process killed
    while it built the entry; it is removed.
    """
    key = content_hash(payload)
    folder = cache_root() / kind / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{key}.{os.getpid()}.tmp"
    with open(folder.parent / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        for stale in folder.parent.glob(f".{key}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        damage = _damage(folder) if folder.is_dir() else None
        if damage is not None:
            sys.stderr.write(f"fedsim: warning: cache entry {folder} {damage}; removed, building it again\n")
            shutil.rmtree(folder)
        staging.mkdir()
        try:
            yield folder, staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already once published


def _publish(staging: Path, folder: Path, meta: Mapping[str, Any]) -> None:
    """Write ``meta.json``, with the SHA-256 of every file of the entry, and move the staged entry
    into place: it appears whole or not at all."""
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    meta = {**meta, HASHES: {p.relative_to(staging).as_posix(): sha256_file(p) for p in files}}
    (staging / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    os.replace(staging, folder)


HASHES = "sha256"
"""The key of ``meta.json`` that maps each file of the entry (path inside it) to its SHA-256."""


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, hex."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _damage(folder: Path) -> str | None:
    """What makes the published entry in ``folder`` unusable (None: each file in meta.json has its SHA-256)."""
    try:
        hashes = json.loads((folder / "meta.json").read_text())[HASHES]
        for name, expected in sorted(hashes.items()):
            if sha256_file(folder / name) != expected:
                return f"is corrupt ({name} differs from its SHA-256 in meta.json)"
    except KeyError:
        return "is unverifiable (meta.json lists no SHA-256: made by an older fedsim)"
    except (OSError, ValueError, AttributeError, RecursionError) as e:  # RecursionError: JSON nested too deep
        return f"is unreadable ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
    return None if hashes else "is unverifiable (meta.json lists no file)"
