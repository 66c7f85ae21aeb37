"""workloads.diffusion_lm: the LLaDA loss against a hand computation, the masking process, the
samplers' invariants (unmasked tokens kept, no mask left, documented NFE) and the ARM twin."""

import math

import pytest
import torch
import torch.nn.functional as F

from workloads import diffusion_lm as dlm

V, MASK = 12, 11


def model(causal: bool = False, positions: str = "rotary", seed: int = 0) -> dlm.TransformerLM:
    cfg = dlm.TransformerConfig(
        vocab_size=V, d_model=16, num_heads=2, num_layers=2, d_ff=32, positions=positions, max_len=64, causal=causal
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return dlm.TransformerLM(cfg).eval()


def test_loss_equals_hand_computation():
    torch.manual_seed(0)
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    response = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]], dtype=torch.bool)
    masked = torch.tensor([[0, 0, 1, 0, 1], [0, 0, 0, 1, 0]], dtype=torch.bool)
    p = torch.tensor([0.5, 0.25])
    logits = torch.randn(2, 5, V)
    got = dlm.mdm_loss_from_logits(logits, ids, masked, p, response)
    # by hand: sequence 0 has 3 response positions, 2 masked (positions 2 and 4), p = 0.5;
    # sequence 1 has 4 response positions, 1 masked (position 3), p = 0.25.
    logp = logits.log_softmax(-1)
    seq0 = -(logp[0, 2, 3] + logp[0, 4, 5]) / 0.5 / 3
    seq1 = -logp[1, 3, 9] / 0.25 / 4
    assert got.item() == pytest.approx(((seq0 + seq1) / 2).item(), rel=1e-6)


def test_mask_probability_and_prompt_never_masked():
    ids = torch.arange(1, 9).repeat(4000, 1)  # (4000, 8)
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[:, 3:] = True
    t = torch.linspace(0, 1, 4000)
    noisy, masked, p = dlm.mask_response(ids, response, MASK, torch.Generator().manual_seed(0), t=t)
    assert not masked[:, :3].any() and (noisy[:, :3] == ids[:, :3]).all()
    assert torch.equal(noisy == MASK, masked)
    assert torch.allclose(p, (1 - dlm.LLADA_EPS) * t + dlm.LLADA_EPS)
    # masked share of the 5 response positions ~ mean p = 0.5; binomial sd over 20000 draws ~ 0.0035
    share = masked[:, 3:].float().mean().item()
    assert abs(share - p.mean().item()) < 5 * math.sqrt(0.25 / 20000)
    # t = 0 still masks with probability eps, never more: the first rows are almost never masked
    assert masked[:10].sum() <= 2


def test_mdm_loss_deterministic_for_a_generator_and_finite():
    m = model()
    ids = torch.randint(0, MASK, (3, 10))
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[:, 4:] = True
    a = dlm.mdm_loss(m, ids, response, MASK, dlm.batch_generator(ids, 0))
    b = dlm.mdm_loss(m, ids, response, MASK, dlm.batch_generator(ids, 0))
    c = dlm.mdm_loss(m, ids, response, MASK, dlm.batch_generator(ids, 1))
    assert a.item() == b.item() and math.isfinite(a.item()) and a.item() != c.item()


def test_mdm_is_bidirectional_and_arm_causal():
    ids = torch.randint(0, MASK, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % MASK
    for causal in (False, True):
        m = model(causal=causal)
        diff = (m(changed) - m(ids)).abs().amax(-1)[0]
        assert diff[-1] > 0
        if causal:
            assert torch.all(diff[:-1] == 0)  # the past never sees the future
        else:
            assert torch.all(diff[:-1] > 0)


@pytest.mark.parametrize("positions", dlm.POSITIONS)
def test_attention_maps_match_the_fast_path(positions):
    m = model(positions=positions)
    ids = torch.randint(0, MASK, (2, 9))
    logits, maps = m(ids, return_attentions=True)
    assert torch.allclose(logits, m(ids), atol=1e-5)
    assert len(maps) == 2 and maps[0].shape == (2, 2, 9, 9)
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, 2, 9))


def test_rotary_attention_depends_on_relative_position_only():
    cos, sin = dlm.rotary_tables(20, 8, 10000.0)
    q, k = torch.randn(8), torch.randn(8)

    def score(i, j):
        return (dlm.apply_rotary(q, cos[i], sin[i]) @ dlm.apply_rotary(k, cos[j], sin[j])).item()

    assert score(3, 1) == pytest.approx(score(15, 13), abs=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-4)


def test_parameter_count():
    cfg = dlm.TransformerConfig(vocab_size=V, d_model=16, num_heads=2, num_layers=3, d_ff=40, positions="learned")
    assert dlm.count_parameters(cfg) == sum(p.numel() for p in dlm.TransformerLM(cfg).parameters())


SAMPLERS = [
    dict(tokens_per_step=1),
    dict(tokens_per_step=3),
    dict(tokens_per_step=2, block_length=5),
    dict(tokens_per_step=1, block_length=4, temperature=1.0),
    dict(threshold=0.2),
    dict(threshold=0.9, block_length=6, temperature=0.7),
]


@pytest.mark.parametrize("kwargs", SAMPLERS)
def test_sampler_keeps_prompt_commits_once_ends_unmasked_with_documented_nfe(kwargs):
    m = model()
    prompt = torch.randint(0, MASK, (3, 4))
    g = 13
    calls: list[torch.Tensor] = []

    def spy(input_ids, **kw):
        calls.append(input_ids.clone())
        return m(input_ids, **kw)

    out = dlm.mdm_sample(spy, prompt, g, MASK, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(out.tokens[:, :4], prompt)
    assert not (out.tokens == MASK).any()
    assert out.num_steps == len(calls)
    # every forward sees the previous one's committed tokens unchanged (a token once unmasked stays)
    for before, after in zip(calls, [*calls[1:], out.tokens], strict=True):
        kept = before != MASK
        assert torch.equal(after[kept], before[kept])
    # each canvas position was committed exactly once, at the step recorded
    for step, seen in enumerate(calls):
        assert torch.equal(seen[:, 4:] == MASK, out.step >= step)
    assert (out.step >= 0).all()
    if kwargs.get("threshold") is None:
        want = dlm.expected_nfe(g, kwargs["tokens_per_step"], kwargs.get("block_length"))
        assert out.nfe.tolist() == [want] * 3
    else:
        assert (out.nfe >= 1).all() and (out.nfe <= g).all()
        assert out.nfe.max().item() == out.num_steps


def test_one_token_per_step_spends_g_evaluations_and_blocks_go_left_to_right():
    m = model()
    prompt = torch.randint(0, MASK, (2, 3))
    out = dlm.mdm_sample(m, prompt, 10, MASK)
    assert out.nfe.tolist() == [10, 10] and sorted(out.step[0].tolist()) == list(range(10))
    out = dlm.mdm_sample(m, prompt, 10, MASK, block_length=4)
    assert (out.step[:, :4].amax(1) < out.step[:, 4:8].amin(1)).all()
    assert (out.step[:, 4:8].amax(1) < out.step[:, 8:].amin(1)).all()
    assert dlm.expected_nfe(10, 1, 4) == 10 and dlm.expected_nfe(10, 3, 4) == 2 + 2 + 1


def test_threshold_sampler_commits_by_confidence():
    """A fake network that is certain at even positions commits them all in the first step."""
    g = 8

    def net(input_ids, **kw):
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], V)
        logits[:, :, 5] = 1.0
        logits[:, 0::2, 7] = 50.0
        return logits

    out = dlm.mdm_sample(net, torch.zeros(1, 2, dtype=torch.long), g, MASK, threshold=0.9)
    assert out.step[0, 0::2].tolist() == [0] * 4  # prompt length 2: canvas even positions are sequence even
    assert out.tokens[0, 2::2].tolist() == [7] * 4
    assert out.nfe.item() == 1 + 4  # then one (the most confident) per step


def test_temperature_sampling_reproducible_for_a_seed():
    m = model()
    prompt = torch.zeros(4, 3, dtype=torch.long).repeat(1, 1)
    a = dlm.mdm_sample(m, prompt, 10, MASK, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = dlm.mdm_sample(m, prompt, 10, MASK, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.tokens, b.tokens)
    # identical prompts take different trajectories when sampled (greedy would make them identical)
    assert len({tuple(r) for r in a.tokens.tolist()}) > 1
    greedy = dlm.mdm_sample(m, prompt, 10, MASK)
    assert len({tuple(r) for r in greedy.tokens.tolist()}) == 1


def test_arm_loss_and_sampler():
    m = model(causal=True)
    ids = torch.randint(0, MASK, (2, 6))
    response = torch.tensor([[0, 0, 0, 1, 1, 1]] * 2, dtype=torch.bool)
    logits = m(ids)
    want = F.cross_entropy(logits[:, 2:5].reshape(-1, V), ids[:, 3:].reshape(-1))
    assert dlm.arm_loss(m, ids, response).item() == pytest.approx(want.item(), rel=1e-6)
    out = dlm.arm_sample(m, ids[:, :3], 5, forbidden=(MASK,))
    assert out.tokens.shape == (2, 8) and out.nfe.tolist() == [5, 5] and not (out.tokens[:, 3:] == MASK).any()
    assert torch.equal(out.tokens[:, 3], m(ids[:, :3])[:, -1, :MASK].argmax(-1))
