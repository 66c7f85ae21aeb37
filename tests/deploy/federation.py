"""A Flower federation as local processes on 127.0.0.1: the docker-compose.yml topology without Docker.

One ``flower-superlink`` (TLS, SuperNode authentication, ``--isolation process``), one
``flower-superexec`` for the ServerApp, SuperNode keys registered with ``fedsim deploy register``,
and N ``flower-supernode`` processes (``--isolation subprocess``: each starts its own SuperExec).
Certificates and keys come from ``docker/certs.sh``. Every process gets its own ``FLWR_HOME`` (as
separate machines would) and its own session, so that a SuperNode can be killed with everything
it started, as a container would be.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# What flower-supernode logs once the SuperLink accepted its ActivateNode request
# (flwr/supernode/start_client_internal.py, after the connection is initialised).
ACTIVATED = re.compile(r"SuperNode ID: (\d+)")
FLOWER_EXIT = re.compile(r"Exit Code: (\d+)")  # what flwr_exit logs (the process itself exits with 1)
PORT_TAKEN = "address already in use"  # uvicorn's bind error: the process is started again on another port


def free_port() -> int:
    """A free port on 127.0.0.1, below the kernel's ephemeral port range where there is room.

    A port from the ephemeral range (what binding port 0 returns) is also what the kernel gives
    outgoing connections, so one chosen early can be taken before its server binds it (this
    happened on a busy machine). Outside that range only another server can take it; a process
    that still finds its port taken is started again on a new one (``PORT_TAKEN``).
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    for _ in range(50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", rng.randrange(10000, low) if low > 11000 else 0))
            except OSError:
                continue
            return s.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Federation:
    def __init__(self, root: Path, nodes: int = 3, profiles: dict[int, str] | None = None):
        self.root = root
        self.nodes = nodes
        self.profiles = profiles or {}
        self.certs = root / "certs"
        self.logs = root / "logs"
        self.port = free_port()
        self.node_ports = [free_port() for _ in range(nodes)]
        self.procs: dict[str, subprocess.Popen] = {}
        self.log_offsets: dict[str, int] = {}  # where each process's latest start begins in its log
        self.client_home = root / "flwr-cli"  # FLWR_HOME of the submitting user
        self.server_results = root / "server-results"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.server_results.mkdir(parents=True, exist_ok=True)

    # ---- processes -----------------------------------------------------------------------------

    def env(self, name: str) -> dict[str, str]:
        home = self.root / "homes" / name
        home.mkdir(parents=True, exist_ok=True)
        return {
            **os.environ,
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FEDSIM_RESULTS_ROOT": str(self.server_results),  # where the ServerApp may write
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }

    def spawn(self, name: str, args: list[str], cwd: Path | None = None) -> subprocess.Popen:
        path = self.logs / f"{name}.log"
        self.log_offsets[name] = path.stat().st_size if path.exists() else 0
        log = open(path, "ab")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd or self.root,
            env=self.env(name),
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill a process and everything it started (its session), as stopping a container does."""
        proc = self.procs.get(name)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.kill(name, signal.SIGTERM)

    # ---- the topology ----------------------------------------------------------------------------

    def start(self) -> Federation:
        subprocess.run(
            ["bash", str(REPO / "docker" / "certs.sh"), "--out", str(self.certs), "--nodes", str(self.nodes)],
            check=True,
            capture_output=True,
            timeout=120,
            env={**os.environ, "PYTHON": sys.executable},
        )
        c = self.certs
        for _ in range(5):
            if self._start_superlink():
                break
            self.port = free_port()
        else:
            raise AssertionError(f"no free port for the SuperLink\n{self.log_tail()}")
        self.spawn(
            "serverapp",
            [
                "flower-superexec",
                *("--runtime-api-address", f"127.0.0.1:{self.port}", "--root-certificates", str(c / "ca.crt")),
            ],
        )
        keys = [str(c / "public" / f"supernode-{i}.pub") for i in range(1, self.nodes + 1)]  # as `register` sees them
        reg = self.fedsim(
            ["deploy", "register", "--address", f"127.0.0.1:{self.port}", "--ca", str(c / "ca.crt"), "--wait", "60"]
            + keys,
            timeout=180,
        )
        assert reg.returncode == 0, reg.stderr[-2000:]
        for i in range(1, self.nodes + 1):
            self.start_node(i)
        for i in range(1, self.nodes + 1):  # the federation is ready once every SuperNode is activated
            for _ in range(5):
                if self.activated_node_id(i, timeout_s=180) is not None:
                    break
                assert PORT_TAKEN in self.latest_log(f"supernode-{i}").lower(), (
                    f"supernode-{i} exited\n{self.log_tail()}"
                )
                self.node_ports[i - 1] = free_port()
                self.start_node(i)
            else:
                raise AssertionError(f"no free port for supernode-{i}\n{self.log_tail()}")
        conn = self.fedsim(
            ["deploy", "connect", "test", "--address", f"127.0.0.1:{self.port}", "--ca", str(c / "ca.crt"), "--default"]
        )
        assert conn.returncode == 0, conn.stderr
        return self

    def _start_superlink(self) -> bool:
        """Start the SuperLink; False if its port was taken (it exited), True once it serves."""
        c = self.certs
        proc = self.spawn(
            "superlink",
            [
                "flower-superlink",
                *("--ssl-ca-certfile", str(c / "ca.crt"), "--ssl-certfile", str(c / "server.crt")),
                *("--ssl-keyfile", str(c / "server.key")),
                "--enable-supernode-auth",
                *("--isolation", "process"),
                "--disable-runtime-dependency-installation",
                *("--database", str(self.root / "superlink.db")),
                *("--host", "127.0.0.1", "--port", str(self.port)),
            ],
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            exited = proc.poll() is not None
            if "Uvicorn running on" in self.latest_log("superlink"):
                return True
            if exited:
                assert PORT_TAKEN in self.latest_log("superlink").lower(), f"the SuperLink exited\n{self.log_tail()}"
                return False
            time.sleep(0.2)
        raise AssertionError(f"the SuperLink did not start within 120 s\n{self.log_tail()}")

    def wait_for_log(self, name: str, text: str, proc: subprocess.Popen, timeout_s: float) -> None:
        """Wait until the latest start of process ``name`` has logged ``text`` (while ``proc`` runs)."""
        deadline = time.monotonic() + timeout_s
        while text not in self.latest_log(name):
            assert proc.poll() is None and time.monotonic() < deadline, (
                f"{name} never logged {text!r}\n{self.log_tail()}"
            )
            time.sleep(0.2)

    def restart_superlink(self) -> float:
        """SIGKILL the SuperLink (a crash) and start it again on the same port with the same
        ``--database``; returns the seconds until it serves again."""
        t0 = time.monotonic()
        self.kill("superlink")
        assert self._start_superlink(), f"the SuperLink's port {self.port} was taken after its restart"
        return time.monotonic() - t0

    def start_node(self, i: int) -> subprocess.Popen:
        node_config = f"partition-id={i - 1} num-partitions={self.nodes} {self.profiles.get(i, '')}".strip()
        return self.spawn(
            f"supernode-{i}",
            [
                "flower-supernode",
                *("--superlink", f"127.0.0.1:{self.port}", "--root-certificates", str(self.certs / "ca.crt")),
                *("--auth-supernode-private-key", str(self.certs / f"supernode-{i}")),
                *("--node-config", node_config),
                *("--isolation", "subprocess", "--port", str(self.node_ports[i - 1])),
            ],
        )

    def activated_node_id(self, i: int, timeout_s: float) -> int | None:
        """Wait until the latest start of SuperNode i is activated; its node id, or None if it exited.

        Decided by what the SuperNode itself reports (its "SuperNode ID: <id>" line, written only
        after the SuperLink accepted its ActivateNode request) or by its exit, never by how long it
        has been running: on a loaded machine a SuperNode can take longer than any fixed delay just
        to import Flower, and a refused activation only shows up after that.
        """
        name = f"supernode-{i}"
        proc = self.procs[name]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            exited = proc.poll() is not None  # read before the log, so an exit after activating still counts
            match = ACTIVATED.search(self.latest_log(name))
            if match:
                return int(match.group(1))
            if exited:
                return None
            time.sleep(0.2)
        raise AssertionError(f"{name} neither activated nor exited within {timeout_s:.0f} s\n{self.log_tail()}")

    def latest_log(self, name: str) -> str:
        """What the latest start of process ``name`` has logged so far."""
        with open(self.logs / f"{name}.log", "rb") as f:
            f.seek(self.log_offsets[name])
            return f.read().decode(errors="replace")

    def restart_node(self, i: int, timeout_s: float = 300) -> tuple[float, int, list[int]]:
        """Start SuperNode i again until the SuperLink activates it.

        Returns the seconds it took, the node id it was activated under and the Flower exit codes of
        the refused attempts (-1 where none was logged). A SuperNode killed without a goodbye stays
        "online" at the SuperLink until it has missed two heartbeats (HEARTBEAT_PATIENCE x 30 s after
        its last one); until then the SuperLink refuses to activate the same key again (HTTP 412,
        "Failed to activate SuperNode") and the new process ends with Flower's exit code 305
        (SUPERNODE_CONNECTION_ERROR; process exit status 1). It is started again, as ``restart:
        unless-stopped`` does in compose.
        """
        t0 = time.monotonic()
        refused: list[int] = []
        while (left := timeout_s - (time.monotonic() - t0)) > 0:
            self.start_node(i)
            node_id = self.activated_node_id(i, left)
            if node_id is not None:
                return time.monotonic() - t0, node_id, refused
            log = self.latest_log(f"supernode-{i}")
            if PORT_TAKEN in log.lower():  # its ClientAppIo port was taken meanwhile: not a refusal
                self.node_ports[i - 1] = free_port()
                continue
            code = FLOWER_EXIT.search(log)
            refused.append(int(code.group(1)) if code else -1)
            time.sleep(2)
        raise AssertionError(f"supernode-{i} was not activated within {timeout_s} s (exit codes {refused})")

    def fedsim(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "fedsim", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env={**self.env("flwr-cli"), "FLWR_HOME": str(self.client_home)},
        )

    def fedsim_flwr(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """Flower's CLI as the submitting user (``FLWR_HOME`` with the ``test`` connection)."""
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env={**self.env("flwr-cli"), "FLWR_HOME": str(self.client_home), "COLUMNS": "200"},
        )

    def submit(self, args: list[str], out: Path, timeout: float = 600, quiet: bool = True) -> subprocess.Popen:
        """``fedsim deploy run`` in the background (the caller reads stdout and waits); stderr in logs/."""
        name = f"deploy-{out.name}"
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedsim", "deploy", "run", "--superlink", "test"]
            + ["--fetch", "local", "--remote-root", str(self.server_results), "--out", str(out)]
            + ["--timeout", str(timeout), *(["--quiet"] if quiet else []), *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=self.root,
            env={**self.env("flwr-cli"), "FLWR_HOME": str(self.client_home)},
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log_tail(self, n: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-n:]}" for p in sorted(self.logs.glob("*.log")))
