"""GPU plumbing (simulation.gpus_per_client, simulation.bf16) and the lean local Ray head.

No GPU is needed: these check that the settings reach Ray's resources and the workloads, and
that with the defaults the CPU path is the one it was (the same objects, no autocast).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import psutil
import pytest
import torch

from fedsim.core.config import ConfigError, build_config, parse_value
from fedsim.core.device import device_info, select_device
from fedsim.flower.simulation import backend_config
from workloads import get_workload_class


def test_gpus_per_client_reaches_ray_client_resources():
    assert backend_config(build_config({}))["client_resources"] == {
        "num_cpus": 1.0,
        "num_gpus": 0.0,
        "max_restarts": -1,
    }
    cfg = build_config({"simulation.gpus_per_client": 0.25, "simulation.bf16": parse_value("true")})
    assert backend_config(cfg)["client_resources"]["num_gpus"] == 0.25
    assert cfg.simulation.bf16 is True
    with pytest.raises(ConfigError, match="simulation.gpus_per_client"):
        build_config({"simulation.gpus_per_client": -1})
    with pytest.raises(ConfigError, match="simulation.bf16=1: expected bool"):
        build_config({"simulation.bf16": 1})
    with pytest.raises(ConfigError, match="expected int, got bool"):  # bools stay out of other fields
        build_config({"run.clients": True})


def test_device_is_cpu_by_default_and_recorded():
    cfg = build_config({})
    assert select_device(cfg) == torch.device("cpu")
    assert device_info(cfg) == {"type": "cpu", "name": "cpu", "gpus_per_client": 0.0, "bf16": False}
    gpu = build_config({"simulation.gpus_per_client": 1})
    assert select_device(gpu).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cpu_only_workloads_refuse_a_gpu():
    cfg = build_config({"workload.name": "rainbow-padding", "simulation.gpus_per_client": 0.5})
    with pytest.raises(ConfigError, match="runs on the CPU only"):
        select_device(cfg)


def test_cpu_batches_are_untouched_and_autocast_is_off_by_default():
    cls = get_workload_class("text-classify")
    workload = cls.__new__(cls)  # the device logic needs no model or data
    batch = {"input_ids": torch.arange(6).view(2, 3), "note": "x"}
    assert workload.place(batch) is batch
    assert isinstance(workload.autocast(), contextlib.nullcontext)
    workload.bf16 = True
    with workload.autocast():
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    workload.device = torch.device("meta")  # any non-CPU device: tensors move, other values stay
    moved = workload.place(batch)
    assert moved["input_ids"].device.type == "meta" and moved["note"] == "x"


@pytest.mark.slow
def test_lean_ray_head_starts_only_what_a_local_run_uses():
    """GCS, raylet and the raylet's two agents; no autoscaler monitor, log monitor or API server."""
    import ray

    from fedsim.flower.reaper import is_ray_process
    from fedsim.flower.simulation import _shutdown_ray, _start_ray

    before = os.environ.get("PYTHONPATH")
    cfg = build_config({"simulation.max_concurrent_clients": 1})
    ray_dir = tempfile.mkdtemp(prefix="fedsim-ray-")  # short: Ray's socket paths must fit 107 bytes
    _start_ray(backend_config(cfg, ray_dir)["init_args"])
    try:
        assert os.environ.get("PYTHONPATH") == before  # only Ray's processes got the driver's sys.path
        cmdlines = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True) if is_ray_process(p)]
        joined = "\n".join(cmdlines)
        assert "gcs_server" in joined and "raylet" in joined
        for unused in ("autoscaler/_private/monitor.py", "log_monitor.py", "dashboard/dashboard.py"):
            assert unused not in joined, joined

        @ray.remote(num_cpus=1)
        def path_entry() -> bool:
            import fedsim  # noqa: F401 - importable through the inherited PYTHONPATH

            return True

        assert ray.get(path_entry.remote())
    finally:
        _shutdown_ray()
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert not ray.is_initialized()
