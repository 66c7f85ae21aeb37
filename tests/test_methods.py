"""Upload encoding, decoding and aggregation of every method on a realistic adapter state."""

import math

import numpy as np
import pytest
import torch

from fedsim.methods import METHODS, aggregate_uploads, decode_upload, dropped_errors, get_method, split_state
from fedsim.soft import payload_bits

D_IN, D_OUT, R = 24, 16, 8


def make_state(seed: int) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    state = {}
    for layer in range(2):
        for proj in ("query", "value"):
            prefix = f"base_model.model.layer.{layer}.{proj}"
            state[f"{prefix}.lora_A.default.weight"] = g.normal(size=(R, D_IN)).astype(np.float32)
            state[f"{prefix}.lora_B.default.weight"] = g.normal(size=(D_OUT, R)).astype(np.float32)
    state["base_model.model.head.modules_to_save.default.weight"] = g.normal(size=(4, D_OUT)).astype(np.float32)
    state["base_model.model.head.modules_to_save.default.bias"] = g.normal(size=4).astype(np.float32)
    return state


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


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


def wire_counts(arrays: dict[str, np.ndarray]) -> tuple[int, int]:
    """(values, indices) an encoded upload carries: float and integer entries, without the
    simulator's bookkeeping (``meta``: shapes and kind; ``dropped_rank_error``: a diagnostic)."""
    sent = {k: a for k, a in arrays.items() if not k.endswith(("::meta", "::dropped_rank_error"))}
    values = sum(a.size for a in sent.values() if np.issubdtype(a.dtype, np.floating))
    indices = sum(a.size for a in sent.values() if np.issubdtype(a.dtype, np.integer))
    return values, indices


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("rho", [0.0, 0.3, 0.5, 0.875])
@pytest.mark.parametrize("value_bits", [16, 32])
def test_every_method_prices_its_upload_exactly(name, rho, value_bits):
    """The shared method test: the payload formula a scheduler prices an upload with equals the
    bits the encoder reports, and those bits carry every value on the wire at q bits plus at most
    a few bits per index."""
    method = get_method(name)
    state = make_state(3)
    arrays, stats = method.encode(state, rho, value_bits, gen(1))
    shapes = {k: v.shape for k, v in state.items()}
    assert stats["payload_bits"] == method.adapter_bits(shapes, R, rho, value_bits)
    values, indices = wire_counts(arrays)
    assert (
        values * value_bits <= stats["payload_bits"] <= values * value_bits + indices * math.ceil(math.log2(R * D_IN))
    )
    if not method.sparsifies:
        assert stats["payload_bits"] == method.adapter_bits(shapes, R, 0.0, value_bits)


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
    method = get_method(name)
    g = make_state(99)
    uploads = []
    for s in range(3):
        arrays, stats = method.encode(make_state(s), 0.5, 32, gen(s))
        uploads.append((float(s + 1), *method.decode(arrays)))
    new, cov = method.aggregate(g, uploads)
    assert set(new) == set(g) and all(new[k].shape == g[k].shape for k in g)
    assert all(np.isfinite(v).all() for v in new.values()) and math.isfinite(cov)
    assert any(not np.array_equal(new[k], g[k]) for k in g)
