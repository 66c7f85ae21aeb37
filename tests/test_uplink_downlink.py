"""Uplink packet errors, the downlink ledger and quantised pricing, through the round engine with
the real client half in-process (``tests/helpers/engine.py``; no Flower)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from channels.rate import expected_transmissions, packet_error_prob
from fedsim.core.engine import RoundEngine
from fedsim.core.seeding import rng, sample_clients
from fedsim.core.wireless import WirelessModel
from tests.helpers.engine import InProcessClients, StubHost, make_cfg


def test_packet_error_probability_is_the_waterfall_model():
    snr = np.array([0.0, 0.023, 1.0, np.inf])
    q = packet_error_prob(snr, 0.023)
    assert q[0] == 1.0 and q[3] == 0.0
    assert q[1] == pytest.approx(1 - math.exp(-1)) and q[2] == pytest.approx(1 - math.exp(-0.023))
    # E[min(G, N)] of a geometric number of tries, truncated at N
    assert expected_transmissions(np.array([0.0, 0.5]), 3) == pytest.approx([1.0, 1.75])
    assert expected_transmissions(np.array([0.2]), 200)[0] == pytest.approx(1 / 0.8)


def _erasures(cfg, round_, ids, q, tries):
    """What the client streams say: (transmissions, delivered) per client."""
    out = []
    for cid, qk in zip(ids, q, strict=True):
        n = 0
        for attempt in range(1, tries + 1):
            n = attempt
            if rng(cfg.run.seed, round_, cid, f"packet-error-{attempt}").random() >= qk:
                out.append((n, True))
                break
        else:
            out.append((n, False))
    return out


# m chosen so that q is between about 0.05 and 0.8 for the stub cell's clients (SNR 3 to 100)
M = 5.0


def test_dropped_packets_are_lost_for_the_round_and_recorded():
    cfg = make_cfg(**{"channel.packet_errors": "drop", "channel.packet_error_m": M, "run.clients_per_round": 6})
    engine = RoundEngine(cfg, StubHost())
    rec = engine.run_round(1, InProcessClients())
    ids = [c.client_id for c in rec.clients]
    q = [c.packet_error_prob for c in rec.clients]
    assert 0.01 < min(q) and max(q) < 0.99
    bands = np.array([c.bandwidth_hz for c in rec.clients])
    snr = engine.wireless.snr_per_hz(1, ids) / bands
    np.testing.assert_allclose(q, 1 - np.exp(-M / snr), rtol=1e-12)
    expected = _erasures(cfg, 1, ids, q, 1)
    assert any(ok for _, ok in expected) and not all(ok for _, ok in expected)
    for c, (n, ok) in zip(rec.clients, expected, strict=True):
        assert c.transmissions == n == 1 and c.dropped == (not ok)
        assert (c.drop_reason or "").startswith("" if ok else "packet error")
    assert {f.client_id for f in rec.failures} == {c.client_id for c in rec.clients if c.dropped}
    assert rec.uplink_bits_total == sum(c.payload_bits for c in rec.clients if not c.dropped)
    assert rec.status == "ok"  # packet losses are by design: one survivor is enough


def test_retransmissions_add_upload_time_and_the_scheduler_prices_them():
    flat = {"channel.packet_errors": "retransmit", "channel.packet_error_m": M, "run.clients_per_round": 6}
    cfg = make_cfg(**flat, **{"run.scheduler": "fixed"})
    plain = RoundEngine(make_cfg(**{"run.clients_per_round": 6, "run.scheduler": "fixed"}), StubHost())
    engine = RoundEngine(cfg, StubHost())
    seen = {}
    decide = engine.scheduler.decide

    def spy(a, tcmp, payloads, penalties=None):
        seen.update(payloads)
        return decide(a, tcmp, payloads, penalties)

    engine.scheduler.decide = spy
    rec = engine.run_round(1, InProcessClients())
    base = plain.run_round(1, InProcessClients())
    ids = [c.client_id for c in rec.clients]
    share = np.full(len(ids), cfg.channel.bandwidth_hz / len(ids))
    q_share = packet_error_prob(engine.wireless.snr_per_hz(1, ids) / share, M)
    priced = np.array([c.payload_bits for c in base.clients]) * expected_transmissions(q_share, 4)
    np.testing.assert_allclose(seen[engine.rho], priced)
    expected = _erasures(cfg, 1, ids, [c.packet_error_prob for c in rec.clients], 4)
    assert max(n for n, _ in expected) > 1
    for c, (n, ok) in zip(rec.clients, expected, strict=True):
        assert c.transmissions == n and c.dropped == (not ok)
        assert c.upload_time_s == pytest.approx(n * c.payload_bits / c.rate_bps)
    assert rec.round_latency_s == pytest.approx(max(c.compute_time_s + c.upload_time_s for c in rec.clients))


def test_retransmissions_stop_at_the_deadline():
    flat = {"channel.packet_errors": "retransmit", "channel.packet_error_m": 0.5, "channel.max_transmissions": 50}
    wm = WirelessModel(make_cfg(**flat, **{"tsfa.deadline_s": 1.0}))
    ids = [0, 1, 2]
    recs, _ = wm.account(1, ids, [10**6] * 3, [10] * 3, 1e6)
    for r in recs:
        t_before = r["compute_time_s"] + r["downlink_time_s"]
        one = r["payload_bits"] / r["rate_bps"]
        assert r["transmissions"] == 1 or t_before + r["transmissions"] * one <= 1.0 + 1e-9
        if not r["delivered"] and r["transmissions"] < 50:
            assert t_before + (r["transmissions"] + 1) * one > 1.0


def test_without_packet_errors_every_upload_goes_through_once():
    rec = RoundEngine(make_cfg(), StubHost()).run_round(1, InProcessClients())
    assert all(c.transmissions == 1 and c.packet_error_prob == 0.0 and not c.dropped for c in rec.clients)


@pytest.mark.parametrize("method", ["ideal", "ffa"])
def test_the_downlink_is_counted_every_round(method):
    cfg = make_cfg(**{"run.method": method, "channel.downlink": "broadcast"})
    engine = RoundEngine(cfg, StubHost())
    rec = engine.run_round(1, InProcessClients())
    state = StubHost().initial_state(cfg)
    frozen_a = method == "ffa"
    assert rec.downlink_bits == 32 * sum(v.size for k, v in state.items() if not (frozen_a and ".lora_A." in k))
    sampled = sample_clients(cfg.run.seed, 1, cfg.run.clients, cfg.num_sampled)
    assert rec.downlink_s == engine.wireless.downlink_time_s(1, sampled, rec.downlink_bits) > 0
    off = RoundEngine(make_cfg(**{"run.method": method}), StubHost()).run_round(1, InProcessClients())
    assert off.downlink_bits == rec.downlink_bits and off.downlink_s == 0.0


@pytest.mark.parametrize("method", ["soft", "topk", "ffa"])
def test_a_quantised_round_is_priced_as_encoded(method):
    cfg = make_cfg(**{"run.method": method, "lora.quant_bits": 4})
    engine = RoundEngine(cfg, StubHost())
    rec = engine.run_round(1, InProcessClients())
    assert rec.status == "ok"
    assert all(c.payload_bits == engine.bits_by_rho[engine.rho] for c in rec.clients)
    dense = RoundEngine(make_cfg(**{"run.method": method}), StubHost()).bits_by_rho[engine.rho]
    assert engine.bits_by_rho[engine.rho] < dense / 2  # 4 of 32 bits per value, plus scales and indices


@pytest.mark.parametrize("method", ["soft", "ffa"])
def test_a_quantised_downlink_hands_the_clients_what_they_decode(method):
    cfg = make_cfg(**{"run.method": method, "lora.downlink_quant_bits": 8})
    engine = RoundEngine(cfg, StubHost())
    g = np.random.default_rng(1)
    engine.state = {k: v + g.normal(size=v.shape).astype(np.float32) for k, v in engine.state.items()}
    before = {k: v.copy() for k, v in engine.state.items()}
    clients, received = InProcessClients(), {}

    def send(cfg_, requests, state):
        if state is not None:
            received.update(state)
        return clients(cfg_, requests, state)

    rec = engine.run_round(1, send)
    shapes = {k: v.shape for k, v in before.items()}
    assert rec.downlink_bits == engine.method.downlink_bits(shapes, 32, 8)
    assert rec.downlink_bits < engine.method.downlink_bits(shapes, 32) / 3
    for k, v in before.items():
        if not engine.method.is_broadcast(k):
            np.testing.assert_array_equal(received[k], v)  # known to every client: sent as it is
        else:
            step = 2 * np.abs(v).max() / 255
            assert 0 < np.abs(received[k] - v).max() <= step * (1 + 1e-6)
    # the server aggregates against its exact adapter, not the decoded one
    dense = RoundEngine(make_cfg(**{"run.method": method}), StubHost())
    dense.state = {k: v.copy() for k, v in before.items()}
    assert dense.run_round(1, InProcessClients()).downlink_bits > rec.downlink_bits
