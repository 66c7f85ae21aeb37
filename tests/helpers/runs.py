"""Real fedsim processes for the end-to-end tests: small runs, their records, a two-node Ray cluster."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_args(clients: int, rounds: int, per_round: int, *extra: str) -> list[str]:
    """``fedsim run`` arguments for a small, fast run (16 samples per client, 64 test samples)."""
    return [
        "run",
        "--clients",
        str(clients),
        "--rounds",
        str(rounds),
        "--clients-per-round",
        str(per_round),
        *SMALL,
        *extra,
    ]


CLIENT_FIELDS = {
    "client_id",
    "dropped",
    "distance_m",
    "gain_db",
    "bandwidth_hz",
    "rate_bps",
    "payload_bits",
    "num_samples",
    "compute_time_s",
    "upload_time_s",
    "train_loss",
    "train_wall_s",
}
"""Per-client fields every round record carries, simulated or deployed."""

SMALL = [
    "--set",
    "workload.samples_per_client=16",
    "--set",
    "workload.test_samples=64",
]


def run_fedsim(args: list[str], timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """The fedsim CLI in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


WALL_CLOCK_KEYS = ("sparsify_time_s", "solve_time_s")


def records_without_wall_clock(folder: Path) -> list[dict]:
    """rounds.jsonl without its wall-clock fields (names ending in wall_s, and the timers above)."""

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if not (k.endswith("wall_s") or k in WALL_CLOCK_KEYS)}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return [strip(json.loads(line)) for line in (folder / "rounds.jsonl").read_text().splitlines()]


SMALL_RUN = run_args(4, 2, 3, "--seed", "7", "--method", "fedsa")
"""The configuration of the shared ``small_run``: tests that must reproduce it use exactly this. Its
method, FedSA-LoRA, keeps client state (files per client and round, fedsim.core.client_state), so every
test that reproduces or resumes the run checks that state too; with 4 clients, 3 a round, on the
machine's few Ray actors, actors serve different clients in turn."""


@contextlib.contextmanager
def two_node_ray_cluster(host: str):
    """A Ray head and a second node on loopback address ``host``; yields ``host:port``.

    Both run as ``ray start --block`` processes of the test, in their own session folder, and
    are stopped by their process groups (never ``ray stop``, which would end every Ray on the
    machine, other users' runs included).
    """
    address = f"{host}:{_free_port(host)}"
    session_dir = tempfile.mkdtemp(prefix="fsray-")  # short: Ray's socket paths must stay under 108 bytes
    start = ["ray", "start", "--block", "--num-cpus", "1", "--disable-usage-stats", "--node-ip-address", host]
    nodes = []
    quiet = {"start_new_session": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    try:
        head = [*start, "--head", "--include-dashboard", "false", "--port", address.rpartition(":")[2]]
        nodes.append(subprocess.Popen([*head, "--temp-dir", session_dir], **quiet))
        _wait_for_nodes(address, 1)
        nodes.append(subprocess.Popen([*start, "--address", address], **quiet))
        _wait_for_nodes(address, 2)
        yield address
    finally:
        for node in reversed(nodes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        shutil.rmtree(session_dir, ignore_errors=True)


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_for_nodes(address: str, count: int, timeout_s: float = 180) -> None:
    code = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    )
    deadline = time.time() + timeout_s
    last = ""
    while time.time() < deadline:
        try:
            probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            continue
        last = probe.stdout.strip() + probe.stderr[-500:]
        if probe.stdout.strip().endswith(str(count)):
            return
        time.sleep(2)
    raise AssertionError(f"Ray cluster at {address} did not show {count} nodes: {last}")
