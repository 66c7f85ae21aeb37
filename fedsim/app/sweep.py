"""Sweeps: a base configuration and axes expanded into named runs, run as ``fedsim run`` processes.

A sweep file is a fedsim configuration file (``[run]``, ``[workload]``, ... tables: the base of
every run) with one more table, ``[sweep]``::

    [sweep]
    name = "methods"            # the sweep's name (default: the file's stem)
    config = "base.toml"        # optional --config file under the tables below, relative to this file
    seeds = [0, 1, 2]           # a run.seed axis, varied innermost

    [sweep.grid]                # the Cartesian product of these axes
    "run.method" = ["soft", "topk"]
    "method.rho" = [0.25, 0.5]

    [[sweep.zip]]               # axes varied together (equal lengths), crossed with the grid
    "tsfa.latency_budget_s" = [0.2, 0.4]
    "tsfa.v" = [0.01, 0.05]

    [run]
    rounds = 5

Each run's configuration is the defaults < ``sweep.config`` < the file's tables < ``--set`` < the
run's axis values, resolved as ``fedsim run`` resolves its options (:func:`fedsim.app.cli.resolve_config`).
Every run is validated before anything runs (with the offline rank plan of TSFA runs:
:func:`check_rank_plans`). A run is named after its axis values
(``method-soft_rho-0.25_seed-0``), so adding a value to an axis keeps the names, hence the finished
results, of the runs already there.

Sweep folder::

    mlruns/         the MLflow file store of the runs, when tracking.backends has mlflow
    sweep.json      the index: name, axes, and per run its overrides, status, exit code, wall time
    sweep.csv       the same, one row per run (run name, status, one column per axis key)
    sweep.toml      a copy of the sweep file
    configs/NAME.toml   the resolved configuration each run is started with
    runs/NAME/      each run's results folder (see fedsim.core.results)
    logs/NAME.log   each run's stderr
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.core.config import (
    Config,
    ConfigError,
    build_config,
    canonical_keys,
    parse_json,
    read_text_file,
    toml_to_flat,
)
from fedsim.core.results import holds_more_than_the_lock

SWEEP_KEYS = ("name", "config", "seeds", "grid", "zip")
INDEX = "sweep.json"
MAX_RUNS = 1000
"""Runs a sweep may have (axis lengths times seeds, counted before the grid is built). Every run is
validated before any starts, at 10-30 ms each (1000 runs: under half a minute); the largest campaign
in experiments/ has 45 runs, and a larger grid is more likely a mistake in the file."""
UNCHECKED_SECTIONS = ("simulation.", "tracking.")
"""Keys that say where and how a run executes, not what it computes: a sweep may change them on a re-run."""


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its name, its axis values and its resolved configuration."""

    name: str
    overrides: dict[str, Any]
    config: Config


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: the runs in order, and the axis keys (grid, zipped, seed) that name them."""

    name: str
    source: Path
    text: str
    axes: list[str]
    runs: list[RunSpec] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# expansion


def _flatten_axes(table: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """``{"run": {"method": [...]}}`` or ``{"run.method": [...]}`` -> ``{"run.method": [...]}``, renamed
    keys under their new names."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten_axes(value, where, full + "."))
        else:
            out[full] = value
    return out if prefix else canonical_keys(out, where)


def expand(
    grid: Mapping[str, Sequence[Any]],
    zips: Sequence[Mapping[str, Sequence[Any]]] = (),
    seeds: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Every combination of the axes, as ``{key: value}`` overrides, in a stable order.

    The grid's axes vary in file order (the last fastest), each zipped group varies its keys
    together, and the seeds vary innermost. Axes are assumed validated (non-empty; equal lengths
    within a zipped group).
    """
    factors: list[list[dict[str, Any]]] = [[{key: v} for v in values] for key, values in grid.items()]
    for group in zips:
        keys = list(group)
        length = len(group[keys[0]]) if keys else 0
        factors.append([{k: group[k][i] for k in keys} for i in range(length)])
    if seeds is not None:
        factors.append([{"run.seed": s} for s in seeds])
    runs = []
    for combo in itertools.product(*factors):
        merged: dict[str, Any] = {}
        for part in combo:
            merged.update(part)
        runs.append(merged)
    return runs


def _short(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "-".join(_short(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_name(overrides: Mapping[str, Any]) -> str:
    """A folder name from axis values: ``{"run.method": "soft", "run.seed": 0}`` -> ``method-soft_seed-0``.

    Keys appear by their last part (``method.rho`` -> ``rho``), or in full where two axes share it;
    characters other than letters, digits, ``.``, ``+`` and ``-`` become ``-``.
    """
    if not overrides:
        return "base"
    tails = [k.rpartition(".")[2] for k in overrides]
    parts = []
    for key, tail in zip(overrides, tails, strict=True):
        label = tail if tails.count(tail) == 1 else key.replace(".", "-")
        parts.append(f"{label}-{_short(overrides[key])}")
    return re.sub(r"[^A-Za-z0-9.+_-]", "-", "_".join(parts))[:200]


def check_run_names(combos: Sequence[Mapping[str, Any]], where: str) -> None:
    """Refuse two runs whose folders would be one: the same :func:`run_name`, or names that differ
    only in case (one folder on a case-insensitive file system)."""
    seen: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for overrides in combos:
        name = run_name(overrides)
        if name.casefold() in seen:
            other, other_overrides = seen[name.casefold()]
            raise ConfigError(
                f"{where}: runs {other!r} and {name!r} would share one run folder ({dict(other_overrides)} and "
                f"{dict(overrides)}); give the axes values whose names differ"
            )
        seen[name.casefold()] = (name, overrides)


def _axis_values(key: str, values: Any, where: str) -> list[Any]:
    if not isinstance(values, list):
        raise ConfigError(f"{where}: axis {key!r}={values!r}: must be a list of values")
    if not values:
        raise ConfigError(f"{where}: axis {key!r} is empty: give at least one value")
    return values


def load_sweep(path: str | Path, sets: Mapping[str, Any] | None = None) -> Sweep:
    """Read, expand and validate a sweep file; any problem is one-line :class:`ConfigError`.

    The base configuration is built first, then every axis value on its own (key, type, range),
    then every run's whole configuration (rules across keys, the method and workload registries,
    the tracking backends); an error names the axis and the value wherever one is to blame.
    """
    from fedsim.app.cli_common import resolve_config

    path = Path(path)
    where = f"sweep file {str(path)!r}"
    text = read_text_file(path, "sweep file")
    flat = toml_to_flat(text, where)
    spec = {k.partition(".")[2]: v for k, v in flat.items() if k.startswith("sweep.")}
    base = {k: v for k, v in flat.items() if not k.startswith("sweep.")}
    for key in spec:
        if key not in SWEEP_KEYS:
            raise ConfigError(
                f"{where}: unknown key 'sweep.{key}': allowed keys in [sweep] are {', '.join(SWEEP_KEYS)}"
            )
    name = spec.get("name", path.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._+-]{1,100}", name):
        raise ConfigError(f"{where}: sweep.name={name!r}: must be 1-100 letters, digits, '.', '_', '+' or '-'")
    config_file = None
    if "config" in spec:
        if not isinstance(spec["config"], str) or not spec["config"]:
            raise ConfigError(f"{where}: sweep.config={spec['config']!r}: must name a fedsim config file")
        config_file = (path.parent / spec["config"]).resolve()
    grid_table = spec.get("grid", {})
    if not isinstance(grid_table, dict):
        raise ConfigError(f'{where}: sweep.grid must be a table of axes ("section.key" = [values])')
    grid = {k: _axis_values(k, v, where) for k, v in _flatten_axes(grid_table, where).items()}
    zips_raw = spec.get("zip", [])
    if isinstance(zips_raw, dict):
        zips_raw = [zips_raw]
    if not isinstance(zips_raw, list) or not all(isinstance(z, dict) for z in zips_raw):
        raise ConfigError(f"{where}: sweep.zip must be tables ([[sweep.zip]]) of axes of equal length")
    zips = []
    for group in zips_raw:
        axes = {k: _axis_values(k, v, where) for k, v in _flatten_axes(group, where).items()}
        lengths = {k: len(v) for k, v in axes.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise ConfigError(f"{where}: zipped axes must have equal lengths ({shown})")
        if axes:
            zips.append(axes)
    seeds = None
    if "seeds" in spec:
        seeds = _axis_values("sweep.seeds", spec["seeds"], where)
    keys = [*grid, *(k for z in zips for k in z), *(["run.seed"] if seeds is not None else [])]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(f"{where}: axis {repeated[0]!r} is given more than once (grid, zip or seeds)")
    lengths = (
        [len(v) for v in grid.values()]
        + [len(next(iter(z.values()))) for z in zips]
        + ([len(seeds)] if seeds is not None else [])
    )
    if math.prod(lengths) > MAX_RUNS:
        shown = " x ".join(map(str, lengths))
        raise ConfigError(f"{where}: {shown} = {math.prod(lengths)} runs, more than the {MAX_RUNS} a sweep may have")
    combos = expand(grid, zips, seeds)
    check_run_names(combos, where)

    def resolve(overrides: Mapping[str, Any]) -> Config:
        return resolve_config(config_file, [], {**base, **(sets or {}), **overrides})

    values = [(k, v) for k, vs in grid.items() for v in vs]
    values += [(k, v) for group in zips for k, vs in group.items() for v in vs]
    values += [("run.seed", s) for s in seeds or []]
    for key, value in values:  # key, type and range of each value on its own
        try:
            build_config({key: value})
        except ConfigError as e:
            raise ConfigError(f"{where}: axis {key!r} value {value!r}: {e}") from None
    try:
        resolve({})
    except ConfigError as e:
        raise ConfigError(f"{where}: base configuration: {e}") from None
    from fedsim.app.tracking import check_tracking

    runs: list[RunSpec] = []
    for overrides in combos:
        try:
            cfg = resolve(overrides)
            check_tracking(cfg)
        except ConfigError as e:  # rules across keys and the registries (method, workload, preset)
            message = str(e)
            culprit = next((k for k in overrides if message.startswith(f"{k}=")), None)
            if culprit is not None:
                raise ConfigError(f"{where}: axis {culprit!r} value {overrides[culprit]!r}: {message}") from None
            shown = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
            raise ConfigError(f"{where}: run with {shown}: {message}") from None
        runs.append(RunSpec(run_name(overrides), dict(overrides), cfg))
    return Sweep(name=name, source=path, text=text, axes=keys, runs=runs)


PLAN_BLIND_KEYS = ("tsfa.latency_budget_s", "tsfa.v", "tsfa.penalty", "run.rounds")
"""Keys the offline rank plan's rows do not depend on: runs that differ only in these share one plan."""


def check_rank_plans(sweep: Sweep) -> None:
    """Refuse, before anything runs, a run whose ``tsfa.latency_budget_s`` no candidate rank meets.

    ``fedsim run`` refuses such a budget (exit 2) after its offline rank plan; a sweep checks all
    of its runs first, one plan per group of runs that differ only in :data:`PLAN_BLIND_KEYS` (and
    ``simulation.*``, ``tracking.*``), so a campaign with one infeasible budget fails at once
    instead of recording a failed run per seed. Builds each group's model once (seconds).
    """
    from fedsim.core.schedulers import get_scheduler

    groups: dict[str, list[RunSpec]] = {}
    for spec in sweep.runs:
        if get_scheduler(spec.config.run.scheduler).plans_rank:
            flat = spec.config.to_flat()
            key = {k: v for k, v in flat.items() if k not in PLAN_BLIND_KEYS and not k.startswith(UNCHECKED_SECTIONS)}
            groups.setdefault(json.dumps(key, sort_keys=True, default=str), []).append(spec)
    if not groups:
        return
    from fedsim.core.rank_plan import plan_for
    from fedsim.core.training import WorkloadHost
    from fedsim.core.wireless import WirelessModel
    from fedsim.tsfa import InfeasibleBudgetError

    def refused(run: RunSpec, error: Exception) -> ConfigError:
        return ConfigError(f"sweep file {str(sweep.source)!r}: run {run.name!r}: {' '.join(str(error).split())}")

    host = WorkloadHost()
    for runs in groups.values():
        widest = max(runs, key=lambda r: r.config.tsfa.latency_budget_s)
        try:
            plan = plan_for(widest.config, WirelessModel(widest.config), host)
        except InfeasibleBudgetError as e:  # every budget of the group is too small
            raise refused(widest, e) from None
        for run in runs:
            budget_s = run.config.tsfa.latency_budget_s
            if not plan.meets(budget_s):
                raise refused(run, InfeasibleBudgetError(budget_s, plan.rows))


# ----------------------------------------------------------------------------------------------
# the state of a run in a sweep folder


def run_state(folder: Path) -> str:
    """``done`` (summary ok), ``failed`` (summary failed or diverged), ``interrupted`` (a checkpoint and
    no summary) or ``pending`` (nothing usable yet)."""
    summary = folder / "summary.json"
    if summary.is_file():
        try:
            status = parse_json(read_text_file(summary, "summary.json"), "summary.json").get("status")
        except (ConfigError, AttributeError):  # unreadable, not UTF-8, not JSON, too deep, not an object
            status = None
        if status == "ok":
            return "done"
        if status is not None:
            return "failed"
    if (folder / "checkpoint" / "state.json").is_file():
        return "interrupted"
    return "pending"


def check_folder(sweep: Sweep, out: Path) -> None:
    """Refuse an output folder that holds something else, or runs made with another configuration.

    A folder that holds only fedsim's lock file (a sweep stopped before it wrote anything) counts as
    empty. A run's configuration is the one the sweep started it with (``configs/NAME.toml``), not its
    results folder's ``config.toml``, which records what the run decided itself (TSFA's planned
    ``lora.rank``); a folder without the former is compared with the latter. ``simulation.*`` and
    ``tracking.*`` keys may differ (where and how a run executes).
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out={str(out)!r}: exists and is not a folder")
    if out.is_dir() and holds_more_than_the_lock(out) and not (out / INDEX).is_file():
        raise ConfigError(f"--out={str(out)!r}: folder exists, is not empty and holds no sweep (no {INDEX})")
    for spec in sweep.runs:
        saved = out / "runs" / spec.name / "config.toml"
        if not saved.is_file():
            continue
        started = out / "configs" / f"{spec.name}.toml"
        saved = started if started.is_file() else saved
        try:
            old = build_config(toml_to_flat(read_text_file(saved, "run config"), str(saved)))
        except ConfigError as e:
            raise ConfigError(f"--out={str(out)!r}: run {spec.name!r} has an unreadable config.toml ({e})") from None
        new_flat = spec.config.to_flat()
        changed = [k for k, v in old.to_flat().items() if not k.startswith(UNCHECKED_SECTIONS) and new_flat.get(k) != v]
        if changed:
            raise ConfigError(
                f"--out={str(out)!r}: run {spec.name!r} there was made with other values of {', '.join(changed[:5])}; "
                "use another --out for the changed sweep"
            )


# ----------------------------------------------------------------------------------------------
# execution


def default_jobs(cfg: Config, cpus: int | None = None) -> int:
    """Runs at once on this machine: the cores over each run's ``simulation.cpus_per_client``, at least 1."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, int(cpus // max(cfg.simulation.cpus_per_client, 1.0)))


def run_config_text(
    spec: RunSpec,
    jobs: int,
    ray_address: str | None,
    cpus: int | None = None,
    out: Path | None = None,
    sweep_name: str = "",
) -> str:
    """The TOML a run is started with: its configuration, the Ray address, and its share of the cores.

    A local Ray of each of ``jobs`` concurrent runs gets ``cpus / jobs`` client slots (when the
    configuration leaves ``simulation.max_concurrent_clients`` at 0), so the runs share the cores
    instead of each starting one actor per core. With MLflow tracking on, the runs of a sweep share
    one store, ``<out>/mlruns`` (unless ``tracking.mlflow_uri`` names one), and one experiment named
    after the sweep (unless ``tracking.experiment`` names one).
    """
    flat = spec.config.to_flat()
    if "mlflow" in flat["tracking.backends"] and out is not None:
        flat["tracking.mlflow_uri"] = flat["tracking.mlflow_uri"] or (out / "mlruns").resolve().as_uri()
        flat["tracking.experiment"] = flat["tracking.experiment"] or sweep_name
    if ray_address:
        flat["simulation.ray_address"] = ray_address
    elif not flat["simulation.max_concurrent_clients"]:
        cpus = cpus or os.cpu_count() or 1
        per_run = cpus / max(jobs, 1) / spec.config.simulation.cpus_per_client
        flat["simulation.max_concurrent_clients"] = max(1, int(per_run))
    return build_config(flat).to_toml()


def fedsim_command() -> list[str]:
    """The command that starts a ``fedsim`` process: this interpreter, ``-m fedsim``."""
    return [sys.executable, "-m", "fedsim"]


@dataclass
class RunStatus:
    """One run's row of the index."""

    name: str
    overrides: dict[str, Any]
    status: str = "pending"
    returncode: int | None = None
    wall_s: float | None = None
    error: str | None = None
    action: str | None = None  # "start", "resume" or "skip" in the latest invocation


class Index:
    """``sweep.json`` and ``sweep.csv``, rewritten atomically after every change."""

    def __init__(self, sweep: Sweep, out: Path, jobs: int):
        self.sweep, self.out, self.jobs = sweep, out, jobs
        self.rows = {s.name: RunStatus(s.name, s.overrides) for s in sweep.runs}
        previous = out / INDEX
        if previous.is_file():
            try:
                old = {r["name"]: r for r in parse_json(read_text_file(previous, INDEX), INDEX).get("runs", [])}
            except (ConfigError, AttributeError, TypeError, KeyError):  # an index fedsim cannot read: start afresh
                old = {}
            for name, row in self.rows.items():
                if name in old:
                    row.wall_s, row.returncode, row.error = (
                        old[name].get(k) for k in ("wall_s", "returncode", "error")
                    )

    def write(self) -> None:
        data = {
            "name": self.sweep.name,
            "sweep_file": str(self.sweep.source),
            "axes": self.sweep.axes,
            "jobs": self.jobs,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "runs": [
                {
                    "name": r.name,
                    "folder": f"runs/{r.name}",
                    "overrides": r.overrides,
                    "status": r.status,
                    "returncode": r.returncode,
                    "wall_s": r.wall_s,
                    "error": r.error,
                }
                for r in self.rows.values()
            ],
        }
        _atomic_write(self.out / INDEX, json.dumps(data, indent=2, default=str) + "\n")
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["name", "status", "returncode", "wall_s", *self.sweep.axes, "error"])
        for r in self.rows.values():
            axis_values = [json.dumps(r.overrides[k]) if k in r.overrides else "" for k in self.sweep.axes]
            w.writerow([r.name, r.status, r.returncode, r.wall_s, *axis_values, r.error or ""])
        _atomic_write(self.out / "sweep.csv", buf.getvalue())

    def counts(self) -> dict[str, int]:
        out = {"done": 0, "running": 0, "failed": 0, "pending": 0, "interrupted": 0}
        for r in self.rows.values():
            out[r.status] = out.get(r.status, 0) + 1
        return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """A run gets SIGTERM (it checkpoints and stops) if the sweep process dies, even by SIGKILL.

    It also takes SIGINT again: a sweep started in the background (``nohup fedsim sweep ... &``)
    inherits SIGINT ignored, and an ignored signal stays ignored across exec, so without this the
    runs would sit out the stop's grace period and be killed without their checkpoint.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def last_line(path: Path) -> str:
    """The last non-empty line of a log file (the one-line error of a failed ``fedsim run``)."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:500] if lines else ""


Display = Callable[[str, dict[str, Any]], None]
"""``display(event, data)``: "start" (total, skipped), "run" (name, status, wall_s, error), "tick" (counts, eta_s)."""


class Interrupted(Exception):
    """The sweep was stopped by Ctrl-C or SIGTERM; ``code`` is 130 or 143."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def execute(
    sweep: Sweep,
    out: Path,
    jobs: int,
    ray_address: str | None = None,
    display: Display | None = None,
    command: Sequence[str] | None = None,
    poll_s: float = 0.5,
    stop_grace_s: float = 120.0,
) -> Index:
    """Run every unfinished run of ``sweep`` in ``out``, ``jobs`` at a time; returns the final index.

    Finished runs are skipped; interrupted and failed ones continue from their checkpoint
    (``fedsim run --resume``), others start afresh. A failed run is recorded and the others go on.
    Ctrl-C or SIGTERM stops the runs in progress (each checkpoints and exits) and raises
    :class:`Interrupted`.
    """
    show = display or (lambda event, data: None)
    command = list(command or fedsim_command())
    for sub in ("runs", "configs", "logs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "sweep.toml", sweep.text)
    index = Index(sweep, out, jobs)
    queue: list[tuple[RunSpec, str]] = []
    for spec in sweep.runs:
        row, state = index.rows[spec.name], run_state(out / "runs" / spec.name)
        row.status = "done" if state == "done" else "pending"
        row.action = "skip" if state == "done" else ("resume" if state in ("interrupted", "failed") else "start")
        if state != "done":
            queue.append((spec, state))
    index.write()
    show("start", {"total": len(sweep.runs), "skipped": len(sweep.runs) - len(queue), "jobs": jobs})

    running: dict[str, tuple[subprocess.Popen, float, Any]] = {}
    walls: list[float] = []
    t0 = time.monotonic()

    def launch(spec: RunSpec, state: str) -> None:
        folder = out / "runs" / spec.name
        cfg_path = out / "configs" / f"{spec.name}.toml"
        if state in ("interrupted", "failed"):
            args = ["run", "--resume", str(folder), "--quiet"]
        else:
            _atomic_write(cfg_path, run_config_text(spec, jobs, ray_address, out=out, sweep_name=sweep.name))
            args = ["run", "--config", str(cfg_path), "--out", str(folder), "--quiet", "--force"]
        log = (out / "logs" / f"{spec.name}.log").open("a")
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} fedsim {' '.join(args)}\n")
        log.flush()
        proc = subprocess.Popen(
            [*command, *args],
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the sweep only, which stops each run once
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        running[spec.name] = (proc, time.monotonic(), log)
        row = index.rows[spec.name]
        row.status, row.returncode, row.error = "running", None, None
        index.write()

    def reap(stopped: bool = False) -> None:
        """Record the runs that ended; ``stopped``: the sweep stopped them, so a run that did not
        finish or fail on its own was interrupted, whatever its exit code (Ray can end a process
        that is stopped while its actors start with exit 1)."""
        for name, (proc, started, log) in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            log.close()
            del running[name]
            row = index.rows[name]
            wall = time.monotonic() - started
            row.returncode, row.wall_s = code, round(wall, 2)
            state = run_state(out / "runs" / name)
            if code == 0 and state == "done":
                row.status, row.error = "done", None
                walls.append(wall)
            elif code in (130, 143) or ((code < 0 or stopped) and state != "failed"):
                row.status, row.error = "interrupted", f"stopped (exit {code})"
            else:
                row.status = "failed"
                row.error = last_line(out / "logs" / f"{name}.log") or f"exit {code}"
            index.write()
            show("run", {"name": name, "status": row.status, "wall_s": wall, "error": row.error})

    def eta_s() -> float | None:
        if not walls:
            return None
        left = sum(1 for r in index.rows.values() if r.status in ("pending", "running"))
        return sum(walls) / len(walls) * left / max(1, min(jobs, left))

    old_term = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise Interrupted(143)

    if _in_main_thread():
        signal.signal(signal.SIGTERM, on_term)
    try:
        while queue or running:
            while queue and len(running) < jobs:
                launch(*queue.pop(0))
            time.sleep(poll_s)
            reap()
            show("tick", {"counts": index.counts(), "eta_s": eta_s(), "elapsed_s": time.monotonic() - t0})
    except (KeyboardInterrupt, Interrupted) as e:
        code = e.code if isinstance(e, Interrupted) else 130
        _stop(running, stop_grace_s)
        reap(stopped=True)
        for spec, _ in queue:
            index.rows[spec.name].status = "pending"
        index.write()
        raise Interrupted(code) from None
    finally:
        if _in_main_thread():
            signal.signal(signal.SIGTERM, old_term)
    return index


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _stop(running: Mapping[str, tuple[subprocess.Popen, float, Any]], grace_s: float) -> None:
    """SIGINT to every run (each checkpoints and exits 130); SIGKILL to those still alive after ``grace_s``."""
    for proc, _, _ in running.values():
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for proc, _, _ in running.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
