"""Where a process puts its model: a GPU when Ray gave it one (``simulation.gpus_per_client``), else the CPU.

Ray exposes to an actor only the GPUs it assigned (``CUDA_VISIBLE_DEVICES``; none when the actor
asked for ``num_gpus = 0``), so inside a ClientApp actor "a GPU is visible" means "Ray gave this
actor a GPU". The driver (server-side evaluation) uses the GPU under the same setting. With
``gpus_per_client = 0`` (the default) everything stays on the CPU exactly as before.
"""

from __future__ import annotations

from typing import Any

import torch

from fedsim.core.config import Config
from fedsim.errors import ConfigError


def select_device(cfg: Config) -> torch.device:
    """``cuda`` when ``simulation.gpus_per_client > 0`` and this process sees a GPU, else ``cpu``.

    Raises ConfigError for ``gpus_per_client > 0`` with a workload that runs on the CPU only.
    """
    if cfg.simulation.gpus_per_client <= 0:
        return torch.device("cpu")
    from workloads import get_workload_class

    if not get_workload_class(cfg.workload.name).supports_gpu:
        raise ConfigError(
            f"simulation.gpus_per_client={cfg.simulation.gpus_per_client:g}: workload {cfg.workload.name!r} "
            "runs on the CPU only (set simulation.gpus_per_client=0)"
        )
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def device_info(cfg: Config) -> dict[str, Any]:
    """What ``summary.json`` records about the device this process ran on."""
    device = select_device(cfg)
    return {
        "type": device.type,
        "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "gpus_per_client": cfg.simulation.gpus_per_client,
        "bf16": cfg.simulation.bf16,
    }
