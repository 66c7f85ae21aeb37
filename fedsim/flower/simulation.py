"""Launch a fedsim run on Flower's Simulation Runtime (Ray), the one place that does so.

``flwr.simulation.run_simulation`` is deprecated in Flower 1.42 but is the in-process entry
point that lets the CLI own progress display and exit status; it is wrapped here so that
switching to another launcher is one change. Flower's own logs (including the deprecation
notice) are kept at ERROR-or-quieter unless ``verbose``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from fedsim.checkpoint import Checkpoint
from fedsim.config import Config
from fedsim.flower.server_app import Reporter, RunFailed, serve
from fedsim.tsfa import RankPlan


def backend_config(cfg: Config) -> dict[str, Any]:
    init_args: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False}
    if cfg.simulation.ray_address:
        init_args["address"] = cfg.simulation.ray_address
    else:
        slots = cfg.simulation.max_concurrent_clients or max(
            1, int((os.cpu_count() or 1) // cfg.simulation.cpus_per_client)
        )
        init_args["num_cpus"] = slots * cfg.simulation.cpus_per_client
        init_args["_node_ip_address"] = cfg.simulation.ray_node_ip
    return {
        "client_resources": {"num_cpus": cfg.simulation.cpus_per_client, "num_gpus": 0.0},
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
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from fedsim.flower.client_app import app as client_app

    outcome: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid, context) -> None:
        try:
            outcome["summary"] = serve(grid, cfg, out_dir, reporter, resume, plan)
        except RunFailed as e:
            outcome["error"] = e

    flwr_logger = logging.getLogger("flwr")
    old_level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=cfg.run.clients,
                backend_config=backend_config(cfg),
                verbose_logging=verbose,
            )
    except Exception as e:  # the runtime itself died (Ray could not start, an actor pool failure, ...)
        if "error" not in outcome and "summary" not in outcome:
            raise RunFailed(f"simulation runtime failed: {type(e).__name__}: {e}") from e
    finally:
        flwr_logger.setLevel(old_level)
        _shutdown_ray()
    if "error" in outcome:
        raise outcome["error"]
    if "summary" not in outcome:
        raise RunFailed("the ServerApp ended without a result")
    if outcome["summary"]["status"] != "ok":
        raise RunFailed(outcome["summary"]["error"])
    return outcome["summary"]


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
