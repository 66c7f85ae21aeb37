"""The client's half of a round, with no Flower: what one client does with one request.

The round engine (:mod:`fedsim.core.engine`) is the server's half; it sends each sampled client a
:class:`ClientRequest` (with the global adapter beside it) and reads back a :class:`ClientReply`.
:class:`ClientRound` answers them:

- ``train`` (a one-phase round): train locally from the global adapter and upload at
  ``request.rho``;
- ``local`` (step 1 of a two-phase round, TSFA): train and report |D_k| and the dropped-rank
  error at each rho of ``tsfa.rho_grid``; the trained adapter (:class:`Trained`) stays on the
  client;
- ``upload`` (step 2): upload the adapter trained in step 1 at the server's rho_t.

On the way it injects the configured faults (``faults.client_crash_prob``), keeps the method's
client state (:mod:`fedsim.core.client_state`), trains and uploads at the client's own rank under
``[hetero]`` (:mod:`fedsim.core.hetero`) and evaluates a personalised method's personal model. The
rho a client uploads at is always the one its request carries: the engine derives it
(:func:`fedsim.core.methods.fixed_rho`, or the scheduler's rho_t), never the client.

Under ``fedsim run`` and ``fedsim deploy`` the transport is Flower (:mod:`fedsim.flower.client_app`
converts messages to and from these dataclasses and keeps :class:`Trained` in the node's
``Context``); the engine tests call :class:`ClientRound` in-process with a small workload.
Every random draw is keyed by ``(run.seed, round, client id, purpose)``, so a client's reply does
not depend on which process serves it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from fedsim.core import client_state, hetero
from fedsim.core.config import Config
from fedsim.core.methods import dropped_errors, get_method
from fedsim.core.records import CLIENT_DIAGNOSTICS
from fedsim.core.seeding import rng, torch_seed

Action = Literal["train", "local", "upload"]
"""What a request asks: train and upload (one phase), train and report (step 1), upload (step 2)."""


@dataclass(frozen=True, kw_only=True)
class ClientRequest:
    """What the server asks of one client in one round (the global adapter travels beside it).

    Attributes
    ----------
    action : see :data:`Action` and the module docstring.
    round : the round, from 1.
    client_id : the client (its data partition).
    rho : the sparsification ratio to upload at (``train``: the fixed rho; ``upload``: the
        scheduler's rho_t); None for ``local``, which uploads nothing.
    rank : the client's LoRA rank r_k under ``[hetero]`` (None: ``lora.rank``).
    client_state_dir : the server's folder for the clients' state of a method with client state
        (:func:`fedsim.core.client_state.resolve_root` decides where the client writes); None otherwise.
    """

    action: Action
    round: int
    client_id: int
    rho: float | None = None
    rank: int | None = None
    client_state_dir: str | None = None


@dataclass(frozen=True, kw_only=True)
class ClientReply:
    """What one client answered: its training, and its upload (``arrays``; None for a report).

    Attributes
    ----------
    client_id : the client.
    num_samples : |D_k|, the size of its data (its weight in aggregation).
    train_loss : mean local training loss.
    train_wall_s : wall-clock time of local training, s.
    arrays : the upload as it goes on the wire (:meth:`~fedsim.core.methods.UploadMethod.encode`);
        None for a report (``local``).
    payload_bits : exact uplink bits of ``arrays`` (None for a report).
    kept_ranks, dropped_rank_error, mean_abs_cos, sparsify_time_s : the upload's diagnostics
        (:data:`fedsim.core.records.CLIENT_DIAGNOSTICS`; 0 for a report).
    personal_metric : a personalised method's personal model, evaluated as the round begins
        (the workload's primary metric); None for other methods.
    dropped_errors : a report's dropped-rank error at each rho of ``tsfa.rho_grid``; None otherwise.
    extra : other scalars of the workload's training or the method's encoder (e.g.
        ``local_steps``, ``residual_norm``); carried, not recorded.
    """

    client_id: int
    num_samples: int
    train_loss: float
    train_wall_s: float
    arrays: dict[str, np.ndarray] | None = None
    payload_bits: int | None = None
    kept_ranks: float = 0.0
    dropped_rank_error: float = 0.0
    mean_abs_cos: float = 0.0
    sparsify_time_s: float = 0.0
    personal_metric: float | None = None
    dropped_errors: tuple[float, ...] | None = None
    extra: Mapping[str, float] = field(default_factory=dict)

    def scalars(self) -> dict[str, Any]:
        """Every field but ``arrays``, None ones left out (what a transport sends as metrics)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("arrays", "extra")}
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items() if v is not None}
        return {**self.extra, **out}

    @classmethod
    def from_scalars(cls, scalars: Mapping[str, Any], arrays: dict[str, np.ndarray] | None = None) -> ClientReply:
        """Inverse of :meth:`scalars` (with the upload's ``arrays``)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"arrays", "extra"}
        known = {k: v for k, v in scalars.items() if k in names}
        for key in ("client_id", "num_samples", "payload_bits"):
            if key in known:
                known[key] = int(known[key])
        if "dropped_errors" in known:
            known["dropped_errors"] = tuple(float(e) for e in known["dropped_errors"])
        extra = {k: float(v) for k, v in scalars.items() if k not in names}
        return cls(**known, arrays=arrays, extra=extra)


@dataclass(frozen=True)
class Trained:
    """Step 1's result, kept by the client until step 2 of the same round.

    Under Flower it lives in the node's ``Context.state`` between the two messages.

    Attributes
    ----------
    round : the round it was trained in.
    state : the trained adapter (at the client's rank under ``[hetero]``).
    report : the reply step 1 sent (training metrics).
    read_round : the round of the client-state version training started from (0: none).
    global_state : the global adapter received in step 1 (methods with client state; else None).
    """

    round: int
    state: dict[str, np.ndarray]
    report: ClientReply
    read_round: int = 0
    global_state: dict[str, np.ndarray] | None = None


class ClientWorkload(Protocol):
    """The workload as a client sees it (:class:`fedsim.core.training.WorkloadHost`, or a test's small one)."""

    def primary_metric(self, cfg: Config) -> str: ...
    def evaluate(self, cfg: Config, state: dict[str, np.ndarray]) -> dict[str, float]: ...
    def train(
        self, cfg: Config, client_id: int, round_: int, start: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Local training from ``start``: the trained adapter and metrics, at least ``num_samples``,
        ``train_loss`` and ``train_wall_s``."""
        ...


def inject_faults(cfg: Config, client_id: int, round_: int) -> None:
    """Crash this client (``faults.client_crash_prob``).

    The draw comes from the client's own stream for the round, so the same clients fail in the
    same rounds whatever the scheduling. (Stragglers are modelled by the round engine in
    simulated time, not here.)
    """
    p = cfg.faults.client_crash_prob
    if p > 0 and rng(cfg.run.seed, round_, client_id, "fault-crash").random() < p:
        if cfg.faults.client_crash_mode == "exit":
            os._exit(13)  # the process dies as a real crash would: no cleanup, no reply
        raise RuntimeError(f"injected client crash (faults.client_crash_prob={p})")


@dataclass(frozen=True)
class _Start:
    """Where local training starts from: the adapter, and the client state it was built with."""

    state: dict[str, np.ndarray]
    root: Path | None
    read_round: int
    previous: dict[str, np.ndarray] | None


class ClientRound:
    """The client's half of a round (see the module docstring); keeps nothing between calls.

    Parameters
    ----------
    workload : local training and evaluation (:class:`ClientWorkload`).
    node_config : the node's own settings (a SuperNode's ``--node-config``): its ``state-dir``
        decides where a deployed client keeps its state (:func:`fedsim.core.client_state.resolve_root`).
    """

    def __init__(self, workload: ClientWorkload, node_config: Mapping[str, Any] | None = None) -> None:
        self.workload = workload
        self.node_config = dict(node_config or {})

    def train(self, cfg: Config, request: ClientRequest, global_state: dict[str, np.ndarray]) -> ClientReply:
        """One-phase round: train from ``global_state`` and upload at ``request.rho``."""
        start = self._start(cfg, request, global_state)
        trained, report = self._local_train(cfg, request, start.state)
        return self._upload(cfg, request, trained, report, start.root, global_state, start.previous, start.read_round)

    def local(
        self, cfg: Config, request: ClientRequest, global_state: dict[str, np.ndarray]
    ) -> tuple[ClientReply, Trained]:
        """Step 1 of a two-phase round: train and report; the :class:`Trained` adapter stays with
        the client (the transport keeps it and hands it to :meth:`upload`)."""
        start = self._start(cfg, request, global_state)
        trained, report = self._local_train(cfg, request, start.state)
        kept = Trained(request.round, trained, report, start.read_round, None if start.root is None else global_state)
        errors = tuple(dropped_errors(trained, cfg.tsfa.rho_grid))
        return dataclasses.replace(report, dropped_errors=errors), kept

    def upload(self, cfg: Config, request: ClientRequest, trained: Trained | None) -> ClientReply:
        """Step 2: upload the adapter trained in step 1 of the same round at ``request.rho``."""
        if trained is None or trained.round != request.round:
            raise RuntimeError(f"client {request.client_id} has no adapter trained in round {request.round}")
        root = self._state_root(cfg, request)
        previous = client_state.load(root, request.client_id, request.round)[1] if root is not None else None
        return self._upload(
            cfg, request, trained.state, trained.report, root, trained.global_state, previous, trained.read_round
        )

    # ---- the steps ----------------------------------------------------------------------------

    def _state_root(self, cfg: Config, request: ClientRequest) -> Path | None:
        """This client's state folder for a method with client state (None for the others)."""
        if not get_method(cfg.run.method).needs_client_state:
            return None
        if not request.client_state_dir:
            raise RuntimeError(f"run.method={cfg.run.method}: the message names no client-state folder")
        return client_state.resolve_root(request.client_state_dir, self.node_config)

    def _start(self, cfg: Config, request: ClientRequest, global_state: dict[str, np.ndarray]) -> _Start:
        """Faults, then the adapter training starts from (the method's client state applied)."""
        inject_faults(cfg, request.client_id, request.round)
        root = self._state_root(cfg, request)
        method = get_method(cfg.run.method)
        start, read_round, previous = client_state.begin(method, root, request.client_id, request.round, global_state)
        return _Start(start, root, read_round, previous)

    def _local_train(
        self, cfg: Config, request: ClientRequest, start: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], ClientReply]:
        """Personal evaluation (a personalised method), then local training at the client's rank."""
        personal = None
        if get_method(cfg.run.method).personalised:  # the personal model this client holds as the round begins
            personal = float(self.workload.evaluate(cfg, start)[self.workload.primary_metric(cfg)])
        if request.rank is not None:  # train the first `rank` ranks only, upload the rank-`rank` adapter
            start = hetero.keep_ranks(start, request.rank)
        trained, metrics = self.workload.train(cfg, request.client_id, request.round, start)
        if request.rank is not None:
            trained = hetero.truncate(trained, request.rank)
        metrics = {k: float(v) for k, v in metrics.items()}
        num_samples, train_loss, train_wall_s = (metrics.pop(k) for k in ("num_samples", "train_loss", "train_wall_s"))
        report = ClientReply(
            client_id=request.client_id,
            num_samples=int(num_samples),
            train_loss=train_loss,
            train_wall_s=train_wall_s,
            personal_metric=personal,
            extra=metrics,
        )
        return trained, report

    def _upload(
        self,
        cfg: Config,
        request: ClientRequest,
        trained: dict[str, np.ndarray],
        report: ClientReply,
        root: Path | None,
        global_state: dict[str, np.ndarray] | None,
        previous: dict[str, np.ndarray] | None,
        read_round: int,
    ) -> ClientReply:
        """Encode the upload at ``request.rho`` (and write the client's new state first)."""
        import torch

        if request.rho is None:
            raise RuntimeError(f"client {request.client_id}: an upload request carries no rho")
        gen = torch.Generator().manual_seed(torch_seed(cfg.run.seed, request.round, request.client_id, "sparsify"))
        arrays, stats = client_state.finish(
            get_method(cfg.run.method),
            root=root,
            client_id=request.client_id,
            round_=request.round,
            trained=trained,
            global_state=global_state,
            previous=previous,
            read_round=read_round,
            rho=request.rho,
            value_bits=cfg.lora.value_bits,
            quant_bits=cfg.lora.quant_bits,
            generator=gen,
        )
        stats = dict(stats)
        payload_bits = int(stats.pop("payload_bits"))
        diagnostics = {k: float(stats.pop(k)) for k in CLIENT_DIAGNOSTICS}
        return dataclasses.replace(
            report,
            arrays=arrays,
            payload_bits=payload_bits,
            dropped_errors=None,
            extra={**report.extra, **{k: float(v) for k, v in stats.items()}},
            **diagnostics,
        )
