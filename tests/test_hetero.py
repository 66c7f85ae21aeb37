"""Heterogeneous LoRA ranks (fedsim.core.hetero): the rank rule, the rank-r adapter, mixed-rank aggregation."""

import numpy as np
import pytest
import torch

from fedsim.core import hetero
from fedsim.core.methods import aggregate_uploads, get_method
from tests.helpers.methods import D_IN, D_OUT, R, make_state


def test_clients_split_into_equal_groups_by_the_quantity():
    speeds = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 0.5])
    assert list(hetero.client_ranks(speeds, (2, 4, 8))) == [8, 2, 4, 4, 8, 2]
    # ties by client id; one level gives everyone that rank
    assert list(hetero.client_ranks(np.zeros(4), (2, 8))) == [2, 2, 8, 8]
    assert list(hetero.client_ranks(speeds, (4,))) == [4] * 6


def test_a_rank_r_client_trains_and_uploads_r_ranks():
    state = make_state(0)
    kept = hetero.keep_ranks(state, 3)
    small = hetero.truncate(state, 3)
    a, b = (
        "base_model.model.layer.0.query.lora_A.default.weight",
        "base_model.model.layer.0.query.lora_B.default.weight",
    )
    assert np.all(kept[a][3:] == 0) and np.all(kept[b][:, 3:] == 0) and np.array_equal(kept[a][:3], state[a][:3])
    assert small[a].shape == (3, D_IN) and small[b].shape == (D_OUT, 3)
    # zeroed ranks get zero gradients: training a rank-R model from kept moves only the first 3 ranks
    A = torch.tensor(kept[a], requires_grad=True)
    B = torch.tensor(kept[b], requires_grad=True)
    x = torch.randn(5, D_IN)
    ((x @ A.T @ B.T) ** 2).sum().backward()
    assert torch.all(A.grad[3:] == 0) and torch.all(B.grad[:, 3:] == 0)
    bits = get_method("ideal").encode(small, 0.0, 32, torch.Generator())[1]["payload_bits"]
    assert bits == 4 * 3 * (D_IN + D_OUT) * 32 + (4 * D_OUT + 4) * 32


def test_compute_grows_with_the_rank_by_the_lora_share():
    shapes = {k: v.shape for k, v in make_state(0).items()}
    f2, f8 = (hetero.flops_per_sample_at_rank(1e9, shapes, r) for r in (2, 8))
    assert 1e9 < f2 < f8
    assert f8 == pytest.approx(1e9 * (1 + 8 * (D_IN + D_OUT) / (D_IN * D_OUT)))


def uploads_at(ranks, method="ideal"):
    out = []
    for s, r in enumerate(ranks):
        arrays, _ = get_method(method).encode(hetero.truncate(make_state(s), r), 0.5, 32, torch.Generator())
        out.append((float(s + 1), *get_method(method).decode(arrays)))
    return out


def test_equal_ranks_zero_padding_is_fedavg():
    g = make_state(9)
    ups = uploads_at([R, R, R])
    ours, cov = hetero.aggregate(g, ups, "zero-pad")
    ref, ref_cov = aggregate_uploads(g, ups)
    for k in g:
        np.testing.assert_allclose(ours[k], ref[k], atol=1e-6)
    assert cov == pytest.approx(ref_cov, rel=1e-4)


@pytest.mark.parametrize("method", ["ideal", "soft", "topk"])
def test_mixed_ranks_aggregate_to_the_global_rank(method):
    g = make_state(9)
    ups = uploads_at([2, 4, R], method)
    for how in hetero.AGGREGATIONS:
        new, cov = hetero.aggregate(g, ups, how)
        assert all(new[k].shape == g[k].shape and np.isfinite(new[k]).all() for k in g) and np.isfinite(cov)
    zp, _ = hetero.aggregate(g, ups, "zero-pad")
    a = "base_model.model.layer.0.query.lora_A.default.weight"
    if method == "ideal":  # rows 4.. come from the rank-8 client alone, weighted by its share 3/6
        np.testing.assert_allclose(zp[a][4:], 0.5 * make_state(2)[a][4:], atol=1e-6)


def test_flexlora_redistributes_the_averaged_product_by_svd():
    g = make_state(9)
    ups = uploads_at([2, 4])
    new, _ = hetero.aggregate(g, ups, "flexlora")
    w = np.array([1.0, 2.0]) / 3.0
    W = 0
    for wk, s, r in zip(w, (0, 1), (2, 4), strict=True):
        st = make_state(s)
        for a, b in hetero.lora_pairs(st)[:1]:
            W = W + wk * st[b][:, :r] @ st[a][:r]
    a, b = hetero.lora_pairs(g)[0]
    np.testing.assert_allclose(new[b] @ new[a], W, atol=1e-4)  # rank(W) <= 6 <= R: exact
    sv = np.linalg.norm(new[a], axis=1) * np.linalg.norm(new[b], axis=0)
    assert np.all(np.diff(sv) <= 1e-5)  # leading ranks carry the largest singular values
