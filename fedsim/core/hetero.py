"""Heterogeneous LoRA ranks (HetLoRA, FlexLoRA): each client trains and uploads at its own rank.

``[hetero]`` configures it (no torch or Flower at import; pure NumPy):

- ``rank_rule``: what a client's rank r_k follows. ``compute``: its device speed (FLOP/s, fixed
  for the run); ``channel``: its channel gain in the round (changes with fading and mobility);
  ``none``: every client at ``lora.rank`` (the default, the homogeneous case).
- ``rank_levels``: the ranks, from the weakest clients to the strongest. The clients are ranked
  by the quantity (ties by client id) and split into ``len(rank_levels)`` groups of equal size
  (:func:`client_ranks`), so a quarter of the clients get each of four levels.
- ``aggregation``: ``zero-pad`` (HetLoRA, Cho et al., EMNLP 2024) or ``flexlora`` (Bai et al.,
  NeurIPS 2024).

The global adapter has rank R = ``lora.rank`` (at least the largest level). Client k receives it,
keeps its first r_k ranks (A[:r_k], B[:, :r_k]; ranks r_k.. are zeroed, and zero factors get zero
gradients, so training moves only the first r_k ranks) and uploads the rank-r_k adapter with the
run's upload method: its payload is the method's formula at rank r_k (e.g. r_k (d_in + d_out) q
for ``ideal``), and its compute time uses :func:`flops_per_sample_at_rank`. LoRA's scale stays
alpha / R for every client, so factors of different ranks add up in one space.

Aggregation of the uploads (weights w_k = |D_k|, each client's factors as the server holds them:
the sent entries, the global value where nothing was sent):

- zero-pad: pad A_k to (R, d_in) and B_k to (d_out, R) with zeros and average,
  A = sum_k w_k pad(A_k) / sum_k w_k (likewise B); a rank only strong clients train is
  averaged with the zeros of the others (HetLoRA's aggregation, without its self-pruning).
- flexlora: average the products, W = sum_k w_k B_k A_k / sum_k w_k, and redistribute with a
  truncated SVD W = U S V^T: B = U_R S_R^{1/2}, A = S_R^{1/2} V_R^T. A client of rank r_k then
  takes the r_k leading singular directions.

Extras (e.g. a head) are averaged as in FedAvg.
"""

from __future__ import annotations

from typing import Any

import numpy as np

AGGREGATIONS = ("zero-pad", "flexlora")


def client_ranks(values: np.ndarray, levels: tuple[int, ...]) -> np.ndarray:
    """r_k for every client: clients sorted by ``values`` ascending (ties by index) and split into
    ``len(levels)`` equal groups; group g gets ``levels[g]``. ``values``: (K,), e.g. FLOP/s."""
    order = np.lexsort((np.arange(len(values)), np.asarray(values, dtype=float)))
    position = np.empty(len(values), dtype=int)
    position[order] = np.arange(len(values))
    group = position * len(levels) // max(len(values), 1)
    return np.asarray(levels, dtype=int)[group]


def lora_pairs(state: dict[str, Any]) -> list[tuple[str, str]]:
    from fedsim.core.methods import split_state

    return list(split_state(state)[0].values())


def keep_ranks(state: dict[str, np.ndarray], rank: int) -> dict[str, np.ndarray]:
    """The adapter a rank-``rank`` client trains from: ranks ``rank``.. of every LoRA pair zeroed
    (shapes unchanged)."""
    out = dict(state)
    for a, b in lora_pairs(state):
        out[a] = state[a].copy()
        out[a][rank:] = 0.0
        out[b] = state[b].copy()
        out[b][:, rank:] = 0.0
    return out


def truncate(state: dict[str, np.ndarray], rank: int) -> dict[str, np.ndarray]:
    """The rank-``rank`` adapter a client uploads: A[:rank], B[:, :rank] of every LoRA pair."""
    out = dict(state)
    for a, b in lora_pairs(state):
        out[a] = np.ascontiguousarray(state[a][:rank])
        out[b] = np.ascontiguousarray(state[b][:, :rank])
    return out


def flops_per_sample_at_rank(base_flops: float, shapes: dict[str, tuple[int, ...]], rank: int) -> float:
    """Training FLOPs per sample of a rank-``rank`` client.

    F(r) = F_base (1 + r sum_m (d_in,m + d_out,m) / sum_m d_in,m d_out,m): a rank-r adapter on a
    d_out x d_in weight adds r (d_in + d_out) multiply-adds per token to the weight's d_in d_out,
    and the ratio is applied to the whole per-sample cost F_base (an upper bound: layers without an
    adapter add nothing). LoRA's share is small (e.g. 4% at r = 8 on 384 x 384 weights): a rank
    changes the upload far more than the compute.
    """
    pairs = lora_pairs(shapes)
    if not pairs:
        return base_flops
    lora = sum(shapes[a][1] + shapes[b][0] for a, b in pairs)
    dense = sum(shapes[a][1] * shapes[b][0] for a, b in pairs)
    return base_flops * (1.0 + rank * lora / dense)


def aggregate(
    global_state: dict[str, np.ndarray], uploads: list[tuple[float, dict[str, Any], dict[str, np.ndarray]]], how: str
) -> tuple[dict[str, np.ndarray], float]:
    """The new rank-R global adapter from mixed-rank uploads ``(w_k, updates, extras)`` (client-id
    order; updates are :class:`fedsim.soft.SparseUpdate` at the client's rank) and the covariance
    diagnostic of the zero-padded held factors (see :func:`fedsim.core.methods.aggregate_uploads`)."""
    import torch

    from fedsim.core.methods import average_extras, split_state
    from fedsim.soft import covariance_norm

    if how not in AGGREGATIONS:
        raise ValueError(f"hetero.aggregation={how!r}: must be one of {', '.join(AGGREGATIONS)}")
    pairs, extras = split_state(global_state)
    weights = np.array([w for w, _, _ in uploads], dtype=np.float64)
    shares = weights / weights.sum()
    new_state = dict(global_state)
    cov_sq = 0.0
    for module, (a_name, b_name) in pairs.items():
        gA, gB = global_state[a_name], global_state[b_name]
        R = gA.shape[0]
        padded_A, padded_B = [], []
        for _, ups, _ in uploads:
            A_k, B_k = (t.numpy() for t in ups[module].held(torch.from_numpy(gA), torch.from_numpy(gB)))
            pA, pB = np.zeros_like(gA, dtype=np.float64), np.zeros_like(gB, dtype=np.float64)
            pA[: A_k.shape[0]], pB[:, : B_k.shape[1]] = A_k, B_k
            padded_A.append(pA)
            padded_B.append(pB)
        if how == "zero-pad":
            A_new = sum(s * a for s, a in zip(shares, padded_A, strict=True))
            B_new = sum(s * b for s, b in zip(shares, padded_B, strict=True))
        else:
            W = sum(s * (b @ a) for s, a, b in zip(shares, padded_A, padded_B, strict=True))
            U, S, Vh = np.linalg.svd(W, full_matrices=False)
            k = min(R, len(S))
            root = np.sqrt(S[:k])
            A_new, B_new = np.zeros_like(gA, dtype=np.float64), np.zeros_like(gB, dtype=np.float64)
            A_new[:k], B_new[:, :k] = root[:, None] * Vh[:k], U[:, :k] * root
        new_state[a_name], new_state[b_name] = A_new.astype(np.float32), B_new.astype(np.float32)
        held_A = [torch.from_numpy(a.astype(np.float32)) for a in padded_A]
        held_B = [torch.from_numpy(b.astype(np.float32)) for b in padded_B]
        cov_sq += covariance_norm(held_A, held_B, list(weights)) ** 2
    new_state.update(average_extras(global_state, extras, uploads))
    return new_state, float(np.sqrt(cov_sq))
