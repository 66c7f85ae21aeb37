"""Stochastic uniform quantisation of uploaded values (QSGD-style), with exact bit accounting.

One tensor x of n values (already at its wire precision, q = ``lora.value_bits``) is sent as n
codes of b bits (b = ``lora.quant_bits``, 1..16) and one scale of q bits. The rounding is QSGD's
unbiased stochastic rounding to uniform levels (Alistarh et al., "QSGD: Communication-Efficient
SGD via Gradient Quantization and Encoding", NeurIPS 2017); the levels here are 2^b points
spread over [-s, s] with s the max-norm of the tensor (the sign is in the code, not sent apart):

    s = max_i |x_i|                  (rounded up to the wire precision, so that |x_i| <= s)
    L = 2^b - 1,  Delta = 2 s / L    (the level spacing)
    u_i = (x_i / s + 1) L / 2        in [0, L]
    c_i = floor(u_i) + 1[xi_i < u_i - floor(u_i)],   xi_i ~ U[0, 1) from the seeded generator
    x^_i = s (2 c_i / L - 1)

so E[x^_i] = x_i (unbiased stochastic rounding) and |x^_i - x_i| < Delta = 2 s / (2^b - 1). With
b = 1 the levels are {-s, +s} (signs scaled by the max). A tensor of zeros has s = 0 and decodes
to zeros. Bits of one tensor: n b + q (codes and the scale); an empty tensor sends nothing. The
codes go on the wire as uint8 (b <= 8) or uint16.

The wire form of a quantised upload (:func:`quantise_arrays`): every value array ``K`` is replaced
by its codes under ``K`` and its scale under ``K::scale`` (an array of one value in the original
dtype), and ``quant::bits`` (int64 [b]) says how to read them; :func:`dequantise_arrays` is the
inverse. Index arrays (int64) and the simulator's diagnostics pass through unchanged.

No Flower, no config: plain NumPy and a torch.Generator for the draws.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where values are drawn, not to check a configuration
    import torch

QUANT_BITS_MAX = 16
BITS_KEY = "quant::bits"
SCALE_SUFFIX = "::scale"
NOT_VALUES = ("::meta", "::dropped_rank_error")
"""Keys of bookkeeping arrays (shapes, diagnostics) that are not quantised and not counted."""


def check_quant_bits(bits: int) -> int:
    """Validate b, the bits per quantised value, 1 <= b <= 16."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 1 <= bits <= QUANT_BITS_MAX:
        raise ValueError(f"quant_bits must be an integer in [1, {QUANT_BITS_MAX}], got {bits!r}")
    return int(bits)


def _scale_at_wire(max_abs: float, dtype: np.dtype) -> np.ndarray:
    """max|x| as one value of ``dtype``, rounded up so that every |x_i| <= s."""
    s = np.asarray([max_abs], dtype=dtype)
    if float(s[0]) < max_abs:
        s = np.nextafter(s, np.asarray(np.inf, dtype=dtype))
    return s


def quantise(x: np.ndarray, bits: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Codes (shape of x, uint8 or uint16) and scale (one value, dtype of x) of one tensor."""
    import torch

    b = check_quant_bits(bits)
    levels = (1 << b) - 1
    x64 = np.asarray(x, dtype=np.float64)
    scale = _scale_at_wire(float(np.abs(x64).max()) if x64.size else 0.0, x.dtype)
    s = float(scale[0])
    u = (x64 / s + 1.0) * (levels / 2.0) if s > 0 else np.zeros_like(x64)
    low = np.floor(u)
    xi = torch.rand(x64.size, generator=generator, dtype=torch.float64).numpy().reshape(x64.shape)
    codes = np.clip(low + (xi < u - low), 0, levels)
    return codes.astype(np.uint8 if b <= 8 else np.uint16), scale


def dequantise(codes: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """x^ = s (2 c / L - 1) in the scale's dtype (the values' wire precision)."""
    levels = (1 << check_quant_bits(bits)) - 1
    s = float(np.asarray(scale).reshape(-1)[0])
    return (s * (2.0 * codes.astype(np.float64) / levels - 1.0)).astype(np.asarray(scale).dtype)


def quantised_bits(values_per_tensor: Iterable[int], bits: int, value_bits: int) -> int:
    """Bits of tensors of the given sizes quantised at b bits: sum_j (n_j b + q [n_j > 0])."""
    b = check_quant_bits(bits)
    return sum(n * b + value_bits for n in values_per_tensor if n > 0)


def _is_values(key: str, a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating) and a.size > 0 and not key.endswith(NOT_VALUES)


def quantise_arrays(
    arrays: dict[str, np.ndarray], bits: int, generator: torch.Generator
) -> tuple[dict[str, np.ndarray], int]:
    """The wire arrays with every value array quantised (module docstring), and the change in
    payload bits this makes: sum_j n_j (b - q_j) + q_j over the quantised arrays."""
    b = check_quant_bits(bits)
    out: dict[str, np.ndarray] = {BITS_KEY: np.asarray([b], dtype=np.int64)}
    delta = 0
    for key, a in arrays.items():
        if not _is_values(key, a):
            out[key] = a
            continue
        q = a.dtype.itemsize * 8
        out[key], out[key + SCALE_SUFFIX] = quantise(a, b, generator)
        delta += a.size * (b - q) + q
    return out, delta


def dequantise_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`quantise_arrays` (arrays without ``quant::bits`` are returned as they are)."""
    if BITS_KEY not in arrays:
        return arrays
    b = int(np.asarray(arrays[BITS_KEY]).reshape(-1)[0])
    out = {}
    for key, a in arrays.items():
        if key == BITS_KEY or key.endswith(SCALE_SUFFIX):
            continue
        scale = arrays.get(key + SCALE_SUFFIX)
        out[key] = a if scale is None else dequantise(a, scale, b)
    return out
