"""Upload methods: what a client sends after local training and how the server folds it in.

An adapter state is a flat ``{name: array}`` of trainable tensors. Names ending in
``lora_A.<adapter>.weight`` / ``lora_B.<adapter>.weight`` pair into LoRA factors (A: (r, d_in),
B: (d_out, r)); every other trainable tensor (e.g. a classification head) is an *extra*, sent
dense and averaged by FedAvg. A method is a sparsifier from :mod:`fedsim.soft` applied to every
LoRA pair, plus whether the SOFT orthogonality regulariser is in the local loss.

=============  ============  ===========================================================
method         sparsifier    local loss
=============  ============  ===========================================================
ideal          dense         task loss (no sparsification: the reference)
soft           soft          task loss + soft.lambda_orth * R_orth
soft-noreg     soft          task loss (ablation: lambda_orth = 0)
topk           topk          task loss (element-wise top-k on A and B, same bits as soft)
randk          randk         task loss (k random ranks)
svd            svd           task loss (SVD of B A, top-k triplets, refactored)
=============  ============  ===========================================================
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from fedsim.soft import (
    SparseUpdate,
    aggregate,
    covariance_norm,
    dropped_errors_for_rhos,
    get_sparsifier,
    mean_abs_cos,
)


@dataclass(frozen=True)
class Method:
    sparsifier: str
    regularised: bool
    description: str


METHODS: dict[str, Method] = {
    "ideal": Method("dense", False, "dense FedAvg of the LoRA factors (no sparsification)"),
    "soft": Method("soft", True, "SOFT: orthogonality-regularised factors, top-k ranks by s_i = |b_i| |a_i|"),
    "soft-noreg": Method("soft", False, "SOFT without the regulariser (lambda_orth = 0)"),
    "topk": Method("topk", False, "element-wise top-k on A and B separately, at SOFT's bits"),
    "randk": Method("randk", False, "k random ranks"),
    "svd": Method("svd", False, "SVD truncation of B A, refactored as U sqrt(S), sqrt(S) V^T"),
}

SEP = "::"


def split_state(state: dict[str, np.ndarray]) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """LoRA pairs ``{module: (A name, B name)}`` and the names of the extra (dense) tensors."""
    pairs: dict[str, tuple[str, str]] = {}
    extras = []
    for name in state:
        if ".lora_A." in name:
            module = name.split(".lora_A.")[0]
            b_name = name.replace(".lora_A.", ".lora_B.")
            if b_name not in state:
                raise KeyError(f"{name} has no matching lora_B tensor")
            pairs[module] = (name, b_name)
        elif ".lora_B." not in name:
            extras.append(name)
    return pairs, extras


def _wire(a: np.ndarray, value_bits: int) -> np.ndarray:
    return a.astype(np.float16 if value_bits == 16 else np.float32)


def encode_upload(
    state: dict[str, np.ndarray],
    method: str,
    rho: float,
    value_bits: int,
    generator: torch.Generator,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Compress a trained adapter for the uplink.

    Returns the arrays that go on the wire (LoRA pairs as ``module::key`` from
    :meth:`SparseUpdate.to_arrays`, extras under ``extra::name``) and client statistics:
    ``payload_bits`` (exact bits the channel carries), ``dropped_rank_error`` (sum over
    modules), ``kept_ranks`` (mean over modules), ``mean_abs_cos`` (mean over modules, before
    sparsification), ``sparsify_time_s`` (wall clock of the selection), and
    ``dropped_error@<rho>`` for each of ``report_rhos`` (what SOFT would drop at that rho: the
    scalars TSFA's controller asks for).
    """
    sparsify = get_sparsifier(METHODS[method].sparsifier)
    pairs, extras = split_state(state)
    arrays: dict[str, np.ndarray] = {}
    bits, error, kept, cos, sparsify_s = 0, 0.0, [], [], 0.0
    for module, (a_name, b_name) in pairs.items():
        A, B = torch.from_numpy(state[a_name]), torch.from_numpy(state[b_name])
        t0 = time.perf_counter()
        update = sparsify(A, B, rho, value_bits, generator)
        sparsify_s += time.perf_counter() - t0
        for key, arr in update.to_arrays().items():
            arrays[f"{module}{SEP}{key}"] = arr
        bits += update.payload_bits
        error += update.dropped_rank_error
        kept.append(update.kept_ranks if update.kept_ranks is not None else A.shape[0])
        cos.append(mean_abs_cos(A, B))
    for name in extras:
        arrays[f"extra{SEP}{name}"] = _wire(state[name], value_bits)
        bits += state[name].size * value_bits
    stats = {
        "payload_bits": float(bits),
        "dropped_rank_error": error,
        "kept_ranks": float(np.mean(kept)) if kept else 0.0,
        "mean_abs_cos": float(np.mean(cos)) if cos else 0.0,
        "sparsify_time_s": sparsify_s,
    }
    return arrays, stats


def dropped_errors(state: dict[str, np.ndarray], rhos: tuple[float, ...]) -> list[float]:
    """What SOFT would drop at each rho: sum over adapted matrices of sum_{i not kept} s_i^2.

    The few scalars a client reports so that TSFA can weigh accuracy against latency before
    the upload (one sort of the rank importances per matrix; no sparsification is done).
    """
    total = np.zeros(len(rhos))
    for a_name, b_name in split_state(state)[0].values():
        A, B = torch.from_numpy(state[a_name]), torch.from_numpy(state[b_name])
        total += np.asarray(dropped_errors_for_rhos(A, B, rhos))
    return [float(x) for x in total]


def decode_upload(arrays: dict[str, np.ndarray]) -> tuple[dict[str, SparseUpdate], dict[str, np.ndarray]]:
    """Inverse of :func:`encode_upload`'s arrays: per-module SparseUpdates and the dense extras."""
    grouped: dict[str, dict[str, np.ndarray]] = {}
    extras = {}
    for key, arr in arrays.items():
        module, _, field = key.partition(SEP)
        if module == "extra":
            extras[field] = arr.astype(np.float32)
        else:
            grouped.setdefault(module, {})[field] = arr
    return {m: SparseUpdate.from_arrays(a) for m, a in grouped.items()}, extras


def aggregate_uploads(
    global_state: dict[str, np.ndarray],
    uploads: list[tuple[float, dict[str, SparseUpdate], dict[str, np.ndarray]]],
) -> tuple[dict[str, np.ndarray], float]:
    """The new global adapter and the covariance diagnostic.

    LoRA pairs: :func:`fedsim.soft.aggregate` (per-rank/per-entry weighted average over the
    senders; unsent entries keep their global value). Extras: FedAvg. ``uploads`` are
    ``(weight, updates, extras)`` in client-id order.

    covariance_norm = sqrt(sum over modules of ||sum_k w_k (B_k - B_bar)(A_k - A_bar)||_F^2)
    with each client's factors taken as what the server holds for it (sent entries, and the
    previous global value where nothing was sent).
    """
    pairs, extras = split_state(global_state)
    weights = [w for w, _, _ in uploads]
    new_state = dict(global_state)
    cov_sq = 0.0
    for module, (a_name, b_name) in pairs.items():
        gA, gB = torch.from_numpy(global_state[a_name]), torch.from_numpy(global_state[b_name])
        updates = [(w, ups[module]) for w, ups, _ in uploads]
        A_new, B_new = aggregate(gA, gB, updates)
        new_state[a_name], new_state[b_name] = A_new.numpy(), B_new.numpy()
        held_A, held_B = [], []
        for _, up in updates:
            A_k, mA, B_k, mB = up.decompress()
            held_A.append(torch.where(mA, A_k, gA))
            held_B.append(torch.where(mB, B_k, gB))
        cov_sq += covariance_norm(held_A, held_B, weights) ** 2
    total = float(sum(weights))
    for name in extras:
        acc = np.zeros_like(global_state[name], dtype=np.float64)
        for w, _, ex in uploads:
            acc += (w / total) * ex[name]
        new_state[name] = acc.astype(np.float32)
    return new_state, float(np.sqrt(cov_sq))
