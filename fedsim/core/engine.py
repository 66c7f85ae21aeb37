"""The round engine: a federated run from client sampling to its records, with no Flower.

The engine holds the run's state (global adapter, wireless model, scheduler, upload method) and
decides everything about a round; the transport only carries messages. Under ``fedsim run`` the
transport is Flower's Simulation Runtime, under ``fedsim deploy`` its Deployment Engine
(:mod:`fedsim.flower.server_app`), and in the tests a plain function. One round:

1. sample clients from the seed (:func:`fedsim.core.seeding.sample_clients`); with device classes
   (``compute.device_speed=classes``) a client whose device cannot hold the training is recorded
   as failed and not sent anything,
2. one-phase schedulers: send the global adapter, clients train and upload at the fixed rho;
   two-phase schedulers (TSFA): clients train and report, the scheduler decides rho_t and the
   band, the admitted clients upload at rho_t,
3. split the band (the scheduler's decision), drop the clients that miss ``tsfa.deadline_s``,
4. aggregate the uploads in client-id order (the upload method's server half), evaluate (every
   ``run.eval_every`` rounds and the final one; the others record ``metrics: null``; with
   ``simulation.overlap_eval`` the evaluation runs in a background thread while the next
   round's clients train, and the round is written when it is done),
5. account the uplink (channel, payload, latency) and the downlink (the broadcast of the global
   adapter, dense or quantised at ``lora.downlink_quant_bits``:
   :meth:`~fedsim.core.methods.UploadMethod.broadcast`, its time under ``channel.downlink``) and
   return a typed :class:`RoundRecord`.

A round whose surviving clients are fewer than ``run.min_clients_per_round`` (0: all sampled)
is recorded with ``status: "failed"`` and the global adapter is unchanged; an adapter that turns
non-finite ends the run with ``status: "diverged"``.

The transport is a :data:`Send` function: ``send(cfg, requests, state)`` delivers each
:class:`~fedsim.core.client.ClientRequest` (one per client, all of one action and round) and, when
``state`` is given, the global adapter, to its client, and returns the
:class:`~fedsim.core.client.ClientReply` of each client by client id and the failures (crashes,
timeouts). The client's half (:class:`fedsim.core.client.ClientRound`) answers them: ``"train"``
(train and upload at the request's rho, the fixed rho), ``"local"`` (train and report; step 1 of
a two-phase round) or ``"upload"`` (upload the adapter trained in step 1 at rho_t).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from fedsim.core import hetero
from fedsim.core.checkpoint import Checkpoint
from fedsim.core.client import Action, ClientReply, ClientRequest
from fedsim.core.config import Config
from fedsim.core.methods import fixed_rho, get_method
from fedsim.core.rank_plan import plan_for
from fedsim.core.records import CLIENT_DIAGNOSTICS, ClientRecord, Failure, RoundRecord, SchedulerOutcome
from fedsim.core.schedulers import Scheduler, get_scheduler
from fedsim.core.seeding import SERVER, rng, sample_clients, torch_seed
from fedsim.core.wireless import WirelessModel
from fedsim.tsfa import RankPlan

Send = Callable[
    [Config, list[ClientRequest], dict[str, np.ndarray] | None],
    tuple[dict[int, ClientReply], list[Failure]],
]
"""``send(cfg, requests, state) -> (replies by client id, failures)``; see the module docstring.
``cfg`` is the configuration the clients run with (the rank plan's ``lora.rank``)."""

Reporter = Callable[[str, dict[str, Any]], None]
"""``reporter(event, data)`` with events "start", "round", "end"; used for progress displays."""


class RunFailed(RuntimeError):
    """A run could not go on; the message is one line saying what failed."""


class Host(Protocol):
    """The workload as the server sees it (:class:`fedsim.core.training.WorkloadHost`, or a test stub)."""

    def primary_metric(self, cfg: Config) -> str: ...
    def initial_state(self, cfg: Config) -> dict[str, np.ndarray]: ...
    def evaluate(self, cfg: Config, state: dict[str, np.ndarray]) -> dict[str, float]: ...
    def flops_per_sample(self, cfg: Config) -> float: ...
    def partition_sizes(self, cfg: Config) -> list[int]: ...

    # optional: ``train_memory_bytes(cfg) -> int``, a lower bound on a client's training memory,
    # checked against device classes' memory (:func:`unfit_clients`; without it nothing is refused)


@dataclass(frozen=True)
class PendingRound:
    """A round whose clients and accounting are done; its evaluation may still be running."""

    record: RoundRecord
    """The round's record, ``metrics`` not filled in."""
    metrics: Future | None
    """The global adapter's evaluation (None: a round ``run.eval_every`` skips)."""

    def result(self) -> RoundRecord:
        """The complete record (waits for the evaluation)."""
        return self.record if self.metrics is None else replace(self.record, metrics=self.metrics.result())


def _done(value: Any) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def unfit_clients(wireless: WirelessModel, host: Host, cfg: Config) -> dict[int, str] | None:
    """Clients whose device class has less memory than training needs (the host's
    ``train_memory_bytes``, a lower bound), with the reason; None without device classes. Raises
    RunFailed when no client's device can train."""
    classes = wireless.device_classes
    if classes is None:
        return None
    need_fn = getattr(host, "train_memory_bytes", None)
    need_gib = need_fn(cfg) / 2**30 if need_fn is not None else 0.0
    unfit = {
        c: f"memory: training needs at least {need_gib:.3g} GiB, device ({d.name}) has {d.memory_gib:g} GiB"
        for c, d in enumerate(classes)
        if d.memory_gib < need_gib
    }
    if len(unfit) == len(classes):
        raise RunFailed(f"no client's device class can hold the training ({next(iter(unfit.values()))})")
    return unfit


class RoundEngine:
    """The state of a run between rounds and the logic of one round.

    Parameters
    ----------
    cfg : the run's configuration. Under a scheduler that plans the rank, ``lora.rank`` is
        replaced by the plan's (:attr:`cfg` is what the clients receive).
    host : the workload (initial adapter, evaluation, sizes).
    wireless : the cell; built from ``cfg`` when not given (a deployment passes one with its
        nodes' profiles).
    plan : the offline rank plan, when the caller has already computed it.
    resume : continue after this checkpoint's round.
    client_state_dir : where the clients of a method with client state keep it (sent with every
        request as ``client_state``; :mod:`fedsim.core.client_state`). :func:`run` sets
        ``<results folder>/client_state``; None keeps no state between rounds.
    """

    def __init__(
        self,
        cfg: Config,
        host: Host,
        wireless: WirelessModel | None = None,
        *,
        plan: RankPlan | None = None,
        resume: Checkpoint | None = None,
        client_state_dir: str | None = None,
    ) -> None:
        self.host = host
        self.wireless = wireless if wireless is not None else WirelessModel(cfg)
        self.method = get_method(cfg.run.method)
        self.schedule = get_scheduler(cfg.run.scheduler)
        self.plan = None
        if self.schedule.plans_rank:
            self.plan = plan if plan is not None else plan_for(cfg, self.wireless, host)
            cfg = replace(cfg, lora=replace(cfg.lora, rank=self.plan.chosen_rank))
        self.cfg = cfg
        self.rho = fixed_rho(cfg.run.method, cfg.method.rho)
        """The rho of a one-phase round, sent with every ``train`` request (clients never derive it)."""
        self.flops_per_sample = host.flops_per_sample(cfg)
        initial = host.initial_state(cfg)
        shapes = {k: v.shape for k, v in initial.items()}
        q, b = cfg.lora.value_bits, cfg.lora.quant_bits
        self.bits_by_rho = {r: self.method.adapter_bits(shapes, cfg.lora.rank, r, q, b) for r in cfg.tsfa.rho_grid}
        self.downlink_bits = self.method.downlink_bits(shapes, q, cfg.lora.downlink_quant_bits)
        self.scheduler: Scheduler = self.schedule.build(cfg)
        if resume is not None and resume.scheduler:
            self.scheduler.load_state_dict(resume.scheduler)
        # in the order the workload builds it (a checkpoint's file may list the tensors in another)
        self.state = {k: resume.state[k] for k in initial} if resume is not None else initial
        metrics = resume.records[-1]["metrics"] if resume is not None and resume.records else None
        self._metrics: Future | None = None if metrics is None else _done(metrics)
        """The current global adapter's evaluation (None: not evaluated yet)."""
        self._background = (
            ThreadPoolExecutor(1, thread_name_prefix="fedsim-eval") if cfg.simulation.overlap_eval else None
        )
        """One thread that evaluates, and then writes, each round in order (None: all inline)."""
        self.primary = host.primary_metric(cfg)
        self.client_state_dir = client_state_dir if self.method.needs_client_state else None
        self.hetero = cfg.hetero.rank_rule != "none"
        self.shapes = shapes
        self.unfit = unfit_clients(self.wireless, host, cfg)
        """Client id -> why its device cannot train (device classes' memory; None without classes)."""

    # ---- one round ----------------------------------------------------------------------------

    def _straggle_s(self, round_: int, ids: list[int]) -> np.ndarray:
        """Each client's extra compute time in simulated seconds: ``faults.straggle_delay_s`` for the
        clients drawn as stragglers (``faults.client_straggle_prob``, the client's own stream)."""
        f = self.cfg.faults
        if f.client_straggle_prob <= 0:
            return np.zeros(len(ids))
        seed = self.cfg.run.seed
        hit = [rng(seed, round_, c, "fault-straggle").random() < f.client_straggle_prob for c in ids]
        return np.where(hit, f.straggle_delay_s, 0.0)

    def _ranks(self, round_: int, ids: list[int]) -> list[int]:
        """Each client's LoRA rank under ``hetero.rank_rule`` (:func:`fedsim.core.hetero.client_ranks`)."""
        if not self.hetero:
            return [self.cfg.lora.rank] * len(ids)
        h = self.cfg.hetero
        if h.rank_rule == "compute":
            values = self.wireless.device_flops
        else:  # channel: the round's gain of every client
            values = np.nan_to_num(self.wireless.channel(round_).gain_linear, nan=-np.inf)
        ranks = hetero.client_ranks(values, h.rank_levels)
        return [int(ranks[c]) for c in ids]

    def _flops(self, round_: int, ids: list[int]) -> float | np.ndarray:
        """Training FLOPs per sample of each client (its own rank under ``hetero``)."""
        if not self.hetero:
            return self.flops_per_sample
        return np.array(
            [hetero.flops_per_sample_at_rank(self.flops_per_sample, self.shapes, r) for r in self._ranks(round_, ids)]
        )

    def _decide(self, round_: int, ids: list[int], num_samples: list[int], payloads: dict, penalties=None):
        if not ids:
            return None
        a = self.wireless.snr_per_hz(round_, ids)
        tcmp = self.wireless.compute_times_s(ids, num_samples, self._flops(round_, ids)) + self._straggle_s(round_, ids)
        if self.cfg.channel.packet_errors == "retransmit":  # price the expected transmissions E[n_k]
            n_tx = self.wireless.expected_transmissions(round_, ids)
            payloads = {rho: bits * n_tx for rho, bits in payloads.items()}
        return self.scheduler.decide(a, tcmp, payloads, penalties)

    def _client_records(
        self, round_: int, ids: list[int], replies: list[ClientReply], bandwidth_hz: list[float], dropped: str | None
    ) -> tuple[list[ClientRecord], float]:
        """Records of clients ``ids`` (with their replies) and their latency max_k T_k.

        ``dropped`` is the reason a set of clients did not upload (the deadline): they are
        recorded with their channel and what they would have sent, at 0 Hz.
        """
        straggle = self._straggle_s(round_, ids)
        fields, latency_s = self.wireless.account(
            round_,
            ids,
            [r.payload_bits for r in replies],
            [r.num_samples for r in replies],
            self._flops(round_, ids),
            bandwidth_hz=np.array(bandwidth_hz, dtype=float),
            downlink_bits=self.downlink_bits,
            extra_compute_s=straggle,
        )
        reasons = [dropped] * len(ids)
        if dropped is None:  # a device that left (availability), an upload erased on the uplink: lost for the round
            n_max = self.cfg.channel.max_transmissions if self.cfg.channel.packet_errors == "retransmit" else 1
            lost = f"packet error: erased in all {{}} transmissions ({n_max} allowed, channel.packet_errors)"
            reasons = [f["left"] or (None if f["delivered"] else lost.format(f["transmissions"])) for f in fields]
        for f in fields:
            del f["delivered"], f["left"]
        records = [
            ClientRecord(
                **f,
                dropped=reason is not None,
                drop_reason=reason,
                straggle_s=float(extra),
                **{key: getattr(r, key) for key in CLIENT_DIAGNOSTICS},
                train_loss=r.train_loss,
                train_wall_s=r.train_wall_s,
            )
            for f, r, extra, reason in zip(fields, replies, straggle, reasons, strict=True)
        ]
        return records, latency_s

    def _requests(self, action: Action, round_: int, clients: list[int], rho: float | None) -> list[ClientRequest]:
        """Each client's request: ``rho`` to upload at, the client-state folder of a method with
        state and the client's LoRA rank under ``hetero``."""
        ranks = self._ranks(round_, clients) if self.hetero else [None] * len(clients)
        return [
            ClientRequest(
                action=action, round=round_, client_id=c, rho=rho, rank=r, client_state_dir=self.client_state_dir
            )
            for c, r in zip(clients, ranks, strict=True)
        ]

    def _personal_metric(self, replies: dict[int, ClientReply]) -> dict[str, float]:
        """``personal_<metric>``: the mean over the replying clients of their personal models'
        metric (clients evaluate the model they hold as the round begins); {} for other methods."""
        if not self.method.personalised:
            return {}
        values = [float(replies[c].personal_metric) for c in sorted(replies)]
        return {f"personal_{self.primary}": float(np.mean(values))} if values else {}

    def snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What a checkpoint after the current round holds: the adapter's arrays and the scheduler's state."""
        return self.state, self.scheduler.state_dict()

    def later(self, fn: Callable[..., Any], *args: Any) -> Future:
        """``fn(*args)`` in the background thread, after what was queued before (inline without one)."""
        if self._background is not None:
            return self._background.submit(fn, *args)
        return _done(fn(*args))

    def close(self, wait: bool = True) -> None:
        """Stop the background thread after its queue (``wait``), or after what it is doing now."""
        if self._background is not None:
            self._background.shutdown(wait=wait, cancel_futures=not wait)

    def _evaluation(self, cfg: Config, state: dict[str, np.ndarray], personal: dict[str, float]) -> dict[str, Any]:
        metrics = self.host.evaluate(cfg, state)
        return {**metrics, "primary_metric": metrics[self.primary], **personal}

    def run_round(self, round_: int, send: Send) -> RoundRecord:
        """Run round ``round_`` through ``send``; updates the global adapter and returns the record."""
        return self.start_round(round_, send).result()

    def start_round(self, round_: int, send: Send) -> PendingRound:
        """Run round ``round_`` through ``send`` and update the global adapter; its evaluation may
        still be running in the background when this returns."""
        cfg = self.cfg
        t_round = time.perf_counter()
        sampled = sample_clients(cfg.run.seed, round_, cfg.run.clients, cfg.num_sampled)
        unfit = [Failure(c, self.unfit[c]) for c in sampled if self.unfit and c in self.unfit]
        clients = [c for c in sampled if not (self.unfit and c in self.unfit)]  # the rest are never sent
        seed = torch_seed(cfg.run.seed, round_, SERVER, "downlink-quant")
        sent, _ = self.method.broadcast(self.state, cfg.lora.value_bits, cfg.lora.downlink_quant_bits, seed)
        if self.schedule.two_phase:  # train and report; decide rho_t and b_t; upload at rho_t
            reports, failures = send(cfg, self._requests("local", round_, clients, None), sent)
            personal = self._personal_metric(reports)
            decided = sorted(reports)
            m1 = [reports[c] for c in decided]
            decision = self._decide(
                round_,
                decided,
                [r.num_samples for r in m1],
                {r: np.full(len(decided), bits) for r, bits in self.bits_by_rho.items()},
                {r: np.array([m.dropped_errors[i] for m in m1]) for i, r in enumerate(cfg.tsfa.rho_grid)},
            )
            go = [c for i, c in enumerate(decided) if i not in decision.dropped] if decision else []
            replies: dict[int, ClientReply] = {}
            if go:
                replies, late = send(cfg, self._requests("upload", round_, go, decision.rho), None)
                failures = failures + late
            priced = {c: replace(reports[c], payload_bits=self.bits_by_rho[decision.rho]) for c in decided}
        else:  # rho is known: train and upload in one message, then split the band
            replies, failures = send(cfg, self._requests("train", round_, clients, self.rho), sent)
            personal = self._personal_metric(replies)
            decided = sorted(replies)
            decision = self._decide(
                round_,
                decided,
                [replies[c].num_samples for c in decided],
                {self.rho: np.array([float(replies[c].payload_bits) for c in decided])},
            )
            priced = {c: replies[c] for c in decided}
            for i in decision.dropped if decision else ():
                del replies[decided[i]]
        late = self._deadline_failures(decided, decision)
        failures = unfit + failures + late
        band_of = dict(zip(decided, decision.bandwidth_hz, strict=True)) if decision else {}
        survivors = sorted(replies)  # client-id order, never arrival order
        client_records, latency_s = self._client_records(
            round_, survivors, [replies[c] for c in survivors], [band_of[c] for c in survivors], None
        )
        erased = [Failure(r.client_id, r.drop_reason) for r in client_records if r.dropped]
        if erased:
            failures = failures + erased
            survivors = [c for c in survivors if c not in {f.client_id for f in erased}]
        if late:
            out = sorted(f.client_id for f in late)
            dropped, _ = self._client_records(round_, out, [priced[c] for c in out], [0.0] * len(out), late[0].reason)
            client_records += dropped
        recorded = {r.client_id for r in client_records}
        lost = [f for f in failures if f.client_id not in recorded and f.client_id >= 0]
        client_records += [
            ClientRecord.lost(f.client_id, f.reason, self.wireless.channel_fields(round_, f.client_id), float(s))
            for f, s in zip(lost, self._straggle_s(round_, [f.client_id for f in lost]), strict=True)
        ]
        client_records.sort(key=lambda r: r.client_id)
        # 0 means every sampled client; a deadline, packet errors or device classes (memory, availability)
        # drop clients by design: any one suffices
        by_design = cfg.tsfa.deadline_s > 0 or cfg.channel.packet_errors != "none" or self.unfit is not None
        need = cfg.run.min_clients_per_round or (1 if by_design else len(sampled))
        ok = len(survivors) >= need and len(survivors) > 0
        cov_norm = 0.0
        if ok:
            uploads = [(float(replies[c].num_samples), *self.method.decode(replies[c].arrays)) for c in survivors]
            if self.hetero:
                self.state, cov_norm = hetero.aggregate(self.state, uploads, cfg.hetero.aggregation)
            else:
                self.state, cov_norm = self.method.aggregate(self.state, uploads)
        if ok:
            self._metrics = None  # a new adapter: its metrics are unknown until evaluated
        evaluated = round_ % cfg.run.eval_every == 0 or round_ == cfg.run.rounds
        if evaluated and self._metrics is None:  # a failed round keeps the adapter, hence its metrics
            self._metrics = self.later(self._evaluation, cfg, self.state, personal)
        finite = all(np.isfinite(v).all() for v in self.state.values())
        queue_s = self.scheduler.queue_s
        self.scheduler.update(latency_s)
        uploaded = [r for r in client_records if not r.dropped]
        record = RoundRecord(
            round=round_,
            status="failed" if not ok else "ok" if finite else "diverged",
            clients=client_records,
            failures=sorted(failures, key=lambda f: f.client_id),
            round_latency_s=latency_s,
            uplink_bits_total=int(sum(r.payload_bits for r in uploaded)),
            downlink_bits=self.downlink_bits,
            downlink_s=self.wireless.downlink_time_s(round_, clients, self.downlink_bits),
            metrics=None,  # filled in by PendingRound.result()
            **{
                key: float(np.mean([getattr(r, key) for r in uploaded])) if uploaded else 0.0
                for key in CLIENT_DIAGNOSTICS
            },
            covariance_norm=cov_norm,
            scheduler=self._outcome(decision, queue_s),
            wall_s=time.perf_counter() - t_round,
        )
        return PendingRound(record, self._metrics if evaluated else None)

    def _deadline_failures(self, clients: list[int], decision) -> list[Failure]:
        if decision is None:
            return []
        why = f"deadline: cannot upload within tsfa.deadline_s={self.cfg.tsfa.deadline_s:g}"
        return [Failure(clients[i], why) for i in decision.dropped]

    def _outcome(self, decision, queue_s: float) -> SchedulerOutcome:
        if decision is None:
            return SchedulerOutcome(self.rho, queue_s, None, "no clients", 0.0, False, 0, [])
        d = decision.as_dict()
        return SchedulerOutcome(
            rho=d["rho"],
            queue_s=d["queue_s"],
            objective=d["objective"],
            solver_status=d["solver_status"],
            solve_time_s=d["solve_time_s"],
            fallback=d["fallback"],
            deadline_dropped=len(d["dropped"]),
            latency_by_rho=d["latency_by_rho"],
        )
