"""(d) server aggregation against hand-computed averages."""

from __future__ import annotations

import pytest
import torch

from fedsim.soft import SPARSIFIERS, SparseUpdate, aggregate


def _rank_update(ranks, A_rows, B_cols, r=3):
    return SparseUpdate(
        d_in=2,
        d_out=2,
        rank=r,
        value_bits=32,
        payload_bits=1,
        dropped_rank_error=0.0,
        rank_indices=torch.tensor(ranks, dtype=torch.int64),
        A_rows=torch.tensor(A_rows, dtype=torch.float32),
        B_cols=torch.tensor(B_cols, dtype=torch.float32),
    )


def test_per_rank_average_by_hand():
    # r = 3, d_in = d_out = 2. Client 1 (weight 1) sends ranks {0, 1}, client 2 (weight 3) sends
    # rank {0}; nobody sends rank 2.
    global_A = torch.tensor([[9.0, 9.0], [8.0, 8.0], [7.0, 7.0]])
    global_B = torch.tensor([[9.0, 8.0, 7.0], [-9.0, -8.0, -7.0]])
    c1 = _rank_update([0, 1], [[1.0, 2.0], [3.0, 4.0]], [[10.0, 30.0], [20.0, 40.0]])
    c2 = _rank_update([0], [[5.0, 6.0]], [[50.0], [60.0]])
    A_before, B_before = global_A.clone(), global_B.clone()

    A_new, B_new = aggregate(global_A, global_B, [(1.0, c1), (3.0, c2)])

    # rank 0: (1 * c1 + 3 * c2) / 4; rank 1: client 1 alone (weight renormalised to 1);
    # rank 2: previous global value
    expected_A = torch.tensor([[(1 + 15) / 4, (2 + 18) / 4], [3.0, 4.0], [7.0, 7.0]])
    expected_B = torch.tensor([[(10 + 150) / 4, 30.0, 7.0], [(20 + 180) / 4, 40.0, -7.0]])
    torch.testing.assert_close(A_new, expected_A)
    torch.testing.assert_close(B_new, expected_B)
    assert torch.equal(global_A, A_before) and torch.equal(global_B, B_before)  # pure
    assert A_new.dtype == global_A.dtype


def test_element_average_by_hand():
    global_A = torch.zeros(2, 2) + 100.0
    global_B = torch.zeros(2, 2) - 100.0

    def elem(iA, vA, iB, vB):
        return SparseUpdate(
            d_in=2,
            d_out=2,
            rank=2,
            value_bits=32,
            payload_bits=1,
            dropped_rank_error=0.0,
            A_indices=torch.tensor(iA, dtype=torch.int64),
            A_values=torch.tensor(vA, dtype=torch.float32),
            B_indices=torch.tensor(iB, dtype=torch.int64),
            B_values=torch.tensor(vB, dtype=torch.float32),
        )

    u1 = elem([0, 3], [1.0, 2.0], [1], [4.0])
    u2 = elem([0], [7.0], [1, 2], [8.0, 6.0])
    A_new, B_new = aggregate(global_A, global_B, [(2.0, u1), (1.0, u2)])
    torch.testing.assert_close(A_new, torch.tensor([[(2 + 7) / 3, 100.0], [100.0, 2.0]]))
    torch.testing.assert_close(B_new, torch.tensor([[-100.0, (8 + 8) / 3], [6.0, -100.0]]))


def test_dense_updates_give_the_weighted_mean(random_factors):
    factors = [random_factors(4, 6, 5, seed=s) for s in range(3)]
    weights = [1.0, 2.0, 5.0]
    updates = [(w, SPARSIFIERS["dense"](A, B, 0.0, 32)) for w, (A, B) in zip(weights, factors, strict=True)]
    A_new, B_new = aggregate(torch.zeros(4, 6), torch.zeros(5, 4), updates)
    total = sum(weights)
    torch.testing.assert_close(A_new, sum(w * A for w, (A, _) in zip(weights, factors, strict=True)) / total)
    torch.testing.assert_close(B_new, sum(w * B for w, (_, B) in zip(weights, factors, strict=True)) / total)


def test_no_updates_keeps_the_global_and_bad_input_is_rejected(random_factors):
    A, B = random_factors(3, 4, 5, seed=0)
    A_new, B_new = aggregate(A, B, [])
    assert torch.equal(A_new, A) and torch.equal(B_new, B) and A_new is not A
    update = SPARSIFIERS["soft"](A, B, 0.5, 32)
    with pytest.raises(ValueError, match="-1.0"):
        aggregate(A, B, [(-1.0, update)])
    with pytest.raises(ValueError, match="global factors"):
        aggregate(torch.zeros(3, 7), torch.zeros(5, 3), [(1.0, update)])
