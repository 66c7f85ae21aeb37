"""SIGTERM at any moment: stop as Ctrl-C does, exit 143 within seconds, leave nothing running.

``timeout``, Slurm and ``docker stop`` send SIGTERM, often to the whole process group. Python runs a
signal handler only between bytecodes of the main thread, so a main thread blocked in C (``ray.init``
waiting for a raylet that the same SIGTERM has just ended: 30 s) would not react in time. The
handler therefore has a second, immediate path: Python's C-level handler writes the signal number
to a wakeup file descriptor at once, and a watchdog thread reading it gives the main thread
``grace_s`` to unwind through the normal path (the resume line, exit 143) before it says the same
line itself and ends the process. A run's reaper (:mod:`fedsim.flower.reaper`) then stops Ray.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Callable


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, Slurm, ``docker stop``): stop as Ctrl-C does, but exit 143."""


_received = threading.Event()


def sigterm_received() -> bool:
    """Whether this process has received SIGTERM since :func:`catch_sigterm` (Typer reports
    any KeyboardInterrupt as exit 130, so the CLI asks here which one it was)."""
    return _received.is_set()


def catch_sigterm():
    """Turn SIGTERM into :class:`Terminated` in the main thread; returns the handler it replaced.

    Ray replaces it while ``ray.init`` runs (see :func:`fedsim.flower.simulation._start_ray`), which
    installs it again. Elsewhere than in the main thread it does nothing and returns None.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sigterm(signum, frame):
        _received.set()
        raise Terminated()

    return signal.signal(signal.SIGTERM, on_sigterm)


_wakeup: tuple[socket.socket, socket.socket] | None = None
"""The watchdog's socket pair, open for the life of the process once armed."""

_exiting = threading.Lock()
"""Held by whichever path ends the process after a signal, so its last line is said once."""


def leave(line: str, code: int) -> None:
    """Say ``line`` on stderr and end the process with ``code`` at once, once for the whole process.

    ``os._exit``: a ServerApp thread may still wait on clients and would hold a normal exit. When the
    watchdog is already ending the process, the caller waits for it. A stream that cannot be written
    (its reader has gone: a killed parent, a closed pipe) does not keep the process alive.
    """
    if not _exiting.acquire(blocking=False):
        threading.Event().wait()  # the other path is saying the line and exiting
    try:
        sys.stdout.flush()
        sys.stderr.write(f"fedsim: {line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # broken pipe, closed stream: the line has nowhere to go
        pass
    finally:
        os._exit(code)


def exit_soon_after_sigterm(last_words: Callable[[], str], grace_s: float = 1.5) -> None:
    """After a SIGTERM, end the process with exit 143 within ``grace_s`` even if the main thread is stuck.

    ``last_words()`` gives the line to print (it is called only if the main thread did not leave
    by itself). Call it from the main thread once; it keeps the SIGTERM handler that
    :func:`catch_sigterm` installed (a Python handler is what makes the interpreter write the wakeup fd).
    """
    global _wakeup
    if threading.current_thread() is not threading.main_thread() or _wakeup is not None:
        return
    reader, writer = _wakeup = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            data = reader.recv(64)
            if not data:
                return
            if signal.SIGTERM in data:
                threading.Event().wait(grace_s)
                leave(last_words(), 143)

    threading.Thread(target=watch, name="fedsim-sigterm-watchdog", daemon=True).start()
