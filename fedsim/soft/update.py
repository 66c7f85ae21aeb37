"""The per-matrix upload container of the sparsifiers, SOFT (fedsim formulation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from fedsim.soft.budget import check_value_bits

_RANK, _ELEMENT = "rank", "element"
_KIND_CODE = {_RANK: 0, _ELEMENT: 1}
_WIRE_DTYPE = {16: torch.float16, 32: torch.float32}


def to_wire(values: Tensor, value_bits: int) -> Tensor:
    """Detach and cast values to their on-the-wire precision (float16 for q = 16, float32 for 32)."""
    return values.detach().to(_WIRE_DTYPE[check_value_bits(value_bits)]).contiguous()


def _check_indices(name: str, idx: Tensor, upper: int) -> None:
    if idx.dtype != torch.int64 or idx.ndim != 1:
        raise ValueError(f"{name} must be a 1-D int64 tensor, got {idx.dtype} with shape {tuple(idx.shape)}")
    if idx.numel() and (int(idx[0]) < 0 or int(idx[-1]) >= upper or bool((idx[1:] <= idx[:-1]).any())):
        raise ValueError(f"{name} must be strictly increasing in [0, {upper}), got {idx.tolist()[:16]}")


@dataclass(frozen=True, eq=False)
class SparseUpdate:
    """What one client uploads for one adapted matrix (A: (r, d_in), B: (d_out, r)).

    Two kinds, chosen by which fields are set:

    - ``kind == "rank"`` (soft, randk, svd, dense): ``rank_indices`` (k,) int64, sorted, the
      kept rank components; ``A_rows`` (k, d_in) = A[rank_indices, :];
      ``B_cols`` (d_out, k) = B[:, rank_indices].
    - ``kind == "element"`` (topk): ``A_indices`` / ``B_indices`` (n_A,), (n_B,) int64, sorted
      flat (row-major) indices into A and B; ``A_values`` / ``B_values`` the sent entries.

    Values are stored at wire precision (float16 when ``value_bits == 16``, else float32), so
    the container holds exactly what goes on the wire; :meth:`decompress` returns float32.

    Attributes
    ----------
    d_in, d_out, rank : int
        Shape of the adapted matrix and its structural LoRA rank r.
    value_bits : int
        q, bits per transmitted value (16 or 32).
    payload_bits : int
        Uplink bits this update costs (see the sparsifier that produced it).
    dropped_rank_error : float
        Sparsification error reported by the sparsifier (for soft: sum of s_i^2 over dropped
        ranks).
    """

    d_in: int
    d_out: int
    rank: int
    value_bits: int
    payload_bits: int
    dropped_rank_error: float
    rank_indices: Tensor | None = None
    A_rows: Tensor | None = None
    B_cols: Tensor | None = None
    A_indices: Tensor | None = None
    A_values: Tensor | None = None
    B_indices: Tensor | None = None
    B_values: Tensor | None = None

    RANK_KEYS: ClassVar[tuple[str, ...]] = ("rank_indices", "A_rows", "B_cols")
    ELEMENT_KEYS: ClassVar[tuple[str, ...]] = ("A_indices", "A_values", "B_indices", "B_values")

    def __post_init__(self) -> None:
        check_value_bits(self.value_bits)
        for name in ("d_in", "d_out", "rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.payload_bits < 0:
            raise ValueError(f"payload_bits must be >= 0, got {self.payload_bits}")
        rank_set = [getattr(self, k) is not None for k in self.RANK_KEYS]
        elem_set = [getattr(self, k) is not None for k in self.ELEMENT_KEYS]
        wire = _WIRE_DTYPE[self.value_bits]
        if all(rank_set) and not any(elem_set):
            idx = self.rank_indices
            _check_indices("rank_indices", idx, self.rank)
            k = idx.numel()
            if k < 1:
                raise ValueError("a rank update must keep at least one rank")
            if tuple(self.A_rows.shape) != (k, self.d_in) or tuple(self.B_cols.shape) != (self.d_out, k):
                raise ValueError(
                    f"rank update with k = {k}: expected A_rows {(k, self.d_in)} and "
                    f"B_cols {(self.d_out, k)}, got {tuple(self.A_rows.shape)} and {tuple(self.B_cols.shape)}"
                )
            values = (self.A_rows, self.B_cols)
        elif all(elem_set) and not any(rank_set):
            for side, numel in (("A", self.rank * self.d_in), ("B", self.d_out * self.rank)):
                idx, val = getattr(self, f"{side}_indices"), getattr(self, f"{side}_values")
                _check_indices(f"{side}_indices", idx, numel)
                if tuple(val.shape) != tuple(idx.shape):
                    raise ValueError(f"{side}_values shape {tuple(val.shape)} != {side}_indices {tuple(idx.shape)}")
            values = (self.A_values, self.B_values)
        else:
            raise ValueError(f"set exactly one of the field groups {self.RANK_KEYS} or {self.ELEMENT_KEYS}")
        for v in values:
            if v.dtype != wire:
                raise ValueError(f"values must be {wire} for value_bits = {self.value_bits}, got {v.dtype}")

    @property
    def kind(self) -> str:
        """``"rank"`` or ``"element"``."""
        return _RANK if self.rank_indices is not None else _ELEMENT

    @property
    def kept_ranks(self) -> int | None:
        """k for a rank update, None for an element update."""
        return None if self.rank_indices is None else int(self.rank_indices.numel())

    def decompress(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Dense factors and masks of the sent entries.

        Returns
        -------
        A_dense : Tensor, shape (r, d_in), float32
            Sent entries of A, zeros elsewhere.
        maskA : Tensor, shape (r, d_in), bool
            True where an entry of A was sent.
        B_dense : Tensor, shape (d_out, r), float32
        maskB : Tensor, shape (d_out, r), bool
        """
        r, d_in, d_out = self.rank, self.d_in, self.d_out
        if self.kind == _RANK:
            dev, idx = self.A_rows.device, self.rank_indices
            A = torch.zeros(r, d_in, dtype=torch.float32, device=dev)
            B = torch.zeros(d_out, r, dtype=torch.float32, device=dev)
            A[idx] = self.A_rows.float()
            B[:, idx] = self.B_cols.float()
            row = torch.zeros(r, dtype=torch.bool, device=dev)
            row[idx] = True
            return A, row[:, None].expand(r, d_in).clone(), B, row[None, :].expand(d_out, r).clone()
        dev = self.A_values.device
        out = []
        for idx, val, shape in (
            (self.A_indices, self.A_values, (r, d_in)),
            (self.B_indices, self.B_values, (d_out, r)),
        ):
            dense = torch.zeros(shape[0] * shape[1], dtype=torch.float32, device=dev)
            mask = torch.zeros(shape[0] * shape[1], dtype=torch.bool, device=dev)
            dense[idx] = val.float()
            mask[idx] = True
            out += [dense.view(shape), mask.view(shape)]
        return out[0], out[1], out[2], out[3]

    def held(self, global_A: Tensor, global_B: Tensor) -> tuple[Tensor, Tensor]:
        """The factors the server holds for this client: the sent entries, and the global value
        elsewhere (its first ``rank`` ranks when the client's rank is below the global one)."""
        A, mA, B, mB = self.decompress()
        return torch.where(mA, A, global_A[: self.rank]), torch.where(mB, B, global_B[:, : self.rank])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """NumPy arrays for a Flower ``ArrayRecord`` (the caller prefixes the keys per module).

        Keys: ``meta`` int64 [kind (0 rank, 1 element), d_in, d_out, rank, value_bits,
        payload_bits]; ``dropped_rank_error`` float64 (1,); then either ``rank_indices`` int64
        (k,), ``A_rows`` (k, d_in), ``B_cols`` (d_out, k), or ``A_indices``, ``A_values``,
        ``B_indices``, ``B_values``. Values are float16 for q = 16, float32 for q = 32.
        """
        meta = [_KIND_CODE[self.kind], self.d_in, self.d_out, self.rank, self.value_bits, self.payload_bits]
        arrays = {
            "meta": np.asarray(meta, dtype=np.int64),
            "dropped_rank_error": np.asarray([self.dropped_rank_error], dtype=np.float64),
        }
        keys = self.RANK_KEYS if self.kind == _RANK else self.ELEMENT_KEYS
        for key in keys:
            arrays[key] = getattr(self, key).detach().cpu().numpy().copy()
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SparseUpdate:
        """Inverse of :meth:`to_arrays` (tensors on CPU)."""
        missing = {"meta", "dropped_rank_error"} - set(arrays)
        if missing:
            raise KeyError(f"SparseUpdate.from_arrays: missing keys {sorted(missing)}; got {sorted(arrays)}")
        kind_code, d_in, d_out, rank, value_bits, payload = (int(x) for x in np.asarray(arrays["meta"]))
        keys = cls.RANK_KEYS if kind_code == _KIND_CODE[_RANK] else cls.ELEMENT_KEYS
        missing = set(keys) - set(arrays)
        if missing:
            raise KeyError(f"SparseUpdate.from_arrays: missing keys {sorted(missing)}; got {sorted(arrays)}")
        tensors = {key: torch.from_numpy(np.array(arrays[key], copy=True)) for key in keys}
        return cls(
            d_in=d_in,
            d_out=d_out,
            rank=rank,
            value_bits=value_bits,
            payload_bits=payload,
            dropped_rank_error=float(np.asarray(arrays["dropped_rank_error"]).reshape(-1)[0]),
            **tensors,
        )
