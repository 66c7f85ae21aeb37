"""Per-client CSV inputs (positions, device speeds, channel traces): one reader, one cache.

Files are parsed once and cached while they are unchanged (keyed on the resolved path, the
modification time and the size), so every round and every actor reads a file at most once.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def cached_while_unchanged(maxsize: int = 8) -> Callable[[Callable[[str], T]], Callable[[str | Path], T]]:
    """Decorator: ``parse(path)`` is called again only when the file's mtime or size changed."""

    def wrap(parse: Callable[[str], T]) -> Callable[[str | Path], T]:
        @functools.lru_cache(maxsize=maxsize)
        def cached(path: str, mtime_ns: int, size: int) -> T:
            return parse(path)

        @functools.wraps(parse)
        def read(path: str | Path) -> T:
            p = Path(path)
            st = p.stat()
            return cached(str(p.resolve()), st.st_mtime_ns, st.st_size)

        return read

    return wrap


def read_client_table(
    path: str, columns: tuple[str, ...], error: type[ValueError], row_problem: Callable[[np.ndarray], str | None]
) -> np.ndarray:
    """The rows of a ``client_id,<columns>`` CSV as a (K, len(columns)) float array in client order.

    Client ids must be 0..K-1, once each. ``row_problem(values)`` returns why a row's numbers
    cannot be used (or None); every problem raises ``error`` with a one-line message naming the
    line.
    """
    rows: dict[int, np.ndarray] = {}
    need = ("client_id", *columns)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            raise error(f"missing column(s) {', '.join(missing)} (need {','.join(need)})")
        for line, row in enumerate(reader, start=2):
            try:
                cid, values = int(row["client_id"]), np.array([float(row[c]) for c in columns])
            except (TypeError, ValueError):
                raise error(f"line {line}: not numbers: {dict(row)}") from None
            problem = row_problem(values)
            if problem:
                raise error(f"line {line}: {problem}")
            if cid in rows:
                raise error(f"line {line}: client {cid} appears twice")
            rows[cid] = values
    ids = sorted(rows)
    if ids != list(range(len(ids))):
        raise error(f"client ids must be 0..K-1 once each, got {ids[:5]}{'...' if len(ids) > 5 else ''}")
    return np.array([rows[i] for i in ids], dtype=float).reshape(-1, len(columns))
