"""Channel models against their theory. Every tolerance is Z standard errors of the estimator at
the test's sample size (Z = 5: a false failure has probability below 1e-6 per check)."""

import math

import numpy as np
import pytest

from channels.compute import LogNormalDeviceSpeed
from channels.fading import GaussMarkov, NakagamiFading, RayleighFading, RicianFading, complex_normal
from channels.geometry import ConstantVelocityMobility, DiscDrop, RandomWalkMobility, distance_m
from channels.link import LinkBudget
from channels.pathloss import FreeSpacePathLoss, LogDistancePathLoss, UMiStreetCanyonPathLoss
from channels.shadowing import LogNormalShadowing

Z = 5.0
N = 200_000
N_SLOW = 40_000  # Nakagami's inverse incomplete gamma is slow; tolerances scale with n anyway


def assert_mean(x: np.ndarray, expected: float) -> None:
    """|mean(x) - expected| <= Z * std(x) / sqrt(n)."""
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert abs(x.mean() - expected) <= Z * se, (x.mean(), expected, se)


def rician_fourth(k: float) -> float:
    return (k * k + 4 * k + 2) / (k + 1) ** 2  # Simon & Alouini eq. 2.16 with Omega = 1


def fading_cases():
    return [
        (RayleighFading(), 2.0),
        (RicianFading(0.0), 2.0),
        (RicianFading(3.0), rician_fourth(3.0)),
        (RicianFading(10.0), rician_fourth(10.0)),
        (NakagamiFading(0.5), 1 + 1 / 0.5),
        (NakagamiFading(1.0), 2.0),
        (NakagamiFading(2.5), 1 + 1 / 2.5),
    ]


@pytest.mark.parametrize("model, fourth", fading_cases(), ids=repr)
@pytest.mark.parametrize("path", ["sample", "power"])
def test_fading_second_and_fourth_moments(model, fourth, path):
    rng = np.random.default_rng(11)
    p = model.sample(rng, N) if path == "sample" else model.power(complex_normal(rng, N_SLOW))
    assert np.all(p >= 0) and np.all(np.isfinite(p))
    assert_mean(p, 1.0)  # E|h|^2 = 1
    assert_mean(p**2, fourth)  # E|h|^4


def test_nakagami_power_transform_has_the_gamma_law():
    """power(z) is the probability integral transform: its CDF at the quartiles of Gamma(m, 1/m)."""
    from scipy.stats import gamma

    m = 1.7
    p = NakagamiFading(m).power(complex_normal(np.random.default_rng(5), N_SLOW))
    for q in (0.25, 0.5, 0.75):
        frac = np.mean(p <= gamma.ppf(q, m, scale=1 / m))
        assert abs(frac - q) <= Z * math.sqrt(q * (1 - q) / N_SLOW)


def test_rayleigh_tail_probability():
    p = RayleighFading().sample(np.random.default_rng(1), N)
    q = math.exp(-1.0)  # P(|h|^2 > 1) = e^-1
    assert abs(np.mean(p > 1.0) - q) <= Z * math.sqrt(q * (1 - q) / N)


def test_shadowing_std_in_db_and_zero_mean():
    sigma = 7.82
    s = LogNormalShadowing(sigma).sample(np.random.default_rng(2), N)
    assert abs(s.mean()) <= Z * sigma / math.sqrt(N)
    # the sample std of n normals has standard error sigma / sqrt(2 (n - 1))
    assert abs(s.std(ddof=1) - sigma) <= Z * sigma / math.sqrt(2 * (N - 1))


def pearson_se(rho: float, n: int) -> float:
    """Large-sample standard error of a Pearson correlation of bivariate normals."""
    return (1 - rho * rho) / math.sqrt(n)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_shadowing_gauss_markov_lag1_correlation_and_stationarity(rho):
    sh = LogNormalShadowing(6.0, rho)
    rng = np.random.default_rng(3)
    x1 = sh.initial(rng, N)
    x2 = sh.step(rng, x1)
    r = np.corrcoef(x1, x2)[0, 1]
    assert abs(r - rho) <= Z * pearson_se(rho, N)
    assert abs(sh.to_db(x2).std(ddof=1) - 6.0) <= Z * 6.0 / math.sqrt(2 * (N - 1))  # stationary marginal


@pytest.mark.parametrize("rho", [0.3, 0.8, 0.99])
def test_fading_gauss_markov_lag1_autocorrelation(rho):
    gm = GaussMarkov(rho)
    rng = np.random.default_rng(4)
    z1 = gm.initial(rng, N)
    z2 = gm.step(rng, z1)
    # E[z_t z_{t-1}^*] = rho; Re(z2 z1^*) has variance (1 + rho^2) / 2 for CN(0, 1) pairs
    c = np.real(z2 * np.conj(z1))
    assert abs(c.mean() - rho) <= Z * math.sqrt((1 + rho * rho) / 2 / N)
    assert_mean(np.abs(z2) ** 2, 1.0)  # the marginal stays CN(0, 1)
    # Rayleigh power: corr(|z_t|^2, |z_{t-1}|^2) = rho^2; the estimator's error is below 2 / sqrt(n)
    p1, p2 = np.abs(z1) ** 2, np.abs(z2) ** 2
    assert abs(np.corrcoef(p1, p2)[0, 1] - rho**2) <= Z * 2 / math.sqrt(N)


def test_gauss_markov_over_many_rounds_through_the_link():
    """Lag-1 correlation of the state a LinkBudget carries, estimated over clients and rounds."""
    rho, k, rounds = 0.7, 4000, 6
    link = LinkBudget(time_correlation=GaussMarkov(rho))
    pos = DiscDrop().sample(np.random.default_rng(0), k)

    def streams(t, purpose):
        return np.random.default_rng([t, len(purpose)])

    states = [link.state(1, pos, streams)]
    for t in range(2, rounds + 1):
        states.append(link.state(t, pos, streams, states[-1]))
    z = np.stack([s.fading_z for s in states])  # (rounds, K)
    c = np.real(z[1:] * np.conj(z[:-1])).ravel()
    # pairs within a client are dependent; bound with the number of independent clients only
    assert abs(c.mean() - rho) <= Z * math.sqrt((1 + rho * rho) / 2 / k)
    assert np.allclose(states[-1].fading_power, np.abs(states[-1].fading_z) ** 2)


def test_path_loss_slope_per_decade():
    ld = LogDistancePathLoss(128.1, 37.6)
    d = np.array([10.0, 100.0, 1000.0])
    assert np.allclose(np.diff(ld.loss_db(d)), 37.6)
    assert ld.loss_db(1000.0) == pytest.approx(128.1)
    fs = FreeSpacePathLoss(2.4e9)
    assert np.allclose(np.diff(fs.loss_db(d)), 20.0)
    # free space at 1 m and 2.4 GHz: 20 log10(4 pi / lambda) = 40.05 dB
    assert fs.loss_db(1.0) == pytest.approx(20 * math.log10(4 * math.pi * 2.4e9 / 299_792_458.0))
    # beyond the breakpoint the UMi LOS slope in d_3D is 40 dB/decade
    umi = UMiStreetCanyonPathLoss(3.5e9)
    d3 = np.array([1000.0, 4000.0])
    d2 = np.sqrt(d3**2 - (10 - 1.5) ** 2)
    assert umi.los_loss_db(d2)[1] - umi.los_loss_db(d2)[0] == pytest.approx(40 * math.log10(4.0))


def test_empirical_path_loss_slope_with_shadowing():
    """Least-squares slope of PL + shadowing against log10(d) recovers the model's slope."""
    rng = np.random.default_rng(8)
    n, sigma = 50_000, 8.0
    d = distance_m(DiscDrop(1000.0, 10.0).sample(rng, n))
    y = LogDistancePathLoss().loss_db(d) - LogNormalShadowing(sigma).sample(rng, n)
    x = np.log10(d)
    slope = np.polyfit(x, y, 1)[0]
    assert abs(slope - 37.6) <= Z * sigma / (x.std() * math.sqrt(n))  # OLS slope standard error


def test_los_probability_matches_drawn_los_states():
    umi = UMiStreetCanyonPathLoss()
    rng = np.random.default_rng(9)
    d = np.full(N, 60.0)
    from channels.pathloss import sample_los

    los = sample_los(umi, rng.random(N), d)
    p = float(umi.los_probability(60.0))
    assert abs(los.mean() - p) <= Z * math.sqrt(p * (1 - p) / N)


def test_lognormal_device_speed_median_and_log_std():
    m = LogNormalDeviceSpeed(1e12, 0.4)
    f = np.log(m.sample(np.random.default_rng(10), N))
    assert abs(f.mean() - math.log(1e12)) <= Z * 0.4 / math.sqrt(N)
    assert abs(f.std(ddof=1) - 0.4) <= Z * 0.4 / math.sqrt(2 * (N - 1))


@pytest.mark.parametrize("model", [RandomWalkMobility(30.0, 200.0, 20.0), ConstantVelocityMobility(30.0, 200.0, 20.0)])
def test_mobility_moves_clients_and_keeps_them_in_the_annulus(model):
    rng = np.random.default_rng(12)
    pos = DiscDrop(200.0, 20.0).sample(rng, 500)
    s = model.initial(rng, pos)
    d0 = distance_m(pos)
    for _ in range(50):
        prev = s
        s = model.step(rng, s)
        d = distance_m(s[:, :2])
        assert np.all(d >= 20.0 - 1e-9) and np.all(d <= 200.0 + 1e-9)
        step = np.hypot(*(s[:, :2] - prev[:, :2]).T)
        assert np.all(step <= 30.0 + 1e-9)  # reflection never lengthens a step
    assert not np.allclose(distance_m(s[:, :2]), d0)
    if isinstance(model, ConstantVelocityMobility):
        assert np.allclose(np.hypot(s[:, 2], s[:, 3]), 30.0)  # speed kept through reflections


def test_random_walk_mean_squared_displacement_grows_linearly_before_walls():
    """E|x_t - x_0|^2 = t s^2 for an unbounded 2D walk with step s (clients far from the walls)."""
    s_m, t, n = 1.0, 20, 20_000
    model = RandomWalkMobility(s_m, 1e6, 0.0)
    rng = np.random.default_rng(13)
    start = np.tile([5e5, 0.0], (n, 1))
    st = model.initial(rng, start)
    for _ in range(t):
        st = model.step(rng, st)
    msd = np.sum((st[:, :2] - start) ** 2, axis=1)
    assert_mean(msd, t * s_m**2)


def test_specular_reflection_at_the_cell_edge():
    """A radial move of 30 m from 190 m towards a 200 m edge ends at 180 m, heading back."""
    from channels.geometry import move_in_annulus

    out = move_in_annulus(np.array([[190.0, 0.0]]), np.array([[30.0, 0.0]]), np.array([[30.0, 0.0]]), 10.0, 200.0)
    assert np.allclose(out, [[180.0, 0.0, -30.0, 0.0]])
    # a tangential graze at the inner circle: from (-20, 5) moving +40 in x with r_min = 10 hits it
    out = move_in_annulus(np.array([[-20.0, 5.0]]), np.array([[40.0, 0.0]]), np.array([[40.0, 0.0]]), 10.0, 200.0)
    assert np.hypot(out[0, 0], out[0, 1]) >= 10.0 - 1e-9
    assert np.hypot(out[0, 2], out[0, 3]) == pytest.approx(40.0)
