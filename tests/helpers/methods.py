"""A realistic LoRA adapter state (two layers, query and value, a dense head) and the shared method
contract (every registered method, and the manual's example method, pass it)."""

import math

import numpy as np
import torch

from fedsim.core.methods import get_method
from fedsim.core.quantise import BITS_KEY

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


def wire_counts(arrays: dict[str, np.ndarray]) -> tuple[int, int, int, int]:
    """(values, indices, codes, scales) an encoded upload carries: float entries (scales apart),
    int64 indices, unsigned quantisation codes and ``::scale`` entries, without the simulator's
    bookkeeping (``meta``: shapes and kind; ``dropped_rank_error``: a diagnostic; ``quant::bits``)."""
    sent = {k: a for k, a in arrays.items() if not k.endswith(("::meta", "::dropped_rank_error")) and k != BITS_KEY}
    scales = sum(a.size for k, a in sent.items() if k.endswith("::scale"))
    values = sum(a.size for a in sent.values() if np.issubdtype(a.dtype, np.floating)) - scales
    indices = sum(a.size for a in sent.values() if np.issubdtype(a.dtype, np.signedinteger))
    codes = sum(a.size for a in sent.values() if np.issubdtype(a.dtype, np.unsignedinteger))
    return values, indices, codes, scales


def check_prices_its_upload_exactly(name, rho, value_bits, quant_bits):
    """The shared method contract: the payload formula a scheduler prices an upload with equals the
    bits the encoder reports, and those bits carry every value on the wire at q bits plus at most
    a few bits per index; quantised, every value at b bits plus one q-bit scale per value tensor
    and the same index bits, and the upload decodes to the method's unquantised upload within
    the quantiser's step."""
    method = get_method(name)
    state = make_state(3)
    shapes = {k: v.shape for k, v in state.items()}
    plain, plain_stats = method.encode(state, rho, value_bits, gen(1))
    values, indices, codes, scales = wire_counts(plain)
    assert codes == scales == 0
    index_bits = plain_stats["payload_bits"] - values * value_bits
    assert 0 <= index_bits <= indices * math.ceil(math.log2(R * D_IN))
    if not quant_bits:
        assert plain_stats["payload_bits"] == method.adapter_bits(shapes, R, rho, value_bits)
        if not method.sparsifies:
            assert plain_stats["payload_bits"] == method.adapter_bits(shapes, R, 0.0, value_bits)
        return
    arrays, stats = method.encode(state, rho, value_bits, gen(1), quant_bits)
    q_values, q_indices, q_codes, q_scales = wire_counts(arrays)
    assert (q_values, q_indices, q_codes) == (0, indices, values)
    assert q_scales == sum(1 for k, a in plain.items() if a.dtype.kind == "f" and a.size and "::" in k) - len(
        [k for k in plain if k.endswith("::dropped_rank_error")]
    )
    assert stats["payload_bits"] == q_codes * quant_bits + q_scales * value_bits + index_bits
    assert stats["payload_bits"] == method.adapter_bits(shapes, R, rho, value_bits, quant_bits)
    # the round trip: what the server decodes is the unquantised upload, within one step per value
    # (plus the rounding of the decoded value to float16 when q = 16)
    ulp = 2.0**-10 if value_bits == 16 else 0.0
    ups, extras = method.decode(arrays)
    ups0, extras0 = method.decode(plain)
    for module, up in ups.items():
        for X, X0 in zip(_factors(up), _factors(ups0[module]), strict=True):
            step = 2 * float(X0.abs().max()) / (2**quant_bits - 1)
            assert float((X - X0).abs().max()) <= step * (1 + 1e-3) + ulp * float(X0.abs().max()) + 1e-6
    for name_, x in extras.items():
        top = float(np.abs(extras0[name_]).max())
        assert np.abs(x - extras0[name_]).max() <= 2 * top / (2**quant_bits - 1) * (1 + 1e-3) + ulp * top + 1e-6


def _factors(update) -> list:
    """The decoded factors of one module: A and B of a SparseUpdate, or the one array a method
    such as fedsa decodes to."""
    if isinstance(update, np.ndarray):
        return [torch.from_numpy(update)]
    A, _, B, _ = update.decompress()
    return [A, B]


def check_aggregates_its_own_uploads(name):
    """The shared method contract: the server half folds the method's own uploads into a finite adapter of the same shapes."""
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
