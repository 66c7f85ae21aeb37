"""The round engine without Flower: the real client half answers its requests in-process (milliseconds).

What used to need a subprocess run through Ray (failures, minimum clients, deadline drops, the
two-phase TSFA round, divergence, resume) is checked here against the engine directly, with
:class:`fedsim.core.client.ClientRound` on a small workload (``tests/helpers/engine.py``) as the clients.
"""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest

from fedsim.core import client_state, hetero
from fedsim.core.checkpoint import load_checkpoint
from fedsim.core.client import ClientRequest, ClientRound
from fedsim.core.engine import RoundEngine, RunFailed
from fedsim.core.methods import METHODS, get_method
from fedsim.core.records import Failure, client_record_keys, round_record_keys
from fedsim.core.runner import run
from fedsim.core.schedulers import SCHEDULERS
from fedsim.core.seeding import rng, sample_clients
from tests.helpers.engine import D_IN, D_OUT, A, B, InProcessClients, StubHost, make_cfg


def test_a_round_aggregates_the_uploads_in_client_order_and_prices_them_exactly():
    cfg = make_cfg()
    engine, clients = RoundEngine(cfg, StubHost()), InProcessClients()
    start = {k: v.copy() for k, v in engine.state.items()}
    rec = engine.run_round(1, clients)
    sampled = sample_clients(cfg.run.seed, 1, cfg.run.clients, cfg.num_sampled)
    assert [c.client_id for c in rec.clients] == sampled and rec.status == "ok" and rec.failures == []
    # the same uploads aggregated by the method itself give the engine's new state
    assert [(r.action, r.rho) for r, _ in clients.requests] == [("train", cfg.method.rho)] * 3
    uploads = []
    for cid in sampled:
        request = ClientRequest(action="train", round=1, client_id=cid, rho=cfg.method.rho)
        reply = ClientRound(StubHost()).train(cfg, request, start)
        uploads.append((float(reply.num_samples), *engine.method.decode(reply.arrays)))
    expected, _ = engine.method.aggregate(start, uploads)
    for k in expected:
        np.testing.assert_array_equal(engine.state[k], expected[k])
    bits = engine.method.adapter_bits({k: v.shape for k, v in start.items()}, cfg.lora.rank, cfg.method.rho, 32)
    assert all(c.payload_bits == bits for c in rec.clients)
    assert rec.uplink_bits_total == 3 * bits
    assert list(rec.to_dict()) == [k for k in round_record_keys() if k != "aggregation"]  # a sync round has none
    assert list(rec.to_dict()["clients"][0]) == client_record_keys()


@pytest.mark.parametrize("min_clients, status", [(0, "failed"), (2, "ok"), (3, "failed")])
def test_a_crashed_client_fails_the_round_only_below_the_minimum(min_clients, status):
    cfg = make_cfg(**{"run.min_clients_per_round": min_clients})
    sampled = sample_clients(cfg.run.seed, 1, cfg.run.clients, cfg.num_sampled)
    victim = sampled[1]
    engine = RoundEngine(cfg, StubHost())
    before = {k: v.copy() for k, v in engine.state.items()}
    rec = engine.run_round(1, InProcessClients(crash={(1, victim)}))
    assert rec.status == status
    assert rec.failures == [Failure(victim, "RuntimeError: injected")]
    assert [c.client_id for c in rec.clients if not c.dropped] == [c for c in sampled if c != victim]
    (lost,) = [c for c in rec.clients if c.dropped]
    assert lost.client_id == victim and lost.drop_reason == "RuntimeError: injected" and lost.payload_bits is None
    assert lost.gain_db == engine.wireless.channel_fields(1, victim)["gain_db"] and lost.bandwidth_hz == 0.0
    unchanged = all(np.array_equal(before[k], engine.state[k]) for k in before)
    assert unchanged == (status == "failed")
    assert rec.metrics["primary_metric"] == rec.metrics["score"]


def test_injected_crashes_fail_the_clients_their_own_streams_draw():
    """faults.client_crash_prob: the client half crashes the clients whose (seed, round, client)
    stream says so, whatever else runs."""
    cfg = make_cfg(**{"faults.client_crash_prob": 0.5, "run.clients_per_round": 6, "run.min_clients_per_round": 1})
    engine = RoundEngine(cfg, StubHost())
    for round_ in (1, 2):
        rec = engine.run_round(round_, InProcessClients())
        drawn = [c for c in range(6) if rng(cfg.run.seed, round_, c, "fault-crash").random() < 0.5]
        assert 0 < len(drawn) < 6 and [f.client_id for f in rec.failures] == drawn
        assert {f.reason for f in rec.failures} == {
            "RuntimeError: injected client crash (faults.client_crash_prob=0.5)"
        }
        assert rec.status == "ok" and [c.client_id for c in rec.clients if c.dropped] == drawn


def test_a_silent_client_is_a_timeout_failure_and_a_round_with_no_survivors_keeps_the_metrics():
    cfg = make_cfg(**{"run.min_clients_per_round": 1})
    engine = RoundEngine(cfg, StubHost())
    first = engine.run_round(1, InProcessClients())
    everyone = {(2, c) for c in range(cfg.run.clients)}
    rec = engine.run_round(2, InProcessClients(silent=everyone))
    assert rec.status == "failed" and all(c.dropped for c in rec.clients) and rec.round_latency_s == 0.0
    assert len(rec.clients) == 3 and rec.uplink_bits_total == 0
    assert [f.reason for f in rec.failures] == ["no reply"] * 3
    assert rec.metrics == first.metrics and rec.scheduler.solver_status == "no clients"


def test_the_deadline_drops_clients_before_aggregation_and_says_why():
    cfg = make_cfg(**{"run.scheduler": "fixed", "tsfa.deadline_s": 1e-6, "run.min_clients_per_round": 1})
    rec = RoundEngine(cfg, StubHost()).run_round(1, InProcessClients())
    assert rec.status == "failed" and rec.scheduler.deadline_dropped == 3
    assert all(f.reason.startswith("deadline: cannot upload within tsfa.deadline_s=1e-06") for f in rec.failures)
    # every sampled client stays in the record, dropped, with what it would have sent
    assert [c.client_id for c in rec.clients] == sample_clients(cfg.run.seed, 1, cfg.run.clients, cfg.num_sampled)
    assert all(c.dropped and c.drop_reason == rec.failures[0].reason and c.bandwidth_hz == 0.0 for c in rec.clients)
    assert all(c.payload_bits > 0 and c.upload_time_s == float("inf") for c in rec.clients)
    assert rec.uplink_bits_total == 0 and rec.round_latency_s == 0.0


def test_a_deadline_lets_a_round_count_with_the_clients_that_meet_it():
    """With tsfa.deadline_s set, run.min_clients_per_round = 0 means one survivor suffices."""
    cfg = make_cfg(**{"run.scheduler": "fixed", "tsfa.deadline_s": 10.0})
    slow = sample_clients(cfg.run.seed, 1, cfg.run.clients, cfg.num_sampled)[0]
    engine = RoundEngine(cfg, StubHost())
    engine.wireless.device_flops[slow] = 1.0  # 1 FLOP/s: its compute alone misses the deadline
    rec = engine.run_round(1, InProcessClients())
    assert rec.status == "ok" and rec.scheduler.deadline_dropped == 1
    assert [c.client_id for c in rec.clients if c.dropped] == [slow]
    assert rec.round_latency_s == max(c.compute_time_s + c.upload_time_s for c in rec.clients if not c.dropped)


def test_stragglers_are_late_in_simulated_time_and_the_deadline_decides():
    cfg = make_cfg(
        **{
            "run.scheduler": "fixed",
            "faults.client_straggle_prob": 0.5,
            "faults.straggle_delay_s": 30.0,
            "tsfa.deadline_s": 5.0,
        }
    )
    records = [RoundEngine(cfg, StubHost()).run_round(t, InProcessClients()) for t in (1, 2, 3)]
    clients = [c for r in records for c in r.clients]
    stragglers = [c for c in clients if c.straggle_s > 0]
    assert stragglers and len(stragglers) < len(clients)
    assert all(c.straggle_s == 30.0 and c.compute_time_s >= 30.0 and c.dropped for c in stragglers)
    assert all(not c.dropped for c in clients if c.straggle_s == 0)


def test_tsfa_runs_two_phases_and_uploads_at_the_rho_it_decided():
    cfg = make_cfg(**{"run.scheduler": "tsfa", "tsfa.latency_budget_s": 50.0, "tsfa.plan_samples": 5})
    engine, clients = RoundEngine(cfg, StubHost()), InProcessClients()
    assert engine.plan is not None and engine.cfg.lora.rank == engine.plan.chosen_rank
    rec = engine.run_round(1, clients)
    actions = [(r.action, with_state) for r, with_state in clients.requests]
    assert actions == [("local", True)] * 3 + [("upload", False)] * 3
    rhos = {r.rho for r, _ in clients.requests if r.action == "upload"}
    assert rhos == {rec.scheduler.rho} and rec.scheduler.rho in cfg.tsfa.rho_grid
    shapes = {k: v.shape for k, v in StubHost().initial_state(engine.cfg).items()}
    bits = engine.method.adapter_bits(shapes, engine.cfg.lora.rank, rec.scheduler.rho, 32)
    assert [c.payload_bits for c in rec.clients] == [bits] * 3
    assert len(rec.scheduler.latency_by_rho) == len(cfg.tsfa.rho_grid)


def test_the_fixed_scheduler_splits_the_band_min_max_at_its_rho():
    """``run.scheduler=fixed``: SOFT at the fixed rho, the band split so that every client's
    compute + upload time is equal (the min-max optimum, solved by cvxpy), all of it used."""
    cfg = make_cfg(**{"run.scheduler": "fixed"})
    rec = RoundEngine(cfg, StubHost()).run_round(1, InProcessClients())
    latency = [c.compute_time_s + c.upload_time_s for c in rec.clients]
    assert sum(c.bandwidth_hz for c in rec.clients) == pytest.approx(cfg.channel.bandwidth_hz, rel=1e-6)
    assert max(latency) - min(latency) < 1e-3 * max(latency)
    assert rec.scheduler.rho == cfg.method.rho and rec.scheduler.solver_status.startswith("optimal")


def test_a_non_finite_adapter_ends_the_run_as_diverged_without_a_checkpoint(tmp_path):
    cfg = make_cfg()
    victim = sample_clients(cfg.run.seed, 2, cfg.run.clients, cfg.num_sampled)[0]
    clients = InProcessClients(nan={(2, victim)})
    summary = run(cfg, StubHost(), lambda: (clients, {}), tmp_path)

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))

    records = [strict(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "diverged"]
    assert records[1]["metrics"]["score"] is None  # NaN is written as null
    assert strict((tmp_path / "summary.json").read_text())["status"] == "diverged"
    assert summary["status"] == "diverged" and "round 2" in summary["error"]
    assert load_checkpoint(tmp_path).round == 1


def test_a_connection_failure_writes_a_failed_summary_and_raises_one_line(tmp_path):
    def connect():
        raise RunFailed("discovery timed out after 5 s")

    with pytest.raises(RunFailed, match="discovery timed out"):
        run(make_cfg(), StubHost(), connect, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "discovery timed out after 5 s"


@pytest.mark.parametrize(
    "scheduler, method",
    [
        ("equal", "soft"),
        ("fixed", "soft"),
        ("tsfa", "soft"),
        ("equal", "fedsa"),
        ("equal", "topk-ef"),
        ("tsfa", "soft-ef"),
    ],
)
def test_a_resumed_run_gives_the_records_of_an_uninterrupted_one(tmp_path, scheduler, method):
    """Client state (fedsa's personal B, error feedback's residual) is part of what a resume restores."""
    extra = {
        "run.scheduler": scheduler,
        "tsfa.latency_budget_s": 50.0,
        "tsfa.plan_samples": 5,
        "run.method": method,
        "run.rounds": 4,
    }
    cfg = make_cfg(**extra)
    run(cfg, StubHost(), lambda: (InProcessClients(), {}), tmp_path / "whole")
    short = make_cfg(**{**extra, "run.rounds": 2})
    run(short, StubHost(), lambda: (InProcessClients(), {}), tmp_path / "part")
    ckpt = load_checkpoint(tmp_path / "part")
    states = tmp_path / "part" / client_state.FOLDER
    assert states.is_dir() == get_method(method).needs_client_state
    for folder in states.glob("client-*"):  # what a run killed in round 3 may leave: versions of round 3
        (folder / "round-000003.safetensors").write_bytes(b"not a safetensors file")
        (folder / "round-000003.safetensors.tmp").write_bytes(b"half")
    run(cfg, StubHost(), lambda: (InProcessClients(), {}), tmp_path / "part", resume=ckpt)

    def strip(folder):
        rows = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
        for r in rows:
            r.pop("wall_s"), r.pop("solve_time_s")
            for c in r["clients"]:
                c.pop("sparsify_time_s")
            r.pop("sparsify_time_s")
        return rows

    assert strip(tmp_path / "whole") == strip(tmp_path / "part")


@pytest.mark.parametrize("method", [name for name, m in METHODS.items() if m.needs_client_state])
def test_client_state_changes_later_rounds_and_stays_on_the_client(tmp_path, method):
    """With its state a method's second round differs from the same round without it; the state
    files are never counted as uplink bits (the payload is the method's formula)."""
    cfg = make_cfg(**{"run.method": method, "run.clients_per_round": 6})  # every client in every round
    with_state = RoundEngine(cfg, StubHost(), client_state_dir=str(tmp_path))
    forgetful = tmp_path / "forgotten"  # its clients' state is removed before round 2: they start afresh
    without = RoundEngine(cfg, StubHost(), client_state_dir=str(forgetful))
    first = [e.run_round(1, InProcessClients()) for e in (with_state, without)]
    assert first[0].to_dict()["metrics"] == first[1].to_dict()["metrics"]
    shutil.rmtree(forgetful)
    second = [e.run_round(2, InProcessClients()) for e in (with_state, without)]
    assert any(not np.array_equal(with_state.state[k], without.state[k]) for k in with_state.state) or (
        second[0].metrics != second[1].metrics
    )
    assert sorted(p.name for p in (tmp_path / "client-000000").iterdir()) == [
        "round-000001.safetensors",
        "round-000002.safetensors",
    ]
    shapes = {k: v.shape for k, v in with_state.state.items()}
    bits = with_state.method.adapter_bits(shapes, cfg.lora.rank, with_state.rho, 32)
    assert all(c.payload_bits == bits for c in second[0].clients)


def test_fedsa_keeps_b_on_the_clients_and_reports_their_personal_models(tmp_path):
    cfg = make_cfg(**{"run.method": "fedsa"})
    engine = RoundEngine(cfg, StubHost(), client_state_dir=str(tmp_path))
    b0 = engine.state[B].copy()
    records = [engine.run_round(t, InProcessClients()) for t in (1, 2, 3)]
    np.testing.assert_array_equal(engine.state[B], b0)  # the server never sees a B
    assert all("personal_score" in r.metrics for r in records)
    # round 1: no client has trained yet, so every personal model is the global one
    initial = StubHost().evaluate(cfg, StubHost().initial_state(cfg))["score"]
    assert records[0].metrics["personal_score"] == pytest.approx(initial)
    assert records[2].metrics["personal_score"] != records[2].metrics["score"]
    trained = sorted({c.client_id for r in records[:2] for c in r.clients})
    for cid in trained:
        _, kept = client_state.load(tmp_path, cid, 3)
        assert set(kept) == {B} and not np.array_equal(kept[B], b0)


EVERY_METHOD_AND_SCHEDULER = [
    (m, s)
    for m in METHODS
    for s in SCHEDULERS
    if METHODS[m].sparsifies or not SCHEDULERS[s].decides_rho  # a scheduler that picks rho needs a sparsifier
]


@pytest.mark.parametrize("method, scheduler", EVERY_METHOD_AND_SCHEDULER)
def test_every_method_runs_rounds_under_every_scheduler(tmp_path, method, scheduler):
    """The real client half encodes every method's upload at the rho the engine sends, and the
    payload is the method's formula; client state stays on the clients, personal models are reported."""
    cfg = make_cfg(
        **{"run.method": method, "run.scheduler": scheduler, "tsfa.latency_budget_s": 50.0, "tsfa.plan_samples": 5}
    )
    engine, clients = RoundEngine(cfg, StubHost(), client_state_dir=str(tmp_path)), InProcessClients()
    m, schedule = METHODS[method], SCHEDULERS[scheduler]
    shapes = {k: v.shape for k, v in engine.state.items()}
    for round_ in (1, 2):
        rec = engine.run_round(round_, clients)
        assert rec.status == "ok" and len(rec.clients) == cfg.num_sampled
        rho = rec.scheduler.rho
        if schedule.decides_rho:
            assert rho in cfg.tsfa.rho_grid
        else:
            assert rho == engine.rho == (cfg.method.rho if m.sparsifies else 0.0)  # ideal never sparsifies
        assert {r.rho for r, _ in clients.requests if r.round == round_ and r.action != "local"} == {rho}
        bits = m.adapter_bits(shapes, engine.cfg.lora.rank, rho, 32)
        assert [c.payload_bits for c in rec.clients] == [bits] * cfg.num_sampled
        assert ("personal_score" in rec.metrics) == m.personalised
    kept = sorted(p.name for p in tmp_path.glob("client-*/*"))
    assert bool(kept) == m.needs_client_state and all(name.endswith(".safetensors") for name in kept)


def test_rounds_below_the_minimum_are_named_in_the_summary(tmp_path):
    cfg = make_cfg(**{"run.rounds": 2, "run.min_clients_per_round": 1})
    everyone = {(t, c) for t in (1, 2) for c in range(cfg.run.clients)}
    summary = run(cfg, StubHost(), lambda: (InProcessClients(crash=everyone), {}), tmp_path)
    assert summary["status"] == "failed" and summary["failed_rounds"] == [1, 2]
    assert summary["error"].startswith("round 1: client ") and "RuntimeError: injected" in summary["error"]
    assert "(0 of 3 clients returned" in summary["error"] and summary["error"].endswith("failed rounds: 1, 2)")


@pytest.mark.parametrize("rule", ["compute", "channel"])
@pytest.mark.parametrize("how", ["zero-pad", "flexlora"])
def test_heterogeneous_ranks_follow_the_rule_and_price_each_client_at_its_rank(rule, how):
    cfg = make_cfg(
        **{
            "run.method": "ideal",
            "run.clients_per_round": 6,
            "lora.rank": 8,
            "hetero.rank_rule": rule,
            "hetero.rank_levels": [2, 4, 8],
            "hetero.aggregation": how,
        }
    )
    engine, clients = RoundEngine(cfg, StubHost()), InProcessClients()
    rec = engine.run_round(1, clients)
    assert rec.status == "ok"
    values = engine.wireless.device_flops if rule == "compute" else engine.wireless.channel(1).gain_linear
    order = list(np.argsort(values, kind="stable"))
    expected = {int(c): (2, 4, 8)[i * 3 // 6] for i, c in enumerate(order)}  # two clients per level
    ranks = [r.rank for r, _ in clients.requests]
    assert ranks == [expected[c] for c in range(6)]
    flops = StubHost().flops_per_sample(cfg)
    for c in rec.clients:
        r = expected[c.client_id]
        assert c.payload_bits == r * (D_IN + D_OUT) * 32 + 6 * 32  # dense at its own rank plus the head
        assert c.kept_ranks == r
        t = (
            hetero.flops_per_sample_at_rank(flops, engine.shapes, r)
            * c.num_samples
            / engine.wireless.device_flops[c.client_id]
        )
        assert c.compute_time_s == pytest.approx(t)
    # the aggregate from the clients' own factors (dense uploads at float32: exact)
    start = StubHost().initial_state(cfg)
    w = np.array([StubHost().partition_sizes(cfg)[c] for c in range(6)], dtype=float)
    w /= w.sum()
    padded = []
    for c in range(6):
        trained, _ = StubHost().train(cfg, c, 1, hetero.keep_ranks(start, expected[c]))
        pa, pb = np.zeros((8, D_IN)), np.zeros((D_OUT, 8))
        pa[: expected[c]], pb[:, : expected[c]] = trained[A][: expected[c]], trained[B][:, : expected[c]]
        padded.append((pa, pb))
    if how == "zero-pad":
        np.testing.assert_allclose(
            engine.state[A], sum(wk * pa for wk, (pa, _) in zip(w, padded, strict=True)), atol=1e-6
        )
        np.testing.assert_allclose(
            engine.state[B], sum(wk * pb for wk, (_, pb) in zip(w, padded, strict=True)), atol=1e-6
        )
    else:  # FlexLoRA: the product of the new factors is the best rank-8 fit of the averaged products
        W = sum(wk * pb @ pa for wk, (pa, pb) in zip(w, padded, strict=True))
        np.testing.assert_allclose(engine.state[B] @ engine.state[A], W, atol=1e-5)  # rank(W) <= 5 here


class CountingHost(StubHost):
    def __init__(self):
        self.evaluated: list[float] = []

    def evaluate(self, cfg, state):
        out = super().evaluate(cfg, state)
        self.evaluated.append(out["score"])
        return out


def test_eval_every_evaluates_every_kth_and_the_final_round_and_records_null_between(tmp_path):
    every, host = CountingHost(), CountingHost()
    run(make_cfg(**{"run.rounds": 5}), every, lambda: (InProcessClients(), {}), tmp_path / "every")
    summary = run(
        make_cfg(**{"run.rounds": 5, "run.eval_every": 2}), host, lambda: (InProcessClients(), {}), tmp_path / "k2"
    )
    whole = [json.loads(line) for line in (tmp_path / "every" / "rounds.jsonl").read_text().splitlines()]
    k2 = [json.loads(line) for line in (tmp_path / "k2" / "rounds.jsonl").read_text().splitlines()]
    assert [r["metrics"] is not None for r in k2] == [False, True, False, True, True]  # 2, 4 and the final 5
    assert len(host.evaluated) == 3 and len(every.evaluated) == 5
    for a, b in zip(whole, k2, strict=True):  # training is unchanged: only the skipped metrics differ
        assert b["metrics"] in (None, a["metrics"])
        a.pop("metrics"), b.pop("metrics")
        for r in (a, b):
            r.pop("wall_s"), r.pop("solve_time_s"), r.pop("sparsify_time_s")
            for c in r["clients"]:
                c.pop("sparsify_time_s")
        assert a == b
    assert summary["final_metrics"]["score"] == every.evaluated[-1]
    assert (tmp_path / "k2" / "metric_vs_round.png").stat().st_size > 0


def test_eval_every_evaluates_a_failed_round_after_an_unevaluated_one_on_the_current_adapter():
    cfg = make_cfg(**{"run.rounds": 4, "run.eval_every": 2, "run.min_clients_per_round": 3})
    crashed = {(2, c) for c in range(cfg.run.clients)}
    host = CountingHost()
    engine = RoundEngine(cfg, host)
    first = engine.run_round(1, InProcessClients(crash=crashed))
    assert first.status == "ok" and first.metrics is None and host.evaluated == []
    second = engine.run_round(2, InProcessClients(crash=crashed))
    # the adapter of round 1, never evaluated before: evaluated now, not a stale copy of round 0
    assert second.status == "failed" and second.metrics["score"] == StubHost().evaluate(cfg, engine.state)["score"]
    assert len(host.evaluated) == 1


class OverlapProbeHost(StubHost):
    """Evaluating round t waits (up to 30 s) until round t + 1's messages have been sent."""

    def __init__(self):
        self.sent: set[int] = set()
        self.changed = threading.Condition()
        self.overlapped: list[bool | None] = []

    def send(self, clients):
        def send(cfg, requests, state):
            with self.changed:
                self.sent.add(requests[0].round)
                self.changed.notify_all()
            return clients(cfg, requests, state)

        return send

    def evaluate(self, cfg, state):
        round_ = len(self.overlapped) + 1
        if round_ < cfg.run.rounds:
            with self.changed:
                self.overlapped.append(self.changed.wait_for(lambda: round_ + 1 in self.sent, timeout=30))
        else:
            self.overlapped.append(None)  # the last round: nothing to overlap with
        return super().evaluate(cfg, state)


def test_evaluation_overlaps_the_next_round_and_leaves_the_records_as_they_are(tmp_path):
    host = OverlapProbeHost()
    run(make_cfg(), host, lambda: (host.send(InProcessClients()), {}), tmp_path / "overlap")
    assert host.overlapped == [True, True, None]  # round t evaluated while round t + 1's clients trained
    serial = make_cfg(**{"simulation.overlap_eval": False})
    run(serial, StubHost(), lambda: (InProcessClients(), {}), tmp_path / "serial")

    def strip(folder):
        rows = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
        for r in rows:
            r.pop("wall_s"), r.pop("solve_time_s"), r.pop("sparsify_time_s")
            for c in r["clients"]:
                c.pop("sparsify_time_s")
        return rows

    assert strip(tmp_path / "overlap") == strip(tmp_path / "serial")
    assert load_checkpoint(tmp_path / "overlap").round == 3
    summaries = [json.loads((tmp_path / f / "summary.json").read_text()) for f in ("overlap", "serial")]
    assert summaries[0]["final_metrics"] == summaries[1]["final_metrics"]
