"""Workload tests: an isolated base-model cache per session, no network, small specs."""

import os

import pytest


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


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread, as each ClientApp actor runs: on a shared, loaded CPU two threads
    spin-wait on each other and pretraining takes several times longer."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
