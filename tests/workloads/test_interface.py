"""Interface pieces: preset options, natural split, the base-model cache, the registry."""

import json

import pytest
import torch
from torch import nn

from fedsim.checks import checked_config
from fedsim.errors import ConfigError
from workloads import cache, get_workload_class, registry
from workloads.equation_reasoner import EquationReasoner
from workloads.text_classify import TextClassify


def test_registry_lists_the_builtins():
    assert {"text-classify", "equation-reasoner"} <= set(registry())
    with pytest.raises(ConfigError, match="must be one of .*equation-reasoner.*text-classify"):
        get_workload_class("nope")


def test_options_override_the_preset():
    p = EquationReasoner.resolve_params("tiny", "target_format=nl, pretrain_steps=10, pretrain_lr=1")
    assert p["target_format"] == "nl" and p["pretrain_steps"] == 10 and p["pretrain_lr"] == 1.0
    assert EquationReasoner.resolve_params("tiny") == EquationReasoner.presets["tiny"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("target_format=prose", "target_format='prose': must be one of equation, nl, answer"),
        ("d_model=wide", "d_model='wide': expected int"),
        ("depth=3", "depth=3: equation-reasoner preset 'tiny' has keys"),
        ("target_format", "expected key=value pairs"),
    ],
)
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError, match=message) as e:
        checked_config({"workload.name": "equation-reasoner", "workload.options": options})
    assert "\n" not in str(e.value) and str(e.value).startswith("workload.")


def test_natural_split_only_where_the_task_has_one():
    cfg = checked_config({"workload.name": "equation-reasoner", "workload.partition": "natural"})
    assert cfg.workload.partition == "natural"
    with pytest.raises(ConfigError, match="workload.partition='natural': text-classify has no natural split"):
        checked_config({"workload.partition": "natural"})
    with pytest.raises(ConfigError, match="one of iid, dirichlet, natural"):
        checked_config({"workload.partition": "random"})
    assert TextClassify.natural_partition_column is None


def test_cache_builds_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path))
    calls = []

    def build():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3))
        net[1].weight = nn.Parameter(net[0].weight.T.contiguous())  # a second tensor, not tied
        return net

    def pretrain(net):
        calls.append(1)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
        return {"loss": 0.5}

    payload = {"arch": [3, 4, 3], "seed": 0, "code": "abc"}
    a, meta_a = cache.cached_model("toy", payload, build, pretrain)
    b, meta_b = cache.cached_model("toy", payload, build, pretrain)
    assert calls == [1] and not meta_a["cached"] and meta_b["cached"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    folder = tmp_path / "toy" / cache.content_hash(payload)
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.safetensors"]  # no pickles
    assert json.loads((folder / "meta.json").read_text())["payload"] == payload
    cache.cached_model("toy", {**payload, "seed": 1}, build, pretrain)
    assert calls == [1, 1]  # anything in the payload changes the key


def test_content_hash_is_order_independent():
    assert cache.content_hash({"a": 1, "b": [1, 2]}) == cache.content_hash({"b": [1, 2], "a": 1})
    assert cache.content_hash({"a": 1}) != cache.content_hash({"a": 2})
