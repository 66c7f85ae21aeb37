"""Device classes (channels.devices): the catalogue, the mix, availability, and what the engines do
with a client whose device cannot hold the training or goes offline (sync and asynchronous)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from channels.devices import (
    ClassDeviceSpeed,
    DeviceClass,
    DeviceFileError,
    load_catalogue,
    online_time_s,
    parse_mix,
    read_classes_csv,
)
from channels.sharing import SharedUplink
from fedsim.core.asynchronous import AsyncEngine
from fedsim.core.checks import checked_config
from fedsim.core.engine import RoundEngine, RunFailed
from fedsim.core.wireless import WirelessModel
from fedsim.errors import ConfigError
from tests.helpers.engine import InProcessClients, Shuffled, StubHost, make_cfg, run_async
from tests.helpers.runs import records_without_wall_clock

CATALOGUE = """
[small]
flops = 1e11
memory_gib = 1.0
power_w = 2.0
mean_online_s = {online}
mean_offline_s = {offline}

[big]
flops = 4e12
memory_gib = 16.0
power_w = 30.0
mean_online_s = 1e9
mean_offline_s = 1.0
"""


def catalogue(tmp_path, online=1e9, offline=1.0):
    path = tmp_path / "classes.toml"
    path.write_text(CATALOGUE.format(online=online, offline=offline))
    return str(path)


def classes_cfg(tmp_path, mix="small=0.5,big=0.5", **overrides):
    flat = {
        "compute.device_speed": "classes",
        "compute.device_mix": mix,
        "compute.device_catalogue": catalogue(tmp_path, *overrides.pop("_availability", ())),
    }
    return make_cfg(**{**flat, **overrides})


class NeedsMemory(StubHost):
    """A workload whose training needs ``gib`` GiB."""

    def __init__(self, gib):
        super().__init__()
        self.gib = gib

    def train_memory_bytes(self, cfg):
        return int(self.gib * 2**30)


# ---- the catalogue ----------------------------------------------------------------------------


def test_the_shipped_catalogue_loads_with_positive_figures():
    classes = load_catalogue()
    assert {"phone-low", "laptop", "edge-gpu"} <= set(classes)
    for c in classes.values():
        assert c.flops > 0 and c.memory_gib > 0 and c.power_w > 0 and 0 < c.online_probability < 1


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[a]\nflops = 1e9\n", "exactly flops, memory_gib"),
        ("[a]\nflops = -1\nmemory_gib = 1\npower_w = 1\nmean_online_s = 1\nmean_offline_s = 1\n", "flops=-1"),
        ("[a\n", "not a TOML file"),
        ("", "no device class"),
    ],
)
def test_a_bad_catalogue_is_one_line(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(DeviceFileError, match=fragment) as e:
        load_catalogue(str(path))
    assert "\n" not in str(e.value)


def test_the_mix_is_normalised_and_malformed_mixes_are_refused():
    assert parse_mix("a=1, b=3") == {"a": 0.25, "b": 0.75}
    for bad in ("a", "a=0", "a=x", "a=1,a=2", "=1", ""):
        with pytest.raises(DeviceFileError):
            parse_mix(bad)


def test_a_class_file_gives_each_client_its_class(tmp_path):
    good = tmp_path / "c.csv"
    good.write_text("client_id,device_class\n1,big\n0,small\n")
    assert read_classes_csv(str(good)) == ("small", "big")
    for i, text in enumerate(
        ["id,class\n0,a\n", "client_id,device_class\n0,a\n0,b\n", "client_id,device_class\n1,a\n"]
    ):
        bad = tmp_path / f"bad{i}.csv"
        bad.write_text(text)
        with pytest.raises(DeviceFileError):
            read_classes_csv(str(bad))


def test_classes_are_drawn_from_the_mix_and_set_the_speed(tmp_path):
    model = ClassDeviceSpeed(device_mix="small=0.2,big=0.8", device_catalogue=catalogue(tmp_path))
    names = [c.name for c in model.assign(np.random.default_rng(0), 4000)]
    assert abs(names.count("big") / 4000 - 0.8) < 0.03
    speeds = model.sample(np.random.default_rng(0), 4000)
    np.testing.assert_array_equal(speeds, [1e11 if n == "small" else 4e12 for n in names])


def test_availability_follows_the_stationary_chain():
    device = DeviceClass("x", 1e12, 4.0, 5.0, mean_online_s=30.0, mean_offline_s=10.0)
    rng = np.random.default_rng(1)
    draws = np.array([online_time_s(rng, device) for _ in range(20000)])
    online = draws[draws > 0]
    assert abs(len(online) / len(draws) - 0.75) < 0.015  # pi = 30 / (30 + 10)
    assert abs(online.mean() - 30.0) / 30.0 < 0.03  # the time left online: Exp(mean_online_s)


def test_an_upload_taken_out_shares_the_band_anew():
    up = SharedUplink(2.0, 1e9, lambda block, ids: np.ones(len(ids)))
    up.start("stays", 0, 1.0)
    up.start("leaves", 1, 1.0)
    assert up.advance(0.5) is None  # both at 1 bit/s: half sent
    up.cancel("leaves")
    t, key = up.advance()  # alone: 2 log2(1.5) bit/s for the last half bit
    assert key == "stays" and t == pytest.approx(0.5 + 0.5 / (2 * math.log2(1.5)), rel=1e-12)


# ---- the configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"compute.device_speed": "classes", "compute.device_mix": "tablet=1,watch=1"}, "class 'watch' is not in"),
        ({"compute.device_speed": "classes", "compute.device_mix": "tablet"}, "compute.device_mix='tablet'"),
        ({"compute.device_classes_csv": "x.csv"}, "only used with compute.device_speed=classes"),
        ({"compute.device_speed": "classes", "compute.device_catalogue": "/no/such.toml"}, "file not found"),
    ],
)
def test_bad_device_class_settings_are_one_line(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")) as e:
        checked_config(overrides)
    assert "\n" not in str(e.value)


# ---- the engines --------------------------------------------------------------------------------


def test_compute_energy_is_the_class_power_times_the_compute_time(tmp_path):
    wm = WirelessModel(classes_cfg(tmp_path))
    ids, samples = [0, 1, 2, 3], [10, 20, 30, 40]
    power = np.array([wm.device_classes[c].power_w for c in ids])
    np.testing.assert_allclose(wm.compute_energies_j(ids, samples, 1e9), power * wm.compute_times_s(ids, samples, 1e9))


def test_a_device_that_cannot_hold_the_training_is_never_sent_and_is_recorded(tmp_path):
    cfg = classes_cfg(tmp_path, **{"run.clients_per_round": 6})
    engine = RoundEngine(cfg, NeedsMemory(4.0))  # small devices have 1 GiB, big ones 16
    small = {c for c, d in enumerate(engine.wireless.device_classes) if d.name == "small"}
    assert small and engine.unfit.keys() == small
    transport = InProcessClients()
    rec = engine.run_round(1, transport)
    assert {r.client_id for r, _ in transport.requests}.isdisjoint(small)
    assert {f.client_id for f in rec.failures} == small and rec.status == "ok"
    for f in rec.failures:
        assert f.reason == "memory: training needs at least 4 GiB, device (small) has 1 GiB"


def test_no_device_able_to_train_is_one_line(tmp_path):
    with pytest.raises(RunFailed, match="no client's device class can hold the training"):
        RoundEngine(classes_cfg(tmp_path, mix="small=1"), NeedsMemory(4.0))


def test_a_device_that_goes_offline_mid_round_is_dropped_with_the_time_it_left(tmp_path):
    # small devices stay online 1e-4 s on average, a round lasts longer: they leave; big ones stay
    cfg = classes_cfg(tmp_path, **{"run.clients_per_round": 6, "_availability": (1e-4, 1e-4)})
    engine = RoundEngine(cfg, StubHost())
    rec = engine.run_round(1, InProcessClients())
    small = {c for c, d in enumerate(engine.wireless.device_classes) if d.name == "small"}
    dropped = {c.client_id: c.drop_reason for c in rec.clients if c.dropped}
    assert dropped.keys() == small
    assert all(r.startswith("offline: device (small)") for r in dropped.values())
    assert rec.status == "ok" and rec.uplink_bits_total == sum(c.payload_bits for c in rec.clients if not c.dropped)


def test_asynchronous_runs_skip_unfit_devices_and_record_devices_that_leave(tmp_path):
    cfg = classes_cfg(
        tmp_path,
        mix="small=0.5,big=0.5",
        **{"run.aggregation": "fedasync", "run.rounds": 6, "run.clients": 8, "_availability": (2e-4, 1e-4)},
    )
    engine = AsyncEngine(cfg, StubHost())
    small = {c for c, d in enumerate(engine.wireless.device_classes) if d.name == "small"}
    records = [engine.start_round(v, InProcessClients()).record for v in range(1, 7)]
    left = [f for r in records for f in r.failures]
    assert left and all(f.client_id in small and f.reason.startswith("offline: device (small)") for f in left)
    applied = {u.client_id for r in records for u in r.aggregation.updates}
    assert applied - small  # big devices deliver
    for c in (c for r in records for c in r.clients if not c.dropped):  # energy: the class's power x T_cmp
        power_w = engine.wireless.device_classes[c.client_id].power_w
        assert c.compute_energy_j == pytest.approx(power_w * c.compute_time_s, rel=1e-12)
    unfit = AsyncEngine(cfg, NeedsMemory(4.0))
    pool = set(unfit.idle_until)
    assert pool.isdisjoint(small) and pool


def test_asynchronous_records_with_device_classes_do_not_depend_on_the_transport(tmp_path):
    cfg = classes_cfg(
        tmp_path,
        **{"run.aggregation": "fedbuff", "asynchronous.buffer_size": 2, "run.rounds": 5, "_availability": (3e-4, 1e-4)},
    )
    a = run_async(tmp_path, cfg, InProcessClients(), "a", wall_clock=False)
    b = run_async(tmp_path, cfg, Shuffled(2), "b", wall_clock=False)
    assert a == b and any(r["failures"] for r in a)
    assert json.loads(json.dumps(a)) == records_without_wall_clock(tmp_path / "a")
