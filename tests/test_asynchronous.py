"""Asynchronous aggregation (fedsim.core.asynchronous) and the shared uplink's clock (channels.sharing).

The clock is checked against timelines computed by hand; the engine in-process with the real
client half (tests.helpers.engine), against the timeline its own wireless model implies, the
staleness weights and the server step, and for records that do not depend on how the transport
batches or orders the training.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from channels.sharing import SharedUplink, shared_rates_bps
from fedsim.core.asynchronous import AsyncEngine
from fedsim.core.checks import check_asynchronous
from fedsim.core.runner import run
from fedsim.core.wireless import WirelessModel
from fedsim.errors import ConfigError
from tests.helpers.engine import InProcessClients, Shuffled, StubHost, make_cfg, run_async
from tests.helpers.runs import records_without_wall_clock


def constant_snr(a_by_client):
    return lambda block, ids: np.array([a_by_client[c] for c in ids], dtype=float)


# ---- the shared uplink ------------------------------------------------------------------------


def test_equal_sharing_rates_are_shannon_on_the_share():
    a = np.array([1.0, 3.0])
    np.testing.assert_allclose(shared_rates_bps(2.0, a), [1.0 * math.log2(2.0), 1.0 * math.log2(4.0)])
    np.testing.assert_allclose(shared_rates_bps(2.0, a[:1]), [2.0 * math.log2(1.5)])


def test_three_uploads_sharing_the_band_end_when_the_hand_computed_timeline_says():
    # B = 2 Hz. Clients 0 and 1 (a = 1 Hz) start at 0 with 1 and 2 bits; client 2 (a = 3 Hz) joins at 0.5 s
    # with 1 bit. Rates R = (B/n) log2(1 + a n / B), constant between events:
    up = SharedUplink(2.0, 1e9, constant_snr({0: 1.0, 1: 1.0, 2: 3.0}))
    up.start("c0", 0, 1.0)
    up.start("c1", 1, 2.0)
    assert up.advance(0.5) is None  # n = 2: both at 1 bit/s; left 0.5 and 1.5 bits
    up.start("c2", 2, 1.0)
    r_a1, r_a3 = (2 / 3) * math.log2(2.5), (2 / 3) * math.log2(5.5)  # n = 3
    t0 = 0.5 + 0.5 / r_a1  # client 0 ends first (client 2 needs 1 / r_a3 > 0.5 / r_a1)
    assert 1 / r_a3 > 0.5 / r_a1
    t, key = up.advance()
    assert key == "c0" and t == pytest.approx(t0, rel=1e-12)
    left1, left2 = 1.5 - r_a1 * (t0 - 0.5), 1.0 - r_a3 * (t0 - 0.5)
    t2 = t0 + left2 / math.log2(4.0)  # n = 2: share 1 Hz, client 2 at log2(1 + 3)
    t, key = up.advance()
    assert key == "c2" and t == pytest.approx(t2, rel=1e-12)
    left1 -= 1.0 * (t2 - t0)  # client 1 at log2(1 + 1) = 1 bit/s meanwhile
    t, key = up.advance()
    assert key == "c1" and t == pytest.approx(t2 + left1 / (2 * math.log2(1.5)), rel=1e-12)  # alone: 2 Hz
    assert len(up) == 0


def test_a_fading_block_boundary_changes_the_rate_mid_upload():
    up = SharedUplink(1.0, 1.0, lambda block, ids: np.array([1.0 if block == 1 else 3.0]))
    up.start("x", 7, 2.0)  # block 1: 1 bit/s for 1 s, then block 2: log2(4) = 2 bit/s for the last bit
    t, key = up.advance()
    assert (key, t) == ("x", pytest.approx(1.5, rel=1e-12))
    assert up.block == 2 and up.band_hz_s["x"] == pytest.approx(1.5)


def test_uploads_ending_at_the_same_instant_leave_in_client_id_order():
    up = SharedUplink(2.0, 1e9, constant_snr({4: 1.0, 2: 1.0}))
    up.start("late-id", 4, 1.0)
    up.start("early-id", 2, 1.0)
    assert [up.advance()[1], up.advance()[1]] == ["early-id", "late-id"]


def test_the_clock_does_not_run_back_or_wait_for_nothing():
    up = SharedUplink(1.0, 1.0, constant_snr({0: 1.0}))
    assert up.advance(2.5) is None and up.t_s == 2.5 and up.block == 3
    with pytest.raises(ValueError, match="back"):
        up.advance(1.0)
    with pytest.raises(ValueError, match="no upload"):
        up.advance()


# ---- the engine -------------------------------------------------------------------------------


def async_cfg(mode="fedbuff", **overrides):
    flat = {"run.aggregation": mode, "run.rounds": 5, "asynchronous.buffer_size": 2, "run.method": "soft"}
    return make_cfg(**{**flat, **overrides})


def test_one_client_in_flight_follows_its_own_timeline_on_the_whole_band(tmp_path):
    # Concurrency 1: each dispatch starts when the previous upload arrives, and the upload has the
    # whole band: T_up = S / (B log2(1 + a / B)) in the block it runs in (blocks far longer than a trip).
    cfg = async_cfg("fedasync", **{"asynchronous.concurrency": 1, "asynchronous.fading_block_s": 1e6})
    records = run_async(tmp_path, cfg)
    wireless = WirelessModel(cfg)
    sizes = StubHost().partition_sizes(cfg)
    t = 0.0
    for rec in records:
        (u,) = rec["aggregation"]["updates"]
        (c,) = rec["clients"]
        cid = u["client_id"]
        assert u["dispatched_s"] == pytest.approx(t, rel=1e-12, abs=1e-15)
        t_dl = wireless.downlink_time_s(1, [cid], rec["downlink_bits"])
        t_cmp = wireless.compute_times_s([cid], [sizes[cid]], StubHost().flops_per_sample(cfg))[0]
        assert u["upload_start_s"] == pytest.approx(t + t_dl + t_cmp, rel=1e-12)
        a = wireless.snr_per_hz(1, [cid])[0]
        b = cfg.channel.bandwidth_hz
        t_up = c["payload_bits"] / (b * math.log2(1 + a / b))
        assert u["arrived_s"] == pytest.approx(u["upload_start_s"] + t_up, rel=1e-9)
        assert c["upload_time_s"] == pytest.approx(t_up, rel=1e-9) and c["bandwidth_hz"] == pytest.approx(b)
        assert rec["aggregation"]["time_s"] == u["arrived_s"]
        assert u["staleness"] == 0 and rec["aggregation"]["step"] == pytest.approx(1.0)
        t = u["arrived_s"]


def test_fedasync_weighs_each_update_by_its_staleness_and_mixes_it_in():
    cfg = async_cfg("fedasync", **{"asynchronous.staleness_exponent": 0.5, "asynchronous.server_lr": 0.6})
    transport = InProcessClients()
    engine = AsyncEngine(cfg, StubHost())
    stale_seen = set()
    for version in range(1, 7):
        rec = engine.start_round(version, transport).record
        (u,) = rec.aggregation.updates
        assert u.staleness == version - 1 - u.base_version
        assert u.weight == pytest.approx((1 + u.staleness) ** -0.5)
        assert rec.aggregation.step == pytest.approx(0.6 * u.weight)
        assert engine.version == rec.round == version
        stale_seen.add(u.staleness)
    assert max(stale_seen) >= 1  # three clients in flight: later updates are stale


def test_a_server_update_is_the_methods_aggregate_moved_by_the_step():
    cfg = async_cfg("fedbuff", **{"asynchronous.staleness_exponent": 1.0, "asynchronous.server_lr": 0.5})
    engine = AsyncEngine(cfg, StubHost())
    transport = InProcessClients()
    replies = {}
    real_send = transport.__call__

    def send(c, requests, state):
        got, failures = real_send(c, requests, state)
        replies.update({(q.round, q.client_id): got[q.client_id] for q in requests if q.client_id in got})
        return got, failures

    for version in range(1, 5):
        before = {k: v.copy() for k, v in engine.state.items()}
        rec = engine.start_round(version, send).record
        ups = rec.aggregation.updates
        assert len(ups) == 2
        got = [replies[(u.dispatch, u.client_id)] for u in ups]
        weights = [(1 + u.staleness) ** -1.0 for u in ups]
        uploads = [(r.num_samples * w, *engine.method.decode(r.arrays)) for r, w in zip(got, weights, strict=True)]
        target, _ = engine.method.aggregate(before, uploads)
        step = 0.5 * sum(r.num_samples * w for r, w in zip(got, weights, strict=True)) / sum(r.num_samples for r in got)
        assert rec.aggregation.step == pytest.approx(step)
        for k in before:
            expected = (before[k] + step * (target[k].astype(np.float64) - before[k])).astype(before[k].dtype)
            np.testing.assert_array_equal(engine.state[k], expected)


@pytest.mark.parametrize("mode", ["fedasync", "fedbuff"])
def test_records_depend_on_the_seed_not_on_how_the_transport_orders_the_training(tmp_path, mode):
    cfg = async_cfg(mode, **{"run.rounds": 6, "faults.client_crash_prob": 0.2})
    a = run_async(tmp_path, cfg, InProcessClients(), "a", wall_clock=False)
    b = run_async(tmp_path, cfg, Shuffled(1), "b", wall_clock=False)
    assert a == b
    assert any(r["failures"] for r in a)  # the crashes are part of what is reproduced
    c = run_async(tmp_path, async_cfg(mode, **{"run.rounds": 6, "run.seed": 5}), name="c", wall_clock=False)
    assert a != c


@pytest.mark.parametrize(
    ("mode", "method", "quant"), [("fedbuff", "topk-ef", 0), ("fedasync", "soft", 8), ("fedbuff", "fedsa", 0)]
)
def test_a_resumed_asynchronous_run_gives_the_records_of_an_uninterrupted_one(tmp_path, mode, method, quant):
    """The checkpoint holds the clock (clients in flight, uploads half done, idle clients) and the older
    versions that clients in flight started from; a resume trains those clients again, with the same
    streams, and client state (error feedback's residual, fedsa's B) is kept up to the last dispatch."""
    from fedsim.core.checkpoint import check_tensors, client_state_round, load_checkpoint
    from fedsim.core.client_state import FOLDER

    extra = {
        "run.rounds": 7,
        "run.method": method,
        "lora.downlink_quant_bits": quant,
        "faults.client_crash_prob": 0.15,
        "asynchronous.idle_s": 1e-4,
    }
    whole = run_async(tmp_path, async_cfg(mode, **extra), name="whole", wall_clock=False)
    run_async(tmp_path, async_cfg(mode, **{**extra, "run.rounds": 3}), name="part")
    ckpt = load_checkpoint(tmp_path / "part")
    clock = ckpt.scheduler["asynchronous"]
    assert clock["version"] == 3 and 1 <= len(clock["flights"]) <= 3 and client_state_round(ckpt) == clock["dispatches"]
    assert any(name.startswith("asynchronous.v") for name in ckpt.state)  # clients in flight from older versions
    check_tensors(tmp_path / "part", ckpt, StubHost().initial_state(async_cfg(mode, **extra)), method != "soft")
    for folder in (tmp_path / "part" / FOLDER).glob("client-*"):  # a killed run's versions of later dispatches
        (folder / f"round-{clock['dispatches'] + 1:06d}.safetensors").write_bytes(b"not a safetensors file")
    summary = run(
        async_cfg(mode, **extra), StubHost(), lambda: (InProcessClients(), {}), tmp_path / "part", resume=ckpt
    )
    assert summary["status"] == "ok"
    assert records_without_wall_clock(tmp_path / "part") == whole


def test_a_checkpoint_tensor_of_an_old_version_with_the_wrong_shape_is_refused(tmp_path):
    from fedsim.core.checkpoint import CheckpointError, check_tensors, load_checkpoint

    cfg = async_cfg("fedasync", **{"run.rounds": 3})
    run_async(tmp_path, cfg)
    ckpt = load_checkpoint(tmp_path / "out")
    name = next(n for n in ckpt.state if n.startswith("asynchronous.v"))
    ckpt.state[name] = np.zeros((1, 1), np.float32)
    with pytest.raises(CheckpointError, match=r"\(version \d+\): tensor"):
        check_tensors(tmp_path / "out", ckpt, StubHost().initial_state(cfg), False)


def test_failed_dispatches_are_recorded_and_replaced(tmp_path):
    cfg = async_cfg("fedbuff", **{"run.rounds": 6, "faults.client_crash_prob": 0.3})
    records = run_async(tmp_path, cfg)
    failed = [(r["round"], f) for r in records for f in r["failures"]]
    assert failed, "a crash probability of 0.3 over 6 updates crashed nobody"
    for rec in records:  # one lost record per failed dispatch (a client may fail twice between updates)
        lost = sorted((c["client_id"], c["drop_reason"]) for c in rec["clients"] if c["dropped"])
        assert lost == sorted((f["client_id"], f["reason"]) for f in rec["failures"])
        assert all("injected client crash" in reason for _, reason in lost)
    assert all(r["aggregation"]["in_flight"] == 3 for r in records)  # failures are replaced at once


def test_rest_time_keeps_a_client_out_until_it_is_over(tmp_path):
    cfg = async_cfg("fedasync", **{"run.rounds": 8, "asynchronous.idle_s": 5.0, "run.clients_per_round": 2})
    records = run_async(tmp_path, cfg)
    last_arrival = {}
    for rec in records:
        for u in rec["aggregation"]["updates"]:
            if u["client_id"] in last_arrival:
                assert u["dispatched_s"] >= last_arrival[u["client_id"]] + 5.0
            last_arrival[u["client_id"]] = u["arrived_s"]


def test_a_fedbuff_record_carries_the_applied_clients_and_simulated_time(tmp_path):
    records = run_async(tmp_path, async_cfg("fedbuff", **{"run.rounds": 4}))
    times = [r["aggregation"]["time_s"] for r in records]
    assert times == sorted(times) and times[0] > 0
    assert [r["round"] for r in records] == [r["aggregation"]["version"] for r in records] == [1, 2, 3, 4]
    for prev, rec in zip([0.0, *times], records, strict=False):
        assert rec["round_latency_s"] == pytest.approx(rec["aggregation"]["time_s"] - prev)
        ups = rec["aggregation"]["updates"]
        assert sorted(u["client_id"] for u in ups) == [c["client_id"] for c in rec["clients"] if not c["dropped"]]
        assert rec["uplink_bits_total"] == sum(c["payload_bits"] for c in rec["clients"] if not c["dropped"])
        assert [u["arrived_s"] for u in ups] == sorted(u["arrived_s"] for u in ups)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"run.scheduler": "tsfa"}, "run.scheduler='tsfa': with run.aggregation='fedbuff'"),
        ({"run.scheduler": "fixed"}, "use run.scheduler='equal'"),
        ({"hetero.rank_rule": "compute"}, "hetero.rank_rule='compute': not defined"),
        ({"channel.packet_errors": "retransmit"}, "channel.packet_errors='retransmit'"),
        ({"tsfa.deadline_s": 1.0}, "tsfa.deadline_s=1"),
        ({"asynchronous.concurrency": 7}, "asynchronous.concurrency=7: must be at most run.clients=6"),
        ({"asynchronous.buffer_size": 4}, "asynchronous.buffer_size=4: must be at most the 3 clients in flight"),
    ],
)
def test_what_asynchronous_runs_do_not_define_is_refused_in_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        check_asynchronous(async_cfg(**overrides))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_sync_runs_pass_the_asynchronous_checks_whatever_the_asynchronous_keys():
    check_asynchronous(make_cfg(**{"asynchronous.buffer_size": 6, "run.scheduler": "tsfa", "run.method": "soft"}))


def test_the_report_reads_metrics_on_the_simulated_clock_and_draws_time_and_staleness(tmp_path):
    from fedsim.app.report import load_runs, write_report

    run_async(tmp_path, make_cfg(**{"run.rounds": 3}), name="sync")
    records = run_async(tmp_path, async_cfg("fedbuff", **{"run.rounds": 4}), name="buff")
    (sync_run, buff) = sorted(load_runs([tmp_path / "sync", tmp_path / "buff"]), key=lambda r: r.name != "sync")
    times = [r["aggregation"]["time_s"] for r in records]
    np.testing.assert_allclose(buff.times_s(), times, rtol=1e-12)
    between = (times[1] + times[2]) / 2
    assert buff.value(f"primary_metric@{between!r}s") == records[1]["metrics"]["primary_metric"]
    assert math.isnan(buff.value(f"primary_metric@{times[0] / 2!r}s"))  # nothing evaluated yet
    best = max(r["metrics"]["primary_metric"] for r in records)
    first = next(t for t, r in zip(times, records, strict=True) if r["metrics"]["primary_metric"] >= best)
    assert buff.value(f"time_to:primary_metric>={best!r}") == pytest.approx(first)
    assert math.isnan(buff.value(f"time_to:primary_metric>={best + 1!r}"))
    assert sync_run.times_s()[-1] == pytest.approx(sum(r["round_latency_s"] for r in sync_run.records))
    from fedsim.app.report import column

    assert column("time_to:accuracy>=0.6")[0] == "time to accuracy >= 0.6 (s)"
    assert column("accuracy@2.5s")[0] == "accuracy at 2.5 s"
    page = write_report([tmp_path / "sync", tmp_path / "buff"], tmp_path / "report", by=["run.aggregation"])
    assert (page.parent / "figures" / "metric_vs_time.png").is_file()
    assert (page.parent / "figures" / "staleness.png").is_file()


@pytest.mark.slow
def test_a_fedbuff_run_is_the_same_at_one_or_two_clients_at_a_time_and_after_sigkill_and_resume(tmp_path):
    """Real runs (Flower's Simulation Runtime, Ray actors) of one seeded fedbuff run with crashes and an
    error-feedback method: two clients at a time, uninterrupted; and one at a time, its CLI, Ray workers
    and services SIGKILLed after server update 2, then resumed. The records are the same, and so are
    the client-state versions kept on disk."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers.runs import run_args, run_fedsim

    def args(out, concurrent):
        extra = ["--seed", "3", "--out", str(out), "--quiet", "--method", "topk-ef"]
        sets = ["run.aggregation=fedbuff", "asynchronous.buffer_size=2", "faults.client_crash_prob=0.2"]
        sets.append(f"simulation.max_concurrent_clients={concurrent}")
        return run_args(5, 5, 3, *extra, *(a for s in sets for a in ("--set", s)))

    whole = tmp_path / "whole"
    proc = run_fedsim(args(whole, 2), timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsim", *args(killed, 1)], stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 600
        while not (killed / "rounds.jsonl").exists() or len((killed / "rounds.jsonl").read_text().splitlines()) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stderr.read()[-2000:] if proc.stderr else ""
            )
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert len((killed / "rounds.jsonl").read_text().splitlines()) < 5, "killed after the last update"
    resumed = run_fedsim(["run", "--resume", str(killed), "--quiet"], timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = records_without_wall_clock(whole)
    assert records_without_wall_clock(killed) == records
    kept = {f: sorted(p.relative_to(f) for p in (f / "client_state").glob("client-*/round-*")) for f in (whole, killed)}
    assert kept[whole] == kept[killed] and kept[whole]
    assert [r["round"] for r in records] == [1, 2, 3, 4, 5]
    assert all(len(r["aggregation"]["updates"]) == 2 for r in records)
    assert any(u["staleness"] > 0 for r in records for u in r["aggregation"]["updates"])


def test_three_clients_in_flight_follow_the_hand_computed_timeline(tmp_path):
    """Three clients at the same distance (no fading: the same a = p g / N0) with compute times of 1.0,
    1.3 and 1.6 ms start uploading S bits at those times and share the band while they overlap:
    n uploads each run at R(n) = (B / n) log2(1 + a n / B). One fedbuff update applies all three."""
    positions, speeds = tmp_path / "positions.csv", tmp_path / "speeds.csv"
    positions.write_text("client_id,x_m,y_m\n" + "".join(f"{c},100,0\n" for c in range(3)))
    sizes, compute_s = [8, 9, 10], [1.0e-3, 1.3e-3, 1.6e-3]  # StubHost: 8 + c % 3 samples of 1e6 FLOPs
    speeds.write_text(
        "client_id,device_flops\n"
        + "".join(f"{c},{n * 1e6 / t!r}\n" for c, (n, t) in enumerate(zip(sizes, compute_s, strict=True)))
    )
    cfg = async_cfg(
        "fedbuff",
        **{
            "run.clients": 3,
            "run.clients_per_round": 3,
            "run.rounds": 1,
            "asynchronous.buffer_size": 3,
            "channel.drop": "csv",
            "channel.positions_csv": str(positions),
            "channel.fading": "none",
            "channel.bandwidth_hz": 1e5,
            "compute.device_speed": "csv",
            "compute.device_speed_csv": str(speeds),
            "asynchronous.fading_block_s": 1e6,
        },
    )
    (rec,) = run_async(tmp_path, cfg)
    bits = {c["client_id"]: c["payload_bits"] for c in rec["clients"]}
    assert len(set(bits.values())) == 1
    s_bits = bits[0]
    a = WirelessModel(cfg).snr_per_hz(1, [0])[0]
    b = cfg.channel.bandwidth_hz

    def rate(n):
        return (b / n) * math.log2(1 + a * n / b)

    # by hand: client 0 alone from 1.0 ms, then with client 1 from 1.3 ms, then three from 1.6 ms ...
    left = {0: float(s_bits)}
    t, starts, ends = compute_s[0], dict(enumerate(compute_s)), {}
    pending = [1, 2]
    while left:
        n = len(left)
        first = min(left, key=lambda c: (left[c], c))
        t_end = t + left[first] / rate(n)
        t_next = starts[pending[0]] if pending else math.inf
        step = min(t_end, t_next) - t
        left = {c: v - rate(n) * step for c, v in left.items()}
        t += step
        if t_end <= t_next:
            ends[first] = t
            del left[first]
        else:
            left[pending.pop(0)] = float(s_bits)
    assert starts[1] < ends[0] and starts[2] < ends[1]  # the uploads do overlap
    updates = {u["client_id"]: u for u in rec["aggregation"]["updates"]}
    assert [u["client_id"] for u in rec["aggregation"]["updates"]] == [0, 1, 2]  # the arrival order
    for c in range(3):
        assert updates[c]["upload_start_s"] == pytest.approx(compute_s[c], rel=1e-9)
        assert updates[c]["arrived_s"] == pytest.approx(ends[c], rel=1e-9)
