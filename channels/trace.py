"""Channel traces: per-round, per-client channel gains written to and replayed from CSV.

A trace lets a user feed measured channels or another simulator's output instead of sampling.

Format: a header line, then one row per (round, client)::

    round,client_id,distance_m,pathloss_db,shadowing_db,fading_gain_db,los,gain_db
    1,0,231.5,...,-112.3

``round``, ``client_id`` and ``gain_db`` (total power gain in dB, path loss + shadowing + fading)
are required; the other columns are optional and only recorded (an empty cell is unknown; ``los``
is 1 or 0). Rounds are 1-based; a (round, client) pair appears at most once. Floats are written
with ``repr`` so a replay reproduces the exported gains bit for bit.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from channels.csvfile import cached_while_unchanged

TRACE_COLUMNS = ("round", "client_id", "distance_m", "pathloss_db", "shadowing_db", "fading_gain_db", "los", "gain_db")
REQUIRED_COLUMNS = ("round", "client_id", "gain_db")
FLOAT_COLUMNS = ("distance_m", "pathloss_db", "shadowing_db", "fading_gain_db", "los", "gain_db")


class TraceError(ValueError):
    """A trace file that cannot be used; the message is one line."""


@dataclass(frozen=True)
class ChannelTrace:
    """A parsed trace: ``values[(round, client_id)] = {column: float}`` (NaN where unknown)."""

    values: Mapping[tuple[int, int], Mapping[str, float]]

    @property
    def rounds(self) -> list[int]:
        return sorted({r for r, _ in self.values})

    def clients(self, round_: int) -> set[int]:
        return {c for r, c in self.values if r == round_}

    def client_ids(self) -> set[int]:
        return {c for _, c in self.values}

    def column(self, round_: int, num_clients: int, name: str) -> np.ndarray:
        """Column ``name`` of ``round_`` for clients 0..num_clients-1, shape (num_clients,), NaN where absent."""
        out = np.full(num_clients, np.nan)
        for c in range(num_clients):
            row = self.values.get((round_, c))
            if row is not None:
                out[c] = row[name]
        return out


def _cell(text: str | None, line: int, name: str) -> float:
    if text is None or text.strip() == "":
        if name in REQUIRED_COLUMNS:
            raise TraceError(f"line {line}: empty {name}")
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise TraceError(f"line {line}: {name}={text!r} is not a number") from None


@cached_while_unchanged(maxsize=4)
def read_trace(path: str) -> ChannelTrace:
    """Parse a trace CSV (cached while the file is unchanged); TraceError or OSError on a bad file."""
    values: dict[tuple[int, int], dict[str, float]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise TraceError(f"missing column(s) {', '.join(missing)} (need {', '.join(REQUIRED_COLUMNS)})")
        unknown = [c for c in header if c not in TRACE_COLUMNS]
        if unknown:
            raise TraceError(f"unknown column(s) {', '.join(unknown)} (known: {', '.join(TRACE_COLUMNS)})")
        for line, row in enumerate(reader, start=2):
            r, c = _cell(row["round"], line, "round"), _cell(row["client_id"], line, "client_id")
            if not (r.is_integer() and c.is_integer() and r >= 1 and c >= 0):
                raise TraceError(f"line {line}: round must be an integer >= 1 and client_id >= 0, got {r}, {c}")
            key = (int(r), int(c))
            if key in values:
                raise TraceError(f"line {line}: round {key[0]} client {key[1]} appears twice")
            vals = {name: _cell(row.get(name), line, name) for name in FLOAT_COLUMNS}
            if math.isnan(vals["gain_db"]) or vals["gain_db"] == math.inf:
                raise TraceError(f"line {line}: gain_db must be a finite dB value or -inf, got {vals['gain_db']}")
            if not math.isnan(vals["distance_m"]) and not vals["distance_m"] > 0:
                raise TraceError(f"line {line}: distance_m must be positive, got {vals['distance_m']}")
            values[key] = vals
    if not values:
        raise TraceError("no rows")
    return ChannelTrace(values)


def check_trace(trace: ChannelTrace, rounds: int, num_clients: int) -> None:
    """Raise TraceError when ``trace`` cannot drive a run of ``rounds`` rounds and ``num_clients`` clients."""
    bad = sorted(c for c in trace.client_ids() if c >= num_clients)
    if bad:
        raise TraceError(f"has client ids {bad[:5]} outside 0..{num_clients - 1} (the run has {num_clients} clients)")
    missing = [r for r in range(1, rounds + 1) if r not in set(trace.rounds)]
    if missing:
        have = trace.rounds
        raise TraceError(
            f"is shorter than the run: it has rounds {have[0]}..{have[-1]} ({len(have)} rounds) but the run needs "
            f"1..{rounds} (missing {missing[:5]}{'...' if len(missing) > 5 else ''})"
        )


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, bool | np.bool_):
        return "1" if x else "0"
    if isinstance(x, int | np.integer):
        return str(int(x))
    x = float(x)
    return "" if math.isnan(x) else repr(x)


def write_trace(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write trace rows (dicts with TRACE_COLUMNS keys, missing ones empty); returns the row count."""
    n = 0
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TRACE_COLUMNS)
        for row in rows:
            w.writerow([_fmt(row.get(c)) for c in TRACE_COLUMNS])
            n += 1
    return n


def rows_from_round_records(round_records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Trace rows from fedsim round records (``rounds.jsonl``: {"round", "clients": [...]}).

    Only the clients that took part in each round are in a run's records, so such a trace replays
    the same run (same seed and sampling); a trace for any sampling needs every client every round.
    """
    rows = []
    for rec in round_records:
        for c in rec["clients"]:
            rows.append({"round": rec["round"], **{k: c.get(k) for k in TRACE_COLUMNS if k != "round"}})
    return rows
