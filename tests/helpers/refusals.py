"""Bad input as a user types it: one real ``fedsim`` process per command line, checked for the promise.

The promise (docs/reliability.md): exit 2, one line starting ``fedsim: ``, no traceback, nothing
written, and little CPU. A refusal's CPU time is the work it does and stays put on a busy
machine, where wall time can triple; the wall limit only catches a refusal that waits (on Ray,
a lock, the network).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CPU_LIMIT_S = 15.0
WALL_LIMIT_S = 90.0
KILL_AFTER_S = 120.0

SAMPLE_EVERY = 12
CAMPAIGN = [pytest.param(SAMPLE_EVERY, id="sample"), pytest.param(1, id="all", marks=pytest.mark.slow)]
"""A refusal campaign's two tiers, as ``every``: the fast tier runs every 12th case
(``cases[::12]``, spread over the campaign's families) as real processes; the slow tier runs every
case in this process (:func:`run_campaign`)."""


@dataclass(frozen=True)
class Refusal:
    """What one bad command line did."""

    name: str
    args: tuple[str, ...]
    out: Path | None
    code: int
    text: str
    wall_s: float
    cpu_s: float

    def problems(self, cpu_limit_s: float = CPU_LIMIT_S) -> list[str]:
        """Every way this refusal broke the promise (empty when it kept it)."""
        lines = [line for line in self.text.splitlines() if line.strip()]
        why = []
        if self.code != 2:
            why.append(f"exit {self.code}")
        if len(lines) != 1 or not lines[0].startswith("fedsim: "):
            why.append(f"{len(lines)} lines")
        if "Traceback" in self.text:
            why.append("traceback")
        if self.out is not None and self.out.exists():
            why.append("left a folder")
        if self.cpu_s > cpu_limit_s or self.wall_s > WALL_LIMIT_S:
            why.append(f"{self.cpu_s:.1f} s CPU, {self.wall_s:.1f} s wall")
        return why


def fedsim_argv(args: list[str], out: Path | None) -> list[str]:
    """``python -m fedsim`` with ``args``; a bare option list means ``run``; ``--out`` added for run/sweep."""
    commands = {"run", "sweep", "report", "plan", "deploy", "channels", "config", "workloads", "methods"}
    command = list(args) if args and args[0] in commands else ["run", *args]
    if out is not None and command[0] in ("run", "sweep") and "--out" not in command and "--resume" not in command:
        command += ["--out", str(out)]
    return [sys.executable, "-m", "fedsim", *command]


def run_case(
    args: list[str], out: Path | None, cwd: Path, env: dict[str, str] | None = None
) -> tuple[int, str, float, float]:
    """Exit code, output, wall seconds and the process's own CPU seconds (user + system)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with tempfile.TemporaryFile(mode="w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            fedsim_argv(args, out), stdout=log, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=full_env
        )
        while True:  # wait4 reaps the process and reads its own usage (Popen.wait would reap it first)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > KILL_AFTER_S:
                proc.kill()
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall_s = time.perf_counter() - t0
        log.seek(0)
        return proc.returncode, log.read(), wall_s, usage.ru_utime + usage.ru_stime


def run_cases(
    cases: Iterable[tuple[str, list[str]]],
    root: Path,
    env: dict[str, str] | None = None,
    workers: int = 2,
    runner: Callable[..., tuple[int, str, float, float]] | None = None,
) -> list[Refusal]:
    """Run every case, each with its own ``--out`` under ``root``: as a real process by default
    (:func:`run_case`, ``workers`` at a time), or with ``runner`` one after another in the calling
    thread (:func:`run_in_process` installs signal handlers, which only the main thread may)."""
    work = root / "cwd"
    work.mkdir(exist_ok=True)
    cases = list(cases)

    def one(i_case) -> Refusal:
        i, (name, args) = i_case
        out = root / f"out{i}"
        return Refusal(name, tuple(args), out, *(runner or run_case)(list(args), out, work, env))

    if runner is not None:
        return [one(i_case) for i_case in enumerate(cases)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, enumerate(cases)))


def run_in_process(args: list[str], out: Path | None, cwd: Path, env: dict[str, str] | None = None):
    """:func:`run_case` in this process: ``fedsim``'s ``main`` with the same arguments, folder and
    environment; the wall and CPU seconds are this thread's. A command that is not refused would
    start a run or a sweep: that fails the case (exit 99) instead of running it."""
    import contextlib
    import io
    from unittest import mock

    from fedsim.app.cli import main

    argv = fedsim_argv(args, out)[3:]
    text = io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    not_refused = mock.Mock(side_effect=SystemExit(99))
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        os.environ.update(env or {})
        os.chdir(cwd)
        with (
            mock.patch("fedsim.flower.simulation.run_in_simulation", not_refused),
            mock.patch("fedsim.app.sweep.execute", not_refused),
            contextlib.redirect_stdout(text),
            contextlib.redirect_stderr(text),
        ):
            try:
                main(argv)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return code, text.getvalue(), time.perf_counter() - t0, time.process_time() - c0


def run_campaign(
    cases: list[tuple[str, list[str]]], every: int, root: Path, env: dict[str, str] | None = None
) -> list[Refusal]:
    """A campaign's tier (see :data:`CAMPAIGN`): ``every`` > 1 runs ``cases[::every]`` as real
    processes (:func:`run_cases`: the exit code, the one line and the CPU of a fresh interpreter);
    ``every`` = 1 runs every case in this process (the same promise but the process's own CPU, at
    a fraction of the time: no interpreter and imports per case)."""
    if every > 1:
        return run_cases(cases[::every], root, env)
    return run_cases(cases, root, env, runner=run_in_process)


def problems_of(results: Iterable[Refusal], cpu_limit_s: float = CPU_LIMIT_S) -> list[str]:
    """One line per refusal that broke the promise."""
    return [
        f"{r.name} {list(r.args)}: {', '.join(why)}: {r.text.strip()[:200]}"
        for r in results
        if (why := r.problems(cpu_limit_s))
    ]


def snapshot(root: Path) -> list[str]:
    """Every path under ``root``, relative and sorted (to show that nothing was written)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))
