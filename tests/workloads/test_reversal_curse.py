"""reversal-curse: the generated facts (pools disjoint, reverse probes never in training), the
natural split, the probes of the MDM and the ARM, and the option checks (one-line config
errors, exit 2). No training here beyond the cached base the contract test builds."""

import numpy as np
import pytest
import torch

from fedsim.checks import checked_config
from fedsim.errors import ConfigError
from tests.helpers.runs import run_fedsim
from tests.helpers.workloads import small_spec
from workloads import reversal_curse as rc


def test_facts_use_every_entity_once_in_two_disjoint_pools():
    new, pre = rc.make_facts(50, 30, seed=3)
    assert new.shape == (50, 2) and pre.shape == (30, 2)
    everything = np.concatenate([new.ravel(), pre.ravel()])
    assert len(set(everything)) == 160 and everything.min() == len(rc.SPECIAL)
    assert everything.max() == rc.vocab_size(50, 30) - 1
    assert not set(new.ravel()) & set(pre.ravel())
    again, _ = rc.make_facts(50, 30, seed=3)
    other, _ = rc.make_facts(50, 30, seed=4)
    assert np.array_equal(new, again) and not np.array_equal(new, other)


@pytest.mark.parametrize("model", ["mdm", "arm"])
def test_reverse_probes_never_appear_in_the_training_data(model):
    wl = rc.ReversalCurse(small_spec(num_clients=5, samples_per_client=60, options=f"model={model},num_facts=40"))
    train, test = wl.build_data()
    trained = {tuple(r) for r in wl.collate(train[:])["input_ids"].tolist()}
    assert all(r[1] == rc.IS for r in trained)
    reverse = {(b, rc.IS, a) for a, b in zip(test["a"], test["b"], strict=True)}
    forward = {(a, rc.IS, b) for a, b in zip(test["a"], test["b"], strict=True)}
    assert forward <= trained and not reverse & trained
    # no training statement starts with a b entity: "b IS ..." is never seen in any form
    assert not {r[0] for r in trained} & set(test["b"])
    # the pretraining statements (both directions) use none of the new entities
    pre = {int(v) for v in wl.pretrain_facts.ravel()}
    assert not pre & (set(test["a"]) | set(test["b"]))


def test_natural_split_gives_clients_their_own_facts():
    wl = rc.ReversalCurse(small_spec(num_clients=4, samples_per_client=30, options="num_facts=40"))
    train, test = wl.build_data()
    for row in train:
        assert row["fact"] % 4 == row["client"]
    assert len(test) == 32 and set(test["fact"]) <= set(train["fact"])
    parts = wl.partition(train)
    assert len(parts) == 4


def test_probes_read_the_answer_position_and_the_arm_is_causal():
    for model_kind in ("mdm", "arm"):
        wl = rc.ReversalCurse(small_spec(options=f"model={model_kind},pretrain_steps=0"))
        model = wl.build_base_model()
        given = torch.tensor([5, 6, 7])
        logits = wl.answer_logits(model, given)
        assert logits.shape == (3, wl.model_config().vocab_size)
        assert model.cfg.causal == (model_kind == "arm")
    # the ARM's answer does not look past [x, IS]; the reverse attention correlation is 0 for it
    assert wl.attention_correlation(model, given) == 0.0


def test_from_scratch_preset_trains_every_weight_dense():
    wl = rc.ReversalCurse(small_spec(preset="from-scratch"))
    model = wl.build_model()
    assert all(p.requires_grad for p in model.parameters())
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert wl.pretrain_meta["pretrain"] is None


def test_evaluate_metrics_on_an_untrained_model():
    wl = rc.ReversalCurse(small_spec(options="pretrain_steps=0,num_facts=20"))
    _, test = wl.build_data()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = wl.build_model()
    m = wl.evaluate(model, test)
    assert m["chance"] == 1 / 20
    assert 0 <= m["reverse_probability"] < 0.2 and m["forward_accuracy"] <= 0.2
    assert -1 <= m["grad_cosine"] <= 1 and -1 <= m["attention_correlation"] <= 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("model=gpt", "model='gpt': must be one of mdm, arm"),
        ("num_facts=1", "num_facts=1: must be an integer in"),
        ("positions=alibi", "positions='alibi': must be one of rotary, learned"),
        ("d_model=60", "d_model=60: must be a multiple of num_heads"),
        ("pretrain_lr=0", "pretrain_lr=0.0: must be a number in"),
        ("num_layer=2", "num_layer=2: reversal-curse has options"),
    ],
)
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError, match=message) as e:
        checked_config({"workload.name": "reversal-curse", "workload.options": options})
    assert "\n" not in str(e.value) and str(e.value).startswith("workload.")


def test_bad_option_exits_2_before_anything_runs(tmp_path):
    out = tmp_path / "o"
    proc = run_fedsim(["run", "--workload", "reversal-curse", "--set", "workload.options=model=gpt", "--out", str(out)])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "model='gpt'" in proc.stderr and not out.exists()
