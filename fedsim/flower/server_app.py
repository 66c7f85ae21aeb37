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

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsim.config import Config, config_from_flat
from fedsim.flower.records import (
    CLIENT_KEY,
    NODE_PROFILE_KEYS,
    ROUND_KEY,
    config_record,
    from_array_record,
    to_array_record,
)
from fedsim.methods import aggregate_uploads, decode_upload
from fedsim.results import ResultsWriter
from fedsim.rounds import WirelessModel, sample_clients
from fedsim.runtime import evaluate_state, get_runtime, initial_state

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


def discover(
    grid: Grid, cfg: Config, timeout_s: float = 120.0, profiles: dict[int, dict[str, float]] | None = None
) -> dict[int, int]:
    """Map client id (the node's partition-id) -> Flower node id, waiting for all nodes.

    ``profiles``, when given, receives each client's channel profile: the ``NODE_PROFILE_KEYS``
    its SuperNode was started with (empty for simulated nodes).
    """
    deadline = time.monotonic() + timeout_s
    while len(node_ids := sorted(grid.get_node_ids())) < cfg.run.clients:
        if time.monotonic() > deadline:
            raise RunFailed(
                f"only {len(node_ids)} of run.clients={cfg.run.clients} nodes connected in {timeout_s:.0f} s"
            )
        time.sleep(0.5)
    msgs = [
        Message(RecordDict({"config": config_record(cfg)}), dst_node_id=n, message_type=MessageType.QUERY)
        for n in node_ids
    ]
    node_of: dict[int, int] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout_s):
        if reply.has_error():
            raise RunFailed(f"node {reply.metadata.src_node_id} failed discovery: {reply.error.reason}")
        info = reply.content["node"]
        if int(info["num-partitions"]) != cfg.run.clients:
            raise RunFailed(f"node reports num-partitions={info['num-partitions']} but run.clients={cfg.run.clients}")
        node_of[int(info["partition-id"])] = reply.metadata.src_node_id
        if profiles is not None:
            profiles[int(info["partition-id"])] = {k: float(info[k]) for k in NODE_PROFILE_KEYS if k in info}
    if sorted(node_of) != list(range(cfg.run.clients)):
        raise RunFailed(f"partition ids {sorted(node_of)[:5]}... do not cover 0..{cfg.run.clients - 1}")
    return node_of


def _train_round(grid: Grid, cfg: Config, node_of: dict[int, int], round_: int, clients: list[int], state) -> dict:
    arrays = to_array_record(state)
    msgs = [
        Message(
            RecordDict({"arrays": arrays, "config": config_record(cfg, **{ROUND_KEY: round_, CLIENT_KEY: cid})}),
            dst_node_id=node_of[cid],
            message_type=MessageType.TRAIN,
        )
        for cid in clients
    ]
    client_of = {n: c for c, n in node_of.items()}
    results: dict[int, tuple[dict, dict]] = {}
    for reply in grid.send_and_receive(msgs):
        cid = client_of.get(reply.metadata.src_node_id, -1)
        if reply.has_error():
            raise RunFailed(f"round {round_}: client {cid} failed: {short_reason(reply.error.reason)}")
        metrics = dict(reply.content["metrics"])
        results[cid] = (from_array_record(reply.content["arrays"]), metrics)
    missing = sorted(set(clients) - set(results))
    if missing:
        raise RunFailed(f"round {round_}: no reply from clients {missing}")
    return results


def serve(grid: Grid, cfg: Config, out_dir: str | Path, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run every round of ``cfg`` on ``grid``, writing the results folder; returns the summary."""
    report = reporter or (lambda event, data: None)
    t_start = time.perf_counter()
    writer = ResultsWriter(out_dir, cfg)
    runtime = get_runtime(cfg)
    primary = runtime.workload.primary_metric
    report("start", {"rounds": cfg.run.rounds, "out_dir": str(out_dir), "primary_metric": primary})
    try:
        profiles: dict[int, dict[str, float]] = {}
        node_of = discover(grid, cfg, profiles=profiles)
        wireless = WirelessModel(cfg)
        apply_node_profiles(wireless, profiles)
        state = initial_state(cfg)
        flops = runtime.workload.flops_per_sample()
        for round_ in range(1, cfg.run.rounds + 1):
            t_round = time.perf_counter()
            clients = sample_clients(cfg.run.seed, round_, cfg.run.clients, cfg.num_sampled)
            results = _train_round(grid, cfg, node_of, round_, clients, state)
            ordered = [results[c] for c in clients]  # client-id order, never arrival order
            uploads = [(m["num_samples"], *decode_upload(arrays)) for arrays, m in ordered]
            state, cov_norm = aggregate_uploads(state, uploads)
            client_records, latency_s = wireless.account(
                round_,
                clients,
                [int(m["payload_bits"]) for _, m in ordered],
                [int(m["num_samples"]) for _, m in ordered],
                flops,
            )
            for rec, (_, m) in zip(client_records, ordered, strict=True):
                rec.update({key: m[key] for key in CLIENT_DIAGNOSTICS})
                rec["train_loss"] = m["train_loss"]
                rec["train_wall_s"] = m["train_time_s"]
            metrics = evaluate_state(cfg, state)
            metrics["primary_metric"] = metrics[primary]
            record = {
                "round": round_,
                "clients": client_records,
                "round_latency_s": latency_s,
                "uplink_bits_total": int(sum(r["payload_bits"] for r in client_records)),
                "metrics": metrics,
                "rho": cfg.fixed_rho,
                **{key: float(np.mean([r[key] for r in client_records])) for key in CLIENT_DIAGNOSTICS},
                "covariance_norm": cov_norm,
                "wall_s": time.perf_counter() - t_round,
            }
            writer.append(record)
            report("round", record)
    except Exception as e:
        error = str(e) if isinstance(e, RunFailed) else f"{type(e).__name__}: {e}"
        summary = writer.finish(
            status="failed", error=error, primary_metric=primary, wall_s=time.perf_counter() - t_start
        )
        report("end", summary)
        if isinstance(e, RunFailed):
            raise
        raise RunFailed(error) from e
    summary = writer.finish(status="ok", error=None, primary_metric=primary, wall_s=time.perf_counter() - t_start)
    report("end", summary)
    return summary


# ---- the app that `flwr run .` loads (pyproject [tool.flwr.app.components]) ------------------

app = ServerApp()

RESULTS_DIR_KEY = "results-dir"


@app.main()
def main(grid: Grid, context: Context) -> None:
    flat = dict(context.run_config)
    out_dir = str(flat.pop(RESULTS_DIR_KEY, "") or f"results/flwr-run-{context.run_id}")
    cfg = config_from_flat(flat)

    def log_round(event: str, data: dict[str, Any]) -> None:
        if event == "round":
            print(
                f"[fedsim] round {data['round']}: {data['metrics']['primary_metric']:.4f} "
                f"latency {data['round_latency_s']:.3f} s, uplink {data['uplink_bits_total'] / 1e6:.2f} Mbit",
                flush=True,
            )

    serve(grid, cfg, out_dir, log_round)
