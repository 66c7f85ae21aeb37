"""Upload encoding, decoding and aggregation of every method on a realistic adapter state."""

import math

import numpy as np
import pytest

from fedsim.core.methods import METHODS, aggregate_uploads, decode_upload, dropped_errors, get_method, split_state
from fedsim.core.quantise import dequantise, quantise
from fedsim.soft import payload_bits
from tests.helpers.methods import (
    D_IN,
    D_OUT,
    R,
    check_aggregates_its_own_uploads,
    check_prices_its_upload_exactly,
    gen,
    make_state,
)


def test_split_state_pairs_lora_and_extras():
    pairs, extras = split_state(make_state(0))
    assert len(pairs) == 4 and len(extras) == 2


def test_ideal_round_trip_is_fedavg():
    states = [make_state(s) for s in range(3)]
    weights = [10.0, 20.0, 30.0]
    uploads = []
    for st, w in zip(states, weights, strict=True):
        arrays, stats = get_method("ideal").encode(st, 0.0, 32, gen())
        assert stats["payload_bits"] == sum(a.size for a in st.values()) * 32
        assert stats["dropped_rank_error"] == 0.0
        uploads.append((w, *decode_upload(arrays)))
    new, cov = aggregate_uploads(make_state(99), uploads)
    for name in states[0]:
        expected = sum(w * st[name] for w, st in zip(weights, states, strict=True)) / sum(weights)
        assert np.allclose(new[name], expected, atol=1e-6)
    # covariance diagnostic = || sum_k w_k B_k A_k - B_bar A_bar ||_F summed in quadrature over modules
    w = np.asarray(weights) / sum(weights)
    sq = 0.0
    for a_name, b_name in split_state(states[0])[0].values():
        mix = sum(wk * st[b_name] @ st[a_name] for wk, st in zip(w, states, strict=True))
        sq += np.linalg.norm(mix - new[b_name] @ new[a_name]) ** 2
    assert cov == pytest.approx(math.sqrt(sq), rel=1e-4)


@pytest.mark.parametrize("rho", [0.25, 0.5, 0.75])
def test_soft_payload_is_the_formula_and_topk_matches_it(rho):
    st = make_state(1)
    _, soft = get_method("soft").encode(st, rho, 32, gen())
    k = max(1, math.ceil((1 - rho) * R))
    extras_bits = (4 * D_OUT + 4) * 32
    assert soft["payload_bits"] == 4 * payload_bits(D_IN, D_OUT, R, k, 32) + extras_bits
    assert soft["kept_ranks"] == k
    _, topk = get_method("topk").encode(st, rho, 32, gen())
    assert topk["payload_bits"] <= soft["payload_bits"]
    # at most one element (value + index bits) per factor below SOFT's bits
    assert soft["payload_bits"] - topk["payload_bits"] < 4 * 2 * (32 + math.ceil(math.log2(D_IN * R)))


def test_every_method_decodes_and_aggregates(tmp_path):
    g = make_state(5)
    for method in METHODS:
        uploads = []
        m = get_method(method)
        for s in range(2):
            arrays, stats = m.encode(make_state(s), 0.5, 16, gen(s))
            assert all(a.dtype in (np.float16, np.int64, np.float64) for a in arrays.values()), method
            uploads.append((1.0, *m.decode(arrays)))
        new, cov = m.aggregate(g, uploads)
        assert set(new) == set(g) and all(np.isfinite(v).all() for v in new.values()), method
        assert np.isfinite(cov)


def test_unsent_ranks_keep_global_value():
    g = make_state(7)
    arrays, _ = get_method("soft").encode(make_state(8), 0.75, 32, gen())
    updates, extras = decode_upload(arrays)
    new, _ = aggregate_uploads(g, [(1.0, updates, extras)])
    for module, (a_name, _) in split_state(g)[0].items():
        kept = updates[module].rank_indices.numpy()
        dropped = sorted(set(range(R)) - set(kept))
        assert np.array_equal(new[a_name][dropped], g[a_name][dropped])
        assert np.allclose(new[a_name][kept], make_state(8)[a_name][kept])


def test_reported_dropped_errors_are_what_soft_drops():
    st = make_state(3)
    errors = dropped_errors(st, (0.0, 0.5, 0.75))
    assert errors[0] == 0.0 and errors[1] < errors[2]
    for rho, err in zip((0.5, 0.75), errors[1:], strict=True):
        _, soft = get_method("soft").encode(st, rho, 32, gen())
        assert err == pytest.approx(soft["dropped_rank_error"], rel=1e-6)


def test_every_method_has_a_value_count_formula():
    assert all(m.matrix_values is not None for m in METHODS.values())


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("rho", [0.0, 0.3, 0.5, 0.875])
@pytest.mark.parametrize("value_bits", [16, 32])
@pytest.mark.parametrize("quant_bits", [0, 1, 4, 8, 16])
def test_every_method_prices_its_upload_exactly(name, rho, value_bits, quant_bits):
    check_prices_its_upload_exactly(name, rho, value_bits, quant_bits)


def test_ffa_sends_b_only_half_of_dense_for_square_layers():
    ffa, ideal = get_method("ffa"), get_method("ideal")
    assert ffa.matrix_bits(32, 32, 8, 0.0, 32) * 2 == ideal.matrix_bits(32, 32, 8, 0.0, 32)
    state = make_state(4)
    arrays, stats = ffa.encode(state, 0.5, 32, gen())
    updates, extras = ffa.decode(arrays)
    g = make_state(9)
    new, _ = ffa.aggregate(g, [(1.0, updates, extras)])
    for a_name, b_name in split_state(g)[0].values():
        assert np.array_equal(new[a_name], g[a_name])  # A is never sent: the global (frozen) A stays
        assert np.allclose(new[b_name], state[b_name])
    shapes = {k: v.shape for k, v in state.items()}
    a_values = sum(v.size for k, v in state.items() if ".lora_A." in k)
    assert ffa.downlink_bits(shapes, 32) == ideal.downlink_bits(shapes, 32) - a_values * 32


def test_fedsa_broadcasts_no_b():
    """FedSA-LoRA's B stays on the clients and the server never changes the global one: the
    broadcast carries A and the extras only."""
    fedsa, ideal = get_method("fedsa"), get_method("ideal")
    state = make_state(4)
    shapes = {k: v.shape for k, v in state.items()}
    b_values = sum(v.size for k, v in state.items() if ".lora_B." in k)
    assert fedsa.downlink_bits(shapes, 32) == ideal.downlink_bits(shapes, 32) - b_values * 32
    sent, bits = fedsa.broadcast(state, 32, 8, seed=1)
    assert bits == fedsa.downlink_bits(shapes, 32, 8)
    for k, v in state.items():
        assert np.array_equal(sent[k], v) == (".lora_B." in k)  # B is not sent: the clients' own value


@pytest.mark.parametrize("name", sorted(n for n, m in METHODS.items() if m.needs_client_state))
@pytest.mark.parametrize("rho", [0.3, 0.875])
def test_client_state_methods_price_their_second_round_exactly(name, rho):
    """Round 2 of a method with client state (what it kept from round 1 in play) is priced by the
    same formula; error feedback's residual is exactly what the server did not receive."""
    method = get_method(name)
    shapes = {k: v.shape for k, v in make_state(0).items()}
    global1, trained1 = make_state(10), make_state(3)
    _, stats1, kept = method.encode_stateful(trained1, global1, None, rho, 16, gen(1))
    assert kept is not None
    global2, trained2 = make_state(11), make_state(4)
    start = method.start_state(global2, kept)
    arrays, stats2, kept2 = method.encode_stateful(trained2, start, kept, rho, 16, gen(2))
    assert stats1["payload_bits"] == stats2["payload_bits"] == method.adapter_bits(shapes, R, rho, 16)
    pairs, _ = split_state(trained2)
    if method.personalised:  # fedsa: B comes from the client, never from the server
        for a_name, b_name in pairs.values():
            assert np.array_equal(start[b_name], trained1[b_name]) and np.array_equal(start[a_name], global2[a_name])
            assert np.array_equal(kept2[b_name], trained2[b_name])
        return
    updates, _ = method.decode(arrays)
    for module, (a_name, b_name) in pairs.items():
        A_k, mA, B_k, mB = (t.numpy() for t in updates[module].decompress())
        corrected = trained2[a_name] + kept[a_name]
        held = np.where(mA, A_k, start[a_name])
        np.testing.assert_allclose(kept2[a_name], corrected - held, atol=1e-6)
        assert np.all(kept2[a_name][~mA] == corrected[~mA] - start[a_name][~mA])  # unsent: the whole update
        assert np.abs(kept2[a_name][mA]).max() < 1e-2  # sent: only the float16 rounding is left
        assert kept2[b_name].shape == trained2[b_name].shape


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_aggregates_its_own_uploads(name):
    check_aggregates_its_own_uploads(name)


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_quantiser_is_unbiased_and_within_one_step(bits):
    """E[x^] = x: the mean of N independent draws is within 5 standard errors of x, with the
    per-draw standard deviation at most step / 2 (a two-point distribution one step wide)."""
    x = np.random.default_rng(0).normal(size=64).astype(np.float32)
    s = float(np.abs(x).max())
    step = 2 * s / (2**bits - 1)
    g = gen(3)
    n = 2000
    draws = np.stack([dequantise(*quantise(x, bits, g), bits) for _ in range(n)]).astype(np.float64)
    assert np.abs(draws - x).max() <= step * (1 + 1e-6)
    assert np.all(np.abs(draws.mean(axis=0) - x) <= 5 * (step / 2) / math.sqrt(n) + 1e-7)
    codes, scale = quantise(x, bits, gen(0))
    assert codes.dtype == (np.uint8 if bits <= 8 else np.uint16) and codes.max() <= 2**bits - 1
    assert scale.dtype == np.float32 and float(scale[0]) >= s


def test_quantiser_keeps_zeros_and_float16_scales_cover_the_values():
    codes, scale = quantise(np.zeros(5, np.float32), 4, gen())
    assert np.array_equal(dequantise(codes, scale, 4), np.zeros(5, np.float32))
    x = np.asarray([0.1, -0.30004, 0.2], dtype=np.float16)
    codes, scale = quantise(x, 8, gen())
    assert scale.dtype == np.float16 and float(scale[0]) >= float(np.abs(x.astype(np.float32)).max())
    assert dequantise(codes, scale, 8).dtype == np.float16


@pytest.mark.slow  # loads the tiny text-classify model (about 20 s on a loaded machine)
def test_ffa_local_training_keeps_a_at_its_initialisation():
    """The method's ``frozen`` tensors really are not trained (FFA-LoRA trains B and the head
    only), and the shared model is left as it was for the next client of the process."""
    from dataclasses import replace

    from fedsim.core.config import build_config
    from fedsim.core.training import client_update, initial_state, load_workload

    flat = {"run.clients": 2, "workload.samples_per_client": 48, "workload.test_samples": 8}  # 3 local steps
    cfg = build_config({**flat, "run.method": "ffa"})
    start = initial_state(cfg)
    trained, _ = client_update(cfg, 0, 1, start)
    pairs, extras = split_state(start)
    for a_name, b_name in pairs.values():
        assert np.array_equal(trained[a_name], start[a_name])
        assert not np.array_equal(trained[b_name], start[b_name])
    assert all(not np.array_equal(trained[n], start[n]) for n in extras)
    assert all(p.requires_grad for n, p in load_workload(cfg).model.named_parameters() if ".lora_" in n)
    other, _ = client_update(replace(cfg, run=replace(cfg.run, method="ideal")), 0, 1, start)
    assert all(not np.array_equal(other[a], start[a]) for a, _ in pairs.values())
