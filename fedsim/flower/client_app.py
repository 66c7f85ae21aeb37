"""The fedsim ClientApp: one virtual client (simulation) or one SuperNode (deployment).

The configuration arrives with every message, so the ServerApp is the single source of truth.
The heavy objects (base model, data) live in :mod:`fedsim.runtime`'s per-process cache.
"""

from __future__ import annotations

import os
import time

import torch  # actors must import torch at module level (Flower's ArrayRecord conversions)
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.config import Config
from fedsim.flower.records import (
    CLIENT_KEY,
    NODE_PROFILE_KEYS,
    ROUND_KEY,
    config_from_record,
    from_array_record,
    to_array_record,
)
from fedsim.methods import encode_upload
from fedsim.runtime import client_update
from fedsim.seeding import rng, torch_seed

app = ClientApp()


def inject_faults(cfg: Config, client_id: int, round_: int) -> None:
    """Crash (faults.client_crash_prob) or stall (faults.client_straggle_prob) this client.

    Each draw comes from the client's own stream for the round, so the same clients fail in the
    same rounds whatever the scheduling.
    """
    f = cfg.faults
    if (
        f.client_straggle_prob > 0
        and rng(cfg.run.seed, round_, client_id, "fault-straggle").random() < f.client_straggle_prob
    ):
        time.sleep(f.straggle_delay_s)
    p = f.client_crash_prob
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


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg_record = msg.content["config"]
    cfg = config_from_record(cfg_record)
    client_id = _partition_id(context)
    if int(cfg_record[CLIENT_KEY]) != client_id:
        raise RuntimeError(f"message for client {cfg_record[CLIENT_KEY]} reached partition {client_id}")
    round_ = int(cfg_record[ROUND_KEY])
    inject_faults(cfg, client_id, round_)
    state, metrics = client_update(cfg, client_id, round_, from_array_record(msg.content["arrays"]))
    gen = torch.Generator().manual_seed(torch_seed(cfg.run.seed, round_, client_id, "sparsify"))
    arrays, stats = encode_upload(state, cfg.run.method, cfg.fixed_rho, cfg.lora.value_bits, gen)
    metrics.update(stats)
    metrics["client_id"] = float(client_id)
    return Message(RecordDict({"arrays": to_array_record(arrays), "metrics": MetricRecord(metrics)}), reply_to=msg)
