"""Rank budget and uplink payload accounting for SOFT (fedsim formulation).

All sizes are per adapted matrix W = W0 + B A with A: (r, d_in), B: (d_out, r).
"""

from __future__ import annotations

import math
import numbers

VALUE_BITS_ALLOWED: tuple[int, ...] = (16, 32)


def check_value_bits(value_bits: int) -> int:
    """Validate the bits per transmitted value ``q`` (16 or 32) and return it."""
    if isinstance(value_bits, bool) or value_bits not in VALUE_BITS_ALLOWED:
        raise ValueError(f"value_bits must be one of {VALUE_BITS_ALLOWED}, got {value_bits!r}")
    return int(value_bits)


def check_rho(rho: float) -> float:
    """Validate the sparsification ratio ``rho`` (fraction of ranks dropped), 0 <= rho < 1."""
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not math.isfinite(rho):
        raise ValueError(f"rho must be a finite number in [0, 1), got {rho!r}")
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"rho must be in [0, 1) (fraction of ranks dropped), got {rho!r}")
    return float(rho)


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def index_bits_per_entry(count: int) -> int:
    """Bits to address one of ``count`` positions: ceil(log2(count)) (0 for count = 1)."""
    return (_check_positive_int("count", count) - 1).bit_length()


def keep_count(rank: int, rho: float) -> int:
    """Number of ranks kept for a sparsification ratio.

    k = max(1, ceil((1 - rho) r)),  0 <= rho < 1.

    The ceiling has a 1e-9 tolerance so that binary floating-point noise does not add a rank:
    (1 - 0.7) * 10 = 3.0000000000000004 gives k = 3, as intended.

    Parameters
    ----------
    rank : int
        Structural LoRA rank r >= 1.
    rho : float
        Fraction of ranks dropped, in [0, 1).

    Returns
    -------
    int
        k in [1, r].
    """
    rank = _check_positive_int("rank", rank)
    rho = check_rho(rho)
    return max(1, math.ceil((1.0 - rho) * rank - 1e-9))


def payload_bits(d_in: int, d_out: int, rank: int, k: int, value_bits: int) -> int:
    """Uplink bits of a rank-sparsified LoRA update of one adapted matrix.

    S = k (d_in + d_out) q + min(r, k ceil(log2 r))

    The first term carries k rows of A (k, d_in) and k columns of B (d_out, k) at q bits per
    value; the second is the index set of kept ranks, sent as the cheaper of an r-bit mask or a
    list of k indices of ceil(log2 r) bits each (0 bits for r = 1).

    Parameters
    ----------
    d_in, d_out : int
        Input and output width of the adapted matrix.
    rank : int
        Structural LoRA rank r.
    k : int
        Kept ranks, 1 <= k <= r.
    value_bits : int
        q, 16 or 32.

    Returns
    -------
    int
        Payload in bits.
    """
    d_in, d_out = _check_positive_int("d_in", d_in), _check_positive_int("d_out", d_out)
    rank, k = _check_positive_int("rank", rank), _check_positive_int("k", k)
    q = check_value_bits(value_bits)
    if k > rank:
        raise ValueError(f"k must be <= rank ({rank}), got {k}")
    return k * (d_in + d_out) * q + min(rank, k * index_bits_per_entry(rank))


def dense_payload_bits(d_in: int, d_out: int, rank: int, value_bits: int) -> int:
    """Uplink bits of the dense (ideal) LoRA update of one adapted matrix: S = r (d_in + d_out) q."""
    d_in, d_out = _check_positive_int("d_in", d_in), _check_positive_int("d_out", d_out)
    rank = _check_positive_int("rank", rank)
    return rank * (d_in + d_out) * check_value_bits(value_bits)


def topk_element_budget(d_in: int, d_out: int, rank: int, rho: float, value_bits: int) -> tuple[int, int]:
    """Element counts (n_A, n_B) of the element-wise top-k baseline at SOFT's payload.

    Each sent element of A costs c_A = q + ceil(log2(r d_in)) bits (value and flat index), of B
    c_B = q + ceil(log2(d_out r)). With P the SOFT payload for the same (d_in, d_out, r, rho, q),
    n_A and n_B are the largest counts with n_A c_A + n_B c_B <= P, split in proportion to the
    factor sizes (n_A : n_B ~ d_in : d_out): first n_X = floor(t f_X) with f_A = d_in / (d_in +
    d_out), f_B = 1 - f_A and t = P / (f_A c_A + f_B c_B) (in exact integer arithmetic), then
    single elements are added while they fit, to the factor furthest below its share. Hence

        0 <= P - (n_A c_A + n_B c_B) < min(c_A, c_B),

    i.e. topk carries SOFT's bits up to less than one element. (Counts are capped at the factor
    sizes, which the budget never reaches when r d_in > 1 and d_out r > 1.)
    """
    q = check_value_bits(value_bits)
    P = payload_bits(d_in, d_out, rank, keep_count(rank, rho), q)
    size = {"A": rank * d_in, "B": d_out * rank}
    cost = {"A": q + index_bits_per_entry(size["A"]), "B": q + index_bits_per_entry(size["B"])}
    share = {"A": d_in / (d_in + d_out), "B": d_out / (d_in + d_out)}
    # floor(t f_A) = floor(P d_in / (d_in c_A + d_out c_B)), exact in integers
    denom = d_in * cost["A"] + d_out * cost["B"]
    n = {"A": min(size["A"], P * d_in // denom), "B": min(size["B"], P * d_out // denom)}
    while True:
        left = P - n["A"] * cost["A"] - n["B"] * cost["B"]
        fits = [x for x in ("A", "B") if cost[x] <= left and n[x] < size[x]]
        if not fits:
            return n["A"], n["B"]
        total = n["A"] + n["B"] + 1
        n[min(fits, key=lambda x: (n[x] - share[x] * total, x))] += 1
