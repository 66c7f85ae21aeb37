"""SIGTERM at any moment: exit 143 within seconds with one line, even with the main thread stuck in C."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from fedsim.app.cli_common import check_out_dir
from fedsim.core.results import LOCK

STUCK = textwrap.dedent(
    """
    from fedsim.core.signals import catch_sigterm, exit_soon_after_sigterm
    catch_sigterm()
    exit_soon_after_sigterm(lambda: "stuck in C, left anyway", grace_s=1.0)
    print("ready", flush=True)
    import ctypes
    # glibc's system() waits for its child in C and retries the wait after a signal: the main
    # thread is stuck there, as in a blocked ray.init, and no Python handler runs until it returns
    ctypes.CDLL(None).system(b"sleep 60 >/dev/null 2>&1")
    """
)


def test_a_main_thread_stuck_in_c_still_exits_143_soon_after_sigterm(tmp_path):
    err_file = tmp_path / "stderr"
    with err_file.open("w") as err:  # a file, not a pipe: the shell that system() starts holds the pipes
        proc = subprocess.Popen(
            [sys.executable, "-c", STUCK], stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
        )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        exit_s = time.monotonic() - t0
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the shell and its `sleep`
    assert proc.returncode == 143
    assert exit_s < 5.0
    assert err_file.read_text().strip() == "fedsim: stuck in C, left anyway"


ORPHANED = textwrap.dedent(
    """
    import threading, time
    from fedsim.core.signals import Terminated, catch_sigterm, exit_soon_after_sigterm, leave
    catch_sigterm()
    exit_soon_after_sigterm(lambda: "left anyway", grace_s=1.0)
    threading.Thread(target=threading.Event().wait).start()  # a ServerApp thread waiting on clients
    print("ready", flush=True)
    try:
        time.sleep(60)
    except Terminated:
        leave("terminated", 143)
    """
)


def test_sigterm_ends_the_process_when_its_parent_has_gone_and_its_streams_are_broken():
    """A parent that dies (and closes the pipes it read) while the run gets SIGTERM: saying the last
    line fails with a broken pipe, and the process must still end, not wait for ever on its own lock."""
    proc = subprocess.Popen(
        [sys.executable, "-c", ORPHANED],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.stdout.close()
        proc.stderr.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143


def test_a_folder_holding_only_the_lock_is_used_again_without_force(tmp_path):
    """What a run stopped before it wrote anything leaves behind."""
    (tmp_path / LOCK).write_text("12345\n")
    check_out_dir(tmp_path, force=False)  # no ConfigError
