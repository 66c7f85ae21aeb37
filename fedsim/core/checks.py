"""The checks of a whole configuration: several keys together, the registries, and files.

Ordered from cheap to expensive, so that a wrong name or combination is refused before numpy,
torch or a workload's libraries are imported (well under a second).

:func:`fedsim.core.config.build_config` checks each key on its own; :func:`check_config` runs
before anything starts (Ray, Flower, a results folder), so a bad combination is a one-line
:class:`~fedsim.errors.ConfigError` naming the keys, the values and what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fedsim.core.config import Config, build_config
from fedsim.errors import ConfigError

MAX_TRAIN_ROWS = 20_000_000
"""Training rows (clients x samples per client) a run builds in memory."""


def local_cpus() -> int:
    """The CPUs this process may use (its affinity, as Ray counts them for a local cluster)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_cache_root() -> None:
    """Raise ConfigError unless fedsim's cache root (``FEDSIM_CACHE``, :mod:`workloads.cache`) is a
    folder this process may write in, or one it may make: every run builds or loads entries there."""
    from workloads.cache import ENV_VAR, cache_root

    root = cache_root()
    given = f"{ENV_VAR}={str(root)!r}" if os.environ.get(ENV_VAR) else f"{ENV_VAR} (not set: {str(root)!r})"
    try:
        existing = next(p for p in (root, *root.parents) if p.exists())
    except OSError as e:
        raise ConfigError(f"{given}: cannot be used ({e.strerror or e}); set {ENV_VAR} to a folder") from None
    if not existing.is_dir():
        where = "is a file" if existing == root else f"is inside {str(existing)!r}, which is not a folder"
        raise ConfigError(f"{given}: {where}; set {ENV_VAR} to a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{given}: cannot write in {str(existing)!r}; set {ENV_VAR} to a folder you may write in")


def check_config(cfg: Config) -> Config:
    """Raise ConfigError for the first combination of values that cannot run; returns ``cfg``."""
    from fedsim.core.methods import get_method
    from fedsim.core.schedulers import get_scheduler
    from workloads import check_workload_name, declaration

    check_cache_root()

    cpr = cfg.run.clients_per_round
    if isinstance(cpr, int) and cpr > cfg.run.clients:
        raise ConfigError(f"run.clients_per_round={cpr}: must be at most run.clients={cfg.run.clients}")
    rows = cfg.run.clients * cfg.workload.samples_per_client
    if rows > MAX_TRAIN_ROWS:
        raise ConfigError(
            f"run.clients={cfg.run.clients}, workload.samples_per_client={cfg.workload.samples_per_client}: "
            f"{rows} training rows, more than the {MAX_TRAIN_ROWS} a run holds in memory"
        )
    if not cfg.simulation.ray_address:  # a local Ray gets this machine's CPUs
        cpus = local_cpus()
        sim = cfg.simulation
        if sim.cpus_per_client > cpus:
            raise ConfigError(
                f"simulation.cpus_per_client={sim.cpus_per_client:g}: must be at most the {cpus} CPUs of this machine "
                "(no ClientApp could ever start)"
            )
        if sim.max_concurrent_clients * sim.cpus_per_client > cpus:
            raise ConfigError(
                f"simulation.max_concurrent_clients={sim.max_concurrent_clients}: at "
                f"simulation.cpus_per_client={sim.cpus_per_client:g} must be at most {int(cpus // sim.cpus_per_client)}, "
                f"the ClientApps this machine's {cpus} CPUs can run at once"
            )
    method = get_method(cfg.run.method)
    scheduler = get_scheduler(cfg.run.scheduler)
    if scheduler.decides_rho and not method.sparsifies:
        raise ConfigError(
            f"run.scheduler={cfg.run.scheduler!r}: chooses a sparsification ratio, so run.method must sparsify "
            f"(soft, topk, ...), not {cfg.run.method!r}"
        )
    if cfg.lora.quant_bits and method.matrix_values is None:
        raise ConfigError(
            f"lora.quant_bits={cfg.lora.quant_bits}: run.method={cfg.run.method!r} has no value-count formula "
            "(UploadMethod.matrix_values), so its quantised upload cannot be priced; use lora.quant_bits=0"
        )
    if cfg.hetero.rank_rule != "none":
        h = cfg.hetero
        if max(h.rank_levels) > cfg.lora.rank:
            raise ConfigError(
                f"hetero.rank_levels={list(h.rank_levels)}: must be at most lora.rank={cfg.lora.rank}, "
                "the rank of the global adapter"
            )
        if method.needs_client_state:
            raise ConfigError(
                f"hetero.rank_rule={h.rank_rule!r}: not supported with run.method={cfg.run.method!r} "
                "(its client state has the client's rank)"
            )
        if scheduler.two_phase or scheduler.plans_rank:
            raise ConfigError(
                f"hetero.rank_rule={h.rank_rule!r}: not supported with run.scheduler={cfg.run.scheduler!r} "
                "(use equal or fixed)"
            )
    check_asynchronous(cfg)
    if cfg.run.min_clients_per_round > cfg.num_sampled:
        raise ConfigError(
            f"run.min_clients_per_round={cfg.run.min_clients_per_round}: must be at most the "
            f"{cfg.num_sampled} clients sampled per round"
        )
    if cfg.compute.device_flops_min > cfg.compute.device_flops_max:
        raise ConfigError(
            f"compute.device_flops_min={cfg.compute.device_flops_min!r}: must be at most "
            f"compute.device_flops_max={cfg.compute.device_flops_max!r}"
        )
    if cfg.channel.min_distance_m >= cfg.channel.radius_m:
        raise ConfigError(
            f"channel.min_distance_m={cfg.channel.min_distance_m!r}: must be below "
            f"channel.radius_m={cfg.channel.radius_m!r}"
        )
    check_workload_name(cfg.workload.name)
    if cfg.workload.dataset:
        from workloads.data import check_dataset_name

        check_dataset_name(cfg.workload.dataset)  # a URL or a missing local path; the data is checked on load
    from fedsim.core.wireless import check_channel_config  # numpy and scipy from here on

    check_channel_config(cfg)  # models, positions / device-speed / trace files
    declared = declaration(cfg.workload.name)  # a built-in's without torch
    declared.resolve(cfg.workload.name, cfg.workload.preset, cfg.workload.options)  # unknown preset or bad options
    if cfg.workload.partition == "natural" and (declared.natural_partition_column is None or cfg.workload.dataset):
        raise ConfigError(
            f"workload.partition='natural': {cfg.workload.name} has no natural split"
            f"{' of workload.dataset' if cfg.workload.dataset else ''}; use iid or dirichlet"
        )
    return cfg


def check_asynchronous(cfg: Config) -> None:
    """Raise ConfigError for what an asynchronous run (:mod:`fedsim.core.asynchronous`) does not define."""
    mode = cfg.run.aggregation
    if mode == "sync":
        return
    where = f"with run.aggregation={mode!r}"
    if cfg.run.scheduler != "equal":
        raise ConfigError(
            f"run.scheduler={cfg.run.scheduler!r}: {where} the uploads in flight share the band equally "
            "(channels.sharing), so no scheduler splits it; use run.scheduler='equal'"
        )
    if cfg.hetero.rank_rule != "none":
        raise ConfigError(f"hetero.rank_rule={cfg.hetero.rank_rule!r}: not defined {where}; use 'none'")
    if cfg.channel.packet_errors != "none":
        raise ConfigError(f"channel.packet_errors={cfg.channel.packet_errors!r}: not defined {where}; use 'none'")
    if cfg.tsfa.deadline_s > 0:
        raise ConfigError(f"tsfa.deadline_s={cfg.tsfa.deadline_s:g}: a round deadline {where} has no round; use 0")
    if cfg.concurrency > cfg.run.clients:
        raise ConfigError(f"asynchronous.concurrency={cfg.concurrency}: must be at most run.clients={cfg.run.clients}")
    if mode == "fedbuff" and cfg.asynchronous.buffer_size > cfg.concurrency:
        raise ConfigError(
            f"asynchronous.buffer_size={cfg.asynchronous.buffer_size}: must be at most the "
            f"{cfg.concurrency} clients in flight (asynchronous.concurrency), or the buffer never fills"
        )


def checked_config(*layers: Mapping[str, Any]) -> Config:
    """:func:`~fedsim.core.config.build_config` of the layers, then :func:`check_config`."""
    return check_config(build_config(*layers))
