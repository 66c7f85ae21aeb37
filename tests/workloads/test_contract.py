"""The contract every registered workload's ``tiny`` preset meets (one shared test matrix).

The pretrained bases are the quick ones of :data:`tests.helpers.workloads.QUICK_BASES`: the contract
is about the code paths, and a base pretrained for seconds exercises all of them."""

import math

import pytest
import torch
from peft.tuners.lora import LoraLayer

from tests.helpers.workloads import quick_spec
from workloads import get_workload_class, registry
from workloads.base import Workload, load_trainable_state, trainable_state

NAMES = sorted(registry())
LR = 3e-3  # train.lr's default


def build(name: str, seed: int = 0):
    wl = get_workload_class(name)(quick_spec(name, seed=seed))
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        model = wl.build_model()
    model.eval()
    train, test = wl.build_data()
    return wl, model, train, test


@pytest.fixture(scope="module", params=NAMES)
def built(request):
    return build(request.param)


def steps(wl: Workload, model, data, n: int) -> list[float]:
    """``n`` AdamW steps on the trainable parameters, cycling over two fixed batches of 8 rows."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR)
    batches = [wl.collate(data[0:8]), wl.collate(data[8:16])]
    model.train()
    losses = []
    for i in range(n):
        loss = wl.loss(model, batches[i % 2])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def test_declarations(built):
    wl = built[0]
    cls = type(wl)
    assert cls.name == cls.name.lower() and " " not in cls.name
    assert "tiny" in cls.presets
    assert cls.description and "\n" not in cls.description
    assert isinstance(cls.higher_is_better, bool)
    assert cls.lora_target_modules
    assert wl.flops_per_sample() > 0


def test_training_memory_counts_every_weight_and_the_optimizer_state_of_the_trainable_ones(built):
    from fedsim.core.training import train_memory_bytes

    model = built[1]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in model.parameters())
    assert train_memory_bytes(model) == weights + 12 * trainable


def test_builds_with_lora_modules(built):
    wl, model, train, test = built
    lora = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    assert lora, "no peft LoRA layer in the model"
    assert all(name.split(".")[-1] in wl.lora_target_modules for name in lora)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".lora_A." in n for n in trainable) and any(".lora_B." in n for n in trainable)
    factors = {n: p.shape for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    assert all(len(shape) == 2 for shape in factors.values()), factors  # SOFT and the aggregation need matrices
    extras = [n for n in trainable if ".lora_" not in n]
    assert all(any(f".{m}." in n for m in wl.extra_trainable) for n in extras), extras
    assert len(train) == 4 * 16 and len(test) == 32
    parts = wl.partition(train)
    assert len(parts) == 4 and sum(len(p) for p in parts) == len(train)


def test_loss_finite_and_falls_over_20_steps(built):
    wl, model, train, _ = built
    saved = trainable_state(model)
    try:
        losses = steps(wl, model, train, 20)
    finally:
        load_trainable_state(model, saved)
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.9 * first, losses


def test_evaluate_returns_primary_metric(built):
    wl, model, _, test = built
    metrics = wl.evaluate(model, test)
    assert wl.primary_metric in metrics
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics


def test_deterministic_for_a_seed(built):
    """Same seed: same data and the same loss sequence; another seed: other data."""
    wl1, m1, train1, test1 = built
    wl2, m2, train2, test2 = build(wl1.name)
    assert train1.to_dict() == train2.to_dict() and test1.to_dict() == test2.to_dict()
    s1, s2 = trainable_state(m1), trainable_state(m2)
    try:
        assert steps(wl1, m1, train1, 5) == steps(wl2, m2, train2, 5)
    finally:
        load_trainable_state(m1, s1)
        load_trainable_state(m2, s2)
    other, _ = type(wl1)(quick_spec(wl1.name, seed=1)).build_data()
    assert other.to_dict() != train1.to_dict()
