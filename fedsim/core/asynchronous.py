"""Asynchronous aggregation on the simulated clock: FedAsync and FedBuff over a shared uplink.

``run.aggregation`` ``fedasync`` (Xie et al., "Asynchronous Federated Optimization", 2019) or
``fedbuff`` (Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
AISTATS 2022). There are no rounds: ``asynchronous.concurrency`` = M clients are in flight at any
time, each on its own timeline in simulated seconds,

    dispatched at t0 with global version v0 -> downlink T_dl -> local training T_cmp (+ a
    straggler's delay) -> upload of S bits over the band shared with every other upload in
    flight (channels.sharing) -> arrives at t_a,

and the server applies updates as they arrive. With an update of base version v0 arriving when
the global adapter is at version v, its staleness is s = v - v0 and its weight w = (1 + s)^-a
(a = ``asynchronous.staleness_exponent``). A server update takes the K updates u_1..u_K that
arrived since the previous one (K = 1 for fedasync, ``asynchronous.buffer_size`` for fedbuff):

    x* = AGG(x_v; (n_k w_k, u_k))        the upload method's own aggregation with weights n_k w_k
    eta_v = eta * sum_k n_k w_k / sum_k n_k
    x_{v+1} = x_v + eta_v (x* - x_v)      (x* itself when eta_v = 1)

with n_k the client's samples and eta = ``asynchronous.server_lr``. For fedasync this is FedAsync's
mixing x_{v+1} = (1 - alpha_s) x_v + alpha_s x_k with alpha_s = eta (1 + s)^-a; for fedbuff with
a = 0 and eta = 1 it is FedAvg of the K updates. AGG is the method's server half, so SOFT, top-k,
quantised uploads and error feedback work unchanged (entries a client did not send keep x_v's).

Which client, and when. When a client's upload arrives (or its dispatch fails) it rests
``asynchronous.idle_s`` and rejoins the idle clients; whenever fewer than M are in flight, the
server draws one idle client uniformly from its own seeded stream for that dispatch and sends it
the current global adapter (after the server update the arrival triggered, if any). With M =
``run.clients`` every client trains again as soon as its upload is done.

Determinism. Events are ordered by simulated time, ties by client id; nothing depends on the
wall clock or on the order in which Ray finishes the training. Training is lazy and batched:
a dispatched client is trained (its request's round is its dispatch number, which keys its
random streams) when the clock first needs an upload size, together with every other client
dispatched and not yet trained, so Ray trains them in parallel. The records depend only on the
seed and the configuration.

The channel. Fading and mobility advance per block of ``asynchronous.fading_block_s`` simulated
seconds (block j is the synchronous model's round j); each downlink is a unicast at the
client's downlink rate in the block of its dispatch.

One record per server update (``rounds.jsonl``; ``round`` is the new version): the applied
clients (their channel in the block of arrival, mean band, rate, times, energies), the failures
since the previous update, ``round_latency_s`` the simulated time since the previous update,
``downlink_bits`` the unicasts since then, and ``aggregation`` (:class:`AggregationEvent`) with
each update's timeline, staleness and weight. A checkpoint after each update holds the clock and
the older versions that clients in flight started from (:meth:`AsyncEngine.snapshot`); a resume
trains those clients again. Not defined for asynchronous runs, and refused before a run starts
(:func:`fedsim.core.checks.check_asynchronous`): band-splitting and two-phase schedulers (the band
is shared by the uploads in flight), heterogeneous ranks, packet errors and a TSFA deadline.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from channels.rate import in_outage, upload_energy_j
from channels.sharing import SharedUplink
from fedsim.core.checkpoint import ASYNC_KEY, OLD_VERSION, Checkpoint
from fedsim.core.checks import check_asynchronous
from fedsim.core.client import ClientReply, ClientRequest
from fedsim.core.config import Config
from fedsim.core.engine import Host, PendingRound, RoundEngine, RunFailed, Send
from fedsim.core.records import (
    CLIENT_DIAGNOSTICS,
    AggregationEvent,
    AppliedUpdate,
    ClientRecord,
    Failure,
    RoundRecord,
    SchedulerOutcome,
)
from fedsim.core.seeding import SERVER, rng, torch_seed
from fedsim.core.wireless import WirelessModel, availability_reason

FAILURES_WITHOUT_UPDATE = 10
"""A run stops when this many times ``concurrency`` dispatches in a row fail before a server update."""


@dataclass
class Flight:
    """One dispatch of a client: its timeline so far and, once trained, its reply or failure."""

    client_id: int
    dispatch: int
    base_version: int
    dispatched_s: float
    downlink_s: float
    compute_s: float
    straggle_s: float
    reply: ClientReply | None = None
    failure: str | None = None
    upload_start_s: float = math.nan
    arrived_s: float = math.nan
    band_hz: float = math.nan
    offline_s: float = math.inf
    """When the device goes offline (device classes' availability; inf: it stays)."""
    failed_s: float = math.nan

    @property
    def leaves_in_training(self) -> bool:
        return self.offline_s < self.ready_s

    @property
    def ready_s(self) -> float:
        """When its training ends and its upload can start."""
        return self.dispatched_s + self.downlink_s + self.compute_s


def _by_client(f: Flight) -> tuple[int, int]:
    return f.client_id, f.dispatch


class AsyncEngine(RoundEngine):
    """The engine of an asynchronous run: :meth:`start_round` runs the clock to the next server
    update (version ``round_``) and returns its record, as :class:`RoundEngine`'s does for a round,
    so :func:`fedsim.core.runner.run` drives both."""

    def __init__(
        self,
        cfg: Config,
        host: Host,
        wireless: WirelessModel | None = None,
        *,
        client_state_dir: str | None = None,
        resume: Checkpoint | None = None,
        **_: Any,
    ) -> None:
        check_asynchronous(cfg)
        clock = resume.scheduler.get(ASYNC_KEY) if resume is not None else None
        if resume is not None and not isinstance(clock, dict):
            raise RunFailed(f"checkpoint of round {resume.round} has no asynchronous clock: not an asynchronous run's")
        current = None if resume is None else {k: v for k, v in resume.state.items() if not OLD_VERSION.fullmatch(k)}
        base = None if resume is None else replace(resume, state=current, scheduler={})
        super().__init__(cfg, host, wireless, client_state_dir=client_state_dir, resume=base)
        a = cfg.asynchronous
        self.mode = cfg.run.aggregation
        self.buffer_size = 1 if self.mode == "fedasync" else a.buffer_size
        self.concurrency = cfg.concurrency
        self.uplink = SharedUplink(cfg.channel.bandwidth_hz, a.fading_block_s, self.wireless.snr_per_hz)
        self.sizes = host.partition_sizes(cfg)
        self.version = 0
        self.sent: dict[int, dict[str, np.ndarray]] = {}  # version -> the adapter as clients decode it
        self.computing: list[Flight] = []  # dispatched; training or its downlink not over
        self.uploading: dict[int, Flight] = {}  # by dispatch number
        self.buffer: list[Flight] = []  # arrived, not applied yet
        self.failed: list[Flight] = []  # failed since the previous server update
        self.downlinks: list[float] = []  # downlink times of the dispatches since the previous update
        self.failures_in_a_row = 0
        # idle clients -> when they may be drawn; a device that cannot hold the training never is
        self.idle_until = {c: 0.0 for c in range(cfg.run.clients) if not (self.unfit and c in self.unfit)}
        self.dispatches = 0
        self.previous_s = 0.0
        self.send: Send | None = None
        if resume is not None:
            self._restore(clock, resume)

    # ---- checkpoints --------------------------------------------------------------------------

    def snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The checkpoint after the current server update: the adapter and, as
        ``asynchronous.v<version>.<tensor>``, the older versions that clients in flight started
        from; and the clock (flights, uploads' progress, idle clients, counters) as JSON. A resume
        trains the clients in flight again from those versions, with the same streams."""
        arrays = dict(self.state)
        flights = [*self.computing, *self.uploading.values()]
        for version in sorted({f.base_version for f in flights}):
            arrays.update({f"asynchronous.v{version}.{k}": v for k, v in self.sent[version].items()})
        clock = {
            "version": self.version,
            "dispatches": self.dispatches,
            "t_s": self.uplink.t_s,
            "block": self.uplink.block,
            "previous_s": self.previous_s,
            "failures_in_a_row": self.failures_in_a_row,
            "idle_until": [[c, t] for c, t in sorted(self.idle_until.items())],
            "downlinks": list(self.downlinks),
            "flights": [
                [
                    f.client_id,
                    f.dispatch,
                    f.base_version,
                    f.dispatched_s,
                    f.downlink_s,
                    f.compute_s,
                    f.straggle_s,
                    f.upload_start_s if f.dispatch in self.uploading else None,
                    f.offline_s,
                ]
                for f in flights
            ],
            "uploads": [
                [key, cid, left, self.uplink.band_hz_s[key]] for key, (cid, left) in self.uplink.active().items()
            ],
        }
        return arrays, {ASYNC_KEY: clock}

    def _restore(self, clock: dict[str, Any], resume: Checkpoint) -> None:
        """The clock of :meth:`snapshot`; every flight is trained again when the clock needs it."""
        self.version, self.dispatches = int(clock["version"]), int(clock["dispatches"])
        if self.version != resume.round:
            raise RunFailed(f"checkpoint of round {resume.round} holds the clock of version {self.version}")
        self.uplink.t_s, self.uplink.block = float(clock["t_s"]), int(clock["block"])
        self.previous_s, self.failures_in_a_row = float(clock["previous_s"]), int(clock["failures_in_a_row"])
        self.idle_until = {int(c): float(t) for c, t in clock["idle_until"]}
        self.downlinks = [float(t) for t in clock["downlinks"]]
        for cid, d, base, t0, t_dl, t_cmp, straggle, upload_start, offline in clock["flights"]:
            flight = Flight(int(cid), int(d), int(base), t0, t_dl, t_cmp, straggle)
            flight.offline_s = math.inf if offline is None else float(offline)  # JSON has no infinity
            if upload_start is None:
                self.computing.append(flight)
            else:
                flight.upload_start_s = float(upload_start)
                self.uploading[flight.dispatch] = flight
        for key, cid, left, band in clock["uploads"]:
            self.uplink.resume_upload(int(key), int(cid), float(left), float(band))
        self.sent = {}
        for name, array in resume.state.items():
            if old := OLD_VERSION.fullmatch(name):
                self.sent.setdefault(int(old[1]), {})[old[2]] = array

    # ---- dispatch and training ----------------------------------------------------------------

    def _in_flight(self) -> int:
        return len(self.computing) + len(self.uploading)

    def _dispatch(self, now_s: float) -> None:
        """Send the current global adapter to idle clients until ``concurrency`` are in flight."""
        cfg = self.cfg
        while self._in_flight() < self.concurrency:
            idle = sorted(c for c, t in self.idle_until.items() if t <= now_s)
            if not idle:
                return
            self.dispatches += 1
            d = self.dispatches
            c = idle[int(rng(cfg.run.seed, d, SERVER, "async-pick").integers(len(idle)))]
            del self.idle_until[c]
            if self.version not in self.sent:
                seed = torch_seed(cfg.run.seed, self.version + 1, SERVER, "downlink-quant")
                self.sent[self.version], _ = self.method.broadcast(
                    self.state, cfg.lora.value_bits, cfg.lora.downlink_quant_bits, seed
                )
            block = self.uplink.block_of(now_s)
            downlink_s = self.wireless.downlink_time_s(block, [c], self.downlink_bits)
            straggle_s = float(self._straggle_s(d, [c])[0])
            compute_s = float(self.wireless.compute_times_s([c], [self.sizes[c]], self.flops_per_sample)[0])
            self.downlinks.append(downlink_s)
            flight = Flight(c, d, self.version, now_s, downlink_s, compute_s + straggle_s, straggle_s)
            flight.offline_s = now_s + float(self.wireless.online_times_s(d, [c])[0])
            self.computing.append(flight)

    def _train_pending(self) -> None:
        """Train every dispatched, untrained client: one message batch per base version."""
        flights = (*self.computing, *self.uploading.values())
        pending = [f for f in flights if f.reply is None and f.failure is None and not f.leaves_in_training]
        for version in sorted({f.base_version for f in pending}):
            group = sorted((f for f in pending if f.base_version == version), key=lambda f: f.client_id)
            requests = [
                ClientRequest(
                    action="train",
                    round=f.dispatch,
                    client_id=f.client_id,
                    rho=self.rho,
                    client_state_dir=self.client_state_dir,
                )
                for f in group
            ]
            replies, failures = self.send(self.cfg, requests, self.sent[version])
            why = {f.client_id: f.reason for f in failures}
            for f in group:
                f.reply = replies.get(f.client_id)
                if f.reply is None:
                    f.failure = why.get(f.client_id, "no reply")
        # a checkpoint keeps the version of every client in flight: a resume trains them all again
        needed = {f.base_version for f in (*self.computing, *self.uploading.values())}
        self.sent = {v: s for v, s in self.sent.items() if v in needed or v == self.version}

    # ---- the clock ------------------------------------------------------------------------------

    def start_round(self, round_: int, send: Send) -> PendingRound:
        """Run the clock to server update ``round_`` (the next version) and return its record."""
        if round_ != self.version + 1:
            raise RuntimeError(f"server update {round_} after version {self.version}")
        self.send = send
        t_wall = time.perf_counter()
        if self.dispatches == 0:
            self._dispatch(0.0)
        while True:
            t_ready = min((min(f.ready_s, f.offline_s) for f in self.computing), default=math.inf)
            t_leave = min((f.offline_s for f in self.uploading.values()), default=math.inf)
            wake = [t for t in self.idle_until.values() if t > self.uplink.t_s]
            t_wake = min(wake) if wake and self._in_flight() < self.concurrency else math.inf
            until = min(t_ready, t_leave, t_wake)
            if not self.uploading and math.isinf(until):
                raise RunFailed("asynchronous: no client is in flight or can be dispatched")
            arrival = self.uplink.advance(until)
            now = self.uplink.t_s
            if arrival is not None:
                if self.uploading[arrival[1]].reply is None:  # an upload a resume restored
                    self._train_pending()
                flight = self.uploading.pop(arrival[1])
                flight.arrived_s = now
                flight.band_hz = self.uplink.band_hz_s.pop(flight.dispatch) / max(now - flight.upload_start_s, 1e-300)
                self.idle_until[flight.client_id] = now + self.cfg.asynchronous.idle_s
                self.buffer.append(flight)
                self.failures_in_a_row = 0
                if len(self.buffer) >= self.buffer_size:
                    return self._update(now, t_wall)
            else:
                for flight in sorted((f for f in self.uploading.values() if f.offline_s <= now), key=_by_client):
                    del self.uploading[flight.dispatch]  # its device left mid-upload: the band is shared anew
                    self.uplink.cancel(flight.dispatch)
                    self._fail(flight, now, self._left(flight))
                ready = sorted(
                    (f for f in self.computing if min(f.ready_s, f.offline_s) <= now),
                    key=lambda f: (min(f.ready_s, f.offline_s), f.client_id),
                )
                if any(f.reply is None and f.failure is None and not f.leaves_in_training for f in ready):
                    self._train_pending()
                for flight in ready:
                    self.computing.remove(flight)
                    if flight.leaves_in_training:
                        self._fail(flight, now, self._left(flight))
                    elif flight.failure is not None:
                        self._fail(flight, now)
                    else:
                        flight.upload_start_s = now
                        self.uploading[flight.dispatch] = flight
                        self.uplink.start(flight.dispatch, flight.client_id, float(flight.reply.payload_bits))
            self._dispatch(now)

    def _left(self, flight: Flight) -> str:
        online_s = flight.offline_s - flight.dispatched_s
        return availability_reason(self.wireless.device_classes, flight.client_id, online_s)

    def _fail(self, flight: Flight, now_s: float, reason: str | None = None) -> None:
        if reason is not None:
            flight.failure = reason
        flight.failed_s = now_s
        self.failed.append(flight)
        self.idle_until[flight.client_id] = now_s + self.cfg.asynchronous.idle_s
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= FAILURES_WITHOUT_UPDATE * self.concurrency:
            raise RunFailed(
                f"asynchronous: {self.failures_in_a_row} dispatches in a row failed before server update "
                f"{self.version + 1} (last: client {flight.client_id}: {flight.failure})"
            )

    # ---- the server update ----------------------------------------------------------------------

    def _update(self, now_s: float, t_wall: float) -> PendingRound:
        cfg, a = self.cfg, self.cfg.asynchronous
        applied, self.buffer = self.buffer, []
        staleness = [self.version - f.base_version for f in applied]
        weights = [(1.0 + s) ** -a.staleness_exponent for s in staleness]
        n = [float(f.reply.num_samples) for f in applied]
        uploads = [
            (nk * wk, *self.method.decode(f.reply.arrays)) for nk, wk, f in zip(n, weights, applied, strict=True)
        ]
        target, cov_norm = self.method.aggregate(self.state, uploads)
        step = a.server_lr * sum(nk * wk for nk, wk in zip(n, weights, strict=True)) / sum(n)
        if step == 1.0:
            self.state = target
        else:
            self.state = {
                k: (v + step * (target[k].astype(np.float64) - v)).astype(v.dtype) if k in target else v
                for k, v in self.state.items()
            }
        self.version += 1
        self._metrics = None
        personal = self._personal_metric({f.client_id: f.reply for f in applied})
        evaluated = self.version % cfg.run.eval_every == 0 or self.version == cfg.run.rounds
        if evaluated:
            self._metrics = self.later(self._evaluation, cfg, self.state, personal)
        downlinks, self.downlinks = self.downlinks, []
        failed, self.failed = self.failed, []
        self._dispatch(now_s)  # the replacements start from the new version
        records = [self._applied_record(f) for f in applied] + [
            ClientRecord.lost(
                f.client_id,
                f.failure,
                self.wireless.channel_fields(self.uplink.block_of(f.failed_s), f.client_id),
                f.straggle_s,
            )
            for f in failed
        ]
        finite = all(np.isfinite(v).all() for v in self.state.values())
        latency_s, self.previous_s = now_s - self.previous_s, now_s
        record = RoundRecord(
            round=self.version,
            status="ok" if finite else "diverged",
            clients=sorted(records, key=lambda r: r.client_id),
            failures=[Failure(f.client_id, f.failure) for f in failed],
            round_latency_s=latency_s,
            uplink_bits_total=int(sum(f.reply.payload_bits for f in applied)),
            downlink_bits=self.downlink_bits * len(downlinks),
            downlink_s=max(downlinks, default=0.0),
            metrics=None,
            **{key: float(np.mean([getattr(f.reply, key) for f in applied])) for key in CLIENT_DIAGNOSTICS},
            covariance_norm=cov_norm,
            scheduler=SchedulerOutcome(self.rho, 0.0, None, "asynchronous", 0.0, False, 0, []),
            wall_s=time.perf_counter() - t_wall,
            aggregation=AggregationEvent(
                mode=self.mode,
                version=self.version,
                time_s=now_s,
                updates=[
                    AppliedUpdate(
                        client_id=f.client_id,
                        dispatch=f.dispatch,
                        base_version=f.base_version,
                        staleness=s,
                        weight=w,
                        dispatched_s=f.dispatched_s,
                        upload_start_s=f.upload_start_s,
                        arrived_s=f.arrived_s,
                    )
                    for f, s, w in zip(applied, staleness, weights, strict=True)
                ],
                in_flight=self._in_flight(),
                step=step,
            ),
        )
        return PendingRound(record, self._metrics if evaluated else None)

    def _applied_record(self, f: Flight) -> ClientRecord:
        """An applied client's record: its channel in the block its upload ended in, its mean band
        and rate over the upload, its times and energies."""
        cfg, r = self.cfg, f.reply
        upload_s = f.arrived_s - f.upload_start_s
        total_s = f.arrived_s - f.dispatched_s
        energy = self.wireless.compute_energies_j([f.client_id], [r.num_samples], self.flops_per_sample)
        return ClientRecord(
            client_id=f.client_id,
            dropped=False,
            drop_reason=None,
            **self.wireless.channel_fields(self.uplink.block_of(f.arrived_s), f.client_id),
            bandwidth_hz=float(f.band_hz),
            rate_bps=float(r.payload_bits / upload_s) if upload_s > 0 else 0.0,
            payload_bits=int(r.payload_bits),
            num_samples=int(r.num_samples),
            compute_time_s=f.compute_s,
            straggle_s=f.straggle_s,
            upload_time_s=upload_s,
            downlink_time_s=f.downlink_s,
            upload_energy_j=float(upload_energy_j(self.wireless.tx_power_w, upload_s)),
            compute_energy_j=float(energy[0]),
            outage=bool(in_outage(np.array([total_s]), cfg.channel.outage_deadline_s)[0]),
            packet_error_prob=0.0,
            transmissions=1,
            **{key: getattr(r, key) for key in CLIENT_DIAGNOSTICS},
            train_loss=r.train_loss,
            train_wall_s=r.train_wall_s,
        )
