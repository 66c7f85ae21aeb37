"""Workload tests: one torch thread (the base-model cache is the suite's, see tests/conftest.py)."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread, as each ClientApp actor runs: on a shared, loaded CPU two threads
    spin-wait on each other and pretraining takes several times longer."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
