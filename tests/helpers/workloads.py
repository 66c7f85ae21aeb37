"""Small workload specs: what a unit test can afford."""

from workloads.base import WorkloadSpec


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
