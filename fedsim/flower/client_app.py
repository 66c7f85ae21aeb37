"""The fedsim ClientApp: one virtual client (simulation) or one SuperNode (deployment).

The configuration arrives with every message, so the ServerApp is the single source of truth.
The heavy objects (base model, data) live in :mod:`fedsim.training`'s per-process cache.
"""

from __future__ import annotations

import os

import torch  # actors must import torch at module level (Flower's ArrayRecord conversions)
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.config import Config
from fedsim.flower.messages import (
    CLIENT_KEY,
    NODE_PROFILE_KEYS,
    RHO_KEY,
    ROUND_KEY,
    config_from_record,
    from_array_record,
    to_array_record,
)
from fedsim.methods import dropped_errors, fixed_rho, get_method
from fedsim.seeding import rng, torch_seed
from fedsim.training import client_update

app = ClientApp()

TRAINED = "fedsim.trained"
TRAINED_META = "fedsim.trained-meta"


def inject_faults(cfg: Config, client_id: int, round_: int) -> None:
    """Crash this client (faults.client_crash_prob).

    The draw comes from the client's own stream for the round, so the same clients fail in the
    same rounds whatever the scheduling. (Stragglers are modelled by the round engine in
    simulated time, not here.)
    """
    p = cfg.faults.client_crash_prob
    if p > 0 and rng(cfg.run.seed, round_, client_id, "fault-crash").random() < p:
        if cfg.faults.client_crash_mode == "exit":
            os._exit(13)  # the process dies as a real crash would: no cleanup, no reply
        raise RuntimeError(f"injected client crash (faults.client_crash_prob={p})")


def _partition_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Discovery: tell the server which partition (client id) this node holds, and its channel profile."""
    profile = {k: float(context.node_config[k]) for k in NODE_PROFILE_KEYS if k in context.node_config}
    reply = ConfigRecord(
        {
            "partition-id": _partition_id(context),
            "num-partitions": int(context.node_config["num-partitions"]),
            **profile,
        }
    )
    return Message(RecordDict({"node": reply}), reply_to=msg)


def _round_config(msg: Message, context: Context) -> tuple[Config, int, int]:
    cfg_record = msg.content["config"]
    cfg = config_from_record(cfg_record)
    client_id = _partition_id(context)
    if int(cfg_record[CLIENT_KEY]) != client_id:
        raise RuntimeError(f"message for client {cfg_record[CLIENT_KEY]} reached partition {client_id}")
    return cfg, client_id, int(cfg_record[ROUND_KEY])


def _train(msg: Message, context: Context) -> tuple[Config, int, int, dict, dict]:
    cfg, client_id, round_ = _round_config(msg, context)
    inject_faults(cfg, client_id, round_)
    state, metrics = client_update(cfg, client_id, round_, from_array_record(msg.content["arrays"]))
    metrics["client_id"] = float(client_id)
    return cfg, client_id, round_, state, metrics


def _upload(cfg: Config, client_id: int, round_: int, state: dict, rho: float, metrics: dict, msg: Message) -> Message:
    gen = torch.Generator().manual_seed(torch_seed(cfg.run.seed, round_, client_id, "sparsify"))
    arrays, stats = get_method(cfg.run.method).encode(state, rho, cfg.lora.value_bits, gen, cfg.lora.quant_bits)
    metrics.update(stats)
    return Message(RecordDict({"arrays": to_array_record(arrays), "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally, then sparsify at the configured rho and upload: one message per round."""
    cfg, client_id, round_, state, metrics = _train(msg, context)
    return _upload(cfg, client_id, round_, state, fixed_rho(cfg.run.method, cfg.soft.rho), metrics, msg)


@app.train("local")
def train_local(msg: Message, context: Context) -> Message:
    """TSFA step 1: train, keep the adapter in this node's state, report |D_k| and the dropped-rank errors."""
    cfg, client_id, round_, state, metrics = _train(msg, context)
    context.state[TRAINED] = to_array_record(state)
    context.state[TRAINED_META] = ConfigRecord({"round": round_, **{k: float(v) for k, v in metrics.items()}})
    errors = dropped_errors(state, cfg.tsfa.rho_grid)
    return Message(RecordDict({"metrics": MetricRecord({**metrics, "dropped_errors": errors})}), reply_to=msg)


@app.train("upload")
def train_upload(msg: Message, context: Context) -> Message:
    """TSFA step 2: sparsify the adapter trained in step 1 at the server's rho_t and upload it."""
    cfg, client_id, round_ = _round_config(msg, context)
    if TRAINED not in context.state or int(context.state[TRAINED_META]["round"]) != round_:
        raise RuntimeError(f"client {client_id} has no adapter trained in round {round_}")
    state = from_array_record(context.state[TRAINED])
    metrics = {k: v for k, v in context.state[TRAINED_META].items() if k != "round"}
    del context.state[TRAINED], context.state[TRAINED_META]
    return _upload(cfg, client_id, round_, state, float(msg.content["config"][RHO_KEY]), metrics, msg)
