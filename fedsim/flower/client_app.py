"""The fedsim ClientApp: one virtual client (simulation) or one SuperNode (deployment).

A thin adapter: each handler turns the message into a :class:`~fedsim.core.client.ClientRequest`,
lets :class:`fedsim.core.client.ClientRound` (the client's half of the round, no Flower) answer it and
turns the :class:`~fedsim.core.client.ClientReply` back into a message. The configuration arrives with
every message, so the ServerApp is the single source of truth. The heavy objects (base model,
data) live in :mod:`fedsim.core.training`'s per-process cache. A method with client state keeps it in
files, not in ``context.state`` (see :mod:`fedsim.core.client_state`): the message names the folder
(``fedsim.core.client_state``), a SuperNode's ``state-dir`` overrides it. Between the two messages of
a two-phase round the trained adapter (:class:`~fedsim.core.client.Trained`) waits in ``context.state``.
"""

from __future__ import annotations

import torch  # noqa: F401  actors must import torch at module level (Flower's ArrayRecord conversions)
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.core.client import ClientReply, ClientRound, Trained
from fedsim.core.config import Config
from fedsim.core.training import WorkloadHost
from fedsim.flower.messages import (
    NODE_PROFILE_KEYS,
    config_from_record,
    from_array_record,
    request_from_record,
    to_array_record,
)

app = ClientApp()

TRAINED = "fedsim.trained"
TRAINED_META = "fedsim.trained-meta"
TRAINED_GLOBAL = "fedsim.trained-global"  # the adapter step 1 started from (methods with client state)


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


def _request(msg: Message, context: Context, action: str):
    """The run configuration, the request and this node's client half."""
    cfg_record = msg.content["config"]
    cfg: Config = config_from_record(cfg_record)
    request = request_from_record(cfg_record, action)
    client_id = _partition_id(context)
    if request.client_id != client_id:
        raise RuntimeError(f"message for client {request.client_id} reached partition {client_id}")
    return cfg, request, ClientRound(WorkloadHost(), dict(context.node_config))


def _reply(msg: Message, reply: ClientReply) -> Message:
    content = {"metrics": MetricRecord(reply.scalars())}
    if reply.arrays is not None:
        content["arrays"] = to_array_record(reply.arrays)
    return Message(RecordDict(content), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally, then sparsify at the request's rho and upload: one message per round."""
    cfg, request, client = _request(msg, context, "train")
    return _reply(msg, client.train(cfg, request, from_array_record(msg.content["arrays"])))


@app.train("local")
def train_local(msg: Message, context: Context) -> Message:
    """TSFA step 1: train, keep the adapter in this node's state, report |D_k| and the dropped-rank errors."""
    cfg, request, client = _request(msg, context, "local")
    report, trained = client.local(cfg, request, from_array_record(msg.content["arrays"]))
    context.state[TRAINED] = to_array_record(trained.state)
    context.state[TRAINED_META] = ConfigRecord(
        {"round": trained.round, "read_round": trained.read_round, **trained.report.scalars()}
    )
    if trained.global_state is not None:
        context.state[TRAINED_GLOBAL] = to_array_record(trained.global_state)
    return _reply(msg, report)


@app.train("upload")
def train_upload(msg: Message, context: Context) -> Message:
    """TSFA step 2: sparsify the adapter trained in step 1 at the server's rho_t and upload it."""
    cfg, request, client = _request(msg, context, "upload")
    trained = None  # ClientRound refuses an upload with no adapter trained in this round
    if TRAINED in context.state and int(context.state[TRAINED_META]["round"]) == request.round:
        meta = dict(context.state[TRAINED_META])
        global_state = None
        if TRAINED_GLOBAL in context.state:
            global_state = from_array_record(context.state[TRAINED_GLOBAL])
            del context.state[TRAINED_GLOBAL]
        state = from_array_record(context.state[TRAINED])
        del context.state[TRAINED], context.state[TRAINED_META]
        round_, read_round = int(meta.pop("round")), int(meta.pop("read_round"))
        trained = Trained(round_, state, ClientReply.from_scalars(meta), read_round, global_state)
    return _reply(msg, client.upload(cfg, request, trained))
