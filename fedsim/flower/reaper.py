"""Clean up after a run whose driver was killed: ``python -m fedsim.flower.reaper DRIVER_PID RAY_DIR``.

A locally started Ray keeps every process's sockets and logs under the run's private session
folder ``RAY_DIR``, so each of its services names that folder on its command line. The run starts
this watcher with a pipe on its standard input; when the driver ends in any way (SIGKILL
included) the pipe closes, and the watcher kills the driver's Ray processes (GCS, raylet,
agents, ClientApp actors), then removes the folder. After a normal end it finds nothing to do.
Without it, Ray's agents and actors outlive a killed driver by a minute or more.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import sys

import psutil


def is_ray_process(p: psutil.Process) -> bool:
    """A Ray service (GCS, raylet, dashboard, agents, monitors) or worker (``ray::...``).

    An agent still starting (before it sets its title ``ray::...``) is ``python -u .../ray/...py``:
    the program is the third word.
    """
    try:
        return p.name().startswith("ray::") or any("/ray/" in part for part in p.cmdline()[:3])
    except psutil.Error:
        return False


def ray_processes(ray_dir: str, driver: psutil.Process | None = None) -> dict[int, psutil.Process]:
    """The processes whose command line names ``ray_dir`` and ``driver``'s Ray descendants, with all theirs."""
    roots = [driver] if driver is not None else []
    for p in psutil.process_iter(["cmdline"]):
        if p.pid != os.getpid() and any(ray_dir in part for part in p.info["cmdline"] or ()):
            roots.append(p)
    found: dict[int, psutil.Process] = {}
    for root in roots:
        with contextlib.suppress(psutil.Error):
            for q in (root, *root.children(recursive=True)):
                if q.pid not in (os.getpid(), driver and driver.pid) and is_ray_process(q):
                    found[q.pid] = q
    return found


def end_processes(procs: list[psutil.Process], grace_s: float = 3.0, terminate: bool = True) -> None:
    """Let ``procs`` exit (after SIGTERM when ``terminate``) for ``grace_s``, then SIGKILL the rest.

    Only processes still running as the same process count (psutil compares creation times, so a
    reused pid is never touched).
    """
    alive = [p for p in procs if p.is_running()]
    if terminate:
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.terminate()
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)


REAP_PASSES = 5
"""Scans for the run's Ray processes after the driver has gone, until one finds none alive."""


def watch(driver_pid: int, ray_dir: str, every_s: float = 1.0) -> None:
    """Until standard input closes, keep a list of the driver's Ray processes; then reap them.

    The list is kept while the driver lives because its children are re-parented when it dies,
    and a ClientApp actor's command line (``ray::ClientAppActor``) does not name ``ray_dir``.
    """
    driver = psutil.Process(driver_pid)
    known: dict[int, psutil.Process] = {}
    while not select.select([sys.stdin], [], [], every_s)[0]:
        known.update(ray_processes(ray_dir, driver))
    sys.stdin.read()
    for _ in range(REAP_PASSES):  # a raylet killed while starting its agents leaves them to the next pass
        known.update(ray_processes(ray_dir))
        alive = [p for p in known.values() if p.is_running()]
        if not alive:
            break
        end_processes(alive, grace_s=1.0)  # the run is over: nothing of theirs to save
        known = {}
    shutil.rmtree(ray_dir, ignore_errors=True)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
