"""The results folder: written once per round, read by plots, notebooks and tests.

Layout::

    config.toml                  resolved configuration (every key)
    rounds.jsonl                 one JSON record per completed round (schema in docs/results.md)
    summary.json                 written last: status, final metrics, totals, versions
    metric_vs_round.png          primary metric against round
    metric_vs_uplink_bits.png    primary metric against cumulative uplink bits

A folder is a finished fedsim result only when ``summary.json`` exists with ``status == "ok"``.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedsim.core.config import Config

MARKER = "config.toml"
WRITTEN = ("rounds.jsonl", "summary.json")  # a fedsim results folder has the marker and one of these


def is_results_folder(path: str | Path) -> bool:
    """True for a folder that a fedsim run wrote (``config.toml`` and ``rounds.jsonl`` or ``summary.json``)."""
    p = Path(path)
    return p.is_dir() and (p / MARKER).is_file() and any((p / name).is_file() for name in WRITTEN)


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None, recursively.

    Records and summaries are strict JSON: a diverged loss is written as ``null`` (RFC 8259 has
    no NaN), and the summary says that the run diverged.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value


def to_json(value: Any, **kwargs: Any) -> str:
    """Strict JSON (non-finite numbers as null; never the bare ``NaN`` that strict parsers reject)."""
    return json.dumps(finite_or_null(value), allow_nan=False, **kwargs)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


LOCK = ".fedsim.lock"


def holds_more_than_the_lock(folder: Path) -> bool:
    """Whether ``folder`` (an existing folder) holds anything besides fedsim's lock file: a folder
    holding only the lock (a run or sweep stopped before it wrote anything) counts as empty."""
    return any(p.name != LOCK for p in folder.iterdir())


class FolderLock:
    """An exclusive lock on a results folder for one run: one writer at a time.

    ``flock`` on ``<folder>/.fedsim.lock`` (created with the folder if needed), holding the
    writer's process id. The kernel releases the lock when its holder exits in any way, SIGKILL
    included, so a killed run never blocks a later ``--resume``.
    """

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK
        self._file = None

    def acquire(self) -> None:
        """Take the lock, or raise ConfigError naming the process that holds it."""
        import fcntl

        from fedsim.errors import ConfigError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise ConfigError(
                f"{str(self.path.parent)!r}: another fedsim process (pid {holder}) is writing this results folder; "
                "wait for it to end or stop it"
            ) from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file releases the flock
            self._file = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def versions() -> dict[str, str]:
    """The versions a summary records (read from the installed distributions, nothing imported)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    import fedsim

    return {
        "fedsim": fedsim.__version__,
        **{name: installed(name) for name in ("flwr", "ray", "torch", "numpy")},
        "python": platform.python_version(),
    }


MAX_JSON_BYTES = 64 << 20
"""A JSON file of a results or sweep folder (``summary.json``, ``sweep.json``) or one line of ``rounds.jsonl``: a round record with 10,000
sampled clients is at most 10 MB (under 1 kB per client record with every field set)."""
MAX_ROUNDS_BYTES = 512 << 20
"""A whole ``rounds.jsonl`` (held in memory as Python objects, several times its size): 50 rounds
that sample all of 10,000 clients, or 5,000 rounds of 100."""


def read_rounds(folder: str | Path, check: Callable[[Any, str], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """All round records of a results folder, in order, read within the limits.

    At most :data:`MAX_ROUNDS_BYTES` in all and :data:`MAX_JSON_BYTES` a line, read line by line
    (never more than the limits), each line UTF-8 JSON (:func:`fedsim.core.config.parse_json`) and an
    object, or what ``check(record, where)`` accepts. Anything else is a one-line ConfigError
    naming the file and the line: a results folder may come from anywhere.
    """
    from fedsim.core.config import ConfigError, parse_json

    path = Path(folder) / "rounds.jsonl"
    records = []
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size > MAX_ROUNDS_BYTES:
            raise ConfigError(f"file={str(path)!r}: larger than {MAX_ROUNDS_BYTES} bytes, too large to read")
        for number, raw in enumerate(iter(lambda: f.readline(MAX_JSON_BYTES + 1), b""), 1):
            where = f"file={str(path)!r} line {number}"
            if len(raw) > MAX_JSON_BYTES or f.tell() > MAX_ROUNDS_BYTES:
                raise ConfigError(f"{where}: longer than {MAX_JSON_BYTES} bytes (or the file than {MAX_ROUNDS_BYTES})")
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                raise ConfigError(f"{where}: not UTF-8 text") from None
            if not text.strip():
                continue
            record = parse_json(text, where)
            if check is not None:
                record = check(record, where)
            elif not isinstance(record, dict):
                raise ConfigError(f"{where}: not a round record (a JSON object)")
            records.append(record)
    return records


class ResultsWriter:
    """Appends round records as they complete and writes the summary and plots at the end."""

    def __init__(self, folder: str | Path, cfg: Config, records: list[dict[str, Any]] | None = None):
        """Start a results folder; ``records`` (from a checkpoint) are the rounds already done."""
        self.folder = Path(folder)
        self.cfg = cfg
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "summary.json").unlink(missing_ok=True)
        self.write_config(cfg)
        self.rounds_path = self.folder / "rounds.jsonl"
        self.records: list[dict[str, Any]] = list(records or [])
        _atomic_write(self.rounds_path, "".join(to_json(r) + "\n" for r in self.records))

    def write_config(self, cfg: Config) -> str:
        """Write ``config.toml`` (the configuration that runs) and return its text."""
        self.cfg = cfg
        text = cfg.to_toml()
        _atomic_write(self.folder / MARKER, text)
        return text

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.rounds_path.open("a") as f:
            f.write(to_json(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finish(
        self, *, status: str, error: str | None, primary_metric: str, wall_s: float, extra: dict | None = None
    ) -> dict[str, Any]:
        from fedsim.core.device import device_info  # imports torch: only when a run ends

        recs = self.records
        higher = metric_higher_is_better(self.cfg.workload.name)
        latencies = [r["round_latency_s"] for r in recs]
        failed_rounds = [r["round"] for r in recs if r.get("status") == "failed"]
        summary = {
            "status": status,
            "error": error,
            "rounds_completed": len(recs) - len(failed_rounds),
            "rounds_recorded": len(recs),
            "rounds_planned": self.cfg.run.rounds,
            "failed_rounds": failed_rounds,
            "workload": self.cfg.workload.name,
            "method": self.cfg.run.method,
            "seed": self.cfg.run.seed,
            "primary_metric": primary_metric,
            "higher_is_better": higher,
            "final_metrics": next((r["metrics"] for r in reversed(recs) if r.get("metrics")), {}),
            **dict(zip(("best_round", "best_metric"), best_round(recs, higher) or (None, None), strict=True)),
            "cumulative_uplink_bits": int(sum(r["uplink_bits_total"] for r in recs)),
            "cumulative_downlink_bits": int(sum(r.get("downlink_bits", 0) for r in recs)),
            "mean_round_latency_s": float(sum(latencies) / len(latencies)) if latencies else None,
            "total_latency_s": float(sum(latencies)),
            "wall_s": wall_s,
            "versions": versions(),
            "device": device_info(self.cfg),
            **(extra or {}),
        }
        if recs:
            plot_results(self.folder, recs, primary_metric, higher)
        _atomic_write(self.folder / "summary.json", to_json(summary, indent=2) + "\n")
        return summary


def metric_higher_is_better(workload: str) -> bool:
    """The direction of a workload's primary metric (its ``higher_is_better``; True if unknown)."""
    try:
        from workloads import get_workload_class

        return bool(get_workload_class(workload).higher_is_better)
    except Exception:  # an uninstalled plugin: the results stay readable
        return True


def best_round(records: list[dict[str, Any]], higher_is_better: bool = True) -> tuple[int, float] | None:
    """``(round, value)`` of the best primary metric among the ok rounds, in the metric's direction.

    The maximum when ``higher_is_better``, else the minimum (a loss, FID, a memorisation rate);
    the earliest round wins a tie; None when no ok round has a finite value.
    """
    points = [
        (r["round"], v)
        for r in records
        if r.get("status", "ok") == "ok"
        and isinstance(v := (r.get("metrics") or {}).get("primary_metric"), int | float)
        and math.isfinite(v)
    ]
    if not points:
        return None
    sign = 1.0 if higher_is_better else -1.0
    return max(points, key=lambda p: (sign * p[1], -p[0]))


def plot_results(
    folder: Path, records: list[dict[str, Any]], primary_metric: str, higher_is_better: bool = True
) -> None:
    """The two standard plots of a run: metric against round and against cumulative uplink bits.

    The y label says the metric's direction and a star marks its best round.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    bits_all = np.cumsum([r["uplink_bits_total"] for r in records])
    evaluated = [i for i, r in enumerate(records) if r.get("metrics")]  # run.eval_every skips the others
    rounds = [records[i]["round"] for i in evaluated]
    metric = [records[i]["metrics"]["primary_metric"] for i in evaluated]
    bits = bits_all[evaluated]
    for x, xlabel, name in (
        (rounds, "round", "metric_vs_round.png"),
        (bits / 1e6, "cumulative uplink (Mbit)", "metric_vs_uplink_bits.png"),
    ):
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
        ax.plot(x, metric, marker="o", ms=3)
        best = best_round(records, higher_is_better)
        if best is not None:
            i = rounds.index(best[0])
            ax.plot([x[i]], [best[1]], marker="*", ms=12, color="tab:red", ls="none", label=f"best (round {best[0]})")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{primary_metric} ({'higher' if higher_is_better else 'lower'} is better)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / name)
        plt.close(fig)
