"""The fedsim ServerApp: the transport between the round engine and Flower's clients.

The same :func:`serve` runs under ``fedsim run`` (Simulation Runtime, Ray) and ``flwr run .``
(the app declared in pyproject.toml, Deployment Engine). Everything about a round is decided by
:mod:`fedsim.core.engine`; this module finds the clients (:func:`discover`), turns the engine's
requests into Flower messages and the replies back (:func:`flower_send`), and confines a
submitted run's results folder.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsim.core.checkpoint import Checkpoint
from fedsim.core.checks import check_config
from fedsim.core.client import ClientReply, ClientRequest
from fedsim.core.config import Config, ConfigError, config_from_flat
from fedsim.core.engine import Reporter, RunFailed, Send
from fedsim.core.records import Failure
from fedsim.core.runner import run
from fedsim.core.training import WorkloadHost
from fedsim.flower.messages import (
    NODE_PROFILE_KEYS,
    config_record,
    from_array_record,
    request_record,
    to_array_record,
)
from fedsim.flower.resend import ResendingGrid
from fedsim.tsfa import RankPlan


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
    if cls in ("ActorUnavailableError", "ActorDiedError", "RayActorError"):
        return f"the client's process died ({cls}; Ray starts a new one for the next round)"
    if "Message:" in body:
        message = body.rsplit("Message:", 1)[1]
    else:
        message = next((line for line in body.splitlines() if line.strip()), "")
    return f"{cls}: {' '.join(message.split())}"[:300]


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


def flower_send(grid: Grid, node_of: dict[int, int]) -> Send:
    """The engine's transport over ``grid``: one Flower message per request, replies by client id.

    The requests' ``action`` routes to the ClientApp's handlers (``train``: ``@app.train()``;
    ``local`` and ``upload``: ``@app.train("local")`` / ``@app.train("upload")``). A client whose
    reply is an error or that does not answer within ``run.client_timeout_s`` (0: no limit) is a
    failure.
    """
    client_of = {n: c for c, n in node_of.items()}

    def send(cfg: Config, requests: list[ClientRequest], state: dict | None):
        if not requests:
            return {}, []
        timeout = cfg.run.client_timeout_s or None
        action = requests[0].action
        message_type = MessageType.TRAIN if action == "train" else f"{MessageType.TRAIN}.{action}"
        arrays = to_array_record(state) if state is not None else None
        msgs = []
        for request in requests:
            rec = request_record(cfg, request)
            content = RecordDict({"arrays": arrays, "config": rec} if arrays is not None else {"config": rec})
            msgs.append(Message(content, dst_node_id=node_of[request.client_id], message_type=message_type))
        clients = [r.client_id for r in requests]
        replies: dict[int, ClientReply] = {}
        failures: list[Failure] = []
        sent = grid.send_and_receive(msgs, timeout=timeout)
        # An error the SuperLink answers for a node (NODE_UNAVAILABLE once a deployed SuperNode missed
        # its heartbeats) comes from the SuperLink's node id, so match replies by message id too; the
        # ids exist only once the messages were pushed.
        client_of_msg = {m.metadata.message_id: c for m, c in zip(msgs, clients, strict=True)}
        for reply in sent:
            cid = client_of_msg.get(reply.metadata.reply_to_message_id, client_of.get(reply.metadata.src_node_id, -1))
            if reply.has_error():
                failures.append(Failure(cid, short_reason(reply.error.reason)))
            else:
                content = reply.content
                arrays_out = from_array_record(content["arrays"]) if "arrays" in content else None
                replies[cid] = ClientReply.from_scalars(content["metrics"], arrays_out)
        answered = set(replies) | {f.client_id for f in failures}
        failures += [
            Failure(c, f"no reply within run.client_timeout_s={cfg.run.client_timeout_s:g}")
            for c in clients
            if c not in answered
        ]
        return replies, sorted(failures, key=lambda f: f.client_id)

    return send


def serve(
    grid: Grid,
    cfg: Config,
    out_dir: str | Path,
    reporter: Reporter | None = None,
    resume: Checkpoint | None = None,
    plan: RankPlan | None = None,
    nodes: Callable[[], dict[int, int] | None] | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` on ``grid`` with the round engine (see :func:`fedsim.core.runner.run`); returns the summary.

    ``nodes``, when given, returns client id -> node id as the launcher knows it (the Simulation
    Runtime's own registration; simulated nodes have no channel profiles); when it is not given
    or returns None, :func:`discover` asks every node (deployment).
    """

    def connect() -> tuple[Send, dict[int, dict[str, float]]]:
        profiles: dict[int, dict[str, float]] = {}
        node_of = nodes() if nodes is not None else None
        if node_of is None:
            node_of = discover(grid, cfg, profiles=profiles)
        elif sorted(node_of) != list(range(cfg.run.clients)):
            raise RunFailed(f"the runtime registered {len(node_of)} nodes for run.clients={cfg.run.clients}")
        return flower_send(grid, node_of), profiles

    return run(cfg, WorkloadHost(), connect, out_dir, reporter, resume, plan)


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
    cfg = check_config(config_from_flat(flat))  # `flwr run .` reaches here without fedsim's CLI

    def log_round(event: str, data: dict[str, Any]) -> None:
        if event == "round":
            metric = f"{data['metrics']['primary_metric']:.4f}" if data["metrics"] else "(not evaluated)"
            print(
                f"[fedsim] round {data['round']}: {metric} "
                f"latency {data['round_latency_s']:.3f} s, uplink {data['uplink_bits_total'] / 1e6:.2f} Mbit",
                flush=True,
            )

    # a deployed SuperLink may restart mid-run (docker-compose.yml keeps its state in a volume): the
    # messages and replies it lost are sent again (fedsim/flower/resend.py)
    serve(ResendingGrid(grid, say=lambda line: print(line, flush=True)), cfg, out_dir, log_round)
