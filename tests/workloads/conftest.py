"""Workload tests: an isolated base-model cache per session, no network, small specs."""

import os

import pytest

from workloads.base import WorkloadSpec


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Pretrained bases go to a fresh folder for the session (built once, shared by the tests)."""
    saved = {k: os.environ.get(k) for k in ("FEDSIM_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ["FEDSIM_CACHE"] = str(tmp_path_factory.mktemp("fedsim-cache"))
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    yield os.environ["FEDSIM_CACHE"]
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def small_spec(**overrides) -> WorkloadSpec:
    """A few clients and samples: what a unit test can afford."""
    base = dict(
        preset="tiny",
        seed=0,
        num_clients=4,
        samples_per_client=16,
        test_samples=32,
        partition="iid",
        dirichlet_alpha=1.0,
        lora_rank=4,
        lora_alpha=8.0,
        lora_dropout=0.0,
    )
    return WorkloadSpec(**{**base, **overrides})


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread, as each ClientApp actor runs: on a shared, loaded CPU two threads
    spin-wait on each other and pretraining takes several times longer."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
