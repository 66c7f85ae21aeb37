"""The configured wireless model through fedsim.core.wireless.WirelessModel (no Flower): reproducibility,
trace export and replay, downlink, outage, energy, files, and bad input at configuration time."""

import json
import math

import numpy as np
import pytest

from channels.rate import noise_psd_w_hz, shannon_rate_bps
from channels.trace import rows_from_round_records, write_trace
from fedsim.core.checks import checked_config
from fedsim.core.config import ConfigError
from fedsim.core.seeding import sample_clients
from fedsim.core.wireless import WirelessModel

FLOPS = 2e9
RICH = {
    "run.clients": 8,
    "run.clients_per_round": 3,
    "run.rounds": 4,
    "run.seed": 3,
    "channel.pathloss": "umi",
    "channel.shadowing": "lognormal",
    "channel.shadowing_std_db": 7.82,
    "channel.shadowing_correlation": 0.6,
    "channel.fading": "rician",
    "channel.fading_correlation": 0.8,
    "channel.mobility": "random-walk",
    "channel.mobility_step_m": 25.0,
    "channel.downlink": "broadcast",
    "channel.outage_deadline_s": 1.0,
}


def run_rounds(cfg, model=None):
    """Round records as the ServerApp builds them: sampled clients, equal split."""
    wm = model or WirelessModel(cfg)
    out = []
    for t in range(1, cfg.run.rounds + 1):
        ids = sample_clients(cfg.run.seed, t, cfg.run.clients, cfg.num_sampled)
        recs, lat = wm.account(t, ids, [800_000 + 1000 * c for c in ids], [20 + c for c in ids], FLOPS)
        out.append({"round": t, "clients": recs, "round_latency_s": lat})
    return out


def test_default_records_keep_their_fields_and_meaning():
    cfg = checked_config({"run.clients": 6, "run.clients_per_round": 3})
    recs, latency = WirelessModel(cfg).account(1, [0, 2, 5], [10**6, 2 * 10**6, 5 * 10**5], [10, 20, 30], 1e9)
    for r in recs:
        assert r["gain_db"] == pytest.approx(-r["pathloss_db"] + r["fading_gain_db"])
        assert r["pathloss_db"] == pytest.approx(128.1 + 37.6 * math.log10(r["distance_m"] / 1000))
        assert r["shadowing_db"] == 0.0 and r["los"] is None and r["downlink_time_s"] == 0.0 and not r["outage"]
        g = 10 ** (r["gain_db"] / 10)
        assert r["rate_bps"] == pytest.approx(shannon_rate_bps(r["bandwidth_hz"], 10 ** (-0.7), g, noise_psd_w_hz()))
        assert r["upload_energy_j"] == pytest.approx(10 ** (-0.7) * r["upload_time_s"])
    assert latency == pytest.approx(max(r["compute_time_s"] + r["upload_time_s"] for r in recs))


def test_deterministic_for_a_seed_and_independent_of_who_is_sampled():
    cfg = checked_config(RICH)
    a = run_rounds(cfg)
    assert run_rounds(cfg) == a
    assert json.loads(json.dumps(a)) == a  # records are plain JSON
    other = run_rounds(checked_config({**RICH, "run.seed": 4}))
    assert other != a
    # client 1's channel in round 3 is the same whoever else takes part
    wm = WirelessModel(cfg)
    r1 = wm.account(3, [1, 2], [10**6, 10**6], [10, 10], FLOPS)[0][0]
    r2 = WirelessModel(cfg).account(3, [0, 1, 7], [10**6] * 3, [10] * 3, FLOPS)[0][1]
    keys = ("distance_m", "gain_db", "pathloss_db", "shadowing_db", "fading_gain_db", "los")
    assert {k: r1[k] for k in keys} == {k: r2[k] for k in keys}


def test_time_correlated_state_recomputes_for_any_round():
    """A resumed run asks for round t first; the answer equals the one of a run that went 1..t."""
    cfg = checked_config(RICH)
    seq = WirelessModel(cfg)
    for t in range(1, 6):
        ch = seq.channel(t)
    fresh = WirelessModel(cfg).channel(5)
    assert np.array_equal(fresh.gain_db, ch.gain_db) and np.array_equal(fresh.distance_m, ch.distance_m)
    back = seq.channel(2)  # going back restarts from round 1
    assert np.array_equal(back.gain_db, WirelessModel(cfg).channel(2).gain_db)


def test_mobility_changes_distances_within_the_cell():
    cfg = checked_config({**RICH, "channel.radius_m": 300.0, "channel.min_distance_m": 20.0})
    wm = WirelessModel(cfg)
    d = np.stack([wm.channel(t).distance_m for t in range(1, 8)])
    assert np.all(np.abs(np.diff(d, axis=0)) <= 25.0 + 1e-9)
    assert np.all(np.abs(np.diff(d, axis=0)).sum(axis=0) > 0)
    assert d.min() >= 20.0 - 1e-9 and d.max() <= 300.0 + 1e-9


def test_downlink_outage_and_energy_formulas():
    cfg = checked_config({**RICH, "train.local_epochs": 2})
    wm = WirelessModel(cfg)
    ids, bits, samples = [1, 4, 6], [10**6, 2 * 10**6, 3 * 10**6], [10, 20, 30]
    recs, latency = wm.account(2, ids, bits, samples, FLOPS, downlink_bits=4 * 10**6)
    gains = np.array([10 ** (r["gain_db"] / 10) for r in recs])
    n0, p_bs = noise_psd_w_hz(), 10 ** ((43 - 30) / 10)
    r_dl = shannon_rate_bps(20e6, p_bs, gains.min(), n0)
    for r in recs:
        assert r["downlink_time_s"] == pytest.approx(4e6 / r_dl)
        total = r["downlink_time_s"] + r["compute_time_s"] + r["upload_time_s"]
        assert r["outage"] == (total > 1.0)
        f_clk = wm.device_flops[r["client_id"]] / 1000.0
        cycles = 2 * r["num_samples"] * FLOPS / 1000.0
        assert r["compute_energy_j"] == pytest.approx(1e-28 * cycles * f_clk**2)
    assert latency == pytest.approx(max(r["downlink_time_s"] + r["compute_time_s"] + r["upload_time_s"] for r in recs))
    tight = WirelessModel(checked_config({**RICH, "channel.outage_deadline_s": 1e-6})).account(2, ids, bits, samples, 1)
    assert all(r["outage"] for r in tight[0])


def test_trace_export_and_replay_give_identical_records(tmp_path):
    cfg = checked_config(RICH)
    records = run_rounds(cfg)
    trace = tmp_path / "from_results.csv"
    write_trace(trace, rows_from_round_records(records))
    replayed = run_rounds(checked_config({**RICH, "channel.trace_csv": str(trace)}))
    assert replayed == records


def test_full_cell_trace_replays_under_another_sampling(tmp_path):
    cfg = checked_config(RICH)
    wm = WirelessModel(cfg)
    trace = tmp_path / "cell.csv"

    def value(t: int, key: str, c: int) -> float | None:
        column = getattr(wm.channel(t), key)
        return None if column is None else float(column[c])

    keys = ("distance_m", "pathloss_db", "shadowing_db", "fading_gain_db", "los", "gain_db")
    rows = [
        {"round": t, "client_id": c, **{k: value(t, k, c) for k in keys}}
        for t in range(1, cfg.run.rounds + 1)
        for c in range(cfg.run.clients)
    ]
    assert write_trace(trace, rows) == cfg.run.rounds * cfg.run.clients
    cfg2 = checked_config({**RICH, "channel.trace_csv": str(trace), "run.clients_per_round": 5})
    wm2 = WirelessModel(cfg2)
    for t in range(1, cfg.run.rounds + 1):
        assert np.array_equal(wm2.channel(t).gain_db, wm.channel(t).gain_db)
        assert np.array_equal(wm2.channel(t).gain_linear, wm.channel(t).gain_linear)
    # a measured trace may have only the total gain
    (tmp_path / "gains.csv").write_text(
        "round,client_id,gain_db\n" + "".join(f"{t},{c},-{100 + t + c}\n" for t in range(1, 5) for c in range(8))
    )
    wm3 = WirelessModel(checked_config({**RICH, "channel.trace_csv": str(tmp_path / "gains.csv")}))
    rec = wm3.account(2, [3], [10**6], [10], FLOPS)[0][0]
    assert rec["gain_db"] == -105.0 and rec["pathloss_db"] is None and rec["los"] is None


def test_positions_and_device_speed_files(tmp_path):
    pos = tmp_path / "pos.csv"
    pos.write_text("client_id,x_m,y_m\n0,30,40\n1,-300,0\n2,0,120\n")
    speeds = tmp_path / "speeds.csv"
    speeds.write_text("client_id,device_flops\n0,1e12\n1,2e12\n2,5e11\n")
    cfg = checked_config(
        {
            "run.clients": 3,
            "run.clients_per_round": 2,
            "channel.drop": "csv",
            "channel.positions_csv": str(pos),
            "compute.device_speed": "csv",
            "compute.device_speed_csv": str(speeds),
        }
    )
    wm = WirelessModel(cfg)
    assert np.allclose(wm.channel(1).distance_m, [50.0, 300.0, 120.0])
    assert np.allclose(wm.device_flops, [1e12, 2e12, 5e11])


def test_other_models_run_from_config():
    for flat in (
        {"channel.pathloss": "uma", "channel.fading": "nakagami", "channel.fading_correlation": 0.5},
        {"channel.pathloss": "free-space", "channel.fading": "none", "channel.shadowing": "lognormal"},
        {"channel.mobility": "constant-velocity", "compute.device_speed": "lognormal"},
        {"compute.device_speed": "fixed", "channel.shadowing_correlation": 1.0, "channel.shadowing": "lognormal"},
    ):
        cfg = checked_config({"run.clients": 5, "run.clients_per_round": 2, "run.rounds": 3, **flat})
        recs = run_rounds(cfg)
        assert all(math.isfinite(r["rate_bps"]) and r["rate_bps"] > 0 for rr in recs for r in rr["clients"])
    fixed = {"channel.shadowing": "lognormal", "channel.shadowing_correlation": 1.0}
    wm = WirelessModel(checked_config({"run.clients": 5, "run.clients_per_round": 2, **fixed}))
    assert np.array_equal(wm.channel(1).shadowing_db, wm.channel(3).shadowing_db)  # correlation 1: fixed


# ----------------------------------------------------------------------------------------------
# bad input: one line naming key, value and what is allowed


def _trace(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def full_trace(rounds, clients):
    return "round,client_id,gain_db\n" + "".join(
        f"{t},{c},-100\n" for t in range(1, rounds + 1) for c in range(clients)
    )


@pytest.mark.parametrize(
    "flat, fragment",
    [
        ({"channel.min_distance_m": -1.0}, "channel.min_distance_m=-1.0: must be a number in [0, 1e+06] m"),
        ({"channel.radius_m": -5.0}, "channel.radius_m=-5.0"),
        ({"channel.rician_k_linear": -0.5}, "channel.rician_k_linear=-0.5: must be a number in [0, 1e+06] (linear)"),
        ({"channel.nakagami_m": 0.3}, "channel.nakagami_m=0.3: must be a number in [0.5, 1e+06]"),
        ({"channel.fading_correlation": 1.5}, "channel.fading_correlation=1.5: must be a number in [0, 1]"),
        ({"channel.shadowing_correlation": -0.1}, "channel.shadowing_correlation=-0.1"),
        ({"channel.fading": "rice"}, "channel.fading='rice': must be one of rayleigh, rician, nakagami, none"),
        ({"channel.pathloss": "hata"}, "channel.pathloss='hata': must be one of log-distance, free-space, umi, uma"),
        ({"channel.drop": "grid"}, "channel.drop='grid': must be one of disc, csv"),
        ({"channel.mobility": "levy"}, "channel.mobility='levy': must be one of none, random-walk"),
        ({"channel.shadowing": "rayleigh"}, "channel.shadowing='rayleigh': must be one of none, lognormal"),
        ({"compute.device_speed": "fast"}, "compute.device_speed='fast': must be one of uniform, lognormal"),
        ({"channel.downlink": "unicast"}, "channel.downlink='unicast': must be one of none, broadcast"),
        ({"channel.bandwidth_hz": 0}, "channel.bandwidth_hz=0.0: must be a number in (0, 1e+12] Hz"),
        ({"channel.downlink_bandwidth_hz": 0}, "channel.downlink_bandwidth_hz=0.0"),
        ({"channel.carrier_hz": 0}, "channel.carrier_hz=0.0"),
        ({"channel.shadowing_std_db": -3}, "channel.shadowing_std_db=-3.0"),
        ({"channel.mobility_step_m": -1}, "channel.mobility_step_m=-1.0"),
        ({"channel.outage_deadline_s": -1}, "channel.outage_deadline_s=-1.0"),
        ({"channel.ut_height_m": 40}, "channel.ut_height_m=40.0: must be a number of metres in [1.5, 22.5]"),
        ({"compute.kappa": -1e-28}, "compute.kappa=-1e-28"),
        ({"compute.flops_per_cycle": 0}, "compute.flops_per_cycle=0.0"),
        ({"channel.pathloss": "uma", "channel.carrier_hz": 2e8}, "needs a carrier in [5e+08, 1e+11] Hz"),
        ({"channel.pathloss": "uma", "channel.ut_height_m": 20.0}, "channel.ut_height_m=20.0: channel.pathloss=uma"),
        ({"channel.pathloss": "umi", "channel.min_distance_m": 5.0}, "valid for distances in [10, 5000] m"),
        ({"channel.positions_csv": "p.csv"}, "channel.positions_csv='p.csv': only used with channel.drop=csv"),
        ({"channel.drop": "csv"}, "channel.drop=csv needs a CSV file"),
        ({"compute.device_speed": "csv"}, "compute.device_speed=csv needs a CSV file"),
        ({"compute.device_speed_csv": "s.csv"}, "only used with compute.device_speed=csv"),
        ({"channel.trace_csv": "/no/such/trace.csv"}, "channel.trace_csv='/no/such/trace.csv': file not found"),
    ],
)
def test_bad_channel_config_is_one_line(flat, fragment):
    with pytest.raises(ConfigError) as e:
        checked_config({"run.clients": 8, "run.clients_per_round": 3, "run.rounds": 3, **flat})
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "text, fragment",
    [
        (full_trace(2, 8), "is shorter than the run: it has rounds 1..2 (2 rounds) but the run needs 1..3"),
        (full_trace(3, 9), "has client ids [8] outside 0..7"),
        ("round,client,gain_db\n1,0,-100\n", "missing column(s) client_id"),
        ("round,client_id,gain_db,phase\n1,0,-100,0\n", "unknown column(s) phase"),
        ("round,client_id,gain_db\n1,0,abc\n", "line 2: gain_db='abc' is not a number"),
        ("round,client_id,gain_db\n1,0,-100\n1,0,-90\n", "line 3: round 1 client 0 appears twice"),
        ("round,client_id,gain_db\n0,0,-100\n", "round must be an integer >= 1"),
        ("round,client_id,gain_db\n", "no rows"),
        ("round,client_id,gain_db\n1,0,-100\n2,0,-100\n3,0,-100\n", "round 1 has no row for sampled clients"),
        ("round,client_id,gain_db,distance_m\n1,0,-100,-4\n", "distance_m must be positive"),
    ],
)
def test_bad_trace_files(tmp_path, text, fragment):
    path = _trace(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        checked_config({"run.clients": 8, "run.clients_per_round": 3, "run.rounds": 3, "channel.trace_csv": path})
    msg = str(e.value)
    assert msg.startswith(f"channel.trace_csv={path!r}: ") and fragment in msg and "\n" not in msg


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("client_id,x_m,y_m\n0,1,1\n1,2,2\n", "has 2 clients, run.clients is 3"),
        ("client_id,x_m\n0,1\n", "missing column(s) y_m"),
        ("client_id,x_m,y_m\n0,1,1\n2,2,2\n5,1,1\n", "client ids must be 0..K-1"),
        ("client_id,x_m,y_m\n0,0,0\n1,2,2\n2,1,1\n", "distance 0 m"),
        ("client_id,x_m,y_m\n0,1,x\n", "line 2: not numbers"),
    ],
)
def test_bad_positions_files(tmp_path, text, fragment):
    p = _trace(tmp_path, text, "pos.csv")
    with pytest.raises(ConfigError) as e:
        checked_config(
            {"run.clients": 3, "run.clients_per_round": 2, "channel.drop": "csv", "channel.positions_csv": p}
        )
    assert str(e.value).startswith(f"channel.positions_csv={p!r}: ") and fragment in str(e.value)


def test_bad_device_speed_file(tmp_path):
    p = _trace(tmp_path, "client_id,device_flops\n0,1e12\n1,-3\n", "speeds.csv")
    with pytest.raises(ConfigError, match="line 3: device_flops must be a positive FLOP/s"):
        checked_config(
            {"run.clients": 2, "run.clients_per_round": 2, "compute.device_speed": "csv", "compute.device_speed_csv": p}
        )


# ----------------------------------------------------------------------------------------------
# the command line


def test_fedsim_channels_lists_every_component(capsys):
    from channels import REGISTRIES
    from fedsim.app.cli import main

    with pytest.raises(SystemExit) as e:
        main(["channels"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for kind, reg in REGISTRIES.items():
        assert kind in out
        for name in reg:
            assert f"  {name} " in out
    for key in ("channel.rician_k_linear = 3", "channel.carrier_hz = 3.5e+09", "[dB per decade]", "compute.kappa"):
        assert key in out


def test_fedsim_channels_exports_a_results_trace_that_replays(tmp_path, capsys):
    from fedsim.app.cli import main

    cfg = checked_config(RICH)
    records = run_rounds(cfg)
    results = tmp_path / "run"
    results.mkdir()
    (results / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "trace.csv"
    with pytest.raises(SystemExit) as e:
        main(["channels", "--export-trace", str(results), "--out", str(out)])
    assert e.value.code == 0 and "rows written" in capsys.readouterr().out
    assert run_rounds(checked_config({**RICH, "channel.trace_csv": str(out)})) == records
    with pytest.raises(SystemExit) as e:
        main(["channels", "--export-trace", str(tmp_path / "nothing"), "--out", str(out)])
    assert e.value.code == 2 and "not a results folder" in capsys.readouterr().err


def test_run_with_a_bad_channel_value_exits_2(capsys, tmp_path):
    from fedsim.app.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "--set", "channel.fading=rice", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "channel.fading='rice': must be one of" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_node_profiles_replace_the_drop():
    """A deployed node's profile replaces its drop and speed before round 1; other clients keep theirs."""
    cfg = checked_config({"run.clients": 4, "run.clients_per_round": 2})
    before = WirelessModel(cfg).channel(1).distance_m
    wm = WirelessModel(cfg, profiles={2: {"distance-m": 123.0, "device-flops": 3e12}})
    assert wm.device_flops[2] == 3e12
    after = wm.channel(1).distance_m
    assert after[2] == pytest.approx(123.0) and np.array_equal(np.delete(after, 2), np.delete(before, 2))
