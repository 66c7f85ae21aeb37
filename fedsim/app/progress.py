"""Live progress (round i/N, metric, round latency, bits, clients answered, ETA) and the final summary table.

:class:`RoundText` words a round's line for both ``fedsim run`` (a live bar) and ``fedsim deploy run``
(one printed line per round).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from fedsim.core.config import Config
from fedsim.core.results import metric_higher_is_better


class RoundText:
    """The words of one round's progress line, shared by ``fedsim run`` and ``fedsim deploy run``.

    Fed the round records in order (the ``"round"`` events of :mod:`fedsim.core.engine`, or the
    lines of ``rounds.jsonl``: the same dicts), it keeps what a line shows beyond its own round: the
    best primary metric so far, in the metric's direction, and the cumulative uplink bits.

    A line reads ``round 2/5 | accuracy 0.8125 (best 0.8250, higher is better) | T 1.234 s |
    12.3 Mbit | 2/3 clients answered, 1 failed (client 1: Node Unavailable)``.
    """

    def __init__(self, rounds: int, primary: str = "metric", higher_is_better: bool = True):
        self.rounds = rounds
        self.primary = primary
        self.higher_is_better = higher_is_better
        self.best: float | None = None
        self.cum_bits = 0

    @classmethod
    def for_config(cls, cfg: Config) -> RoundText:
        """The line of ``cfg``'s run: its rounds, its workload's primary metric and direction."""
        try:
            from workloads import get_workload_class

            primary = get_workload_class(cfg.workload.name).primary_metric
        except Exception:  # an uninstalled plug-in workload: the lines still show the value
            primary = "metric"
        return cls(cfg.run.rounds, primary, metric_higher_is_better(cfg.workload.name))

    def add(self, record: dict[str, Any]) -> None:
        """Count one round's record (in round order) into the best metric and the cumulative bits."""
        self.cum_bits += record["uplink_bits_total"]
        value = (record["metrics"] or {}).get("primary_metric")  # None: not evaluated (run.eval_every)
        if record.get("status", "ok") == "ok" and isinstance(value, int | float) and math.isfinite(value):
            better = max if self.higher_is_better else min
            self.best = value if self.best is None else better(self.best, value)

    def metric_text(self, value: float | None) -> str:
        """``"accuracy 0.8125 (best 0.8250, higher is better)"``: the round's value, the best so far, the direction."""
        shown = f"{value:.4f}" if isinstance(value, int | float) else "-"
        best = f"best {self.best:.4f}, " if self.best is not None else ""
        return f"{self.primary} {shown} ({best}{'higher' if self.higher_is_better else 'lower'} is better)"

    @staticmethod
    def clients_text(record: dict[str, Any]) -> str:
        """``"3/3 clients answered"``, or with the failures: ``"2/3 clients answered, 1 failed (client 1: ...)"``."""
        clients = record.get("clients") or []
        sampled = len(clients)
        answered = sum(1 for c in clients if not c["dropped"])
        text = f"{answered}/{sampled} clients answered"
        failures = record.get("failures") or []
        if failures:
            first = failures[0]
            reason = " ".join(str(first["reason"]).split())
            reason = reason if len(reason) <= 80 else reason[:77] + "..."
            more = f" and {len(failures) - 1} more" if len(failures) > 1 else ""
            text += f", {len(failures)} failed (client {first['client_id']}: {reason}{more})"
        return text

    def line(self, record: dict[str, Any]) -> str:
        """Count ``record`` in (:meth:`add`) and return its progress line."""
        self.add(record)
        status = record.get("status", "ok")
        return " | ".join(
            [
                f"round {record['round']}/{self.rounds}" + ("" if status == "ok" else f" {status.upper()}"),
                self.metric_text((record["metrics"] or {}).get("primary_metric")),
                f"T {record['round_latency_s']:.3f} s",
                f"{self.cum_bits / 1e6:.1f} Mbit",
                self.clients_text(record),
            ]
        )


class ProgressReporter:
    """A ``Reporter`` for :func:`fedsim.flower.server_app.serve`, safe to call from the server thread."""

    def __init__(self, cfg: Config, quiet: bool = False, console: Console | None = None):
        self.cfg = cfg
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self.text = RoundText(cfg.run.rounds, "metric", metric_higher_is_better(cfg.workload.name))
        self._lock = threading.Lock()
        self._progress = Progress(
            TextColumn("round {task.completed}/{task.total}"),
            BarColumn(bar_width=12),
            TextColumn(
                "{task.fields[metric]} | T {task.fields[latency]} | {task.fields[bits]} | {task.fields[clients]} | ETA"
            ),
            TimeRemainingColumn(),
            console=self.console,
            disable=quiet,
        )
        self._task = self._progress.add_task(
            "run", total=cfg.run.rounds, metric="-", latency="-", bits="-", clients="-", start=False
        )

    def __enter__(self) -> ProgressReporter:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        with self._lock:
            if event == "start":
                self.text.primary = data["primary_metric"]
                self._progress.start_task(self._task)
            elif event == "round":
                self.text.add(data)
                self._progress.update(
                    self._task,
                    completed=data["round"],
                    metric=self.metric_text((data["metrics"] or {}).get("primary_metric")),
                    latency=f"{data['round_latency_s']:.3f} s",
                    bits=f"{self.text.cum_bits / 1e6:.1f} Mbit",
                    clients=self.text.clients_text(data),
                )

    @property
    def best(self) -> float | None:
        """The best primary metric so far, in the metric's direction."""
        return self.text.best

    def metric_text(self, value: float | None) -> str:
        """``"accuracy 0.8125 (best 0.8250, higher is better)"``: see :meth:`RoundText.metric_text`."""
        return self.text.metric_text(value)

    def print_summary(self, summary: dict[str, Any], out_dir: Path, wall_s: float) -> None:
        table = Table(title="fedsim run", show_header=False)
        table.add_row("workload / method", f"{summary['workload']} / {summary['method']}")
        table.add_row("rounds", f"{summary['rounds_completed']}/{summary['rounds_planned']}")
        for key, value in summary["final_metrics"].items():
            if key != "primary_metric":
                table.add_row(f"final {key}", f"{value:.4f}" if isinstance(value, int | float) else str(value))
        if summary.get("best_round") is not None:
            direction = "higher" if summary.get("higher_is_better", True) else "lower"
            table.add_row(
                f"best {summary['primary_metric']}",
                f"{summary['best_metric']:.4f} (round {summary['best_round']}, {direction} is better)",
            )
        table.add_row("cumulative uplink", f"{summary['cumulative_uplink_bits'] / 1e6:.2f} Mbit")
        table.add_row("mean round latency", f"{summary['mean_round_latency_s']:.3f} s")
        table.add_row("simulated time", f"{summary['total_latency_s']:.2f} s")
        table.add_row("wall time", f"{wall_s:.1f} s")
        table.add_row("results", str(out_dir))
        Console().print(table)


class SweepDisplay:
    """The progress of a sweep over its runs: done / running / failed, elapsed and ETA; one line per ended run.

    A ``display(event, data)`` for :func:`fedsim.app.sweep.execute`.
    """

    def __init__(self, name: str, folder: Path, quiet: bool = False, console: Console | None = None):
        self.name, self.folder, self.quiet = name, folder, quiet
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("sweep {task.description}"),
            BarColumn(bar_width=16),
            TextColumn("{task.completed}/{task.total} done | {task.fields[running]} running | "),
            TextColumn("{task.fields[failed]} failed | ETA {task.fields[eta]}"),
            console=self.console,
            disable=quiet,
        )
        self._task = self._progress.add_task(name, total=1, running=0, failed=0, eta="-")

    def __enter__(self) -> SweepDisplay:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "start":
            self._progress.update(self._task, total=data["total"], completed=data["skipped"])
            if not self.quiet:
                self.console.print(
                    f"sweep {self.name}: {data['total']} runs ({data['skipped']} already finished), "
                    f"{data['jobs']} at a time, in {self.folder}"
                )
        elif event == "run" and not self.quiet:
            if data["status"] == "done":
                self.console.print(f"  done    {data['name']} ({data['wall_s']:.0f} s)")
            else:
                self.console.print(f"  {data['status']:<7} {data['name']}: {data['error']}")
        elif event == "tick":
            c, eta = data["counts"], data["eta_s"]
            self._progress.update(
                self._task,
                completed=c["done"],
                running=c["running"],
                failed=c["failed"],
                eta="-" if eta is None else f"{eta / 60:.0f} min" if eta >= 120 else f"{eta:.0f} s",
            )

    def print_summary(self, index: Any) -> None:
        table = Table(title=f"fedsim sweep {self.name}")
        for col in ("run", "status", "wall (s)"):
            table.add_column(col)
        for row in index.rows.values():
            wall = "-" if row.wall_s is None else f"{row.wall_s:.0f}"
            table.add_row(row.name, row.status + (" (skipped)" if row.action == "skip" else ""), wall)
        Console().print(table)
        Console().print(f"index: {self.folder / 'sweep.json'}; report with: fedsim report {self.folder}")
