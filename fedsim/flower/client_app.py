"""The fedsim ClientApp: one virtual client (simulation) or one SuperNode (deployment).

The configuration arrives with every message, so the ServerApp is the single source of truth.
The heavy objects (base model, data) live in :mod:`fedsim.training`'s per-process cache. A method
with client state keeps it in files, not in ``context.state`` (see :mod:`fedsim.client_state`):
the message names the folder (``fedsim.client_state``), a SuperNode's ``state-dir`` overrides it.
"""

from __future__ import annotations

import os

import torch  # actors must import torch at module level (Flower's ArrayRecord conversions)
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim import client_state, hetero
from fedsim.config import Config
from fedsim.flower.messages import (
    CLIENT_KEY,
    NODE_PROFILE_KEYS,
    RHO_KEY,
    ROUND_KEY,
    config_from_record,
    from_array_record,
    message_key,
    to_array_record,
)
from fedsim.methods import dropped_errors, fixed_rho, get_method
from fedsim.seeding import rng, torch_seed
from fedsim.training import client_update, evaluate_state, load_workload

app = ClientApp()

TRAINED = "fedsim.trained"
TRAINED_META = "fedsim.trained-meta"
TRAINED_GLOBAL = "fedsim.trained-global"  # the adapter step 1 started from (methods with client state)
STATE_KEY = message_key("client_state")
RANK_KEY = message_key("rank")  # this client's LoRA rank under [hetero]


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


def _state_root(msg: Message, context: Context, cfg: Config):
    """This client's state folder for a method with client state (None for the others)."""
    if not get_method(cfg.run.method).needs_client_state:
        return None
    value = msg.content["config"].get(STATE_KEY)
    if not value:
        raise RuntimeError(f"run.method={cfg.run.method}: the message names no client-state folder")
    return client_state.resolve_root(str(value), dict(context.node_config))


def _train(msg: Message, context: Context) -> tuple[Config, int, int, dict, dict, dict]:
    cfg, client_id, round_ = _round_config(msg, context)
    inject_faults(cfg, client_id, round_)
    method = get_method(cfg.run.method)
    global_state = from_array_record(msg.content["arrays"])
    root = _state_root(msg, context, cfg)
    start, read_round, previous = client_state.begin(method, root, client_id, round_, global_state)
    personal = None
    if method.personalised:  # the personal model this client holds as the round begins
        personal = evaluate_state(cfg, start)[load_workload(cfg).workload.primary_metric]
    rank = msg.content["config"].get(RANK_KEY)
    if rank is not None:  # train the first `rank` ranks only, upload the rank-`rank` adapter
        start = hetero.keep_ranks(start, int(rank))
    state, metrics = client_update(cfg, client_id, round_, start)
    if rank is not None:
        state = hetero.truncate(state, int(rank))
    metrics["client_id"] = float(client_id)
    if personal is not None:
        metrics["personal_metric"] = float(personal)
    kept = {"root": root, "global": global_state, "previous": previous, "read_round": read_round}
    return cfg, client_id, round_, state, metrics, kept


def _upload(
    cfg: Config, client_id: int, round_: int, state: dict, rho: float, metrics: dict, msg: Message, kept: dict
) -> Message:
    gen = torch.Generator().manual_seed(torch_seed(cfg.run.seed, round_, client_id, "sparsify"))
    method = get_method(cfg.run.method)
    arrays, stats = client_state.finish(
        method,
        kept["root"],
        client_id,
        round_,
        state,
        kept["global"],
        kept["previous"],
        kept["read_round"],
        rho,
        cfg.lora.value_bits,
        gen,
        cfg.lora.quant_bits,
    )
    metrics.update(stats)
    return Message(RecordDict({"arrays": to_array_record(arrays), "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally, then sparsify at the configured rho and upload: one message per round."""
    cfg, client_id, round_, state, metrics, kept = _train(msg, context)
    return _upload(cfg, client_id, round_, state, fixed_rho(cfg.run.method, cfg.soft.rho), metrics, msg, kept)


@app.train("local")
def train_local(msg: Message, context: Context) -> Message:
    """TSFA step 1: train, keep the adapter in this node's state, report |D_k| and the dropped-rank errors."""
    cfg, client_id, round_, state, metrics, kept = _train(msg, context)
    context.state[TRAINED] = to_array_record(state)
    context.state[TRAINED_META] = ConfigRecord(
        {"round": round_, "read_round": kept["read_round"], **{k: float(v) for k, v in metrics.items()}}
    )
    if kept["root"] is not None:
        context.state[TRAINED_GLOBAL] = to_array_record(kept["global"])
    errors = dropped_errors(state, cfg.tsfa.rho_grid)
    return Message(RecordDict({"metrics": MetricRecord({**metrics, "dropped_errors": errors})}), reply_to=msg)


@app.train("upload")
def train_upload(msg: Message, context: Context) -> Message:
    """TSFA step 2: sparsify the adapter trained in step 1 at the server's rho_t and upload it."""
    cfg, client_id, round_ = _round_config(msg, context)
    if TRAINED not in context.state or int(context.state[TRAINED_META]["round"]) != round_:
        raise RuntimeError(f"client {client_id} has no adapter trained in round {round_}")
    state = from_array_record(context.state[TRAINED])
    meta = context.state[TRAINED_META]
    metrics = {k: v for k, v in meta.items() if k not in ("round", "read_round")}
    root = _state_root(msg, context, cfg)
    previous = client_state.load(root, client_id, round_)[1] if root is not None else None
    kept = {"root": root, "global": None, "previous": previous, "read_round": int(meta["read_round"])}
    if TRAINED_GLOBAL in context.state:
        kept["global"] = from_array_record(context.state[TRAINED_GLOBAL])
        del context.state[TRAINED_GLOBAL]
    del context.state[TRAINED], context.state[TRAINED_META]
    return _upload(cfg, client_id, round_, state, float(msg.content["config"][RHO_KEY]), metrics, msg, kept)
