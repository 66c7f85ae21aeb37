"""Reports over many runs: the loader, grouped statistics over seeds, and the campaign figures.

``fedsim report DIR...`` and the analysis notebooks use the same functions: :func:`load_runs`
reads sweep folders and results folders (only their ``config.toml``, ``rounds.jsonl`` and
``summary.json``, each checked: see :func:`load_run` for the limits), :func:`summarize` gives each metric's mean and 95% t-interval over the runs of
a group (the seeds), and each ``*_figure`` function returns a matplotlib figure (or None when the
records do not carry what it plots) that :func:`save_figure` writes as PNG and SVG.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.app.cli_common import check_out_dir
from fedsim.core.config import ConfigError, parse_json, read_text_file, toml_to_flat
from fedsim.core.results import MAX_JSON_BYTES, is_results_folder, metric_higher_is_better, read_rounds

IGNORED_GROUP_PREFIXES = ("simulation.", "tracking.")
DEFAULT_METRICS = ("primary_metric", "cumulative_uplink_bits", "mean_round_latency_s")
MAX_SEARCH_DEPTH = 8
"""Folder levels below a DIR searched for results folders (``sweeps/NAME/runs/RUN`` is 3)."""
REPORT_MARKER = ".fedsim-report"
"""The file that marks a folder as a report's own output: only such a folder (or an empty or new
one) is written into."""


@dataclass
class RunResult:
    """One results folder as the report reads it."""

    folder: Path
    name: str
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None = None
    sweep: str | None = None
    axes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return (self.summary or {}).get("status", "running")

    @property
    def primary_metric(self) -> str:
        return (self.summary or {}).get("primary_metric", "primary_metric")

    def value(self, name: str) -> float:
        """A metric of the run: a numeric ``summary.json`` field, else a final-round metric, else for
        ``mean_<field>`` the mean over rounds of a round-record field or metric (``mean_rho``,
        ``mean_queue_s``, ``mean_round_latency_s``); NaN if absent. ``A-B`` is the difference of two
        metrics of this run (over seeds, a paired difference: ``mem_rate_mask_pad-mem_rate_mask_pr``).

        On the simulated clock (each record's time is the cumulative ``round_latency_s``: a synchronous
        round's latency, an asynchronous server update's time since the previous one), ``M@Ts`` is
        metric M of the last evaluated record at or before T simulated seconds (``accuracy@2.5s``),
        and ``time_to:M>=X`` the simulated time of the first evaluated record with M >= X (NaN: never)."""
        if name.startswith("time_to:") and ">=" in name:
            metric, _, threshold = name.removeprefix("time_to:").partition(">=")
            return self._time_to(metric, float(threshold))
        if "@" in name and name.endswith("s"):
            metric, _, at = name.partition("@")
            return self._at_time(metric, float(at[:-1]))
        if "-" in name:
            first, _, second = name.partition("-")
            return self.value(first) - self.value(second)
        summary = self.summary or {}
        if name in summary and _is_number(summary[name]):
            return float(summary[name])
        final = summary.get("final_metrics") or (self.records[-1]["metrics"] if self.records else {}) or {}
        if name == "cumulative_uplink_bits":
            return float(sum(r["uplink_bits_total"] for r in self.records))
        v = final.get(name)
        if _is_number(v):
            return float(v)
        if name.startswith("mean_") and self.records:
            series = np.array([_record_value(r, name.removeprefix("mean_")) for r in self.records])
            if np.isfinite(series).any():
                return float(np.nanmean(series))
        return math.nan

    def times_s(self) -> np.ndarray:
        """Each record's simulated time: the cumulative sum of ``round_latency_s``."""
        return np.cumsum([float(r.get("round_latency_s") or 0.0) for r in self.records])

    def _at_time(self, metric: str, t_s: float) -> float:
        values = [(t, _record_value(r, metric)) for t, r in zip(self.times_s(), self.records, strict=True)]
        seen = [v for t, v in values if t <= t_s and math.isfinite(v)]
        return seen[-1] if seen else math.nan

    def _time_to(self, metric: str, threshold: float) -> float:
        for t, r in zip(self.times_s(), self.records, strict=True):
            if _record_value(r, metric) >= threshold:
                return float(t)
        return math.nan


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def find_run_folders(paths: Iterable[str | Path]) -> list[tuple[Path, str | None, list[str]]]:
    """``(results folder, sweep name, sweep axes)`` for every run under ``paths``.

    A sweep folder (with ``sweep.json``) gives its runs in index order; a results folder gives
    itself; any other folder is searched for results folders, at most :data:`MAX_SEARCH_DEPTH`
    levels down. A path with none is a ConfigError.
    """
    found: list[tuple[Path, str | None, list[str]]] = []
    for raw in paths:
        path = Path(raw)
        if (path / "sweep.json").is_file():
            index = read_json(path / "sweep.json")
            try:
                entries = [(path / r["folder"], index.get("name"), list(index.get("axes", []))) for r in index["runs"]]
            except (KeyError, TypeError, AttributeError):
                raise ConfigError(f"{str(path)!r}: sweep.json is not a fedsim sweep index") from None
            here = [e for e in entries if is_results_folder(e[0])]
        elif is_results_folder(path):
            here = [(path, None, [])]
        elif path.is_dir():
            here = [(p, None, []) for p in results_folders_under(path)]
        else:
            raise ConfigError(f"{str(path)!r}: no such folder")
        if not here:
            raise ConfigError(
                f"{str(path)!r}: holds no fedsim results (no config.toml with rounds.jsonl, "
                f"searched {MAX_SEARCH_DEPTH} folder levels down)"
            )
        found.extend(here)
    return found


def results_folders_under(root: Path) -> list[Path]:
    """The results folders at most :data:`MAX_SEARCH_DEPTH` levels below ``root``, sorted.

    Level by level (no recursion, so a folder tree thousands of levels deep costs nothing past the
    limit); links to folders are not followed, and a results folder is not searched further.
    """
    found, level = [], [root]
    for _ in range(MAX_SEARCH_DEPTH + 1):
        below = []
        for folder in level:
            if is_results_folder(folder):
                found.append(folder)
                continue
            try:
                with os.scandir(folder) as entries:
                    below += [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
            except OSError as e:
                raise ConfigError(f"{str(folder)!r}: cannot read the folder ({e.strerror or e})") from None
        level = below
    return sorted(found)


def read_json(path: Path) -> Any:
    """A JSON file of at most :data:`MAX_JSON_BYTES` (UTF-8, a regular file), parsed by :func:`parse_json`."""
    return parse_json(read_text_file(path, "file", MAX_JSON_BYTES), f"file={str(path)!r}")


def read_records(path: Path) -> list[dict[str, Any]]:
    """The round records of a ``rounds.jsonl`` (:func:`fedsim.core.results.read_rounds`), each with the
    fields a report uses."""
    return read_rounds(path.parent, check=_checked_record)


def _checked_record(record: Any, where: str) -> dict[str, Any]:
    """A round record with the fields the report reads: ``round`` and ``uplink_bits_total`` numbers,
    ``metrics`` an object or null, ``clients`` a list of objects with ``client_id`` and ``bandwidth_hz``."""
    ok = (
        isinstance(record, dict)
        and _is_number(record.get("round"))
        and _is_number(record.get("uplink_bits_total"))
        and isinstance(record.get("metrics"), dict | None)
        and isinstance(record.get("clients", []), list)
        and all(
            isinstance(c, dict) and _is_number(c.get("client_id")) and _is_number(c.get("bandwidth_hz"))
            for c in record.get("clients", [])
        )
    )
    if not ok:
        raise ConfigError(
            f"{where}: not a fedsim round record (a JSON object with numbers round and uplink_bits_total, "
            "metrics an object or null, clients a list of objects with client_id and bandwidth_hz)"
        )
    return record


def _checked_summary(summary: Any, where: str) -> dict[str, Any]:
    """A run summary: a JSON object whose ``status`` and ``primary_metric`` (if given) are strings and
    ``final_metrics`` an object or null."""
    ok = (
        isinstance(summary, dict)
        and isinstance(summary.get("status", ""), str)
        and isinstance(summary.get("primary_metric", ""), str)
        and isinstance(summary.get("final_metrics"), dict | None)
    )
    if not ok:
        raise ConfigError(
            f"{where}: not a fedsim run summary (a JSON object with strings status and primary_metric, "
            "final_metrics an object or null)"
        )
    return summary


def load_run(folder: str | Path, sweep: str | None = None, axes: Sequence[str] = ()) -> RunResult:
    """One results folder: its flat configuration, its round records and its summary (if written).

    A file that is not what a run writes is a one-line ConfigError naming it (not UTF-8, not valid
    JSON or TOML, nested deeper than :data:`MAX_JSON_DEPTH`, a JSON line that is not a round record,
    a summary that is not an object), as is one over its size limit (:data:`MAX_JSON_BYTES` for
    ``summary.json`` and each line of ``rounds.jsonl``, :data:`MAX_ROUNDS_BYTES` for the whole
    ``rounds.jsonl``, 4 MB for ``config.toml``).
    """
    folder = Path(folder)
    config_path, rounds_path, summary_path = (folder / name for name in ("config.toml", "rounds.jsonl", "summary.json"))
    config = toml_to_flat(read_text_file(config_path, "file"), f"file={str(config_path)!r}")
    records = read_records(rounds_path) if rounds_path.is_file() else []
    summary = (
        _checked_summary(read_json(summary_path), f"file={str(summary_path)!r}") if summary_path.is_file() else None
    )
    return RunResult(folder, folder.name, config, records, summary, sweep, list(axes))


def load_runs(paths: Iterable[str | Path] | str | Path, finished_only: bool = False) -> list[RunResult]:
    """Every run under ``paths`` (sweep folders, results folders, or folders holding them).

    ``finished_only`` keeps the runs whose summary says ``ok``.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    runs = [load_run(folder, sweep, axes) for folder, sweep, axes in find_run_folders(paths)]
    return [r for r in runs if r.status == "ok"] if finished_only else runs


# ----------------------------------------------------------------------------------------------
# grouping and statistics


def default_group_keys(runs: Sequence[RunResult]) -> list[str]:
    """The sweeps' axes without the seed; for plain folders, the config keys that differ between runs.

    ``run.seed`` and the ``simulation.*`` / ``tracking.*`` keys never group.
    """
    axes: list[str] = []
    for r in runs:
        axes += [a for a in r.axes if a not in axes]
    if not axes:
        keys = list(runs[0].config) if runs else []
        axes = [k for k in keys if len({json.dumps(r.config.get(k)) for r in runs}) > 1]
    return [k for k in axes if k != "run.seed" and not k.startswith(IGNORED_GROUP_PREFIXES)]


def group_label(key_values: dict[str, Any]) -> str:
    """``{"run.method": "soft", "method.rho": 0.5}`` -> ``"method=soft, rho=0.5"`` (``"all"`` if empty)."""
    if not key_values:
        return "all"
    return ", ".join(f"{k.rpartition('.')[2]}={_show(v)}" for k, v in key_values.items())


def _show(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def group_runs(runs: Sequence[RunResult], by: Sequence[str]) -> dict[str, list[RunResult]]:
    """Runs grouped by the values of ``by``, labelled as :func:`group_label`, in first-seen order."""
    groups: dict[str, list[RunResult]] = {}
    for r in runs:
        groups.setdefault(group_label({k: r.config.get(k) for k in by}), []).append(r)
    return groups


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)``: the mean of the finite ``values`` and its two-sided t-interval.

    ``mean +- t_{(1+confidence)/2, n-1} s / sqrt(n)`` with ``s`` the sample standard deviation; the
    interval is NaN for fewer than two values.
    """
    from scipy import stats

    x = np.asarray([v for v in values if _is_number(v)], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, 1
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def ci_cells(metric: str, values: Sequence[float]) -> dict[str, float]:
    """A table row's cells of ``metric``: ``<metric>_mean``, ``_ci95_low``, ``_ci95_high`` of :func:`mean_ci`."""
    mean, low, high, _ = mean_ci(values)
    return {f"{metric}_mean": mean, f"{metric}_ci95_low": low, f"{metric}_ci95_high": high}


def summarize(runs: Sequence[RunResult], by: Sequence[str] | None = None, metrics: Sequence[str] = DEFAULT_METRICS):
    """A pandas DataFrame: one row per group, per metric its ``mean``, ``ci95_low``, ``ci95_high``, and ``n``.

    ``primary_metric`` is each run's final-round primary metric.
    """
    import pandas as pd

    by = default_group_keys(runs) if by is None else list(by)
    rows = []
    for label, members in group_runs(runs, by).items():
        row: dict[str, Any] = {"group": label, **{k: members[0].config.get(k) for k in by}, "n": len(members)}
        for m in metrics:
            row |= ci_cells(m, [r.value(m) for r in members])
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Pairing:
    """``--paired KEY=A,B``: runs with ``KEY = A`` against runs with ``KEY = B``, seed by seed."""

    key: str
    a: str
    b: str

    @property
    def title(self) -> str:
        return f"{self.key.rpartition('.')[2]}: {self.a} minus {self.b}"


PAIRED_NOTE = (
    "Each cell is the mean over seeds of the difference between the two runs of a seed "
    "± the half-width of its 95% t-interval; `n` is the number of seeds with both runs."
)


def parse_pairing(text: str, runs: Sequence[RunResult]) -> Pairing:
    """``KEY=A,B`` as a :class:`Pairing` of two values that runs have.

    A value may itself hold commas (``workload.options=model=mdm,model=arm``): of the ways to cut
    the text at a comma, the one whose both sides are values of ``KEY`` among ``runs`` is taken.
    Raises ConfigError naming ``--paired`` when no cut, or more than one, matches.
    """
    key, sep, rest = text.partition("=")
    values = sorted({_show(r.config.get(key)) for r in runs if key in r.config})
    if not sep or not values:
        raise ConfigError(f"--paired={text!r}: must be KEY=A,B with KEY a config key the runs have")
    cuts = [(rest[:i], rest[i + 1 :]) for i, ch in enumerate(rest) if ch == ","]
    found = [(a, b) for a, b in cuts if a in values and b in values and a != b]
    if len(found) != 1:
        shown = ", ".join(repr(v) for v in values[:8])
        raise ConfigError(f"--paired={text!r}: A and B must be two values of {key} among the runs ({shown})")
    return Pairing(key, *found[0])


def paired_differences(
    runs: Sequence[RunResult], pairing: Pairing, by: Sequence[str], metrics: Sequence[str] = DEFAULT_METRICS
):
    """A pandas DataFrame like :func:`summarize`'s of the per-seed differences A - B.

    Runs are grouped by ``by`` without ``pairing.key``; within a group, the run with ``KEY = A``
    and the run with ``KEY = B`` of the same ``run.seed`` make a pair (seeds present on one side
    only are left out), and each metric's row holds the mean of the pair differences with its
    95% t-interval, and ``n``, the number of pairs. Pairing removes the between-seed variation that
    both sides share (the same base, data and channel draws), which unpaired intervals include.
    """
    import pandas as pd

    others = [k for k in by if k != pairing.key]
    rows = []
    for label, members in group_runs(runs, others).items():
        sides = {
            side: {r.config.get("run.seed"): r for r in members if _show(r.config.get(pairing.key)) == value}
            for side, value in (("a", pairing.a), ("b", pairing.b))
        }
        seeds = [s for s in sides["a"] if s in sides["b"]]
        if not seeds:
            continue
        row: dict[str, Any] = {"group": label, **{k: members[0].config.get(k) for k in others}, "n": len(seeds)}
        for m in metrics:
            diffs = [sides["a"][s].value(m) - sides["b"][s].value(m) for s in seeds]
            row |= ci_cells(m, diffs)
        rows.append(row)
    return pd.DataFrame(rows)


def runs_table(runs: Sequence[RunResult], metrics: Sequence[str] = DEFAULT_METRICS):
    """A pandas DataFrame, one row per run: name, status, the grouping keys, the seed and the metrics."""
    import pandas as pd

    keys = [*default_group_keys(runs), "run.seed"]
    return pd.DataFrame(
        [
            {
                "run": r.name,
                "status": r.status,
                **{k: r.config.get(k) for k in keys},
                **{m: r.value(m) for m in metrics},
            }
            for r in runs
        ]
    )


COLUMNS: dict[str, tuple[str, float]] = {
    "tsfa.latency_budget_s": ("T_avg (s)", 1.0),
    "tsfa.v": ("V", 1.0),
    "cumulative_uplink_bits": ("uplink (Mbit)", 1e-6),
    "cumulative_downlink_bits": ("downlink (Mbit)", 1e-6),
    "lora.quant_bits": ("quant bits", 1.0),
    "mean_round_latency_s": ("mean round latency (s)", 1.0),
    "total_latency_s": ("simulated time (s)", 1.0),
    "lora_rank": ("planned rank", 1.0),
    "mean_rho": ("mean rho", 1.0),
    "mean_queue_s": ("mean Q (s)", 1.0),
    "macro_f1": ("macro-F1", 1.0),
    "accuracy_unseen_words": ("unseen words", 1.0),
    "accuracy_unseen_templates": ("unseen templates", 1.0),
    "personal_accuracy": ("personal accuracy", 1.0),
}
"""Markdown column labels (with units) of config keys and metrics, and the factor a metric's values are
multiplied by in that column. Other config keys show their last part (``run.method`` -> ``method``),
other metrics their name; ``primary_metric`` is ``final <its name>``. ``summary.csv`` stays unscaled."""


def column(key: str, primary: str = "primary metric") -> tuple[str, float]:
    """The Markdown label and scale of a config key or metric (:data:`COLUMNS`); ``primary`` names the
    runs' primary metric."""
    if key == "primary_metric":
        return f"final {primary}", 1.0
    if key.startswith("time_to:") and ">=" in key:
        metric, _, threshold = key.removeprefix("time_to:").partition(">=")
        return f"time to {column(metric, primary)[0]} >= {threshold} (s)", 1.0
    if "@" in key and key.endswith("s"):
        metric, _, at = key.partition("@")
        return f"{column(metric, primary)[0]} at {at[:-1]} s", 1.0
    return COLUMNS.get(key, (key.rpartition(".")[2], 1.0))


def markdown_table(table, metrics: Sequence[str], by: Sequence[str], primary: str = "primary metric") -> str:
    """A summary table (of :func:`summarize`) in Markdown: ``mean ± half-width`` per metric, the columns
    labelled (and scaled) by :func:`column`."""
    header = [*(column(k)[0] for k in by), "n", *(column(m, primary)[0] for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for _, row in table.iterrows():
        cells = [_show(row[k]) for k in by] + [str(row["n"])]
        for m in metrics:
            scale = column(m)[1]
            mean, low, high = (row[f"{m}_{part}"] * scale for part in ("mean", "ci95_low", "ci95_high"))
            cells.append(_fmt_ci(mean, low, high))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt_ci(mean: float, low: float, high: float) -> str:
    """``mean ± half-width``: the half-width to 2 significant digits and the mean to the same decimal
    place (``0.59 ± 0.30``, ``41 ± 34``); the mean alone (4 significant digits) without an interval or
    with a zero-width one (every run the same), ``-`` without a value."""
    if not math.isfinite(mean):
        return "-"
    half = (high - low) / 2
    if not math.isfinite(half) or half <= 0:
        return f"{mean:.4g}"
    decimals = max(0, 1 - math.floor(math.log10(half)))
    return f"{mean:.{decimals}f} ± {half:.{decimals}f}"


# ----------------------------------------------------------------------------------------------
# curves over rounds


def round_curves(
    runs: Sequence[RunResult], by: Sequence[str], field_: str = "primary_metric"
) -> dict[str, dict[str, np.ndarray]]:
    """Per group, over the rounds every run of the group has: ``round``, ``bits`` (mean cumulative
    uplink bits), ``mean``, ``low``, ``high`` of ``field_`` (a metric, or a record field such as
    ``rho`` or ``queue``) across the group's runs. Groups without the field are left out."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for label, members in group_runs(runs, by).items():
        members = [m for m in members if m.records]
        if not members:
            continue
        n_rounds = min(len(m.records) for m in members)
        series = np.array([[_record_value(rec, field_) for rec in m.records[:n_rounds]] for m in members], float)
        if np.all(np.isnan(series)):
            continue
        bits = np.array([np.cumsum([rec["uplink_bits_total"] for rec in m.records[:n_rounds]]) for m in members])
        stats = [mean_ci(series[:, i]) for i in range(n_rounds)]
        out[label] = {
            "round": np.array([rec["round"] for rec in members[0].records[:n_rounds]]),
            "bits": bits.mean(axis=0),
            "mean": np.array([s[0] for s in stats]),
            "low": np.array([s[1] for s in stats]),
            "high": np.array([s[2] for s in stats]),
        }
    return out


def _record_value(record: dict[str, Any], name: str) -> float:
    """A round-record field or metric; NaN if absent (``metrics`` is null in rounds that
    ``run.eval_every`` skips)."""
    v = record.get(name, (record.get("metrics") or {}).get(name))
    return float(v) if _is_number(v) else math.nan


# ----------------------------------------------------------------------------------------------
# figures


def _figure(ncols: int = 1, width_in: float = 5.5):
    """A figure outside pyplot's state (no backend, nothing to close; Jupyter displays it as an image)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in * ncols, 3.8), dpi=110)
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def _metric_label(runs: Sequence[RunResult]) -> str:
    names = {r.primary_metric for r in runs}
    if len(names) != 1:
        return "primary metric"
    name = names.pop()
    higher = metric_higher_is_better(runs[0].config.get("workload.name", ""))
    return f"{name} ({'higher' if higher else 'lower'} is better)"


def _band(ax, x, curve, label: str) -> None:
    """The mean line and its band over the rounds that have a value (``run.eval_every`` skips some)."""
    ok = np.isfinite(curve["mean"])
    x = np.asarray(x)[ok]
    (line,) = ax.plot(x, curve["mean"][ok], marker="o", ms=3, label=label)
    if np.any(np.isfinite(curve["low"][ok])):
        ax.fill_between(x, curve["low"][ok], curve["high"][ok], color=line.get_color(), alpha=0.2, lw=0)


def metric_curves_figure(runs: Sequence[RunResult], by: Sequence[str] | None = None, x: str = "bits"):
    """The primary metric against cumulative uplink bits (``x="bits"``) or round (``x="round"``),
    one line per group (mean over its seeds) with its 95% band."""
    by = default_group_keys(runs) if by is None else by
    curves = round_curves(runs, by, "primary_metric")
    if not curves:
        return None
    fig, (ax,) = _figure()
    for label, c in curves.items():
        _band(ax, c["bits"] / 1e6 if x == "bits" else c["round"], c, label)
    return _metric_axes(fig, ax, runs, "cumulative uplink (Mbit)" if x == "bits" else "round")


def _metric_axes(fig, ax, runs: Sequence[RunResult], xlabel: str):
    """Label a metric-curve figure (the runs' primary metric on y), grid and legend; returns ``fig``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_metric_label(runs))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def metric_vs_time_figure(runs: Sequence[RunResult], by: Sequence[str] | None = None):
    """The primary metric against simulated time (the cumulative round latency), one line per run
    coloured by group: synchronous rounds and asynchronous server updates on one clock. None unless
    some run is asynchronous (``run.aggregation``)."""
    if not any(r.config.get("run.aggregation", "sync") != "sync" for r in runs):
        return None
    by = default_group_keys(runs) if by is None else by
    fig, (ax,) = _figure()
    for i, (label, members) in enumerate(group_runs(runs, by).items()):
        for j, m in enumerate(members):
            y = np.array([_record_value(r, "primary_metric") for r in m.records])
            ok = np.isfinite(y)
            ax.plot(m.times_s()[ok], y[ok], color=f"C{i % 10}", marker="o", ms=2, lw=1, label=label if j == 0 else None)
    return _metric_axes(fig, ax, runs, "simulated time (s)")


def staleness_figure(runs: Sequence[RunResult], by: Sequence[str] | None = None):
    """The share of applied updates by staleness (server updates since the client's base version), one
    bar group per group of asynchronous runs; None without asynchronous runs."""
    asynchronous = [r for r in runs if any(rec.get("aggregation") for rec in r.records)]
    if not asynchronous:
        return None
    by = default_group_keys(runs) if by is None else by
    groups = {
        label: [
            u["staleness"]
            for m in members
            for rec in m.records
            for u in (rec.get("aggregation") or {}).get("updates", [])
        ]
        for label, members in group_runs(asynchronous, by).items()
    }
    top = max(max(v, default=0) for v in groups.values())
    fig, (ax,) = _figure()
    width = 0.8 / max(len(groups), 1)
    for i, (label, values) in enumerate(groups.items()):
        counts = np.bincount(values, minlength=top + 1) / max(len(values), 1)
        ax.bar(np.arange(top + 1) + i * width, counts, width=width, label=label)
    ax.set_xlabel("staleness (server updates)")
    ax.set_ylabel("share of applied updates")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def latency_budget_figure(runs: Sequence[RunResult], by: Sequence[str] | None = None):
    """Time-average round latency against ``tsfa.latency_budget_s`` (mean and 95% interval over seeds),
    one line per group of the other keys; the dashed diagonal is the budget. None without TSFA runs."""
    tsfa = [r for r in runs if r.config.get("run.scheduler") == "tsfa"]
    if not tsfa:
        return None
    by = [k for k in (default_group_keys(runs) if by is None else by) if k != "tsfa.latency_budget_s"]
    fig, (ax,) = _figure()
    budgets_all: list[float] = []
    for label, members in group_runs(tsfa, by).items():
        budgets = sorted({float(m.config["tsfa.latency_budget_s"]) for m in members})
        budgets_all += budgets
        stats = [
            mean_ci([m.value("mean_round_latency_s") for m in members if m.config["tsfa.latency_budget_s"] == b])
            for b in budgets
        ]
        mean = np.array([s[0] for s in stats])
        err = np.array([[s[0] - s[1], s[2] - s[0]] for s in stats]).T
        ax.errorbar(budgets, mean, yerr=np.nan_to_num(err), marker="o", ms=4, capsize=3, label=label)
    lim = [min(budgets_all), max(budgets_all)]
    ax.plot(lim, lim, ls="--", color="0.4", label="budget")
    ax.set_xlabel("latency budget T_avg (s)")
    ax.set_ylabel("time-average round latency (s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def rho_queue_figure(runs: Sequence[RunResult], by: Sequence[str] | None = None):
    """rho and the virtual queue against round, per group (mean and 95% band); None if no record has rho."""
    by = default_group_keys(runs) if by is None else by
    rho, queue = round_curves(runs, by, "rho"), round_curves(runs, by, "queue_s")
    if not rho:
        return None
    panels = [("rho", rho), *([("virtual queue Q (s)", queue)] if queue else [])]
    fig, axes = _figure(len(panels))
    for ax, (ylabel, curves) in zip(axes, panels, strict=True):
        for label, c in curves.items():
            _band(ax, c["round"], c, label)
        ax.set(xlabel="round", ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def bandwidth_heatmap_figure(runs: Sequence[RunResult], by: Sequence[str] | None = None, max_groups: int = 6):
    """Each client's allocated bandwidth (MHz) per round, for the first run of each group (at most
    ``max_groups``); blank where a client was not sampled."""
    by = default_group_keys(runs) if by is None else by
    firsts = [(label, members[0]) for label, members in group_runs(runs, by).items() if members[0].records]
    firsts = firsts[:max_groups]
    if not firsts:
        return None
    fig, axes = _figure(len(firsts), width_in=4.2)
    for ax, (label, run) in zip(axes, firsts, strict=True):
        clients = int(run.config.get("run.clients", 1))
        grid = np.full((clients, len(run.records)), np.nan)
        for j, rec in enumerate(run.records):
            for c in rec.get("clients", []):
                if 0 <= c["client_id"] < clients:
                    grid[c["client_id"], j] = c["bandwidth_hz"] / 1e6
        im = ax.imshow(grid, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis")
        ax.set(xlabel="round", ylabel="client", title=f"{label}\n({run.name})")
        ax.title.set_fontsize(7)
        ticks = range(len(run.records))
        ax.set_xticks(list(ticks)[:: max(1, len(run.records) // 10)])
        ax.set_xticklabels([run.records[i]["round"] for i in ticks][:: max(1, len(run.records) // 10)])
        fig.colorbar(im, ax=ax, label="bandwidth (MHz)")
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class Effect:
    """A workload's own effect: families of final-round metrics ``<family><x>`` plotted against x."""

    title: str
    xlabel: str
    families: tuple[tuple[str, str], ...]  # (regex with one group, the x; y label)


EFFECTS: dict[str, Effect] = {
    "rainbow-padding": Effect(
        "validity, response length and early padding against the allocated length",
        "allocated length G",
        (
            (r"validity_g(\d+)", "validity"),
            (r"length_ratio_g(\d+)", "response length / data mean"),
            (r"early_termination_g(\d+)", "early termination"),
            (r"pad_first_half_g(\d+)", "padding share, first half of steps"),
        ),
    ),
    "equation-reasoner": Effect(
        "accuracy by number of operations", "operations", ((r"accuracy_ops(\d+)", "accuracy"),)
    ),
    "clip-memorisation": Effect(
        "memorisation rate, quality and the detector by mitigation",
        "mitigation",
        (
            (r"mem_rate_(\w+)", "memorisation rate"),
            (r"attr_acc_(\w+)", "attribute accuracy (other captions)"),
            (r"cond_norm_mem_(\w+)", "conditional noise norm (memorised)"),
        ),
    ),
    "text-classify": Effect(
        "accuracy on all, unseen-word and unseen-template sentences",
        "test subset",
        ((r"(accuracy|accuracy_unseen_words|accuracy_unseen_templates)", "accuracy"),),
    ),
    "reversal-curse": Effect(
        "forward against reverse top-1 accuracy of facts taught forward only",
        "probe",
        (
            (r"(forward|reverse)_accuracy", "top-1 accuracy"),
            (r"(reverse_probability|chance)", "probability of the answer"),
            (r"(grad_cosine_excess|grad_cosine|score_correlation)", "cosine / correlation"),
        ),
    ),
    "dapd": Effect(
        "validity and NFE per decoder",
        "decoder",
        (
            (r"validity_(\w+)", "validity"),
            (r"nfe_(\w+)", "NFE (forwards per sample)"),
            (r"auc_(all_masked|half_masked)", "attention edge AUC"),
        ),
    ),
}
"""Per workload, the final-round metrics that show its paper's effect (see each workload's docstring)."""


def effect_points(
    runs: Sequence[RunResult], pattern: str, by: Sequence[str]
) -> dict[str, list[tuple[str, float, float, float]]]:
    """Per group: ``(x, mean, low, high)`` over the group's runs for every final metric matching ``pattern``."""
    regex = re.compile(pattern)
    out: dict[str, list[tuple[str, float, float, float]]] = {}
    for label, members in group_runs(runs, by).items():
        per_run = []
        for m in members:
            final = (m.summary or {}).get("final_metrics") or (m.records[-1]["metrics"] if m.records else {}) or {}
            per_run.append({match.group(1): v for k, v in final.items() if (match := regex.fullmatch(k))})
        xs = list(dict.fromkeys(x for values in per_run for x in values))
        points = [(x, *mean_ci([v.get(x, math.nan) for v in per_run])[:3]) for x in xs]
        if points:
            out[label] = points
    return out


def effect_figure(runs: Sequence[RunResult], workload: str, by: Sequence[str] | None = None):
    """The effect plot of ``workload`` (:data:`EFFECTS`) over its runs; None if unknown or not recorded."""
    effect = EFFECTS.get(workload)
    mine = [r for r in runs if r.config.get("workload.name") == workload]
    if effect is None or not mine:
        return None
    by = default_group_keys(runs) if by is None else by
    panels = [(ylabel, effect_points(mine, pattern, by)) for pattern, ylabel in effect.families]
    panels = [(y, p) for y, p in panels if p]
    if not panels:
        return None
    fig, axes = _figure(len(panels))
    for ax, (ylabel, groups) in zip(axes, panels, strict=True):
        numeric = all(x.isdigit() for pts in groups.values() for x, *_ in pts)
        for i, (label, pts) in enumerate(groups.items()):
            pts = sorted(pts, key=lambda p: int(p[0])) if numeric else pts
            mean = np.array([p[1] for p in pts])
            err = np.nan_to_num(np.array([[p[1] - p[2], p[3] - p[1]] for p in pts]).T)
            if numeric:
                ax.errorbar([int(p[0]) for p in pts], mean, yerr=err, marker="o", ms=4, capsize=3, label=label)
            else:
                width = 0.8 / len(groups)
                pos = np.arange(len(pts)) + (i - (len(groups) - 1) / 2) * width
                ax.bar(pos, mean, width=width, yerr=err, capsize=3, label=label)
                ax.set_xticks(np.arange(len(pts)))
                ax.set_xticklabels([p[0] for p in pts], rotation=20, fontsize=7)
        ax.set(xlabel=effect.xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{workload}: {effect.title}", fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.svg`` in ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("png", "svg")]
    for p in paths:
        fig.savefig(p)
    return paths


def campaign_figures(runs: Sequence[RunResult], by: Sequence[str] | None = None) -> dict[str, Any]:
    """Every report figure the runs' records allow, by file stem (figures that do not apply are left out)."""
    by = default_group_keys(runs) if by is None else list(by)
    figures = {
        "metric_vs_uplink_bits": (
            metric_curves_figure(runs, by, "bits"),
            "Metric against cumulative uplink bits",
        ),
        "metric_vs_round": (metric_curves_figure(runs, by, "round"), "Metric against round"),
        "metric_vs_time": (metric_vs_time_figure(runs, by), "Metric against simulated time"),
        "staleness": (staleness_figure(runs, by), "Staleness of the applied updates"),
        "latency_vs_budget": (latency_budget_figure(runs, by), "Time-average latency against the budget"),
        "rho_queue": (rho_queue_figure(runs, by), "rho and virtual-queue trajectories"),
        "bandwidth_heatmap": (bandwidth_heatmap_figure(runs, by), "Per-client bandwidth"),
    }
    for workload in sorted({r.config.get("workload.name") for r in runs}):
        figures[f"effect_{workload}"] = (effect_figure(runs, workload, by), f"{workload}: its effect")
    return {stem: pair for stem, pair in figures.items() if pair[0] is not None}


# ----------------------------------------------------------------------------------------------
# the report page


def write_report(
    paths: Sequence[str | Path],
    out: str | Path,
    by: Sequence[str] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    paired: Sequence[str] = (),
    into: str | Path | None = None,
) -> Path:
    """Write ``report.md`` with its tables (``summary.csv``, ``runs.csv``, ``paired.csv`` for each
    ``paired`` ``KEY=A,B``, see :func:`paired_differences`) and figures (PNG + SVG) into ``out``.

    Unfinished runs (no ``ok`` summary) are listed but left out of the statistics. Returns the page's path.
    ``out`` (:func:`check_report_folder`) and ``into`` (:func:`check_into`) are checked before anything is
    read, and every run is read and checked (:func:`load_run`) before anything is written. With ``into``,
    the summary table also replaces the table block of the sweep's file on that page (:func:`write_into`).
    """
    out = Path(out)
    check_report_folder(out)
    key = check_into(Path(into), sweep_file_key(paths, Path(into))) if into is not None else None
    all_runs = load_runs(paths)
    runs = [r for r in all_runs if r.status == "ok"]
    if key is not None and not runs:
        raise ConfigError(f"--into={str(into)!r}: none of the {len(all_runs)} runs has finished; nothing to tabulate")
    by = default_group_keys(runs or all_runs) if by is None else list(by)
    pairings = [parse_pairing(text, runs) for text in paired]  # refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_MARKER).write_text("written by fedsim report, which may overwrite this folder\n")
    runs_table(all_runs, metrics).to_csv(out / "runs.csv", index=False)
    lines = [
        "# fedsim report",
        "",
        f"Sources: {', '.join(f'`{p}`' for p in paths)}. {len(runs)} finished runs of {len(all_runs)}; "
        f"grouped by {', '.join(f'`{k}`' for k in by) or 'nothing'}; each cell is the mean over the group's "
        "runs (seeds) ± the half-width of its 95% t-interval (`summary.csv` has the bounds).",
        "",
    ]
    unfinished = [r for r in all_runs if r.status != "ok"]
    if unfinished:
        lines += [
            "Not included (unfinished or failed): " + ", ".join(f"`{r.name}` ({r.status})" for r in unfinished),
            "",
        ]
    if runs:
        table = summarize(runs, by, metrics)
        table.to_csv(out / "summary.csv", index=False)
        primary = ", ".join(sorted({r.primary_metric for r in runs}))
        markdown = markdown_table(table, metrics, by, primary)
        lines += ["## Summary", "", f"`primary_metric` is the final round's {primary}.", "", markdown]
        paired_tables = []
        for pairing in pairings:
            diffs = paired_differences(runs, pairing, by, metrics)
            others = [k for k in by if k != pairing.key]
            text = markdown_table(diffs, metrics, others, primary) if len(diffs) else "No seed has both runs.\n"
            paired_tables.append((pairing, diffs, text))
            lines += [f"## Paired: {pairing.title}", "", PAIRED_NOTE, "", text]
        if paired_tables:
            import pandas as pd

            pd.concat([d.assign(paired=p.title) for p, d, _ in paired_tables]).to_csv(out / "paired.csv", index=False)
            markdown += "".join(f"\nPaired, {p.title}:\n\n{text}" for p, _, text in paired_tables)
        figures = campaign_figures(runs, by)
        if figures:
            lines += ["## Figures", ""]
        for stem, (fig, title) in figures.items():
            save_figure(fig, out / "figures", stem)
            lines += [f"### {title}", "", f"![{title}](figures/{stem}.png)", f"([SVG](figures/{stem}.svg))", ""]
        if key is not None:
            write_into(Path(into), key, markdown)
    page = out / "report.md"
    page.write_text("\n".join(lines))
    return page


def check_report_folder(out: Path) -> None:
    """Refuse an ``out`` folder that is not the report's to write: one that exists, is not empty and
    has no :data:`REPORT_MARKER` (the user's own files), is not a folder, or cannot be written.
    Creates nothing."""
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_MARKER).is_file():
        raise ConfigError(
            f"--out={str(out)!r}: folder exists, is not empty and is not a fedsim report (no {REPORT_MARKER}); "
            "choose a new or empty folder"
        )
    check_out_dir(out, force=True)  # exists as a file, or cannot be written


# ----------------------------------------------------------------------------------------------
# table blocks on documentation pages (``fedsim report --into``)

TABLE_OPEN = re.compile(r"<!-- table: (?P<source>\S+)(?: (?P<rest>.*?))? -->")
"""A table block's opening line: ``<!-- table: SOURCE -->``, SOURCE the experiments file or benchmark
script that produces the table, optionally followed by its arguments or a note in parentheses. A note
starting ``(pasted`` marks the report's table pasted by hand; another note (``(paired, from runs.csv;
pasted)``) marks a different table from the same source, which ``--into`` leaves alone."""
TABLE_CLOSE = re.compile(r"<!-- /table(?: sha256:(?P<digest>[0-9a-f]{16}))? -->")
"""A table block's closing line; ``fedsim report --into`` writes it with the digest of the table
(:func:`table_digest`), so a hand edit of a produced table shows."""


@dataclass(frozen=True)
class TableBlock:
    """A table block of a page: its source and the rest of its opening marker, the line numbers (from 0)
    of its markers (``end`` None when it is not closed), the closing digest, and the text in between."""

    source: str
    rest: str
    start: int
    end: int | None
    digest: str | None
    body: str

    @property
    def pasted(self) -> bool:
        """Marked as pasted by hand: a note in parentheses with the word ``pasted``."""
        return re.search(r"\(.*\bpasted\b.*\)", self.rest) is not None


def table_blocks(text: str) -> list[TableBlock]:
    """The table blocks of a Markdown page, in order; markers inside fenced code (examples) are not
    blocks. A block ends at the first closing line after its opening; one with another opening or the
    end of the page first is not closed (``end`` None)."""
    lines = text.splitlines()
    markers, fenced = [], False  # (line number, opening or closing match) outside fenced code
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (match := TABLE_OPEN.fullmatch(stripped) or TABLE_CLOSE.fullmatch(stripped)):
            markers.append((i, match))
    blocks = []
    for k, (i, opening) in enumerate(markers):
        if opening.re is not TABLE_OPEN:
            continue
        following = markers[k + 1] if k + 1 < len(markers) else (None, None)
        end, closing = following if following[1] and following[1].re is TABLE_CLOSE else (None, None)
        body = "".join(f"{line}\n" for line in lines[i + 1 : end]) if end is not None else ""
        blocks.append(TableBlock(opening["source"], opening["rest"] or "", i, end, closing and closing["digest"], body))
    return blocks


def table_digest(table: str) -> str:
    """The first 16 hex digits of the SHA-256 of a block's table text (its lines, each ending in a newline)."""
    return hashlib.sha256(table.encode()).hexdigest()[:16]


def sweep_file_key(paths: Sequence[str | Path], page: Path) -> str:
    """The block key ``--into`` fills on ``page``: the one sweep file the sweep folders ``paths`` ran
    (their ``sweep.json`` ``sweep_file``, relative to the current folder when relative), as a POSIX path
    relative to the deepest folder above ``page`` that holds it (``experiments/x.toml`` for ``docs/x.md``)."""
    files = set()
    for raw in paths:
        index_path = Path(raw) / "sweep.json"
        if not index_path.is_file():
            raise ConfigError(
                f"--into={str(page)!r}: {str(raw)!r} is not a sweep folder (no sweep.json); "
                "--into fills a page from the folder of one sweep"
            )
        index = read_json(index_path)
        sweep_file = index.get("sweep_file") if isinstance(index, dict) else None
        if not isinstance(sweep_file, str) or not sweep_file:
            raise ConfigError(f"--into={str(page)!r}: {str(index_path)!r} names no sweep_file; rerun the sweep")
        files.add(Path(sweep_file).resolve())
    if len(files) != 1:
        raise ConfigError(
            f"--into={str(page)!r}: the folders are sweeps of {len(files)} files; "
            "--into fills a page from the folder of one sweep"
        )
    (sweep_file,) = files
    folder = next(f for f in page.resolve().parents if sweep_file.is_relative_to(f))
    return sweep_file.relative_to(folder).as_posix()


def _into_block(text: str, key: str, page: Path) -> TableBlock:
    """The one block of ``key`` on the page ``--into`` fills: no note, or a ``(pasted`` note; else a ConfigError."""
    mine = [b for b in table_blocks(text) if b.source == key and (not b.rest or b.rest.startswith("(pasted"))]
    marker = f"<!-- table: {key} -->"
    if len(mine) != 1:
        raise ConfigError(
            f"--into={str(page)!r}: has {len(mine)} {marker} blocks; exactly one is allowed "
            f"(the marker, the table, <!-- /table -->)"
        )
    if mine[0].end is None:
        raise ConfigError(
            f"--into={str(page)!r}: the {marker} block on line {mine[0].start + 1} has no <!-- /table --> line "
            "before the next block or the end; close it"
        )
    return mine[0]


def _read_page(page: Path, key: str) -> str:
    if not page.is_file():
        raise ConfigError(
            f"--into={str(page)!r}: no such file; --into takes an existing page with one <!-- table: {key} --> block"
        )
    return read_text_file(page, "--into")


def check_into(page: Path, key: str) -> str:
    """Refuse a page ``--into`` cannot fill (missing, or without exactly one closed block of ``key``);
    returns ``key``. Writes nothing."""
    _into_block(_read_page(page, key), key, page)
    return key


def fill_table(text: str, key: str, table: str, page: Path) -> str:
    """The page ``text`` with the block of ``key`` holding ``table`` (its opening marker without a note, its
    closing marker with :func:`table_digest`); every other line as it was."""
    block = _into_block(text, key, page)
    lines = text.splitlines(keepends=True)
    newline = "\n" if lines[block.end].endswith("\n") else ""
    filled = [f"<!-- table: {key} -->\n", table, f"<!-- /table sha256:{table_digest(table)} -->{newline}"]
    return "".join(lines[: block.start] + filled + lines[block.end + 1 :])


def write_into(page: Path, key: str, table: str) -> None:
    """Replace the block of ``key`` on ``page`` by ``table`` (:func:`fill_table`), atomically: a temporary
    file in the page's folder, then :func:`os.replace`."""
    text = fill_table(_read_page(page, key), key, table, page)
    tmp = page.with_name(f".{page.name}.fedsim-tmp")
    tmp.write_text(text)
    os.replace(tmp, page)
