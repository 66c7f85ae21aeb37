"""Upload methods: what a client sends after local training and how the server folds it in.

An adapter state is a flat ``{name: array}`` of trainable tensors. Names ending in
``lora_A.<adapter>.weight`` / ``lora_B.<adapter>.weight`` pair into LoRA factors (A: (r, d_in),
B: (d_out, r)); every other trainable tensor (e.g. a classification head) is an *extra*, sent
dense and averaged by FedAvg.

An upload method is one :class:`UploadMethod` registered in :data:`METHODS`, the way a PEFT
method is a config plus a layer plus a registration: its client half (:meth:`~UploadMethod.encode`),
its server half (:meth:`~UploadMethod.decode`, :meth:`~UploadMethod.aggregate`), its exact
payload formula per adapted matrix (``matrix_bits``, which the schedulers use to price an upload
before it is made), whether the SOFT orthogonality regulariser is in the local loss, whether it
sparsifies at all (a scheduler that chooses rho needs one that does), which tensors local
training keeps fixed (``frozen``) and whether it keeps state on the client between rounds. The
shared test in ``tests/test_methods.py`` runs every registered method, with and without
quantisation, and checks ``matrix_bits`` / ``matrix_values`` against what its encoder actually
produces.

Quantised uploads (``lora.quant_bits`` = b in 1..16, 0 = off) work with every method: after the
method has chosen what to send, every value tensor is sent as b-bit stochastic-rounding codes
plus one scale at q bits (:mod:`fedsim.core.quantise`), so a tensor of n values costs n b + q bits
instead of n q; indices are unchanged. The exact formula per matrix is therefore
``matrix_bits + sum_j n_j (b - q) + q [n_j > 0]`` with n_j from ``matrix_values``.

Downlink: every round the server broadcasts the tensors a client needs, dense at q bits or
quantised at ``lora.downlink_quant_bits`` like an upload (the ``frozen`` ones are known to every
client from the seed and are not sent): see :meth:`UploadMethod.broadcast`.

=============  ============  ===========================================================
method         sparsifier    local loss
=============  ============  ===========================================================
ideal          dense         task loss (no sparsification: the reference)
soft           soft          task loss + method.lambda_orth * R_orth
soft-noreg     soft          task loss (ablation: lambda_orth = 0)
topk           topk          task loss (element-wise top-k on A and B, same bits as soft)
randk          randk         task loss (k random ranks)
svd            svd           task loss (SVD of B A, top-k triplets, refactored)
ffa            B only        task loss, A frozen at its seeded initialisation (FFA-LoRA)
fedsa          A only        task loss (A averaged, B kept on the client: FedSA-LoRA)
topk-ef        topk          task loss (topk of factors + residual; error feedback)
soft-ef        soft          task loss + method.lambda_orth * R_orth (soft with error feedback)
=============  ============  ===========================================================
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsim.core import plugins
from fedsim.core.quantise import dequantise_arrays, quantise_arrays, quantised_bits
from fedsim.soft.budget import (
    dense_payload_bits,
    index_bits_per_entry,
    keep_count,
    payload_bits,
    topk_element_budget,
)

if TYPE_CHECKING:  # torch is imported where an upload is encoded or aggregated, not to check a name
    import torch

    from fedsim.soft import SparseUpdate

Sparsifier = Callable[..., Any]
"""``sparsify(A, B, rho, value_bits, generator) -> SparseUpdate`` for one LoRA pair."""

MatrixBits = Callable[[int, int, int, float, int], int]
"""``matrix_bits(d_in, d_out, rank, rho, value_bits)``: uplink bits of one adapted matrix."""

MatrixValues = Callable[[int, int, int, float, int], tuple[int, ...]]
"""``matrix_values(d_in, d_out, rank, rho, value_bits)``: the number of values in each value
tensor of one adapted matrix's upload (what quantisation codes; one scale per non-empty tensor)."""


def soft_bits(d_in: int, d_out: int, rank: int, rho: float, value_bits: int) -> int:
    """S = k (d_in + d_out) q + min(r, k ceil(log2 r)),  k = max(1, ceil((1 - rho) r)):
    k kept ranks of A and B plus the cheaper of an r-bit mask or k rank indices."""
    return payload_bits(d_in, d_out, rank, keep_count(rank, rho), value_bits)


def dense_bits(d_in: int, d_out: int, rank: int, rho: float, value_bits: int) -> int:
    """S = r (d_in + d_out) q: every rank, no index (rho is ignored)."""
    return dense_payload_bits(d_in, d_out, rank, value_bits)


def topk_bits(d_in: int, d_out: int, rank: int, rho: float, value_bits: int) -> int:
    """S = n_A (q + ceil(log2(r d_in))) + n_B (q + ceil(log2(d_out r))): the element counts of
    :func:`fedsim.soft.topk_element_budget` (SOFT's bits at this rho, less under one element),
    each with its value and flat index."""
    n_a, n_b = topk_element_budget(d_in, d_out, rank, rho, value_bits)
    return n_a * (value_bits + index_bits_per_entry(rank * d_in)) + n_b * (
        value_bits + index_bits_per_entry(d_out * rank)
    )


def svd_bits(d_in: int, d_out: int, rank: int, rho: float, value_bits: int) -> int:
    """S = k (d_in + d_out) q with k = min(keep_count(r, rho), d_in, d_out): ranks 0..k-1, no index bits."""
    return min(keep_count(rank, rho), d_in, d_out) * (d_in + d_out) * value_bits


def b_only_bits(d_in: int, d_out: int, rank: int, rho: float, value_bits: int) -> int:
    """S = d_out r q: all of B, no index (A is not sent; rho is ignored). Half of dense when d_in = d_out."""
    return d_out * rank * value_bits


def rank_values(d_in: int, d_out: int, rank: int, rho: float, value_bits: int) -> tuple[int, ...]:
    """(k d_in, d_out k) with k = keep_count(r, rho): the kept rows of A and columns of B."""
    k = keep_count(rank, rho)
    return k * d_in, d_out * k


def dense_values(d_in: int, d_out: int, rank: int, rho: float, value_bits: int) -> tuple[int, ...]:
    """(r d_in, d_out r): all of A and B."""
    return rank * d_in, d_out * rank


def svd_values(d_in: int, d_out: int, rank: int, rho: float, value_bits: int) -> tuple[int, ...]:
    """(k d_in, d_out k) with k = min(keep_count(r, rho), d_in, d_out)."""
    k = min(keep_count(rank, rho), d_in, d_out)
    return k * d_in, d_out * k


def topk_values(d_in: int, d_out: int, rank: int, rho: float, value_bits: int) -> tuple[int, ...]:
    """(n_A, n_B) of :func:`fedsim.soft.topk_element_budget`."""
    return topk_element_budget(d_in, d_out, rank, rho, value_bits)


def b_only_values(d_in: int, d_out: int, rank: int, rho: float, value_bits: int) -> tuple[int, ...]:
    """(0, d_out r): no value of A, all of B."""
    return 0, d_out * rank


def sparsify_b_only(A: torch.Tensor, B: torch.Tensor, rho: float, value_bits: int, generator=None) -> SparseUpdate:
    """FFA-LoRA's upload (Sun et al., "Improving LoRA in Privacy-preserving Federated Learning",
    ICLR 2024): all of B, nothing of A, whose value every client and the server know (it is
    frozen at the seeded initialisation). Sent as an element update with no entry of A and every
    entry of B in row-major order; that order is implicit, so the payload has no index bits:
    S = d_out r q. The server's per-entry average then keeps A and averages B. ``rho`` and
    ``generator`` are unused; ``dropped_rank_error`` is 0 (nothing trained is left out)."""
    import torch

    from fedsim.soft import SparseUpdate
    from fedsim.soft.update import to_wire

    r, d_in, d_out = A.shape[0], A.shape[1], B.shape[0]
    empty = torch.zeros(0, dtype=torch.int64)
    return SparseUpdate(
        d_in=d_in,
        d_out=d_out,
        rank=r,
        value_bits=value_bits,
        payload_bits=b_only_bits(d_in, d_out, r, rho, value_bits),
        dropped_rank_error=0.0,
        A_indices=empty,
        A_values=to_wire(A.new_zeros(0), value_bits),
        B_indices=torch.arange(d_out * r, dtype=torch.int64),
        B_values=to_wire(B.reshape(-1), value_bits),
    )


@dataclass(frozen=True, kw_only=True)
class UploadMethod:
    """One registered upload method (see the module docstring).

    Attributes
    ----------
    name : registry key, lowercase (``run.method``).
    description : one line for listings.
    sparsify : a :data:`Sparsifier` applied to every LoRA pair, or the name of a
        :data:`fedsim.soft.SPARSIFIERS` entry.
    matrix_bits : the exact payload formula of one adapted matrix (:data:`MatrixBits`).
    regularised : the SOFT orthogonality regulariser (weight ``method.lambda_orth``) is in the
        local loss.
    sparsifies : the upload depends on rho (False: rho is always 0, as for ``ideal``).
    needs_client_state : the client keeps state between rounds (:mod:`fedsim.core.client_state`):
        the method overrides :meth:`start_state` and :meth:`encode_stateful`.
    personalised : each client keeps a personal model; clients report its evaluation
        (``personal_metric``) and the round records the mean (``personal_<metric>``).
    matrix_values : the values per wire tensor of one matrix (:data:`MatrixValues`): with
        ``matrix_bits``, the exact formula of a quantised upload.
    frozen : fragments of tensor names (e.g. ``".lora_A."``) that local training keeps fixed at
        the global value. The broadcast leaves them out (every client knows them) and the
        method's sparsifier must not send them (``sparsify_b_only`` sends B alone).
    local_only : fragments of tensor names that stay on the clients (e.g. FedSA-LoRA's
        ``".lora_B."``): the server never changes them, so, like ``frozen`` ones, every client
        knows the global value from the seed and the broadcast leaves them out.
    """

    name: str
    description: str
    sparsify: Sparsifier | str
    matrix_bits: MatrixBits
    regularised: bool = False
    sparsifies: bool = True
    needs_client_state: bool = False
    matrix_values: MatrixValues | None = None
    frozen: tuple[str, ...] = ()
    personalised: bool = False
    local_only: tuple[str, ...] = ()

    @property
    def config_keys(self) -> tuple[str, ...]:
        """The configuration keys this method reads besides ``run.method`` and the ``lora.*`` keys
        that every method reads: ``method.rho`` when it sparsifies, ``method.lambda_orth`` when it is
        regularised (``fedsim methods`` lists them; a scheduler that decides rho overrides ``method.rho``)."""
        return ("method.rho",) * self.sparsifies + ("method.lambda_orth",) * self.regularised

    def adapter_bits(
        self, shapes: dict[str, tuple[int, ...]], rank: int, rho: float, value_bits: int, quant_bits: int = 0
    ) -> int:
        """Uplink bits of one client's adapter: ``matrix_bits`` of every LoRA pair plus the dense
        extras (e.g. a classification head) at q bits per value; with ``quant_bits`` = b > 0,
        every non-empty value tensor costs n b + q instead of n q (:mod:`fedsim.core.quantise`)."""
        pairs, extras = split_state(shapes)
        total = 0
        for a_name, b_name in pairs.values():
            dims = (shapes[a_name][1], shapes[b_name][0], rank, rho, value_bits)
            total += self.matrix_bits(*dims)
            if quant_bits:
                values = self.values_per_tensor(*dims)
                total += quantised_bits(values, quant_bits, value_bits) - sum(values) * value_bits
        sizes = [int(np.prod(shapes[name])) for name in extras]
        if quant_bits:
            return total + quantised_bits(sizes, quant_bits, value_bits)
        return total + sum(sizes) * value_bits

    def values_per_tensor(self, d_in: int, d_out: int, rank: int, rho: float, value_bits: int) -> tuple[int, ...]:
        """``matrix_values``; a method without it cannot be quantised (ValueError)."""
        if self.matrix_values is None:
            raise ValueError(f"upload method {self.name!r} has no matrix_values formula: it cannot be quantised")
        return self.matrix_values(d_in, d_out, rank, rho, value_bits)

    def downlink_bits(self, shapes: dict[str, tuple[int, ...]], value_bits: int, quant_bits: int = 0) -> int:
        """Bits of the round's broadcast: every tensor of the global adapter but those every client
        knows (``frozen``, ``local_only``), dense at q bits per value, or with ``quant_bits`` = b > 0
        at n b + q per tensor."""
        sizes = [int(np.prod(shape)) for name, shape in shapes.items() if self.is_broadcast(name)]
        return quantised_bits(sizes, quant_bits, value_bits) if quant_bits else sum(sizes) * value_bits

    def broadcast(
        self, state: dict[str, np.ndarray], value_bits: int, quant_bits: int, seed: int
    ) -> tuple[dict[str, np.ndarray], int]:
        """What the clients receive of the global adapter and its bits (:meth:`downlink_bits`).

        Dense (``quant_bits`` = 0): the adapter itself. Quantised: every tensor :meth:`is_broadcast`
        names as the clients decode it from b-bit codes
        (:mod:`fedsim.core.quantise`, draws from a generator seeded with ``seed``); the server keeps
        its exact adapter for aggregation.
        """
        bits = self.downlink_bits({k: v.shape for k, v in state.items()}, value_bits, quant_bits)
        if not quant_bits:
            return state, bits
        import torch

        sent = {k: _wire(v, value_bits) for k, v in state.items() if self.is_broadcast(k)}
        coded, _ = quantise_arrays(sent, quant_bits, torch.Generator().manual_seed(seed))
        received = {k: v.astype(np.float32) for k, v in dequantise_arrays(coded).items()}
        return {k: received.get(k, v) for k, v in state.items()}, bits

    def is_broadcast(self, name: str) -> bool:
        """Whether the round's broadcast carries tensor ``name`` (not ``frozen``, not ``local_only``)."""
        return not any(fragment in name for fragment in (*self.frozen, *self.local_only))

    def is_frozen(self, name: str) -> bool:
        """Whether local training keeps tensor ``name`` at its global value."""
        return any(fragment in name for fragment in self.frozen)

    def encode(
        self,
        state: dict[str, np.ndarray],
        rho: float,
        value_bits: int,
        generator: torch.Generator,
        quant_bits: int = 0,
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """The client half: compress a trained adapter for the uplink (see :func:`encode_upload`)."""
        sparsify = self.sparsify
        if isinstance(sparsify, str):
            from fedsim.soft import get_sparsifier

            sparsify = get_sparsifier(sparsify)
        return encode_upload(state, sparsify, rho, value_bits, generator, quant_bits)

    def start_state(
        self, global_state: dict[str, np.ndarray], client_state: dict[str, np.ndarray] | None
    ) -> dict[str, np.ndarray]:
        """The adapter a client trains from: the global one, unless the method keeps part of it
        on the client (``client_state``: the client's state from its last round, None at first)."""
        return global_state

    def encode_stateful(
        self,
        state: dict[str, np.ndarray],
        global_state: dict[str, np.ndarray],
        client_state: dict[str, np.ndarray] | None,
        rho: float,
        value_bits: int,
        generator: torch.Generator,
        quant_bits: int = 0,
    ) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, np.ndarray] | None]:
        """:meth:`encode` for a method with client state: also the client's new state (None:
        none). ``global_state`` is the adapter the client received this round."""
        arrays, stats = self.encode(state, rho, value_bits, generator, quant_bits)
        return arrays, stats, None

    def decode(self, arrays: dict[str, np.ndarray]) -> tuple[dict[str, SparseUpdate], dict[str, np.ndarray]]:
        """The server half, step 1: the wire arrays back into per-module updates and extras."""
        return decode_upload(arrays)

    def aggregate(
        self,
        global_state: dict[str, np.ndarray],
        uploads: list[tuple[float, dict[str, SparseUpdate], dict[str, np.ndarray]]],
    ) -> tuple[dict[str, np.ndarray], float]:
        """The server half, step 2: the new global adapter and the covariance diagnostic."""
        return aggregate_uploads(global_state, uploads)


METHODS: dict[str, UploadMethod] = {}
"""The upload methods by name; :func:`register_method` adds one."""


def register_method(method: UploadMethod) -> UploadMethod:
    """Add ``method`` to :data:`METHODS` (names are unique and lowercase); returns it."""
    if method.name in METHODS or method.name != method.name.lower():
        raise ValueError(f"upload method {method.name!r}: names must be new and lowercase")
    METHODS[method.name] = method
    return method


def fixed_rho(method: str, rho: float) -> float:
    """The sparsification ratio when no scheduler chooses it: ``method.rho``, or 0 for a method that
    does not sparsify."""
    return rho if get_method(method).sparsifies else 0.0


def get_method(name: str) -> UploadMethod:
    """The method ``name``: built in, registered, or installed (entry point group ``fedsim.methods``,
    :mod:`fedsim.core.plugins`); an unknown name is a ConfigError listing the known ones."""
    return plugins.resolve(METHODS, plugins.METHODS, name, "run.method", UploadMethod)


def method_names() -> list[str]:
    """Every usable method name: registered ones, then installed ones (nothing imported)."""
    return plugins.names(METHODS, plugins.METHODS)


for _m in (
    UploadMethod(
        name="ideal",
        description="dense FedAvg of the LoRA factors (no sparsification)",
        sparsify="dense",
        matrix_bits=dense_bits,
        sparsifies=False,
        matrix_values=dense_values,
    ),
    UploadMethod(
        name="soft",
        description="SOFT: orthogonality-regularised factors, top-k ranks by s_i = |b_i| |a_i|",
        sparsify="soft",
        matrix_bits=soft_bits,
        regularised=True,
        matrix_values=rank_values,
    ),
    UploadMethod(
        name="soft-noreg",
        description="SOFT without the regulariser (lambda_orth = 0)",
        sparsify="soft",
        matrix_bits=soft_bits,
        matrix_values=rank_values,
    ),
    UploadMethod(
        name="topk",
        description="element-wise top-k on A and B separately, at SOFT's bits",
        sparsify="topk",
        matrix_bits=topk_bits,
        matrix_values=topk_values,
    ),
    UploadMethod(
        name="randk", description="k random ranks", sparsify="randk", matrix_bits=soft_bits, matrix_values=rank_values
    ),
    UploadMethod(
        name="svd",
        description="SVD truncation of B A, refactored as U sqrt(S), sqrt(S) V^T",
        sparsify="svd",
        matrix_bits=svd_bits,
        matrix_values=svd_values,
    ),
    UploadMethod(
        name="ffa",
        description="FFA-LoRA: A frozen at its seeded initialisation, only B trained and sent",
        sparsify=sparsify_b_only,
        matrix_bits=b_only_bits,
        sparsifies=False,
        matrix_values=b_only_values,
        frozen=(".lora_A.",),
    ),
):
    register_method(_m)

SEP = "::"


def split_state(state: dict[str, object]) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """LoRA pairs ``{module: (A name, B name)}`` and the names of the extra (dense) tensors of a
    state (or of any mapping keyed by the state's names, such as its shapes)."""
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


def _with_extras(arrays, bits, state, extras, value_bits, quant_bits, generator):
    """An upload's arrays and bits with the dense extras added (``extra::name`` at q bits per
    value) and, with ``quant_bits`` = b > 0, every value array quantised (its bits adjusted)."""
    arrays = dict(arrays)
    for name in extras:
        arrays[f"extra{SEP}{name}"] = _wire(state[name], value_bits)
        bits += state[name].size * value_bits
    if quant_bits:
        arrays, delta = quantise_arrays(arrays, quant_bits, generator)
        bits += delta
    return arrays, bits


def encode_upload(
    state: dict[str, np.ndarray],
    sparsify: Sparsifier,
    rho: float,
    value_bits: int,
    generator: torch.Generator,
    quant_bits: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Compress a trained adapter for the uplink.

    Returns the arrays that go on the wire (LoRA pairs as ``module::key`` from
    :meth:`SparseUpdate.to_arrays`, extras under ``extra::name``; with ``quant_bits`` > 0 every
    value array quantised by :func:`fedsim.core.quantise.quantise_arrays`, its draws from
    ``generator`` after the sparsifier's) and client statistics:
    ``payload_bits`` (exact bits the channel carries), ``dropped_rank_error`` (sum over
    modules), ``kept_ranks`` (mean over modules), ``mean_abs_cos`` (mean over modules, before
    sparsification), ``sparsify_time_s`` (wall clock of the selection), and
    ``dropped_error@<rho>`` for each of ``report_rhos`` (what SOFT would drop at that rho: the
    scalars TSFA's controller asks for).
    """
    import torch

    from fedsim.soft import mean_abs_cos

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
    arrays, bits = _with_extras(arrays, bits, state, extras, value_bits, quant_bits, generator)
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
    import torch

    from fedsim.soft import dropped_errors_for_rhos

    total = np.zeros(len(rhos))
    for a_name, b_name in split_state(state)[0].values():
        A, B = torch.from_numpy(state[a_name]), torch.from_numpy(state[b_name])
        total += np.asarray(dropped_errors_for_rhos(A, B, rhos))
    return [float(x) for x in total]


def decode_upload(arrays: dict[str, np.ndarray]) -> tuple[dict[str, SparseUpdate], dict[str, np.ndarray]]:
    """Inverse of :func:`encode_upload`'s arrays: per-module SparseUpdates and the dense extras
    (quantised values are dequantised first)."""
    from fedsim.soft import SparseUpdate

    arrays = dequantise_arrays(arrays)
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
    import torch

    from fedsim.soft import aggregate, covariance_norm

    pairs, extras = split_state(global_state)
    weights = [w for w, _, _ in uploads]
    new_state = dict(global_state)
    cov_sq = 0.0
    for module, (a_name, b_name) in pairs.items():
        gA, gB = torch.from_numpy(global_state[a_name]), torch.from_numpy(global_state[b_name])
        updates = [(w, ups[module]) for w, ups, _ in uploads]
        A_new, B_new = aggregate(gA, gB, updates)
        new_state[a_name], new_state[b_name] = A_new.numpy(), B_new.numpy()
        held = [up.held(gA, gB) for _, up in updates]
        cov_sq += covariance_norm([a for a, _ in held], [b for _, b in held], weights) ** 2
    new_state.update(average_extras(global_state, extras, uploads))
    return new_state, float(np.sqrt(cov_sq))


def average_extras(
    global_state: dict[str, np.ndarray], extras: list[str], uploads: list[tuple[float, Any, dict[str, np.ndarray]]]
) -> dict[str, np.ndarray]:
    """FedAvg of the dense extras (e.g. a head): sum_k (w_k / sum_j w_j) extras_k, in client-id order."""
    total = float(sum(w for w, _, _ in uploads))
    out = {}
    for name in extras:
        acc = np.zeros_like(global_state[name], dtype=np.float64)
        for w, _, ex in uploads:
            acc += (w / total) * ex[name]
        out[name] = acc.astype(np.float32)
    return out


# ---- methods with client state (fedsim.core.client_state) ---------------------------------------------


def fedsa_bits(d_in: int, d_out: int, rank: int, rho: float, value_bits: int) -> int:
    """S = r d_in q: A only (B stays on the client); rho is ignored."""
    return rank * d_in * value_bits


def fedsa_values(d_in: int, d_out: int, rank: int, rho: float, value_bits: int) -> tuple[int, ...]:
    """One tensor of r d_in values: A."""
    return (rank * d_in,)


@dataclass(frozen=True)
class FedSALoRA(UploadMethod):
    """FedSA-LoRA (Guo et al., ICLR 2025, "Selective Aggregation for LoRA in Federated Learning").

    A is trained, uploaded dense and averaged (weights |D_k|); B is trained and kept on the client
    (its personal part, in client state); the extras (e.g. the head) are uploaded and averaged.
    A client trains from the global A and extras with its own B, or the global B before its first
    round. The global model is the global A and extras with the global B (the initial one: the
    server never sees a B), so its metric measures what is shared; the personalised models are
    evaluated by the clients (``personal_metric``, see :meth:`UploadMethod.start_state`).
    """

    def encode(self, state, rho, value_bits, generator, quant_bits=0):
        import torch

        from fedsim.soft import mean_abs_cos

        pairs, extras = split_state(state)
        arrays, bits, cos = {}, 0, []
        for module, (a_name, b_name) in pairs.items():
            arrays[f"{module}{SEP}A"] = _wire(state[a_name], value_bits)
            bits += state[a_name].size * value_bits
            cos.append(mean_abs_cos(torch.from_numpy(state[a_name]), torch.from_numpy(state[b_name])))
        arrays, bits = _with_extras(arrays, bits, state, extras, value_bits, quant_bits, generator)
        rank = next(iter(state[a].shape[0] for a, _ in pairs.values()), 0)
        stats = {
            "payload_bits": float(bits),
            "dropped_rank_error": 0.0,
            "kept_ranks": float(rank),
            "mean_abs_cos": float(np.mean(cos)) if cos else 0.0,
            "sparsify_time_s": 0.0,
        }
        return arrays, stats

    def start_state(self, global_state, client_state):
        if client_state is None:
            return global_state
        return {**global_state, **{k: v for k, v in client_state.items() if k in global_state}}

    def encode_stateful(self, state, global_state, client_state, rho, value_bits, generator, quant_bits=0):
        arrays, stats = self.encode(state, rho, value_bits, generator, quant_bits)
        return arrays, stats, {b: state[b] for _, b in split_state(state)[0].values()}

    def decode(self, arrays):
        updates, extras = {}, {}
        for key, arr in dequantise_arrays(arrays).items():
            module, _, field = key.partition(SEP)
            if module == "extra":
                extras[field] = arr.astype(np.float32)
            else:
                updates[module] = arr.astype(np.float32)
        return updates, extras

    def aggregate(self, global_state, uploads):
        """A and the extras: FedAvg; B: unchanged. covariance_norm is 0: the server holds the same
        B (the global one) for every client."""
        pairs, extras = split_state(global_state)
        total = float(sum(w for w, _, _ in uploads))
        new_state = dict(global_state)
        for module, (a_name, _) in pairs.items():
            acc = np.zeros_like(global_state[a_name], dtype=np.float64)
            for w, ups, _ in uploads:
                acc += (w / total) * ups[module]
            new_state[a_name] = acc.astype(np.float32)
        new_state.update(average_extras(global_state, extras, uploads))
        return new_state, 0.0


@dataclass(frozen=True)
class ErrorFeedback(UploadMethod):
    """A sparsifier with error feedback (EF-SGD, Karimireddy et al., ICML 2019; Stich et al. 2018).

    The client adds its residual e (what earlier rounds did not get across) to its trained factors,
    sparsifies the sum with the base sparsifier, and keeps the new residual

        X~ = X + e,   e' = X~ - H(X~)   for X in every A and B,

    where H(X~) is what the server holds for the client after decoding: the sent entries at wire
    precision, the global value elsewhere (so unsent entries carry X~ - X_global, the update that
    was not sent). The residual lives in client state; the payload is the base method's formula.
    """

    def encode_stateful(self, state, global_state, client_state, rho, value_bits, generator, quant_bits=0):
        import torch

        pairs, _ = split_state(state)
        corrected = dict(state)
        for names in pairs.values():
            for name in names:
                if client_state is not None and name in client_state:
                    corrected[name] = (state[name] + client_state[name]).astype(np.float32)
        arrays, stats = self.encode(corrected, rho, value_bits, generator, quant_bits)
        updates, _ = self.decode(arrays)
        residual = {}
        for module, (a_name, b_name) in pairs.items():
            held_A, held_B = updates[module].held(
                torch.from_numpy(global_state[a_name]), torch.from_numpy(global_state[b_name])
            )
            residual[a_name] = corrected[a_name] - held_A.numpy()
            residual[b_name] = corrected[b_name] - held_B.numpy()
        stats["residual_norm"] = float(
            np.sqrt(sum(float(np.sum(r.astype(np.float64) ** 2)) for r in residual.values()))
        )
        return arrays, stats, residual


for _m in (
    FedSALoRA(
        name="fedsa",
        description="FedSA-LoRA: A averaged, B personal (kept on the client)",
        sparsify="dense",
        matrix_bits=fedsa_bits,
        sparsifies=False,
        matrix_values=fedsa_values,
        local_only=(".lora_B.",),
        needs_client_state=True,
        personalised=True,
    ),
    ErrorFeedback(
        name="topk-ef",
        description="topk with error feedback (residual kept on the client)",
        sparsify="topk",
        matrix_bits=topk_bits,
        matrix_values=topk_values,
        needs_client_state=True,
    ),
    ErrorFeedback(
        name="soft-ef",
        description="SOFT with error feedback (residual kept on the client)",
        sparsify="soft",
        matrix_bits=soft_bits,
        regularised=True,
        matrix_values=rank_values,
        needs_client_state=True,
    ),
):
    register_method(_m)
