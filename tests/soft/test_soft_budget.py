"""(b) payload formula, (g) topk carries SOFT's bits, (h) bad input."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.soft import (
    SPARSIFIERS,
    dense_payload_bits,
    get_sparsifier,
    keep_count,
    payload_bits,
    sparsify_topk,
    topk_element_budget,
)

dims = st.integers(1, 5000)
ranks = st.integers(1, 128)
rhos = st.floats(0.0, 0.999, allow_nan=False)
qs = st.sampled_from([16, 32])


def test_keep_count_examples():
    assert keep_count(16, 0.0) == 16
    assert keep_count(16, 0.5) == 8
    assert keep_count(8, 0.75) == 2
    assert keep_count(10, 0.7) == 3  # (1 - 0.7) * 10 = 3.0000000000000004 in binary floating point
    assert keep_count(10, 0.65) == 4
    assert keep_count(8, 0.99) == 1
    assert keep_count(1, 0.9) == 1


@given(r=ranks, rho=rhos)
def test_keep_count_formula(r, rho):
    k = keep_count(r, rho)
    exact = (1 - Fraction(rho)) * r  # exact value of the binary float rho
    assert 1 <= k <= r
    if math.ceil(exact) >= 1:
        # the ceiling, except within the documented 1e-9 tolerance above an integer
        assert k == math.ceil(exact) or (k == math.ceil(exact) - 1 and exact - k <= Fraction(1, 10**9))


def test_payload_examples():
    # d = 1024, r = 16, rho = 0.5, q = 32: k = 8; index = min(16-bit mask, 8 * 4) = 16
    assert payload_bits(1024, 1024, 16, 8, 32) == 8 * 2048 * 32 + 16
    # r = 64, k = 4: a list of 4 * 6 bits beats a 64-bit mask
    assert payload_bits(10, 20, 64, 4, 16) == 4 * 30 * 16 + 24
    # r = 1: no index bits
    assert payload_bits(7, 5, 1, 1, 32) == 12 * 32
    assert dense_payload_bits(1024, 512, 16, 16) == 16 * 1536 * 16


@settings(max_examples=300)
@given(d_in=dims, d_out=dims, r=ranks, rho=rhos, q=qs)
def test_payload_formula(d_in, d_out, r, rho, q):
    k = keep_count(r, rho)
    index = 0 if r == 1 else min(r, k * math.ceil(math.log2(r)))
    assert payload_bits(d_in, d_out, r, k, q) == k * (d_in + d_out) * q + index
    assert dense_payload_bits(d_in, d_out, r, q) == r * (d_in + d_out) * q


@settings(max_examples=40, deadline=None)
@given(d_in=st.integers(1, 48), d_out=st.integers(1, 48), r=st.integers(1, 12), rho=rhos, q=qs)
def test_sparsifier_payloads_match_the_formulas(d_in, d_out, r, rho, q):
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
    k = keep_count(r, rho)
    soft = payload_bits(d_in, d_out, r, k, q)
    assert get_sparsifier("soft")(A, B, rho, q).payload_bits == soft
    assert get_sparsifier("randk")(A, B, rho, q, generator=g).payload_bits == soft
    k_svd = min(k, d_in, d_out)  # B A has at most min(d_in, d_out) singular triplets
    assert get_sparsifier("svd")(A, B, rho, q).payload_bits == k_svd * (d_in + d_out) * q
    assert get_sparsifier("dense")(A, B, rho, q).payload_bits == dense_payload_bits(d_in, d_out, r, q)
    assert get_sparsifier("soft")(A, B, rho, q).kept_ranks == k


def _element_costs(d_in, d_out, r, q):
    return q + math.ceil(math.log2(r * d_in)), q + math.ceil(math.log2(r * d_out))


@settings(max_examples=300)
@given(d_in=st.integers(2, 5000), d_out=st.integers(2, 5000), r=ranks, rho=rhos, q=qs)
def test_topk_budget_carries_soft_bits(d_in, d_out, r, rho, q):
    soft = payload_bits(d_in, d_out, r, keep_count(r, rho), q)
    n_A, n_B = topk_element_budget(d_in, d_out, r, rho, q)
    c_A, c_B = _element_costs(d_in, d_out, r, q)
    topk = n_A * c_A + n_B * c_B
    assert topk <= soft
    assert soft - topk < c_A + c_B  # the bound: under one element per factor
    assert soft - topk < min(c_A, c_B)  # the documented, stronger bound
    # split in proportion to the factor sizes, up to the rounding of a couple of elements
    assert abs(n_A * d_out - n_B * d_in) <= 2 * (d_in + d_out)


@settings(max_examples=40, deadline=None)
@given(d_in=st.integers(2, 64), d_out=st.integers(2, 64), r=st.integers(1, 12), rho=rhos, q=qs)
def test_topk_and_soft_carry_the_same_bits(d_in, d_out, r, rho, q):
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
    soft = get_sparsifier("soft")(A, B, rho, q)
    topk = sparsify_topk(A, B, rho, q)
    c_A, c_B = _element_costs(d_in, d_out, r, q)
    assert topk.payload_bits == topk.A_indices.numel() * c_A + topk.B_indices.numel() * c_B
    assert topk.payload_bits <= soft.payload_bits
    assert soft.payload_bits - topk.payload_bits < c_A + c_B


@pytest.mark.parametrize("name", sorted(SPARSIFIERS))
@pytest.mark.parametrize(("rho", "q", "shown"), [(1.0, 32, "1.0"), (-0.1, 32, "-0.1"), (1.5, 16, "1.5"), (0.5, 8, "8")])
def test_bad_input_raises_naming_the_value(name, rho, q, shown):
    A, B = torch.randn(4, 5), torch.randn(6, 4)
    with pytest.raises(ValueError, match=shown):
        SPARSIFIERS[name](A, B, rho, q, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("call", "shown"),
    [
        (lambda: keep_count(8, 1.0), "1.0"),
        (lambda: keep_count(8, -0.25), "-0.25"),
        (lambda: keep_count(8, float("nan")), "nan"),
        (lambda: keep_count(0, 0.5), "0"),
        (lambda: payload_bits(8, 8, 4, 2, 8), "8"),
        (lambda: payload_bits(8, 8, 4, 5, 32), "5"),
        (lambda: dense_payload_bits(8, 8, 4, 64), "64"),
        (lambda: topk_element_budget(8, 8, 4, 1.0, 32), "1.0"),
    ],
)
def test_bad_budget_input_raises_naming_the_value(call, shown):
    with pytest.raises(ValueError, match=shown):
        call()


def test_unknown_sparsifier_lists_the_known_names():
    with pytest.raises(KeyError, match="known: dense, randk, soft, svd, topk"):
        get_sparsifier("top-k")


def test_randk_requires_a_generator_and_is_reproducible():
    A, B = torch.randn(16, 5), torch.randn(6, 16)
    with pytest.raises(ValueError, match="Generator"):
        SPARSIFIERS["randk"](A, B, 0.5, 32)
    runs = [SPARSIFIERS["randk"](A, B, 0.5, 32, torch.Generator().manual_seed(7)).rank_indices for _ in range(2)]
    assert runs[0].tolist() == runs[1].tolist()
    assert len(set(runs[0].tolist())) == 8


def test_factor_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="rank mismatch"):
        SPARSIFIERS["soft"](torch.randn(4, 5), torch.randn(6, 3), 0.5, 32)
