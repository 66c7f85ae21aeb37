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


def test_a_folder_holding_only_the_lock_is_used_again_without_force(tmp_path):
    """What a run stopped before it wrote anything leaves behind."""
    (tmp_path / LOCK).write_text("12345\n")
    check_out_dir(tmp_path, force=False)  # no ConfigError
