"""(c) decompress(compress(x)) == x on the kept entries, for every registered sparsifier."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from fedsim.soft import SPARSIFIERS, SparseUpdate, keep_count

WIRE = {16: np.float16, 32: np.float32}


def _serialise(array: np.ndarray) -> np.ndarray:
    """A bytes round trip like a Flower Array's (np.save / np.load); the result is read-only."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    out = np.load(io.BytesIO(buffer.getvalue()), allow_pickle=False)
    out.setflags(write=False)
    return out


def _compress(name, A, B, rho, q):
    return SPARSIFIERS[name](A, B, rho, q, generator=torch.Generator().manual_seed(11))


def _sent_factors(name, update, A, B):
    """The factors the update claims to carry: the inputs, or the refactored SVD truncation."""
    if name != "svd":
        return A, B
    k = update.kept_ranks
    U, S, Vh = torch.linalg.svd(B.double() @ A.double(), full_matrices=False)
    A_ref, B_ref = torch.zeros_like(A, dtype=torch.float64), torch.zeros_like(B, dtype=torch.float64)
    A_ref[:k], B_ref[:, :k] = S[:k].sqrt()[:, None] * Vh[:k], U[:, :k] * S[:k].sqrt()
    return A_ref, B_ref


@pytest.mark.parametrize("q", [32, 16])
@pytest.mark.parametrize("rho", [0.0, 0.5, 0.8])
@pytest.mark.parametrize("name", sorted(SPARSIFIERS))
def test_roundtrip_through_arrays(random_factors, name, rho, q):
    r, d_in, d_out = 8, 24, 16
    A, B = random_factors(r, d_in, d_out, seed=5)
    A_before, B_before = A.clone(), B.clone()
    update = _compress(name, A, B, rho, q)
    torch.testing.assert_close(A, A_before, rtol=0, atol=0)  # sparsifiers are pure
    torch.testing.assert_close(B, B_before, rtol=0, atol=0)

    arrays = update.to_arrays()
    assert set(arrays) == {
        "meta",
        "dropped_rank_error",
        *(SparseUpdate.RANK_KEYS if update.kind == "rank" else SparseUpdate.ELEMENT_KEYS),
    }
    for key in ("A_rows", "B_cols", "A_values", "B_values"):
        if key in arrays:
            assert arrays[key].dtype == WIRE[q]
    back = SparseUpdate.from_arrays({key: _serialise(value) for key, value in arrays.items()})
    assert (back.payload_bits, back.dropped_rank_error, back.kind) == (
        update.payload_bits,
        update.dropped_rank_error,
        update.kind,
    )

    A_d, mask_A, B_d, mask_B = back.decompress()
    assert A_d.dtype == B_d.dtype == torch.float32
    assert mask_A.dtype == mask_B.dtype == torch.bool
    assert A_d.shape == mask_A.shape == (r, d_in) and B_d.shape == mask_B.shape == (d_out, r)
    assert not A_d[~mask_A].any() and not B_d[~mask_B].any()

    A_x, B_x = _sent_factors(name, update, A, B)
    # 32 bits: exact; 16 bits: exactly the float16 rounding of the value
    wire = torch.float16 if q == 16 else torch.float32
    if name == "svd":  # the refactored truncation is recomputed here: compare to tolerance
        torch.testing.assert_close(A_d[mask_A].double(), A_x[mask_A], rtol=2e-3 if q == 16 else 1e-5, atol=1e-4)
        torch.testing.assert_close(
            (B_d @ A_d).double(), B_x @ A_x, rtol=5e-3 if q == 16 else 1e-5, atol=5e-3 if q == 16 else 1e-4
        )
    else:
        assert torch.equal(A_d[mask_A], A_x[mask_A].to(wire).float())
        assert torch.equal(B_d[mask_B], B_x[mask_B].to(wire).float())

    # the kept entries are the ones the method promises
    if update.kind == "rank":
        k = keep_count(r, rho) if name != "dense" else r
        assert update.kept_ranks == k
        rows = mask_A.all(dim=1)
        assert torch.equal(rows, mask_A.any(dim=1)) and torch.equal(rows, mask_B.all(dim=0))
        assert int(rows.sum()) == k
    else:
        n_A, n_B = int(mask_A.sum()), int(mask_B.sum())
        assert float(A[mask_A].abs().min()) >= float(A[~mask_A].abs().max())
        assert float(B[mask_B].abs().min()) >= float(B[~mask_B].abs().max())
        assert n_A == update.A_indices.numel() and n_B == update.B_indices.numel()


@pytest.mark.parametrize("name", sorted(SPARSIFIERS))
def test_contract(random_factors, name):
    A, B = random_factors(6, 10, 12, seed=2)
    update = _compress(name, A, B, 0.5, 32)
    assert isinstance(update, SparseUpdate)
    assert (update.d_in, update.d_out, update.rank, update.value_bits) == (10, 12, 6, 32)
    assert update.payload_bits > 0
    assert np.isfinite(update.dropped_rank_error) and update.dropped_rank_error >= 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        update.payload_bits = 0  # type: ignore[misc]
    # works on factors that require grad (right after local training)
    A_g, B_g = A.clone().requires_grad_(), B.clone().requires_grad_()
    again = _compress(name, A_g, B_g, 0.5, 32)
    assert again.payload_bits == update.payload_bits
    assert not any(t.requires_grad for t in again.to_arrays().values() if isinstance(t, torch.Tensor))


def test_dense_and_zero_rho_soft_send_everything(random_factors):
    A, B = random_factors(4, 7, 9, seed=8)
    for name in ("dense", "soft"):
        A_d, mask_A, B_d, mask_B = SPARSIFIERS[name](A, B, 0.0, 32).decompress()
        assert mask_A.all() and mask_B.all()
        assert torch.equal(A_d, A) and torch.equal(B_d, B)


def test_topk_dropped_error_is_the_product_error(random_factors):
    A, B = random_factors(6, 20, 14, seed=4)
    update = SPARSIFIERS["topk"](A, B, 0.5, 32)
    A_d, _, B_d, _ = update.decompress()
    exact = float(torch.linalg.matrix_norm(B.double() @ A.double() - B_d.double() @ A_d.double())) ** 2
    assert update.dropped_rank_error == pytest.approx(exact, rel=1e-9)


def test_invalid_container_is_rejected():
    with pytest.raises(ValueError, match="strictly increasing"):
        SparseUpdate(
            d_in=2,
            d_out=2,
            rank=3,
            value_bits=32,
            payload_bits=1,
            dropped_rank_error=0.0,
            rank_indices=torch.tensor([2, 1]),
            A_rows=torch.zeros(2, 2),
            B_cols=torch.zeros(2, 2),
        )
    with pytest.raises(ValueError, match="float16"):
        SparseUpdate(
            d_in=2,
            d_out=2,
            rank=3,
            value_bits=16,
            payload_bits=1,
            dropped_rank_error=0.0,
            rank_indices=torch.tensor([1]),
            A_rows=torch.zeros(1, 2),
            B_cols=torch.zeros(2, 1),
        )
