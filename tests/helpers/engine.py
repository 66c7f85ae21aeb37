"""Stub clients and a stub workload host that drive the round engine in-process (milliseconds)."""

from __future__ import annotations

import numpy as np
import torch

from fedsim import client_state, hetero
from fedsim.config import build_config
from fedsim.engine import ClientReply
from fedsim.methods import dropped_errors, fixed_rho, get_method
from fedsim.records import Failure
from fedsim.seeding import rng

D_IN, D_OUT = 6, 5
A, B, HEAD = "m.lora_A.default.weight", "m.lora_B.default.weight", "head.weight"


class StubHost:
    """A workload whose adapter is one LoRA pair and a head; the metric is the adapter's mean."""

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


class StubClients:
    """The client half of every action, with faults chosen by (round, client id)."""

    def __init__(self, crash=(), nan=(), silent=()):
        self.crash, self.nan, self.silent = set(crash), set(nan), set(silent)
        self.calls: list[tuple[str, int, dict, bool]] = []
        self.trained: dict[int, dict] = {}

    def train(self, cfg, round_, cid, state):
        g = rng(cfg.run.seed, round_, cid, "stub-train")
        new = {k: state[k] + 0.1 * g.normal(size=state[k].shape).astype(np.float32) for k in sorted(state)}
        if (round_, cid) in self.nan:
            new[A][0, 0] = np.nan
        size = StubHost().partition_sizes(cfg)[cid]
        return new, {"num_samples": float(size), "train_loss": 1.0 / round_, "train_wall_s": 0.0}

    def upload(self, cfg, round_, cid, state, metrics, rho, kept=(None, None, None, 0)):
        """``kept``: (client-state folder, received global adapter, previous client state, its round)."""
        gen = torch.Generator().manual_seed(round_ * 1000 + cid)
        root, global_state, previous, read_round = kept
        method = get_method(cfg.run.method)
        arrays, stats = client_state.finish(
            method,
            root,
            cid,
            round_,
            state,
            global_state,
            previous,
            read_round,
            rho,
            cfg.lora.value_bits,
            gen,
            cfg.lora.quant_bits,
        )
        return ClientReply(arrays, {**metrics, **stats})

    def __call__(self, cfg, action, round_, requests, state):
        replies, failures = {}, []
        for cid, extra in sorted(requests.items()):
            self.calls.append((action, round_, dict(extra), state is not None))
            if (round_, cid) in self.crash:
                failures.append(Failure(cid, "RuntimeError: injected"))
                continue
            if (round_, cid) in self.silent:
                continue  # the transport reports a timeout for it
            method, root = get_method(cfg.run.method), extra.get("client_state")
            if action == "upload":
                trained, metrics, global_state, read_round = self.trained.pop(cid)
                previous = client_state.load(root, cid, round_)[1] if root else None
                kept = (root, global_state, previous, read_round)
                replies[cid] = self.upload(cfg, round_, cid, trained, metrics, extra["rho"], kept)
                continue
            start, read_round, previous = client_state.begin(method, root, cid, round_, state)
            if "rank" in extra:
                start = hetero.keep_ranks(start, extra["rank"])
            trained, metrics = self.train(cfg, round_, cid, start)
            if "rank" in extra:
                trained = hetero.truncate(trained, extra["rank"])
            if method.personalised:
                metrics["personal_metric"] = StubHost().evaluate(cfg, start)["score"]
            if action == "local":
                self.trained[cid] = (trained, metrics, state, read_round)
                replies[cid] = ClientReply(
                    None, {**metrics, "dropped_errors": dropped_errors(trained, cfg.tsfa.rho_grid)}
                )
            else:
                rho = fixed_rho(cfg.run.method, cfg.soft.rho)
                replies[cid] = self.upload(cfg, round_, cid, trained, metrics, rho, (root, state, previous, read_round))
        answered = set(replies) | {f.client_id for f in failures}
        failures += [Failure(c, "no reply") for c in requests if c not in answered]
        return replies, failures


def make_cfg(**overrides):
    flat = {"run.clients": 6, "run.clients_per_round": 3, "run.rounds": 3, "run.seed": 4, "run.method": "soft"}
    return build_config({**flat, **overrides})
