"""Crash, interrupt and resume; client faults; determinism under parallelism (slow: Flower + Ray)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fedsim.core.seeding import rng, sample_clients
from tests.helpers.runs import SMALL_RUN, records_without_wall_clock, run_args, run_fedsim

pytestmark = pytest.mark.slow


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fedsim", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_rounds(folder, n: int, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    path = folder / "rounds.jsonl"
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    raise AssertionError(f"no {n} rounds in {timeout_s} s")


def test_sigkill_mid_round_then_resume_matches_uninterrupted_client_state_included(small_run, tmp_path):
    """The shared small run again, its CLI, Ray workers and services SIGKILLed mid-round 2, then
    resumed: the records equal those of the uninterrupted run, and a second resume is refused. Its
    method, FedSA-LoRA, keeps client state on disk, which the resumed round reads. (Every method's
    resume, error feedback included, is checked in process by tests/test_engine.py.)"""
    out = tmp_path / "killed"
    proc = start([*SMALL_RUN, "--out", str(out), "--quiet"])
    try:
        wait_for_rounds(out, 1, proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert len((out / "rounds.jsonl").read_text().splitlines()) == 1, "killed after the last round"
    resumed = run_fedsim(["run", "--resume", str(out), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert records_without_wall_clock(out) == records_without_wall_clock(small_run)
    kept = {
        f: sorted(p.relative_to(f) for p in (f / "client_state").glob("client-*/round-*")) for f in (out, small_run)
    }
    assert kept[out] == kept[small_run] and kept[out], kept
    again = run_fedsim(["run", "--resume", str(out)])
    assert again.returncode == 2 and "finished" in again.stderr


def process_tree(pid: int) -> list:
    """``pid`` and its descendants (Ray's GCS, raylet, agents and ClientApp actors) as psutil processes."""
    import psutil

    return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]


def listening_addresses(procs: list) -> set[str]:
    """The local addresses on which ``procs`` accept TCP connections."""
    import psutil

    pids = {p.pid for p in procs}
    return {c.laddr.ip for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.pid in pids}


def test_sigterm_mid_round_saves_and_exits_then_resume_refuses_other_config(tmp_path):
    """SIGTERM (``timeout``, ``docker stop``, a sweep's stop) stops cleanly with the resume line; while
    running, every server the run started listens on loopback only; afterwards no Ray process is left
    and its session folder is gone. (SIGTERM becomes Ctrl-C's KeyboardInterrupt at once, so Ctrl-C takes
    the same path from there; a sweep interrupted with Ctrl-C, in test_sweep_e2e, stops its run mid-round.)"""
    sig, code = signal.SIGTERM, 143
    import tempfile

    import psutil

    out = tmp_path / "interrupted"
    ray_tmp = tempfile.mkdtemp(prefix="t", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsim", *run_args(4, 6, 2, "--out", str(out))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "RAY_TMPDIR": ray_tmp},
    )
    try:
        wait_for_rounds(out, 1, proc)
        tree = process_tree(proc.pid)
        addresses = listening_addresses(tree)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert addresses and all(a in ("127.0.0.1", "::ffff:127.0.0.1") for a in addresses), addresses
    _, alive = psutil.wait_procs(tree[1:], timeout=10)  # Ray's processes end with the run
    assert not alive, [p.name() for p in alive]
    assert proc.returncode == code, err[-2000:]
    assert f"resume with: fedsim run --resume {out}" in err.strip().splitlines()[-1]
    assert "SIGTERM received" not in err and "Traceback" not in err
    assert os.listdir(ray_tmp) == []  # the run's Ray session folder was removed
    os.rmdir(ray_tmp)
    done = json.loads((out / "checkpoint" / "state.json").read_text())["round"]
    assert done >= 1 and len((out / "rounds.jsonl").read_text().splitlines()) >= done
    other = run_fedsim(["run", "--resume", str(out), "--set", "train.lr=0.1"])
    assert other.returncode == 2 and "train.lr" in other.stderr


def test_corrupted_checkpoint_is_refused(small_run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(small_run, out)
    (out / "summary.json").unlink()
    adapter = next((out / "checkpoint").glob("adapter-*.safetensors"))
    adapter.write_bytes(adapter.read_bytes()[:-8] + b"garbage!")
    proc = run_fedsim(["run", "--resume", str(out)])
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "corrupt" in proc.stderr


def test_same_seed_same_records_one_client_at_a_time_on_a_saturated_machine(small_run, tmp_path):
    """The shared small run again with the same seed, one client at a time instead of two, while busy
    loops hold every core: it completes, slower, with the same records (wall clock aside). One run
    shows all three: same seed and config, any concurrency, any load give the same records."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(2, os.cpu_count() or 2))]
    try:
        out = tmp_path / "busy"
        args = [*SMALL_RUN, "--out", str(out), "--quiet", "--set", "simulation.max_concurrent_clients=1"]
        proc = run_fedsim(args, timeout=1800)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert records_without_wall_clock(out) == records_without_wall_clock(small_run)


def run_with_crashes(out, seed, clients, per_round, rounds, p, *extra):
    """A run with injected crashes (and one survivor enough); returns its records and who crashed."""
    args = ["--seed", str(seed), "--out", str(out), "--quiet", "--set", f"faults.client_crash_prob={p}"]
    proc = run_fedsim(run_args(clients, rounds, per_round, *args, "--set", "run.min_clients_per_round=1", *extra))
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert len(records) == rounds
    crashed = {}
    for r in records:
        sampled = sample_clients(seed, r["round"], clients, per_round)
        crashed[r["round"]] = [c for c in sampled if rng(seed, r["round"], c, "fault-crash").random() < p]
        assert [f["client_id"] for f in r["failures"]] == crashed[r["round"]]
        assert [c["client_id"] for c in r["clients"] if c["dropped"]] == crashed[r["round"]]  # a record each
        assert [c["client_id"] for c in r["clients"] if not c["dropped"]] == [
            c for c in sampled if c not in crashed[r["round"]]
        ]
        assert r["status"] == "ok"
    assert any(crashed.values()), "the seed should inject at least one crash"
    return records, crashed


def test_a_client_process_that_dies_costs_its_round_not_the_run(tmp_path):
    """faults.client_crash_mode=exit: the process ends with os._exit; Ray replaces the actor. The
    crashed clients are recorded and the survivors aggregated. (The exception mode's failures are
    drawn and recorded the same way by the client half, tests/test_engine.py; its transport through
    Flower is in tests/test_e2e.py.)"""
    records, crashed = run_with_crashes(tmp_path / "exit", 1, 4, 2, 3, 0.3, "--set", "faults.client_crash_mode=exit")
    assert all("process died" in f["reason"] for r in records for f in r["failures"])
    for r in records:
        assert r["uplink_bits_total"] == sum(c["payload_bits"] for c in r["clients"] if not c["dropped"])
    died = [c for ids in crashed.values() for c in ids]
    later = [c["client_id"] for r in records[1:] for c in r["clients"] if not c["dropped"]]
    assert any(c in later for c in died), "a client whose process died takes part again later"


def test_a_second_writer_of_a_results_folder_is_refused(small_run, tmp_path):
    """Two runs on one folder would interleave their records: the second is refused (exit 2, naming
    the holder), and a lock left by a killed run does not block a later resume."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(small_run, out)
    (out / "summary.json").unlink()  # an unfinished run, as if killed
    before = (out / "rounds.jsonl").read_text()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from fedsim.core.results import FolderLock; "
            f"lock = FolderLock({str(out)!r}); lock.acquire(); print('locked', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = run_fedsim(["run", "--resume", str(out), "--force"])
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"pid {holder.pid}" in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert (out / "rounds.jsonl").read_text() == before
    finally:
        holder.kill()  # as SIGKILL: the kernel drops its lock
        holder.wait()
    resumed = run_fedsim(["run", "--resume", str(out), "--force", "--quiet"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert records_without_wall_clock(out) == records_without_wall_clock(small_run)


def test_driver_killed_alone_leaves_no_ray_process_or_folder(tmp_path):
    """SIGKILL of the fedsim process only (not its group): its watcher ends Ray's services and
    actors and removes the session folder, instead of leaving them for minutes."""
    import tempfile

    import psutil

    out = tmp_path / "killed"
    ray_tmp = tempfile.mkdtemp(prefix="t", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsim", *run_args(4, 6, 2, "--out", str(out), "--quiet")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_TMPDIR": ray_tmp},
    )
    try:
        wait_for_rounds(out, 1, proc)
        tree = process_tree(proc.pid)[1:]  # Ray's processes and the watcher
        proc.kill()
        proc.wait(timeout=60)
        _, alive = psutil.wait_procs(tree, timeout=60)
        assert not alive, [p.name() for p in alive]
        deadline = time.monotonic() + 30
        while os.listdir(ray_tmp) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert os.listdir(ray_tmp) == []
    finally:
        if proc.poll() is None:
            proc.kill()
    os.rmdir(ray_tmp)


@pytest.mark.parametrize(
    "moment, to_group",
    [("checks", False), ("ray-starting", True), ("ray-starting", False), ("ray-started", False)],
    ids=["during-checks-driver", "ray-starting-group", "ray-starting-driver", "ray-started-driver"],
)
def test_sigterm_at_any_moment_exits_143_at_once_and_leaves_nothing(moment, to_group, tmp_path):
    """SIGTERM before Ray, while ``ray.init`` runs, or just after, to the driver alone or to its
    process group (as ``timeout`` and ``docker stop`` send it): exit 143 within 5 s with one line, no
    process of the run alive 5 s later, and a folder that the same command can use again."""
    import glob
    import tempfile

    import psutil

    from fedsim.app.cli_common import check_out_dir

    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="t", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsim", *run_args(4, 2, 2, "--out", str(out))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "RAY_TMPDIR": ray_tmp},
    )
    try:
        deadline = time.monotonic() + 300
        if moment == "checks":
            time.sleep(2.0)  # the CLI has started: it is importing and checking the configuration
        else:
            while not glob.glob(os.path.join(ray_tmp, "fedsim-ray-*", "session_*")):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.05)
            time.sleep(2.0 if moment == "ray-starting" else 0)
            if moment == "ray-started":  # the raylet is up: ray.init has returned or is about to
                while not glob.glob(os.path.join(ray_tmp, "fedsim-ray-*", "session_*", "sockets", "raylet")):
                    assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                    time.sleep(0.05)
        tree = process_tree(proc.pid)
        t0 = time.monotonic()
        if to_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        exit_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, (proc.returncode, err[-2000:])
    assert exit_s <= 5.0, exit_s
    lines = [line for line in err.splitlines() if line.strip()]  # the progress line may come first
    assert lines and lines[-1].startswith("fedsim: ") and "Traceback" not in err, err[-2000:]
    assert sum(line.startswith("fedsim: ") for line in lines) == 1, err[-2000:]
    time.sleep(5.0)
    alive = [p for p in tree[1:] if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    alive += [p for p in psutil.process_iter(["cmdline"]) if any(ray_tmp in c for c in p.info["cmdline"] or ())]
    assert not alive, [" ".join(p.cmdline())[:200] for p in alive]
    if out.exists() and not (out / "config.toml").exists():
        assert {p.name for p in out.iterdir()} <= {".fedsim.lock"}
        check_out_dir(out, force=False)  # the same command may use it again, without --force
    deadline = time.monotonic() + 30
    while os.listdir(ray_tmp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert os.listdir(ray_tmp) == []
    os.rmdir(ray_tmp)
