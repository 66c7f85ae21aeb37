"""dapd: the task's graph and program check, the DAPD step (independent sets, nothing left
masked), the edge AUC on known cases, the non-IID split, the pretraining recipe (warm-up and
cosine schedule, clipping), the restarts kept by validity (a scripted validity) and the
weak-base guard on a few steps, the matched-NFE primary metric
(top-k schedules split evenly, interpolated in NFE at DAPD's mean NFE) and the option checks (one-line config errors, exit 2). No full pretraining here."""

import math

import numpy as np
import pytest
import torch

from fedsim.core.checks import checked_config
from fedsim.errors import ConfigError
from tests.helpers.runs import run_fedsim
from tests.helpers.workloads import small_spec
from workloads import dapd
from workloads import diffusion_lm as dlm


def test_true_graph_joins_the_three_positions_of_every_constraint():
    g = dapd.true_graph(length=5, copies=2)
    assert g.shape == (18, 18) and torch.equal(g, g.T) and not g.diagonal().any()
    assert int(g.sum()) == 2 * 2 * 3 * 4  # 4 constraints per copy, 3 pairs each, both directions
    # constraint 2 of copy 1: X_2, X_3 (positions 10, 11) and Y_2 (position 9 + 5 + 1 = 15)
    assert g[10, 11] and g[10, 15] and g[11, 15]
    assert not g[:9, 9:].any()  # no edge between copies
    assert not g[5, 6]  # two Y values never share a constraint


def test_program_check():
    rng = np.random.default_rng(0)
    for x in rng.integers(3, size=(50, 10)):
        canvas = dapd.canvas_tokens(x, 5)
        assert dapd.is_valid(canvas, 5)
        bad = list(canvas)
        bad[7] = dapd.Y0 + (bad[7] - dapd.Y0 + 1) % 3  # break Y_3 of the first copy
        assert not dapd.is_valid(bad, 5)
    swapped = dapd.canvas_tokens(np.array([0, 1, 2, 0, 1]), 5)
    swapped[0] = dapd.Y0  # a Y token at an X position
    assert not dapd.is_valid(swapped, 5)


def test_clients_draw_from_their_own_distributions_and_the_test_set_is_uniform():
    wl = dapd.Dapd(small_spec(num_clients=3, samples_per_client=300, test_samples=300))
    train, test = wl.build_data()
    for k in range(3):
        x = np.array([r for r, c in zip(train["x"], train["client"], strict=True) if c == k])
        share = np.bincount(x.ravel(), minlength=3) / x.size
        assert share[k] == pytest.approx(0.6, abs=0.05) and share.argmax() == k
    share = np.bincount(np.array(test["x"]).ravel(), minlength=3) / np.array(test["x"]).size
    assert np.allclose(share, 1 / 3, atol=0.05)


def random_scores(g: int, seed: int) -> torch.Tensor:
    s = torch.rand(g, g, generator=torch.Generator().manual_seed(seed))
    return (s + s.T) / 2


@pytest.mark.parametrize("seed", range(20))
def test_dapd_step_commits_an_independent_set_of_masked_positions(seed):
    g = 12
    gen = torch.Generator().manual_seed(seed)
    scores = random_scores(g, seed)
    masked = torch.rand(g, generator=gen) < 0.8
    masked[0] = True
    conf = torch.rand(g, generator=gen)
    adj = dlm.dependency_graph(scores, masked, tau_rel=0.8)
    commit = dlm.dapd_commit(scores, masked, conf, tau_rel=0.8, tail=False)
    assert commit.any() and not (commit & ~masked).any()
    assert not (adj & commit[:, None] & commit[None, :]).any()  # never two positions joined by an edge
    # maximal: every masked position left out has a committed neighbour
    left = masked & ~commit
    assert (adj[left] & commit[None, :]).any(dim=1).all()
    # the graph lives on masked positions only, with tau relative to their mean off-diagonal score
    inside = masked[:, None] & masked[None, :] & ~torch.eye(g, dtype=torch.bool)
    tau = 0.8 * scores[inside].mean()
    assert torch.equal(adj, inside & (scores > tau))


@pytest.mark.parametrize("tail", [False, True])
def test_dapd_steps_end_with_nothing_masked(tail):
    """The decoding loop on changing random scores: every graph step is an independent set, the
    tail switch commits confident positions, and the canvas ends fully unmasked."""
    g = 15
    masked = torch.ones(g, dtype=torch.bool)
    for step in range(g):
        scores = random_scores(g, 100 + step)
        conf = torch.rand(g, generator=torch.Generator().manual_seed(step))
        commit = dlm.dapd_commit(scores, masked, conf, tau_rel=0.5, tail=tail)
        assert commit.any() and not (commit & ~masked).any()
        if not tail or int(masked.sum()) * 2 >= g:
            adj = dlm.dependency_graph(scores, masked, 0.5)
            assert not (adj & commit[:, None] & commit[None, :]).any()
        masked &= ~commit
        if not masked.any():
            break
    assert not masked.any()


def test_dapd_decoder_fills_the_canvas_with_a_real_model():
    wl = dapd.Dapd(small_spec(options="pretrain_steps=0,eval_samples=6"))
    model = wl.build_base_model()
    for decoder in ("one", "topk", "threshold", "dapd", "dapd_notail"):
        result = wl.decode(model, 6, decoder)
        canvas = result.tokens[:, 1:]
        assert (canvas != dapd.MASK).all() and (result.tokens[:, 0] == dapd.BOS).all()
        assert (result.step >= 0).all() and (result.nfe <= wl.gen_length).all() and (result.nfe >= 1).all()
    assert (wl.decode(model, 6, "one").nfe == wl.gen_length).all()
    with pytest.raises(ValueError, match="decoder='zebra'"):
        dlm.decode(model, torch.zeros(1, 1, dtype=torch.long), 4, dapd.MASK, "zebra")


def test_edge_auc_against_the_true_graph_on_known_cases():
    truth = dapd.true_graph(5, 1)
    assert dlm.edge_auc(truth.float(), truth) == 1.0
    assert dlm.edge_auc(-truth.float(), truth) == 0.0
    assert dlm.edge_auc(torch.ones(9, 9), truth) == 0.5
    # a hand case on 3 nodes: true edge (0, 1); scores 0.9 on it, 0.5 and 0.95 on the non-edges
    t3 = torch.zeros(3, 3, dtype=torch.bool)
    t3[0, 1] = t3[1, 0] = True
    s3 = torch.tensor([[0.0, 0.9, 0.5], [0.9, 0.0, 0.95], [0.5, 0.95, 0.0]])
    assert dlm.edge_auc(s3, t3) == 0.5  # beats one non-edge of two
    # restricted to nodes {0, 1, 2} minus node 2: only the edge is left, no negative pair: NaN
    assert np.isnan(dlm.edge_auc(s3, t3, torch.tensor([True, True, False])))
    # the scores are read symmetrically (upper triangle) and against this graph, not another
    other = torch.roll(truth, 1, dims=1)
    assert dlm.edge_auc(truth.float(), other) < 1.0


def test_attention_scores_average_heads_and_last_layers_and_symmetrise():
    a = torch.zeros(1, 2, 3, 3)
    a[0, 0, 0, 1] = 1.0  # layer 0 only: ignored with last_fraction 0.3 of 3 layers
    b = torch.zeros(1, 2, 3, 3)
    b[0, 1, 2, 0] = 1.0
    s = dlm.attention_scores([a, a, b], last_fraction=0.3)
    assert s.shape == (1, 3, 3) and s[0, 2, 0] == s[0, 0, 2] == 0.25 and s[0, 0, 1] == 0
    assert dlm.attention_scores([a, a, b], last_fraction=1.0)[0, 0, 1] == pytest.approx(1 / 6)


def test_evaluate_reports_every_decoder_and_the_aucs():
    wl = dapd.Dapd(small_spec(options="pretrain_steps=0,eval_samples=8"))
    _, test = wl.build_data()
    m = wl.evaluate(wl.build_base_model(), test)
    for decoder in dapd.DECODER_NAMES:
        assert 0 <= m[f"validity_{decoder}"] <= 1 and 1 <= m[f"nfe_{decoder}"] <= wl.gen_length
    assert m["nfe_one"] == wl.gen_length and m["nfe_topk"] == 5  # ceil(9 / 2)
    assert m["nfe_topk3"] == 3 and m["nfe_topk5"] == 2  # eval_topk_ks = "3 5"
    assert 0 <= m["auc_all_masked"] <= 1 and 0 <= m["auc_half_masked"] <= 1
    assert "base_validity_one" not in m  # no pretrained base
    # top-k at DAPD's NFE: the schedules of floor and ceil of DAPD's NFE steps, interpolated
    lo, hi = m["nfe_topk_sched_lo"], m["nfe_topk_sched_hi"]
    assert lo == math.floor(m["nfe_dapd"] + 1e-9) and hi == math.ceil(m["nfe_dapd"] - 1e-9)
    assert m["nfe_topk_at_dapd_nfe"] == m["nfe_dapd"]
    expected = dapd.interpolate_at_nfe(m["nfe_dapd"], lo, m["validity_topk_sched_lo"], hi, m["validity_topk_sched_hi"])
    assert m["validity_topk_at_dapd_nfe"] == expected
    assert m["dapd_gain_at_matched_nfe"] == m["validity_dapd"] - m["validity_topk_at_dapd_nfe"]
    assert dapd.Dapd.primary_metric == "dapd_gain_at_matched_nfe" and dapd.Dapd.higher_is_better


def test_matched_topk_brackets_a_fractional_dapd_nfe_and_interpolates(monkeypatch):
    """DAPD at a mean of 5.75 NFE is matched by the 5- and 6-step schedules, weighted 1/4 and 3/4."""
    wl = dapd.Dapd(small_spec(options="pretrain_steps=0,eval_samples=8,eval_decoders=one dapd"))
    _, test = wl.build_data()
    model = wl.build_base_model()
    real = dlm.decode

    def fake_dapd(*args, **kwargs):
        result = real(*args, **kwargs)
        if args[4] == "dapd":
            result.nfe = torch.tensor([5, 6, 6, 6] * (len(result.nfe) // 4))
        return result

    monkeypatch.setattr(dlm, "decode", fake_dapd)
    m = wl.evaluate(model, test)
    assert m["nfe_dapd"] == 5.75 and (m["nfe_topk_sched_lo"], m["nfe_topk_sched_hi"]) == (5, 6)
    v5 = wl.validity(wl.decode_schedule(model, 8, 5))
    v6 = wl.validity(wl.decode_schedule(model, 8, 6))
    assert (m["validity_topk_sched_lo"], m["validity_topk_sched_hi"]) == (v5, v6)
    assert m["validity_topk_at_dapd_nfe"] == pytest.approx(0.25 * v5 + 0.75 * v6)
    assert m["nfe_topk_at_dapd_nfe"] == 5.75


@pytest.mark.parametrize(
    ("steps", "sizes"),
    [(1, [9]), (2, [5, 4]), (3, [3, 3, 3]), (4, [3, 2, 2, 2]), (5, [2, 2, 2, 2, 1]), (7, [2, 2, 1, 1, 1, 1, 1])]
    + [(9, [1] * 9)],
)
def test_topk_schedule_splits_g_evenly_larger_steps_first(steps, sizes):
    assert dapd.topk_schedule(9, steps) == sizes


@pytest.mark.parametrize("g", [1, 7, 9, 18, 31])
def test_topk_schedule_is_as_even_as_possible_for_every_step_count(g):
    for n in range(1, g + 1):
        sizes = dapd.topk_schedule(g, n)
        assert len(sizes) == n and sum(sizes) == g and max(sizes) - min(sizes) <= 1
        assert sizes == sorted(sizes, reverse=True)
    for bad in (0, g + 1):
        with pytest.raises(ValueError, match=f"steps={bad}"):
            dapd.topk_schedule(g, bad)


@pytest.mark.parametrize(
    ("nfe", "brackets"),
    [(5.75, (5, 6)), (5.0, (5, 5)), (5 - 1e-12, (5, 5)), (8.2, (8, 9)), (9.0, (9, 9)), (1.5, (1, 2)), (0.5, (1, 1))],
)
def test_nfe_brackets_are_floor_and_ceil_within_one_to_g(nfe, brackets):
    assert dapd.nfe_brackets(9, nfe) == brackets


def test_interpolation_is_the_validity_of_the_mixture_with_dapds_mean_nfe():
    assert dapd.interpolate_at_nfe(5.25, 5, 0.4, 6, 0.8) == pytest.approx(0.5)
    assert dapd.interpolate_at_nfe(5.0, 5, 0.4, 5, 0.4) == 0.4
    assert dapd.interpolate_at_nfe(6.0, 5, 0.4, 6, 0.8) == pytest.approx(0.8)
    # the mixture: the hi schedule with probability w; its mean NFE is the target, its validity the value
    for nfe in (3.1, 3.5, 3.9):
        w = nfe - 3
        assert (1 - w) * 3 + w * 4 == pytest.approx(nfe)
        assert dapd.interpolate_at_nfe(nfe, 3, 0.2, 4, 0.6) == pytest.approx((1 - w) * 0.2 + w * 0.6)


class Confident(torch.nn.Module):
    """Logits where canvas position j proposes token ``x0`` with a confidence that grows with j."""

    def forward(self, input_ids):
        b, t = input_ids.shape
        logits = torch.zeros(b, t, len(dapd.VOCAB))
        logits[:, :, dapd.X0] = torch.arange(t, dtype=torch.float) * 0.5
        return logits


def test_schedule_sample_commits_the_sizes_most_confident_first_in_len_sizes_forwards():
    sizes = dapd.topk_schedule(9, 4)  # 3 2 2 2
    prompt = torch.full((2, 1), dapd.BOS, dtype=torch.long)
    result = dapd.schedule_sample(Confident(), prompt, 9, sizes, temperature=0.0, generator=None)
    assert (result.tokens[:, 1:] == dapd.X0).all() and (result.nfe == 4).all() and result.num_steps == 4
    # the most confident (rightmost) masked positions first: 3 at step 0, then 2 per step
    assert result.step[0].tolist() == [3, 3, 2, 2, 1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="sum to G"):
        dapd.schedule_sample(Confident(), prompt, 9, [3, 3], temperature=0.0, generator=None)


def test_schedule_decoding_with_a_real_model_spends_exactly_its_steps():
    wl = dapd.Dapd(small_spec(options="pretrain_steps=0"))
    model = wl.build_base_model()
    for steps in (1, 4, 6, 9):
        result = wl.decode_schedule(model, 5, steps)
        assert (result.nfe == steps).all() and (result.tokens[:, 1:] != dapd.MASK).all()
        counts = [int((result.step[0] == i).sum()) for i in range(steps)]
        assert counts == dapd.topk_schedule(9, steps)


def test_pretrain_lr_warms_up_linearly_then_decays_by_cosine():
    lrs = [dapd.pretrain_lr(s, 110, 1e-2, 10) for s in range(110)]
    assert lrs[:10] == pytest.approx([1e-3 * (s + 1) for s in range(10)])
    assert lrs[10] == pytest.approx(1e-2) and lrs[60] == pytest.approx(5e-3)  # the cosine's half-way point
    assert lrs[-1] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert dapd.pretrain_lr(0, 4, 1.0, 0) == 1.0 and dapd.pretrain_lr(3, 4, 1.0, 100) == 1.0  # warm-up <= steps


@pytest.mark.parametrize("clip", [0.05, 0.0])
def test_pretraining_follows_the_schedule_and_clips_the_gradient(monkeypatch, clip):
    opts = f"pretrain_steps=6,pretrain_warmup=2,pretrain_lr=0.01,pretrain_clip={clip},pretrain_samples=32"
    opts += ",pretrain_restarts=0"  # one attempt (restarts: below)
    wl = dapd.Dapd(small_spec(options=opts + ",pretrain_batch=8"))
    seen = []
    step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(
            (self.param_groups[0]["lr"], float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        )
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    stats = wl._pretrain(wl._random_model())
    lrs, norms = zip(*seen, strict=True)
    assert list(lrs) == pytest.approx([dapd.pretrain_lr(s, 6, 0.01, 2) for s in range(6)])
    if clip:
        assert max(norms) <= clip * (1 + 1e-4)
    else:
        assert max(norms) > 0.05  # the same steps unclipped: the clip above did something
    assert stats["steps"] == 6 and 0 <= stats["validity_one"] <= 1


def test_a_weak_base_is_refused_with_one_line_and_its_validity_is_cached():
    opts = "pretrain_steps=3,pretrain_samples=32,pretrain_warmup=1,pretrain_restarts=0"
    with pytest.raises(ConfigError) as e:
        dapd.Dapd(small_spec(options=opts + ",min_base_validity=0.95")).build_base_model()
    message = str(e.value)
    assert "\n" not in message and message.startswith("workload.options: min_base_validity=0.95: ")
    # the measured validity is in the cache entry's meta: the same base with the guard off loads it
    wl = dapd.Dapd(small_spec(options=opts + ",min_base_validity=0"))
    wl.build_base_model()
    measured = wl.pretrain_meta["pretrain"]["validity_one"]
    assert wl.pretrain_meta["cached"] and measured < 0.95 and f"validity is {measured:.3f}" in message
    # and every evaluation reports it (the sweep's table shows each seed's base)
    _, test = wl.build_data()
    wl.params["eval_samples"] = 4
    assert wl.evaluate(wl.build_model(), test)["base_validity_one"] == measured


def scripted_validity(monkeypatch, values):
    """Make :meth:`Dapd.base_validity` return ``values`` in turn, keeping a copy of the weights it measured."""
    measured = []

    def fake(self, model):
        measured.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return values[len(measured) - 1]

    monkeypatch.setattr(dapd.Dapd, "base_validity", fake)
    return measured


RESTART_OPTS = "pretrain_steps=2,pretrain_samples=32,pretrain_warmup=1,pretrain_batch=8"


def same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_base_below_the_guard_is_retrained_from_a_derived_seed_and_the_meta_records_every_attempt(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path))  # a fresh cache: the validity below is scripted
    measured = scripted_validity(monkeypatch, [0.2, 0.95, 0.99])
    wl = dapd.Dapd(small_spec(seed=4, options=RESTART_OPTS + ",pretrain_restarts=3,min_base_validity=0.9"))
    model = wl.build_base_model()  # not refused: attempt 1 passes
    stats = wl.pretrain_meta["pretrain"]
    assert not wl.pretrain_meta["cached"] and len(measured) == 2  # stopped at the first passing attempt
    assert stats["attempt"] == 1 and stats["validity_one"] == 0.95
    assert [(a["attempt"], a["validity_one"], a["steps"]) for a in stats["attempts"]] == [(0, 0.2, 2), (1, 0.95, 2)]
    seeds = [a["seed"] for a in stats["attempts"]]
    assert seeds == [4, dapd.attempt_seed(4, 1)] and seeds[1] != 4
    assert same_weights(model.state_dict(), measured[1]) and not same_weights(measured[0], measured[1])
    # attempt 1 started from other weights than the seed's model
    with torch.random.fork_rng():
        torch.manual_seed(seeds[1])
        restart = dlm.TransformerLM(wl.model_config()).state_dict()
    assert not same_weights(restart, wl._random_model().state_dict())
    # the restarts and their threshold are in the key: another count is another base
    other = dapd.Dapd(small_spec(seed=4, options=RESTART_OPTS + ",pretrain_restarts=2,min_base_validity=0.9"))
    assert other.pretrain_payload() != wl.pretrain_payload()


def test_when_no_attempt_passes_the_best_is_kept_and_the_guard_refuses_it(monkeypatch):
    measured = scripted_validity(monkeypatch, [0.3, 0.6, 0.1])
    wl = dapd.Dapd(small_spec(options=RESTART_OPTS + ",pretrain_restarts=2,min_base_validity=0.9"))
    model = wl._random_model()
    stats = wl._pretrain(model)
    assert [a["validity_one"] for a in stats["attempts"]] == [0.3, 0.6, 0.1]
    assert stats["attempt"] == 1 and stats["validity_one"] == 0.6 and same_weights(model.state_dict(), measured[1])


@pytest.mark.parametrize(
    "options", ["pretrain_restarts=0,min_base_validity=0.9", "pretrain_restarts=3,min_base_validity=0"]
)
def test_no_restart_without_restarts_or_without_a_guard(monkeypatch, options):
    scripted_validity(monkeypatch, [0.0, 1.0])
    wl = dapd.Dapd(small_spec(options=RESTART_OPTS + "," + options))
    stats = wl._pretrain(wl._random_model())
    assert stats["attempt"] == 0 and len(stats["attempts"]) == 1 and stats["validity_one"] == 0.0
    plain = dapd.Dapd(small_spec(options=RESTART_OPTS + ",pretrain_restarts=0,min_base_validity=0"))
    assert wl.pretrain_payload() == plain.pretrain_payload()  # both one plain run: one base


def test_an_attempt_stops_at_the_first_passing_check(monkeypatch):
    monkeypatch.setattr(dapd, "CHECK_FROM", 2)
    monkeypatch.setattr(dapd, "CHECK_EVERY", 2)
    measured = scripted_validity(monkeypatch, [0.5, 0.93, 1.0])  # checks after steps 2 and 4
    wl = dapd.Dapd(small_spec(options="pretrain_steps=8,pretrain_samples=32,pretrain_batch=8,min_base_validity=0.9"))
    stats = wl._pretrain(wl._random_model())
    assert len(measured) == 2 and stats["steps"] == 4 and stats["validity_one"] == 0.93 and stats["attempt"] == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("eval_decoders=one zebra", "eval_decoders='one zebra': must be a string of 1 to 5 items"),
        ("tau_rel=0", "tau_rel=0.0: must be a number in"),
        ("tau_rel=-1", "tau_rel=-1.0"),
        ("length=1", "length=1: must be an integer in"),
        ("copies=0", "copies=0"),
        ("client_skew=0.2", "client_skew=0.2"),
        ("threshold=1", "threshold=1.0"),
        ("topk_k=10", "topk_k=10: tokens per step must be at most G"),
        ("pretrain_task=zebra", "pretrain_task='zebra': must be one of format, rule"),
        ("positions=alibi", "positions='alibi'"),
        ("pretrain_clip=-1", "pretrain_clip=-1.0: must be a number in"),
        ("pretrain_warmup=-5", "pretrain_warmup=-5: must be an integer in"),
        ("min_base_validity=1.5", "min_base_validity=1.5: must be a number in"),
        ("pretrain_restarts=21", "pretrain_restarts=21: must be an integer in"),
        ("pretrain_restarts=-1", "pretrain_restarts=-1: must be an integer in"),
        ("eval_topk_ks=3 10", "eval_topk_ks='3 10': tokens per step must be at most G"),
        ("eval_topk_ks=3 0", "eval_topk_ks='3 0': must be a string of"),
    ],
)
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError, match=message) as e:
        checked_config({"workload.name": "dapd", "workload.options": options})
    assert "\n" not in str(e.value) and str(e.value).startswith("workload.")


def test_bad_option_exits_2_before_anything_runs(tmp_path):
    out = tmp_path / "o"
    proc = run_fedsim(["run", "--workload", "dapd", "--set", "workload.options=tau_rel=0", "--out", str(out)])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "tau_rel=0" in proc.stderr and not out.exists()


@pytest.mark.slow  # a real process that pretrains; the refusal itself is checked in process above
def test_the_guard_exits_2_with_one_line_before_anything_runs(tmp_path):
    out = tmp_path / "o"
    options = "workload.options=pretrain_steps=3,pretrain_samples=32,min_base_validity=0.95"
    proc = run_fedsim(["run", "--workload", "dapd", "--set", options, "--out", str(out)])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "min_base_validity=0.95" in proc.stderr and not out.exists()
