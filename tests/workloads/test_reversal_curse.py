"""reversal-curse: the generated facts (pools disjoint, reverse probes never in training), the
natural split, the probes of the MDM and the ARM, the mechanism metrics (gradient cosine and
loss drop over the attention factors, the per-fact matched and mismatched gradient cosines and
the MDM's noise-free per-fact loss, pre-softmax score correlation), the presets' train
defaults, and the option checks (one-line config errors, exit 2). No training here beyond the
cached base the contract test builds."""

import tomllib

import numpy as np
import pytest
import torch

from fedsim.core.checks import checked_config
from fedsim.core.config import preset_default_rows
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
    # the ARM's answer does not look past [x, IS]; the reverse score correlation is 0 for it
    assert wl.score_correlation(model, given) == 0.0


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
    assert -1 <= m["grad_cosine"] <= 1 and -1 <= m["score_correlation"] <= 1
    assert -1 <= m["grad_cosine_matched"] <= 1 and -2 <= m["grad_cosine_excess"] <= 2
    assert np.isfinite(m["reverse_loss_drop"])


def lora_model_and_facts(model_kind: str, **options):
    """A random tiny base with LoRA (no pretraining), its test facts as (a, b) and the workload."""
    extra = "".join(f",{k}={v}" for k, v in options.items())
    wl = rc.ReversalCurse(small_spec(options=f"model={model_kind},pretrain_steps=0,num_facts=20{extra}"))
    _, test = wl.build_data()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = wl.build_model()
        for name, param in model.named_parameters():
            if "lora_B" in name:  # peft starts B at 0: give the factors a gradient of their own
                torch.nn.init.normal_(param, std=0.1)
    return wl, model, torch.tensor(test["a"]), torch.tensor(test["b"])


def test_gradient_cosine_and_loss_drop_use_the_attention_lora_factors_only():
    wl, model, a, b = lora_model_and_facts("mdm")
    names = [n for n, _ in wl.attention_factors(model)]
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert {n.split(".attn.")[1][0] for n in names} == set("qkvo")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("embed" in n for n in trainable) and not any("embed" in n or "head" in n for n in names)
    assert not any(".up." in n or ".down." in n for n in names)
    # the cosine is that of the two gradients over exactly these factors
    params = [p for _, p in wl.attention_factors(model)]
    fwd_loss, rev_loss = wl.forward_and_reverse_loss(model, a, b)
    g_f = torch.cat([g.flatten() for g in torch.autograd.grad(fwd_loss, params)])
    g_r = torch.cat([g.flatten() for g in torch.autograd.grad(rev_loss, params)])
    assert wl.grad_cosine(model, a, b) == pytest.approx(float(g_f @ g_r / (g_f.norm() * g_r.norm())), abs=1e-5)
    # a small forward step changes the reverse loss by about lr * (g_f . g_r), first order
    wl.params["probe_lr"] = 1e-3
    assert wl.reverse_loss_drop(model, a, b) == pytest.approx(1e-3 * float(g_f @ g_r), rel=0.05, abs=1e-7)


@pytest.mark.parametrize("model_kind", ["mdm", "arm"])
def test_reverse_loss_drop_restores_the_model(model_kind):
    wl, model, a, b = lora_model_and_facts(model_kind, probe_lr=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    drop = wl.reverse_loss_drop(model, a, b)
    assert drop != 0.0 and np.isfinite(drop)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_matched_cosines_on_known_gradients():
    match = rc.ReversalCurse.matched_cosines
    own = torch.eye(5, 7) * torch.arange(1.0, 6.0)[:, None]  # every fact its own direction
    assert match(own, 3 * own) == pytest.approx((1.0, 0.0))  # aligned with its own fact only
    assert match(own, -own) == pytest.approx((-1.0, 0.0))
    # fact j + 1's reverse gradient is fact j's forward one: matched 0, mismatched (j against j + 1) 1
    assert match(own, own.roll(1, 0)) == pytest.approx((0.0, 1.0))
    # a component shared by every fact moves matched and mismatched alike: the excess is 0
    g_fwd = torch.randn(6, 9, generator=torch.Generator().manual_seed(0))
    matched, mismatched = match(g_fwd, torch.ones(6, 9))
    assert matched == pytest.approx(mismatched) and matched != pytest.approx(0.0)
    # the same, added to fact-specific parts: a positive excess
    matched, mismatched = match(own + 1.0, own + 1.0)
    assert matched == pytest.approx(1.0) and 0 < mismatched < 1
    assert match(own[:1], own[:1]) == pytest.approx((1.0, 0.0))  # one fact: no mismatched pair
    assert match(torch.zeros(3, 0), torch.zeros(3, 0)) == (0.0, 0.0)  # no factors


@pytest.mark.parametrize("model_kind", ["mdm", "arm"])
def test_fact_gradients_are_each_facts_own_over_the_attention_factors(model_kind):
    wl, model, a, b = lora_model_and_facts(model_kind)
    a, b = a[:5], b[:5]
    params = [p for _, p in wl.attention_factors(model)]
    g_fwd, g_rev = wl.fact_gradients(model, a, b)
    assert g_fwd.shape == g_rev.shape == (5, sum(p.numel() for p in params))
    for j in range(5):
        fwd, rev = wl.fact_losses(model, a[j : j + 1], b[j : j + 1])
        for loss, rows in ((fwd, g_fwd), (rev, g_rev)):
            alone = torch.cat([g.flatten() for g in torch.autograd.grad(loss.sum(), params)])
            assert torch.allclose(rows[j], alone, atol=1e-6)
    if model_kind == "arm":  # the ARM's per-fact loss is its training loss of the one statement
        with torch.no_grad():
            fwd, _ = wl.fact_losses(model, a[:1], b[:1])
            statement = wl.loss(model, wl.batch_of(rc.statements(torch.stack([a[:1], b[:1]], 1))))
        assert float(fwd) == pytest.approx(float(statement))
    metrics = wl.fact_grad_cosines(model, a, b)
    matched, mismatched = wl.matched_cosines(g_fwd, g_rev)
    assert metrics == pytest.approx({"grad_cosine_matched": matched, "grad_cosine_excess": matched - mismatched})


def test_mdm_fact_loss_is_the_training_loss_averaged_over_its_noise():
    """Against the library's own LLaDA loss, every mask pattern of the two entities weighted by its
    probability at masking probability p, averaged over t (exact: linear in p once divided by p)."""
    wl, model, a, b = lora_model_and_facts("mdm")
    a, b = a[:3], b[:3]
    batch = wl.batch_of(rc.statements(torch.stack([a, b], 1)))
    ids, response = batch["input_ids"], batch["response"]
    expected = torch.zeros(3)
    ts = (torch.arange(8) + 0.5) / 8
    with torch.no_grad():
        for t in ts:
            p = (1 - rc.dlm.LLADA_EPS) * t + rc.dlm.LLADA_EPS
            for m0, m2 in ((0, 1), (1, 0), (1, 1)):
                masked = torch.zeros_like(response)
                masked[:, 0], masked[:, 2] = bool(m0), bool(m2)
                logits = model(input_ids=torch.where(masked, rc.MASK, ids))
                weight = p ** (m0 + m2) * (1 - p) ** (2 - m0 - m2)
                for j in range(3):
                    one = rc.dlm.mdm_loss_from_logits(
                        logits[j : j + 1], ids[j : j + 1], masked[j : j + 1], p.reshape(1), response[j : j + 1]
                    )
                    expected[j] += weight * one / len(ts)
        fwd, _ = wl.fact_losses(model, a, b)
    assert torch.allclose(fwd, expected, rtol=1e-5)


def test_score_correlation_is_per_head_pre_softmax_and_bounded():
    wl, model, _, b = lora_model_and_facts("mdm")
    scores = rc.attention_scores(model, torch.stack([b, torch.full_like(b, rc.IS), b], dim=1))
    cfg = wl.model_config()
    assert scores.shape == (cfg.num_layers, len(b), cfg.num_heads, 3, 3)
    # the softmax of the scores is the model's own attention map
    _, maps = model(input_ids=torch.stack([b, torch.full_like(b, rc.IS), b], dim=1), return_attentions=True)
    assert torch.allclose(scores[0].softmax(-1), maps[0], atol=1e-6)
    value = wl.score_correlation(model, b)
    assert -1 <= value <= 1 and value != 0.0
    # one fact repeated: no head's scores vary over the facts, and each counts 0
    assert wl.score_correlation(model, b[:1].repeat(5)) == 0.0


def test_tiny_preset_train_defaults_reach_the_resolved_config():
    cfg = checked_config({"workload.name": "reversal-curse"})
    saved = tomllib.loads(cfg.to_toml())["train"]  # what a run's config.toml records
    assert (saved["local_epochs"], saved["batch_size"], saved["lr"]) == (20, 8, 3e-3)
    rows = {row[0]: row for row in preset_default_rows("reversal-curse")}
    assert rows["train.local_epochs"][1:3] == ("tiny: 20, from-scratch: 40", "an integer in [0, 1000]")
    given = checked_config({"workload.name": "reversal-curse"}, {"train.local_epochs": 3})
    assert given.train.local_epochs == 3 and given.train.batch_size == 8


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
