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


QUICK_BASES = {
    "clip-memorisation": "clip_steps=1,pretrain_steps=1,eval_seeds=2",
    "dapd": "pretrain_steps=1,pretrain_samples=128,min_base_validity=0",
    "equation-reasoner": "pretrain_steps=1,pretrain_problems=32",
    "instruct": "pretrain_steps=1,pretrain_samples=32,generation_samples=4,max_new_tokens=8",
    "rainbow-padding": "pretrain_steps=1,pretrain_samples=32,eval_lengths=32 64,eval_samples=8",
    "reversal-curse": "pretrain_steps=1",
}
"""Workload options that pretrain a cached base in one step (and evaluate little): for tests of the code paths (shapes,
LoRA wiring, a loss that falls, determinism), not of what the full pretraining reaches. A test of the
tiny preset's own base (its quality, its cache key) is ``slow`` or pretrains what it checks itself."""


def quick_spec(name: str, **overrides) -> WorkloadSpec:
    """:func:`small_spec` with the workload's :data:`QUICK_BASES` options (plus ``options`` given here)."""
    extra = overrides.pop("options", "")
    options = ",".join(o for o in (QUICK_BASES.get(name, ""), extra) if o)
    return small_spec(options=options, **overrides)
