"""Channel formulas against their closed forms and statistical checks with sample-size tolerances."""

import numpy as np
import pytest

from channels.compute import compute_time_s
from channels.fading import RayleighFading
from channels.geometry import DiscDrop, distance_m
from channels.link import LinkBudget
from channels.pathloss import LogDistancePathLoss
from channels.rate import noise_psd_w_hz, shannon_rate_bps, upload_time_s
from channels.units import db_to_linear, dbm_to_w, linear_to_db, w_to_dbm


def test_unit_round_trips():
    x = np.array([-30.0, 0.0, 23.0])
    assert np.allclose(linear_to_db(db_to_linear(x)), x)
    assert np.allclose(w_to_dbm(dbm_to_w(x)), x)
    assert dbm_to_w(30.0) == pytest.approx(1.0) and dbm_to_w(23.0) == pytest.approx(0.19952623)


def test_noise_psd_is_minus_174_dbm_per_hz():
    assert noise_psd_w_hz() == pytest.approx(10 ** (-20.4), rel=1e-12)  # -174 dBm/Hz = 10^-20.4 W/Hz
    assert noise_psd_w_hz(-174, 9) == pytest.approx(10 ** (-19.5), rel=1e-12)


def test_shannon_rate_closed_form():
    b, p, g, n0 = 1e6, 0.2, 1e-11, noise_psd_w_hz()
    expected = b * np.log2(1 + p * g / (b * n0))
    assert shannon_rate_bps(b, p, g, n0) == pytest.approx(expected, rel=1e-12)
    assert shannon_rate_bps(0.0, p, g, n0) == 0.0


def test_rate_monotone_concave_and_saturating_in_bandwidth():
    n0, p, g = noise_psd_w_hz(), 0.2, 1e-12
    b = np.linspace(1e4, 1e8, 2000)
    r = shannon_rate_bps(b, p, g, n0)
    assert np.all(np.diff(r) > 0)
    assert np.all(np.diff(r, 2) < 0)
    assert r[-1] < p * g / (n0 * np.log(2))


def test_upload_time():
    assert upload_time_s(1e6, 2e6) == pytest.approx(0.5)
    assert upload_time_s(0, 0) == 0.0
    assert np.isinf(upload_time_s(1, 0))


def test_disc_drop_bounds_and_radial_cdf():
    n = 20000
    drop = DiscDrop(500.0, 10.0)
    d = distance_m(drop.sample(np.random.default_rng(0), n))
    assert d.min() >= 10.0 and d.max() <= 500.0
    # F(d) = (d^2 - dmin^2) / (R^2 - dmin^2); the empirical CDF at the median radius is 1/2 +- 4 sigma
    d_med = np.sqrt(10.0**2 + 0.5 * (500.0**2 - 10.0**2))
    frac = np.mean(d <= d_med)
    assert abs(frac - 0.5) < 4 * np.sqrt(0.25 / n)


def test_log_distance_slope_per_decade():
    pl = LogDistancePathLoss()
    assert pl.loss_db(1000.0) == pytest.approx(128.1)
    assert pl.loss_db(100.0) - pl.loss_db(10.0) == pytest.approx(37.6)


def test_rayleigh_power_mean_is_one():
    n = 100000
    x = RayleighFading().sample(np.random.default_rng(1), n)
    # Exp(1): mean 1, std 1, so the sample mean is within 5 / sqrt(n) with overwhelming probability
    assert abs(x.mean() - 1.0) < 5 / np.sqrt(n)
    assert abs(np.mean(x > 1.0) - np.exp(-1.0)) < 5 * np.sqrt(np.exp(-1) * (1 - np.exp(-1)) / n)


def test_link_gain_composes_pathloss_and_fading():
    link = LinkBudget()
    pos = np.array([[300.0, 400.0]])  # 500 m
    ch = link.round_channel(pos, np.random.default_rng(3))
    fade = RayleighFading().sample(np.random.default_rng(3), 1)
    assert ch.distance_m[0] == pytest.approx(500.0)
    assert ch.gain_db[0] == pytest.approx(-LogDistancePathLoss().loss_db(500.0) + 10 * np.log10(fade[0]))


def test_compute_time_formula():
    t = compute_time_s(2, np.array([10, 20]), 1e9, np.array([1e12, 2e12]))
    assert np.allclose(t, [0.02, 0.02])
