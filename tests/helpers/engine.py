"""A small workload and an in-process transport that drive the round engine with the real client
half (:class:`fedsim.core.client.ClientRound`) in milliseconds: no Flower, no Ray."""

from __future__ import annotations

import json
import os
import random
from unittest import mock

import numpy as np

from fedsim.core.client import ClientRequest, ClientRound, Trained
from fedsim.core.client_state import SIMULATION_ENV
from fedsim.core.config import build_config
from fedsim.core.records import Failure
from fedsim.core.runner import run
from fedsim.core.seeding import rng
from tests.helpers.runs import records_without_wall_clock

D_IN, D_OUT = 6, 5
A, B, HEAD = "m.lora_A.default.weight", "m.lora_B.default.weight", "head.weight"


class StubHost:
    """A workload whose adapter is one LoRA pair and a head; the metric is the adapter's mean.

    It serves both halves (:class:`fedsim.core.engine.Host`, :class:`fedsim.core.client.ClientWorkload`).
    "Training" adds seeded noise to every tensor; ``crash``
    ``(round, client id)`` pairs raise in training, ``nan`` ones return a non-finite adapter.
    """

    def __init__(self, crash=(), nan=()):
        self.crash, self.nan = set(crash), set(nan)

    def primary_metric(self, cfg):
        return "score"

    def initial_state(self, cfg):
        g = rng(cfg.run.seed, 0, -1, "stub-init")
        r = cfg.lora.rank
        return {
            A: g.normal(size=(r, D_IN)).astype(np.float32),
            B: np.zeros((D_OUT, r), np.float32),
            HEAD: g.normal(size=(2, 3)).astype(np.float32),
        }

    def evaluate(self, cfg, state):
        return {"score": float(np.mean([v.mean() for v in state.values()]))}

    def flops_per_sample(self, cfg):
        return 1e6

    def partition_sizes(self, cfg):
        return [8 + c % 3 for c in range(cfg.run.clients)]

    def train(self, cfg, client_id, round_, start):
        if (round_, client_id) in self.crash:
            raise RuntimeError("injected")
        g = rng(cfg.run.seed, round_, client_id, "stub-train")
        new = {k: start[k] + 0.1 * g.normal(size=start[k].shape).astype(np.float32) for k in sorted(start)}
        if (round_, client_id) in self.nan:
            new[A][0, 0] = np.nan
        size = self.partition_sizes(cfg)[client_id]
        return new, {"num_samples": float(size), "train_loss": 1.0 / round_, "train_wall_s": 0.0}


class InProcessClients:
    """The engine's transport in the tests (a :data:`fedsim.core.engine.Send`): every request answered
    by the real :class:`~fedsim.core.client.ClientRound` in this process, in client-id order.

    As under Flower, a client that raises is a failure ``"<Exception class>: <message>"`` and step
    1's adapter waits for step 2 per client (Flower keeps it in the node's ``Context``). The
    clients are simulated ones (:data:`fedsim.core.client_state.SIMULATION_ENV`): a method's client
    state goes where the request says. ``crash`` and ``nan`` go to the :class:`StubHost` they
    train with; ``silent`` ``(round, client id)`` pairs never answer (a timeout).
    """

    def __init__(self, workload=None, crash=(), nan=(), silent=()):
        self.client = ClientRound(workload if workload is not None else StubHost(crash, nan))
        self.silent = set(silent)
        self.requests: list[tuple[ClientRequest, bool]] = []
        """Every request received, and whether the global adapter came with it."""
        self.trained: dict[int, Trained] = {}

    def __call__(self, cfg, requests, state):
        replies, failures = {}, []
        for request in sorted(requests, key=lambda r: r.client_id):
            self.requests.append((request, state is not None))
            cid = request.client_id
            if (request.round, cid) in self.silent:
                continue
            try:
                with mock.patch.dict(os.environ, {SIMULATION_ENV: "1"}):
                    if request.action == "local":
                        replies[cid], self.trained[cid] = self.client.local(cfg, request, state)
                    elif request.action == "upload":
                        replies[cid] = self.client.upload(cfg, request, self.trained.pop(cid, None))
                    else:
                        replies[cid] = self.client.train(cfg, request, state)
            except Exception as e:
                failures.append(Failure(cid, f"{type(e).__name__}: {e}"))
        answered = set(replies) | {f.client_id for f in failures}
        failures += [Failure(r.client_id, "no reply") for r in requests if r.client_id not in answered]
        return replies, sorted(failures, key=lambda f: f.client_id)


def make_cfg(**overrides):
    flat = {"run.clients": 6, "run.clients_per_round": 3, "run.rounds": 3, "run.seed": 4, "run.method": "soft"}
    return build_config({**flat, **overrides})


class Shuffled(InProcessClients):
    """A transport that answers each batch one request at a time in a random order, as Ray might."""

    def __init__(self, seed):
        super().__init__()
        self.order = random.Random(seed)

    def __call__(self, cfg, requests, state):
        requests = list(requests)
        self.order.shuffle(requests)
        replies, failures = {}, []
        for r in requests:
            got, failed = super().__call__(cfg, [r], state)
            replies.update(got)
            failures += failed
        return replies, sorted(failures, key=lambda f: f.client_id)


def run_async(tmp_path, cfg, transport=None, name="out", *, wall_clock=True):
    """A whole run of ``cfg`` in process (the StubHost workload) into ``tmp_path/name``: its records,
    without the wall-clock fields unless ``wall_clock``."""
    out = tmp_path / name
    out.mkdir()
    transport = transport or InProcessClients()
    summary = run(cfg, StubHost(), lambda: (transport, {}), out)
    assert summary["status"] == "ok", summary.get("error")
    if not wall_clock:
        return records_without_wall_clock(out)
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
