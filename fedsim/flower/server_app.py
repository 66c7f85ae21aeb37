"""The fedsim ServerApp: rounds of sampling, local training, wireless accounting and aggregation.

The same :func:`serve` runs under ``fedsim run`` (Simulation Runtime, Ray) and ``flwr run .``
(the app declared in pyproject.toml). Each round:

1. sample clients from the seed (Flower's own sampling draws node ids from os.urandom),
2. send the global adapter and the configuration to each sampled client (TRAIN),
3. collect their adapters; a client error fails the round and the run (with its reason),
4. aggregate in client-id order, account the uplink (channel, payload, latency), evaluate,
5. append the round record to ``rounds.jsonl`` and report progress.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsim.checkpoint import Checkpoint, save_checkpoint, sha256_text
from fedsim.config import Config, ConfigError, config_from_flat
from fedsim.flower.records import (
    CLIENT_KEY,
    NODE_PROFILE_KEYS,
    RHO_KEY,
    ROUND_KEY,
    config_record,
    from_array_record,
    to_array_record,
)
from fedsim.methods import aggregate_uploads, decode_upload
from fedsim.results import ResultsWriter
from fedsim.rounds import WirelessModel, sample_clients
from fedsim.runtime import evaluate_state, get_runtime, initial_state
from fedsim.scheduling import adapter_bits, build_scheduler, plan_structural_rank, write_plan
from fedsim.tsfa import RankPlan

CLIENT_DIAGNOSTICS = ("kept_ranks", "dropped_rank_error", "mean_abs_cos", "sparsify_time_s")
"""Per-client SOFT diagnostics; the round record carries their mean over the round's clients."""


class RunFailed(RuntimeError):
    """A round could not complete; the message is one line saying what failed."""


def short_reason(reason: str) -> str:
    """One line from a Flower error reason: the exception class and its own message.

    Flower reports a ClientApp failure as ``<class '...'>:<'...'>`` with Ray's traceback inside.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    m = re.match(r"\s*<class '([^']+)'>:<'(.*)'>\s*$", text, re.DOTALL)
    if not m:
        return " ".join(text.split())[:300]
    cls, body = m.group(1).rsplit(".", 1)[-1], m.group(2)
    inner = re.search(r"\((\w+)\)$", cls)
    cls = inner.group(1) if inner else cls
    if "Message:" in body:
        message = body.rsplit("Message:", 1)[1]
    else:
        message = next((line for line in body.splitlines() if line.strip()), "")
    return f"{cls}: {' '.join(message.split())}"[:300]


def apply_node_profiles(wireless: WirelessModel, profiles: dict[int, dict[str, float]]) -> None:
    """Put each deployed node's own channel profile into the cell before any round is drawn.

    ``distance-m`` places the client at that distance from the base station (on the x axis),
    ``device-flops`` sets its device speed in FLOP/s; clients without a profile keep their
    seeded drop and speed, so a simulated run is unchanged.
    """
    for cid, profile in sorted(profiles.items()):
        for key, value in profile.items():
            if not (np.isfinite(value) and value > 0):
                raise RunFailed(f"client {cid}: node config {key}={value!r}: must be a positive number")
        if "distance-m" in profile:
            wireless.positions_m[cid] = (profile["distance-m"], 0.0)
        if "device-flops" in profile:
            wireless.device_flops[cid] = profile["device-flops"]


Reporter = Callable[[str, dict[str, Any]], None]
"""``reporter(event, data)`` with events "start", "round", "end"; used for progress displays."""


def discover(grid: Grid, cfg: Config, profiles: dict[int, dict[str, float]] | None = None) -> dict[int, int]:
    """Map client id (the node's partition-id) -> Flower node id, waiting for all nodes.

    Waits as long as replies to training messages do: ``run.client_timeout_s``, where 0 means as
    long as it takes (a busy machine makes start-up slower, not a failure; Ctrl-C still stops it).
    ``profiles``, when given, receives each client's channel profile: the ``NODE_PROFILE_KEYS``
    its SuperNode was started with (empty for simulated nodes).
    """
    timeout_s = cfg.run.client_timeout_s or None
    limit = f"{timeout_s:g} s (run.client_timeout_s)" if timeout_s else ""
    started = time.monotonic()
    while len(node_ids := sorted(grid.get_node_ids())) < cfg.run.clients:
        if timeout_s and time.monotonic() - started > timeout_s:
            raise RunFailed(
                f"discovery timed out after {limit}: only {len(node_ids)} of run.clients={cfg.run.clients} "
                "nodes connected"
            )
        time.sleep(0.5)
    msgs = [
        Message(RecordDict({"config": config_record(cfg)}), dst_node_id=n, message_type=MessageType.QUERY)
        for n in node_ids
    ]
    node_of: dict[int, int] = {}
    answered = 0
    for reply in grid.send_and_receive(msgs, timeout=timeout_s):  # None: no deadline
        answered += 1
        if reply.has_error():
            raise RunFailed(f"node {reply.metadata.src_node_id} failed discovery: {reply.error.reason}")
        info = reply.content["node"]
        if int(info["num-partitions"]) != cfg.run.clients:
            raise RunFailed(f"node reports num-partitions={info['num-partitions']} but run.clients={cfg.run.clients}")
        node_of[int(info["partition-id"])] = reply.metadata.src_node_id
        if profiles is not None:
            profiles[int(info["partition-id"])] = {k: float(info[k]) for k in NODE_PROFILE_KEYS if k in info}
    if answered < len(node_ids):
        raise RunFailed(
            f"discovery timed out after {limit}: {len(node_ids) - answered} of {len(node_ids)} nodes did not answer"
        )
    if sorted(node_of) != list(range(cfg.run.clients)):
        raise RunFailed(f"discovery: partition ids {sorted(node_of)[:5]}... do not cover 0..{cfg.run.clients - 1}")
    return node_of


def exchange(
    grid: Grid, cfg: Config, node_of: dict[int, int], contents: dict[int, RecordDict], action: str
) -> tuple[dict[int, RecordDict], list[dict[str, Any]]]:
    """Send ``contents[client_id]`` to each client and wait (up to run.client_timeout_s).

    ``action`` routes to the ClientApp's ``@app.train(action)`` handler. A client whose reply is
    an error or that does not answer in time is a failure ``{"client_id", "reason"}``.
    """
    message_type = MessageType.TRAIN if action == "default" else f"{MessageType.TRAIN}.{action}"
    clients = sorted(contents)
    msgs = [Message(contents[cid], dst_node_id=node_of[cid], message_type=message_type) for cid in clients]
    client_of = {n: c for c, n in node_of.items()}
    replies: dict[int, RecordDict] = {}
    failures: list[dict[str, Any]] = []
    timeout = cfg.run.client_timeout_s or None
    sent = grid.send_and_receive(msgs, timeout=timeout)
    # An error the SuperLink answers for a node (NODE_UNAVAILABLE once a deployed SuperNode missed
    # its heartbeats) comes from the SuperLink's node id, so match replies by message id too.
    client_of_msg = {m.metadata.message_id: c for m, c in zip(msgs, clients, strict=True)}
    for reply in sent:
        cid = client_of_msg.get(reply.metadata.reply_to_message_id, client_of.get(reply.metadata.src_node_id, -1))
        if reply.has_error():
            failures.append({"client_id": cid, "reason": short_reason(reply.error.reason)})
        else:
            replies[cid] = reply.content
    answered = set(replies) | {f["client_id"] for f in failures}
    failures += [
        {"client_id": c, "reason": f"no reply within run.client_timeout_s={cfg.run.client_timeout_s:g}"}
        for c in clients
        if c not in answered
    ]
    return replies, sorted(failures, key=lambda f: f["client_id"])


def serve(
    grid: Grid,
    cfg: Config,
    out_dir: str | Path,
    reporter: Reporter | None = None,
    resume: Checkpoint | None = None,
    plan: RankPlan | None = None,
) -> dict[str, Any]:
    """Run the rounds of ``cfg`` on ``grid`` (after ``resume``'s round, if given), writing the results folder.

    After every round the record is appended to rounds.jsonl and a checkpoint is committed. A round
    whose surviving clients are fewer than run.min_clients_per_round (0: all sampled clients) is
    recorded with ``status: "failed"``, its global adapter unchanged, and the run goes on; the run's
    summary is then "failed" and names the rounds. Under ``tsfa.scheduler = "tsfa"`` the LoRA rank
    is the offline plan's (``plan``, computed here when not given) and every round is two messages
    (train and report, then upload at the chosen rho; see :mod:`fedsim.scheduling`). Returns the
    summary; raises RunFailed when the run cannot go on (discovery failed, results cannot be written).
    """
    report = reporter or (lambda event, data: None)
    t_start = time.perf_counter()
    out = Path(out_dir)
    runtime = get_runtime(cfg)
    primary = runtime.workload.primary_metric
    writer = ResultsWriter(out, cfg, records=resume.records if resume else None)
    config_sha = sha256_text(cfg.to_toml())
    two_phase = cfg.tsfa.scheduler == "tsfa"
    report(
        "start",
        {
            "rounds": cfg.run.rounds,
            "out_dir": str(out),
            "primary_metric": primary,
            "first_round": resume.round + 1 if resume else 1,
        },
    )
    diverged = 0  # the round whose global adapter became non-finite
    try:
        profiles: dict[int, dict[str, float]] = {}
        node_of = discover(grid, cfg, profiles=profiles)
        wireless = WirelessModel(cfg)
        apply_node_profiles(wireless, profiles)
        flops = runtime.workload.flops_per_sample()
        if two_phase:
            if plan is None:
                plan = plan_for(cfg, wireless)
            write_plan(plan, out / "rank_plan.csv")
            cfg = replace(cfg, lora=replace(cfg.lora, rank=plan.chosen_rank))  # what clients receive
            runtime = get_runtime(cfg)
        shapes = {k: v.shape for k, v in initial_state(cfg).items()}
        bits_by_rho = {
            r: adapter_bits(shapes, cfg.lora.rank, r, cfg.lora.value_bits, cfg.run.method) for r in cfg.tsfa.rho_grid
        }
        scheduler = build_scheduler(cfg)
        if resume and resume.scheduler:
            scheduler.load_state_dict(resume.scheduler)
        state = resume.state if resume else initial_state(cfg)
        metrics = resume.records[-1]["metrics"] if resume and resume.records else None
        for round_ in range((resume.round if resume else 0) + 1, cfg.run.rounds + 1):
            t_round = time.perf_counter()
            clients = sample_clients(cfg.run.seed, round_, cfg.run.clients, cfg.num_sampled)
            arrays = to_array_record(state)

            def message(cid: int, with_arrays: bool = True, **extra: Any) -> RecordDict:
                cfg_rec = config_record(cfg, **{ROUND_KEY: round_, CLIENT_KEY: cid, **extra})  # noqa: B023
                return RecordDict({"arrays": arrays, "config": cfg_rec} if with_arrays else {"config": cfg_rec})  # noqa: B023

            def decide(ids: list[int], num_samples: list[int], payloads: dict, penalties: dict | None = None):
                if not ids:
                    return None
                a, tcmp = wireless.snr_per_hz(round_, ids), wireless.compute_times_s(ids, num_samples, flops)  # noqa: B023
                return scheduler.decide(a, tcmp, payloads, penalties)

            if two_phase:  # train and report; decide rho_t and b_t; upload at rho_t
                reports, failures = exchange(grid, cfg, node_of, {c: message(c) for c in clients}, "local")
                decided = sorted(reports)
                m1 = [dict(reports[c]["metrics"]) for c in decided]
                decision = decide(
                    decided,
                    [int(m["num_samples"]) for m in m1],
                    {r: np.full(len(decided), bits) for r, bits in bits_by_rho.items()},
                    {r: np.array([m["dropped_errors"][i] for m in m1]) for i, r in enumerate(cfg.tsfa.rho_grid)},
                )
                go = [c for i, c in enumerate(decided) if i not in decision.dropped] if decision else []
                replies, late = exchange(
                    grid, cfg, node_of, {c: message(c, False, **{RHO_KEY: decision.rho}) for c in go}, "upload"
                )
                failures += late
            else:  # rho is known: train and upload in one message, then split the band
                replies, failures = exchange(grid, cfg, node_of, {c: message(c) for c in clients}, "default")
                decided = sorted(replies)
                decision = decide(
                    decided,
                    [int(replies[c]["metrics"]["num_samples"]) for c in decided],
                    {cfg.fixed_rho: np.array([replies[c]["metrics"]["payload_bits"] for c in decided])},
                )
                for i in decision.dropped if decision else ():
                    del replies[decided[i]]
            failures += deadline_failures(cfg, decided, decision)
            band_of = dict(zip(decided, decision.bandwidth_hz, strict=True)) if decision else {}
            survivors = sorted(replies)  # client-id order, never arrival order
            ordered = [(from_array_record(replies[c]["arrays"]), dict(replies[c]["metrics"])) for c in survivors]
            client_records, latency_s = wireless.account(
                round_,
                survivors,
                [int(m["payload_bits"]) for _, m in ordered],
                [int(m["num_samples"]) for _, m in ordered],
                flops,
                bandwidth_hz=np.array([band_of[c] for c in survivors]),
                downlink_bits=sum(a.size for a in state.values()) * cfg.lora.value_bits,  # dense broadcast
            )
            for rec, (_, m) in zip(client_records, ordered, strict=True):
                rec.update({key: m[key] for key in CLIENT_DIAGNOSTICS})
                rec["train_loss"] = m["train_loss"]
                rec["train_wall_s"] = m["train_time_s"]
            need = cfg.run.min_clients_per_round or len(clients)
            ok = len(survivors) >= need and len(survivors) > 0
            cov_norm = 0.0
            if ok:
                uploads = [(m["num_samples"], *decode_upload(a)) for a, m in ordered]
                state, cov_norm = aggregate_uploads(state, uploads)
            if ok or metrics is None:  # a failed round keeps the adapter, hence its metrics
                metrics = evaluate_state(cfg, state)
                metrics["primary_metric"] = metrics[primary]
            finite = all(np.isfinite(v).all() for v in state.values())
            queue_s = scheduler.queue_s
            scheduler.update(latency_s)
            record = {
                "round": round_,
                "status": "failed" if not ok else "ok" if finite else "diverged",
                "clients": client_records,
                "failures": sorted(failures, key=lambda f: f["client_id"]),
                "round_latency_s": latency_s,
                "uplink_bits_total": int(sum(r["payload_bits"] for r in client_records)),
                "metrics": metrics,
                **{
                    key: float(np.mean([r[key] for r in client_records])) if client_records else 0.0
                    for key in CLIENT_DIAGNOSTICS
                },
                "covariance_norm": cov_norm,
                **scheduler_fields(cfg, decision, queue_s),
                "wall_s": time.perf_counter() - t_round,
            }
            writer.append(record)
            report("round", record)
            if not finite:
                diverged = round_  # not checkpointed: a resume continues from the last finite adapter
                break
            save_checkpoint(out, Checkpoint(round_, state, writer.records, scheduler.state_dict(), config_sha))
    except Exception as e:
        if isinstance(e, OSError):
            error = f"cannot write results in {out}: {e.strerror or e}"
        else:
            error = str(e) if isinstance(e, RunFailed) else f"{type(e).__name__}: {e}"
        summary = writer.finish(
            status="failed", error=error, primary_metric=primary, wall_s=time.perf_counter() - t_start
        )
        report("end", summary)
        if isinstance(e, RunFailed):
            raise
        raise RunFailed(error) from e
    failed = [r["round"] for r in writer.records if r["status"] == "failed"]
    error = None
    if diverged:
        error = (
            f"training diverged in round {diverged}: the global adapter has non-finite values "
            f"(null in rounds.jsonl); try a train.lr below {cfg.train.lr:g}"
            + (f", e.g. fedsim run --resume {out} --force --set train.lr=..." if diverged > 1 else "")
        )
    elif failed:
        first = next(r for r in writer.records if r["status"] == "failed")
        why = first["failures"][0] if first["failures"] else {"client_id": "-", "reason": "no clients"}
        error = (
            f"round {first['round']}: client {why['client_id']} failed: {why['reason']} "
            f"({len(first['clients'])} of {len(first['clients']) + len(first['failures'])} clients returned, "
            f"run.min_clients_per_round={cfg.run.min_clients_per_round}; failed rounds: {', '.join(map(str, failed))})"
        )
    summary = writer.finish(
        status="diverged" if diverged else "failed" if failed else "ok",
        error=error,
        primary_metric=primary,
        wall_s=time.perf_counter() - t_start,
        extra={
            "lora_rank": cfg.lora.rank,
            "scheduler": cfg.tsfa.scheduler,
            "latency_budget_s": cfg.tsfa.latency_budget_s,
        },
    )
    report("end", summary)
    return summary


def plan_for(cfg: Config, wireless: WirelessModel) -> RankPlan:
    """The TSFA offline plan for this run (rank chosen from channel statistics, see fedsim.scheduling)."""
    rt = get_runtime(cfg)
    shapes = {k: v.shape for k, v in initial_state(cfg).items()}
    sizes = [len(rt.partition(c)) for c in range(cfg.run.clients)]
    return plan_structural_rank(cfg, shapes, wireless, sizes, rt.workload.flops_per_sample())


def deadline_failures(cfg: Config, clients: list[int], decision) -> list[dict[str, Any]]:
    if decision is None:
        return []
    return [
        {"client_id": clients[i], "reason": f"deadline: cannot upload within tsfa.deadline_s={cfg.tsfa.deadline_s:g}"}
        for i in decision.dropped
    ]


def scheduler_fields(cfg: Config, decision, queue_s: float) -> dict[str, Any]:
    """The scheduler's part of a round record: rho_t, Q_t, objective, solver outcome."""
    if decision is None:
        return {
            "rho": cfg.fixed_rho,
            "queue": queue_s,
            "objective": None,
            "solver_status": "no clients",
            "solve_time_s": 0.0,
            "fallback": False,
            "deadline_dropped": 0,
            "latency_by_rho": [],
        }
    d = decision.as_dict()
    return {
        "rho": d["rho"],
        "queue": d["queue"],
        "objective": d["objective"],
        "solver_status": d["solver_status"],
        "solve_time_s": d["solve_time_s"],
        "fallback": d["fallback"],
        "deadline_dropped": len(d["dropped"]),
        "latency_by_rho": d["latency_by_rho"],
    }


# ---- the app that `flwr run .` loads (pyproject [tool.flwr.app.components]) ------------------

app = ServerApp()

RESULTS_DIR_KEY = "results-dir"
RESULTS_ROOT_ENV = "FEDSIM_RESULTS_ROOT"


def confined_results_dir(value: str, run_id: int) -> Path:
    """The folder a submitted run may write: inside the ServerApp's results root, never elsewhere.

    The root is ``$FEDSIM_RESULTS_ROOT`` (the image's results volume, ``/work/results``) or
    ``results`` under the ServerApp's working folder. ``value`` ('' picks ``flwr-run-<id>``) is
    resolved with symlinks followed, so neither ``..`` nor a link leads out of the root.
    """
    root = Path(os.environ.get(RESULTS_ROOT_ENV) or "results").resolve()
    target = Path(value).resolve() if value else root / f"flwr-run-{run_id}"
    if target == root or not target.is_relative_to(root):
        raise ConfigError(f"{RESULTS_DIR_KEY}={value!r}: must be a folder inside {root} (${RESULTS_ROOT_ENV})")
    return target


@app.main()
def main(grid: Grid, context: Context) -> None:
    flat = dict(context.run_config)
    out_dir = confined_results_dir(str(flat.pop(RESULTS_DIR_KEY, "")), context.run_id)
    cfg = config_from_flat(flat)

    def log_round(event: str, data: dict[str, Any]) -> None:
        if event == "round":
            print(
                f"[fedsim] round {data['round']}: {data['metrics']['primary_metric']:.4f} "
                f"latency {data['round_latency_s']:.3f} s, uplink {data['uplink_bits_total'] / 1e6:.2f} Mbit",
                flush=True,
            )

    serve(grid, cfg, out_dir, log_round)
