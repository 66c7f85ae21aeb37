"""Launch a fedsim run on Flower's Simulation Runtime (Ray), the one place that does so.

``flwr.simulation.run_simulation`` is deprecated in Flower 1.42 but is the in-process entry
point that lets the CLI own progress display and exit status; it is wrapped here so that
switching to another launcher is one change. Flower's own logs (including the deprecation
notice) are kept at ERROR-or-quieter unless ``verbose``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

from fedsim.core.checkpoint import Checkpoint
from fedsim.core.client_state import SIMULATION_ENV
from fedsim.core.config import Config
from fedsim.core.engine import Reporter, RunFailed
from fedsim.core.signals import Terminated, catch_sigterm
from fedsim.flower.server_app import serve
from fedsim.tsfa import RankPlan
from workloads.cache import TORCH_CACHE_ENV


def backend_config(cfg: Config, ray_dir: str | None = None) -> dict[str, Any]:
    """Flower's Ray backend settings: client resources and the arguments of ``ray.init``.

    A locally started Ray keeps its session (sockets, logs, spilled objects) in ``ray_dir``,
    which the caller removes afterwards, and is told its node address (``simulation.ray_node_ip``).
    """
    init_args: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False}
    if cfg.simulation.ray_address:
        init_args["address"] = cfg.simulation.ray_address
    else:
        slots = cfg.simulation.max_concurrent_clients or max(
            1, int((os.cpu_count() or 1) // cfg.simulation.cpus_per_client)
        )
        init_args["num_cpus"] = slots * cfg.simulation.cpus_per_client
        init_args["_node_ip_address"] = cfg.simulation.ray_node_ip
        if ray_dir:
            init_args["_temp_dir"] = ray_dir
    return {
        # a fraction of a GPU lets several ClientApp actors share one (Ray's accounting); Flower
        # passes client_resources to the actors' options: max_restarts makes Ray replace an actor
        # whose process died, so that a dead client costs its round, not the run.
        "client_resources": {
            "num_cpus": cfg.simulation.cpus_per_client,
            "num_gpus": cfg.simulation.gpus_per_client,
            "max_restarts": -1,
        },
        "init_args": init_args,
    }


def run_in_simulation(
    cfg: Config,
    out_dir: str | Path,
    reporter: Reporter | None = None,
    verbose: bool = False,
    resume: Checkpoint | None = None,
    plan: RankPlan | None = None,
) -> dict:
    """Run ``cfg`` through Flower's Simulation Runtime; returns the summary or raises RunFailed."""
    if not cfg.simulation.ray_address and ipaddress.ip_address(cfg.simulation.ray_node_ip).is_loopback:
        # Ray replaces a loopback node address with the host's routable one, and then its gRPC
        # servers listen on every interface; this switch (read when Ray is first imported, so set
        # before flwr.simulation imports it) keeps the given loopback address, and every server on it.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from fedsim.flower.client_app import app as client_app

    outcome: dict[str, Any] = {}
    ray_dir = reaper = None
    if not cfg.simulation.ray_address:  # a local Ray: its session folder where Ray's own would be
        ray_dir = tempfile.mkdtemp(prefix="fedsim-ray-", dir=os.environ.get("RAY_TMPDIR"))
        # cleans up Ray if this process is killed (see fedsim.flower.reaper)
        reaper = subprocess.Popen(
            [sys.executable, "-m", "fedsim.flower.reaper", str(os.getpid()), ray_dir],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,  # not the driver's: a pipeline reading them ends with the driver
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    server_app = ServerApp()
    nodes = _SimulatedNodes()

    @server_app.main()
    def _main(grid, context) -> None:
        try:
            outcome["summary"] = serve(nodes.watched(grid), cfg, out_dir, reporter, resume, plan, nodes=nodes.node_of)
        except RunFailed as e:
            outcome["error"] = e

    flwr_logger = logging.getLogger("flwr")
    old_level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.CRITICAL)
    backend = backend_config(cfg, ray_dir)
    old_sigterm, interrupted = None, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _start_ray(backend["init_args"])
            old_sigterm = catch_sigterm()
            with nodes.captured():
                run_simulation(
                    server_app=server_app,
                    client_app=client_app,
                    num_supernodes=cfg.run.clients,
                    backend_config=backend,
                    verbose_logging=verbose,
                )
    except Exception as e:  # the runtime itself died (Ray could not start, an actor pool failure, ...)
        if "error" not in outcome and "summary" not in outcome:
            raise RunFailed(f"simulation runtime failed: {type(e).__name__}: {e}") from e
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: Flower's worker threads may still be inside a Ray call, and any Ray
        # call after ray.shutdown() ends this process at once with exit 1. So Ray is left running
        # for the caller's immediate exit (the CLI's os._exit): the reaper, whose pipe closes with
        # this process, stops Ray's processes and removes the session folder; a Ray cluster ends
        # the job when its driver disconnects.
        interrupted = True
        raise
    finally:
        flwr_logger.setLevel(old_level)
        if old_sigterm is not None:
            signal.signal(signal.SIGTERM, old_sigterm)
        if not interrupted:
            _stop_ray(ray_dir, reaper)
    if "error" in outcome:
        raise outcome["error"]
    if "summary" not in outcome:
        raise RunFailed("the ServerApp ended without a result")
    if outcome["summary"]["status"] != "ok":
        raise RunFailed(outcome["summary"]["error"])
    return outcome["summary"]


class _SimulatedNodes:
    """The simulated SuperNodes' node ids by partition id, as Flower's Simulation Runtime registers them.

    The runtime gives node ``i`` of ``run.clients`` the node config ``partition-id = i`` and a
    random node id (``vce_api._register_nodes`` returns that mapping). Capturing it lets the
    ServerApp address client ``c`` directly instead of asking every node which partition it
    holds: discovery would cost one message per client, i.e. minutes for 10,000 clients. The
    ClientApp still checks that each message reaches the partition it names. With a Flower
    version that lacks the function, :meth:`node_of` returns None and discovery runs as under
    deployment.

    It also replaces the runtime's message injector (``vce_api.add_messages_to_queue``), which
    asks the LinkState for every registered node's messages every 0.1 s: with 10,000 nodes
    that is a core kept busy in the driver, and the clients' training on the other cores ran 2-4
    times slower. The replacement asks only for the nodes the ServerApp has messages in flight
    to (:meth:`watched` records them around each ``send_and_receive``), in the same way.
    """

    def __init__(self) -> None:
        self._mapping: dict[int, int] | None = None
        self._hooked = False
        self._done = threading.Event()  # registered, or the runtime ended without registering
        self._addressed: dict[int, int] = {}  # node id -> sends in flight to it
        self._lock = threading.Lock()

    def watched(self, grid):
        """``grid``, recording the destination nodes of each ``send_and_receive`` while it runs."""
        return _AddressRecordingGrid(grid, self)

    def sending(self, node_ids: set[int], delta: int) -> None:
        with self._lock:
            for n in node_ids:
                self._addressed[n] = self._addressed.get(n, 0) + delta
                if self._addressed[n] <= 0:
                    del self._addressed[n]

    def _inject(self, state, queue, nodes_mapping, f_stop) -> None:
        """Flower's injector, over the addressed nodes only: each node's next message into the queue."""
        while not f_stop.is_set():
            with self._lock:
                addressed = list(self._addressed)
            for node_id in addressed:
                for message in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(message)
            f_stop.wait(0.1)

    @contextlib.contextmanager
    def captured(self):
        try:
            from flwr.server.superlink.fleet.vce import vce_api

            original, injector = vce_api._register_nodes, vce_api.add_messages_to_queue
        except (ImportError, AttributeError):  # pragma: no cover - another Flower layout: discovery
            self._done.set()
            yield
            return

        def register(*args, **kwargs):
            nodes = original(*args, **kwargs)
            self._mapping = {int(p): int(n) for n, p in nodes.items()}
            self._done.set()
            return nodes

        vce_api._register_nodes, vce_api.add_messages_to_queue = register, self._inject
        self._hooked = True
        try:
            yield
        finally:
            vce_api._register_nodes, vce_api.add_messages_to_queue = original, injector
            self._done.set()

    def node_of(self) -> dict[int, int] | None:
        """Client id -> node id, once the runtime has registered the nodes (None: not captured)."""
        self._done.wait()
        if self._hooked and self._mapping is None:
            raise RunFailed("the simulation runtime ended before it registered its nodes")
        return self._mapping


class _AddressRecordingGrid:
    """A Grid whose ``send_and_receive`` tells :class:`_SimulatedNodes` which nodes it waits on."""

    def __init__(self, grid, nodes: _SimulatedNodes) -> None:
        self._grid, self._nodes = grid, nodes

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        node_ids = {m.metadata.dst_node_id for m in messages}
        self._nodes.sending(node_ids, +1)
        try:
            return self._grid.send_and_receive(messages, timeout=timeout)
        finally:
            self._nodes.sending(node_ids, -1)


RAY_START_ATTEMPTS = 3
"""Starts of a local Ray before giving up: its raylet must register within a fixed 30 s, which a
saturated machine can miss (a busy machine makes a run slower, never makes it fail)."""

FULL_RAY_HEAD_ENV = "FEDSIM_FULL_RAY_HEAD"
"""Set to 1 to start a local Ray with every service (the start-up benchmark's "before")."""


def _start_ray(init_args: dict[str, Any]) -> None:
    """Start (or connect to) Ray here, in the main thread, before Flower would.

    Flower's backend starts Ray only when it is not running yet, with the same arguments. Starting it
    here lets :func:`fedsim.core.signals.catch_sigterm` install its handler again after Ray's own ones:
    ``ray.init`` replaces the process's SIGTERM handler with one that exits with status 15 (and
    its core worker with one that dumps a C++ stack and aborts); a SIGTERM while ``ray.init`` runs
    becomes :class:`~fedsim.core.signals.Terminated` here, so the run stops as at any other moment.
    Actors get the driver's ``sys.path``, as under Flower's own start, and its torch compile cache
    folder (:func:`workloads.cache.keep_torch_cache_here`: not the temp folder).

    A local Ray (no ``address``) starts lean (see :func:`_lean_ray_head`) and passes ``sys.path``
    through the environment that its processes inherit instead of a runtime environment: the
    raylet prestarts one worker per CPU before any job exists, and workers of a job with a
    runtime environment cannot reuse them, so every ClientApp actor used to start a fresh Python
    worker (about 0.6 s of CPU each, on top of the idle ones). ``FEDSIM_FULL_RAY_HEAD=1`` restores
    the previous start (every service, runtime environment) for comparisons.
    """
    import ray

    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    if "address" in init_args or os.environ.get(FULL_RAY_HEAD_ENV) == "1":
        torch_cache = {TORCH_CACHE_ENV: os.environ[TORCH_CACHE_ENV]} if TORCH_CACHE_ENV in os.environ else {}
        env_vars = {"PYTHONPATH": pythonpath, SIMULATION_ENV: "1", **torch_cache}
        _ray_init(ray, runtime_env={"env_vars": env_vars}, **init_args)
        return
    # Read by the GCS, raylet and workers when they start; all are restored right after.
    # RAY_worker_niceness: Ray lowers its workers' priority by 15 below the driver's by default;
    # here the ClientApp actors do the run's work, so they keep this process's priority (on a
    # busy machine they would otherwise get a small share of the CPU).
    inherited = {
        "PYTHONPATH": pythonpath,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_worker_niceness": "0",
        SIMULATION_ENV: "1",
    }
    saved = {k: os.environ.get(k) for k in inherited}
    os.environ.update(inherited)
    try:
        for attempt in range(1, RAY_START_ATTEMPTS + 1):
            try:
                with _lean_ray_head():
                    _ray_init(ray, **init_args)
                break
            except Exception as e:  # Ray gives its raylet a fixed 30 s to register with the GCS
                if "timed out during startup" not in str(e) or attempt == RAY_START_ATTEMPTS:
                    raise
                ray.shutdown()  # a busy machine: start again rather than fail the run
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _ray_init(ray, **init_args: Any) -> None:
    """``ray.init`` with this process's SIGTERM handler kept, and a SIGTERM during it raised as Terminated.

    ``ray.init`` installs a handler that calls ``sys.exit(15)``: a ``timeout`` or ``docker stop``
    while Ray starts would unwind as an ordinary exit, print no resume line and end with status 15.
    """
    handler = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        ray.init(**init_args)
    except SystemExit as e:
        if e.code != signal.SIGTERM:
            raise
        raise Terminated() from None
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def _lean_ray_head():
    """While active, a locally started Ray head skips the services a local simulation never uses.

    ``ray.init`` (Ray 2.55) starts, besides the GCS and the raylet (which itself starts the
    dashboard agent and the runtime-env agent, which it needs): the autoscaler monitor (a fixed
    local node never scales), the log monitor (it forwards worker logs to the driver, and
    ``log_to_driver`` is off) and, even with ``include_dashboard=False``, an API-server process
    that then serves only usage statistics (disabled here). ``ray.init`` has no arguments for
    them, so the head's parameters are set where ``ray._private.node.Node`` reads them
    (``no_monitor``, ``include_log_monitor``, ``start_api_server``); if a Ray version moves
    those, the full head starts as before.
    """
    try:
        from ray._private import node as ray_node

        original_init = ray_node.Node.__init__
        original_api_server = ray_node.Node.start_api_server
    except (ImportError, AttributeError):  # pragma: no cover - another Ray layout: start as usual
        yield
        return

    def init(self, ray_params, *args, **kwargs):
        if kwargs.get("head", args[0] if args else False):
            ray_params.no_monitor = True
            ray_params.include_log_monitor = False
        original_init(self, ray_params, *args, **kwargs)

    def start_api_server(self, *args, **kwargs):
        self._webui_url = None

    ray_node.Node.__init__ = init
    ray_node.Node.start_api_server = start_api_server
    try:
        yield
    finally:
        ray_node.Node.__init__ = original_init
        ray_node.Node.start_api_server = original_api_server


def _stop_ray(ray_dir: str | None, reaper: subprocess.Popen | None) -> None:
    """After a run: stop Ray, remove its session folder and release the reaper."""
    _shutdown_ray()
    if ray_dir:
        shutil.rmtree(ray_dir, ignore_errors=True)
    if reaper is not None:
        reaper.stdin.close()  # nothing left for it to do
        with contextlib.suppress(subprocess.TimeoutExpired):
            reaper.wait(timeout=10)


def _shutdown_ray(grace_s: float = 5.0) -> None:
    """Stop Ray and wait for the processes it started here; kill those still alive after ``grace_s``.

    ``ray.shutdown()`` returns before its processes are gone: ClientApp actors (hundreds of MB
    each) otherwise outlive the run by 5-30 s on a busy machine.
    """
    import psutil
    import ray

    from fedsim.flower.reaper import end_processes, is_ray_process

    started = [p for p in psutil.Process().children(recursive=True) if is_ray_process(p)]
    if ray.is_initialized():
        ray.shutdown()
    end_processes(started, grace_s, terminate=False)  # ray.shutdown has asked them to stop
