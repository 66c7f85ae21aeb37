import pytest

from channels.rate import noise_psd_w_hz, shannon_rate_bps
from fedsim.core.checks import checked_config
from fedsim.core.seeding import sample_clients
from fedsim.core.wireless import WirelessModel


def test_sampling_is_seeded_sorted_and_without_replacement():
    a = sample_clients(0, 3, 50, 10)
    assert a == sample_clients(0, 3, 50, 10)
    assert a == sorted(set(a)) and len(a) == 10 and all(0 <= c < 50 for c in a)
    assert a != sample_clients(0, 4, 50, 10) or a != sample_clients(1, 3, 50, 10)


def test_accounting_latency_is_max_of_compute_plus_upload():
    cfg = checked_config({"run.clients": 6, "run.clients_per_round": 3})
    wm = WirelessModel(cfg)
    recs, latency = wm.account(2, [0, 2, 5], [1_000_000, 2_000_000, 500_000], [10, 20, 30], 1e9)
    assert [r["client_id"] for r in recs] == [0, 2, 5]
    assert sum(r["bandwidth_hz"] for r in recs) == pytest.approx(cfg.channel.bandwidth_hz)
    for r in recs:
        assert r["upload_time_s"] == pytest.approx(r["payload_bits"] / r["rate_bps"])
        g = 10 ** (r["gain_db"] / 10)
        assert r["rate_bps"] == pytest.approx(shannon_rate_bps(r["bandwidth_hz"], 10 ** (-0.7), g, noise_psd_w_hz()))
        assert 10 <= r["distance_m"] <= 500
    assert latency == pytest.approx(max(r["compute_time_s"] + r["upload_time_s"] for r in recs))
    # the same round gives the same channel; another round another fading draw
    again, _ = WirelessModel(cfg).account(2, [0, 2, 5], [1_000_000, 2_000_000, 500_000], [10, 20, 30], 1e9)
    assert again == recs
    other, _ = wm.account(3, [0, 2, 5], [1_000_000, 2_000_000, 500_000], [10, 20, 30], 1e9)
    assert other[0]["gain_db"] != recs[0]["gain_db"] and other[0]["distance_m"] == recs[0]["distance_m"]
