"""TR 38.901 UMi street canyon and UMa path loss and LOS probability at reference distances.

The expected values are written out here from TR 38.901 Table 7.4.1-1 / Table 7.4.2-1, scalar by
scalar, independently of channels/pathloss.py.
"""

import math

import numpy as np
import pytest

from channels.pathloss import UMaPathLoss, UMiStreetCanyonPathLoss

FC_HZ = 3.5e9
FC = FC_HZ / 1e9
H_UT = 1.5


def d3d(d2d: float, h_bs: float) -> float:
    return math.sqrt(d2d**2 + (h_bs - H_UT) ** 2)


def bp(h_bs: float) -> float:
    return 4 * (h_bs - 1.0) * (H_UT - 1.0) * FC_HZ / 3.0e8  # Note 1: h' = h - 1 m, c = 3e8 m/s


def umi_los(d2d: float) -> float:
    h = 10.0
    if d2d <= bp(h):
        return 32.4 + 21 * math.log10(d3d(d2d, h)) + 20 * math.log10(FC)
    return 32.4 + 40 * math.log10(d3d(d2d, h)) + 20 * math.log10(FC) - 9.5 * math.log10(bp(h) ** 2 + (h - H_UT) ** 2)


def umi_nlos(d2d: float) -> float:
    pl = 35.3 * math.log10(d3d(d2d, 10.0)) + 22.4 + 21.3 * math.log10(FC) - 0.3 * (H_UT - 1.5)
    return max(umi_los(d2d), pl)


def uma_los(d2d: float) -> float:
    h = 25.0
    if d2d <= bp(h):
        return 28.0 + 22 * math.log10(d3d(d2d, h)) + 20 * math.log10(FC)
    return 28.0 + 40 * math.log10(d3d(d2d, h)) + 20 * math.log10(FC) - 9 * math.log10(bp(h) ** 2 + (h - H_UT) ** 2)


def uma_nlos(d2d: float) -> float:
    pl = 13.54 + 39.08 * math.log10(d3d(d2d, 25.0)) + 20 * math.log10(FC) - 0.6 * (H_UT - 1.5)
    return max(uma_los(d2d), pl)


def umi_plos(d2d: float) -> float:
    return 1.0 if d2d <= 18 else 18 / d2d + math.exp(-d2d / 36) * (1 - 18 / d2d)


def uma_plos(d2d: float) -> float:
    return 1.0 if d2d <= 18 else (18 / d2d + math.exp(-d2d / 63) * (1 - 18 / d2d))  # C'(1.5 m) = 0


DISTANCES = [10.0, 18.0, 50.0, 150.0, 209.0, 211.0, 500.0, 1200.0, 5000.0]


def test_breakpoints():
    assert UMiStreetCanyonPathLoss(FC_HZ).breakpoint_m == pytest.approx(bp(10.0))  # 210 m at 3.5 GHz
    assert bp(10.0) == pytest.approx(210.0)
    assert UMaPathLoss(FC_HZ).breakpoint_m == pytest.approx(bp(25.0))  # 560 m


@pytest.mark.parametrize("d", DISTANCES)
def test_umi_values(d):
    m = UMiStreetCanyonPathLoss(FC_HZ, H_UT)
    assert m.loss_db(d, True) == pytest.approx(umi_los(d), abs=1e-9)
    assert m.loss_db(d, False) == pytest.approx(umi_nlos(d), abs=1e-9)
    assert m.los_probability(d) == pytest.approx(umi_plos(d), abs=1e-12)


@pytest.mark.parametrize("d", DISTANCES)
def test_uma_values(d):
    m = UMaPathLoss(FC_HZ, H_UT)
    assert m.loss_db(d, True) == pytest.approx(uma_los(d), abs=1e-9)
    assert m.loss_db(d, False) == pytest.approx(uma_nlos(d), abs=1e-9)
    assert m.los_probability(d) == pytest.approx(uma_plos(d), abs=1e-12)


def test_known_numbers():
    """Hand-evaluated anchors: UMi LOS at 100 m, 3.5 GHz: 32.4 + 21 log10(100.36) + 20 log10(3.5)."""
    m = UMiStreetCanyonPathLoss(FC_HZ)
    expected = 32.4 + 21 * math.log10(math.hypot(100, 8.5)) + 20 * math.log10(3.5)
    assert float(m.loss_db(100.0, True)) == pytest.approx(expected)
    assert expected == pytest.approx(85.31, abs=0.01)  # 32.4 + 42.03 + 10.88
    # UMi LOS probability at 100 m: 0.18 + e^-2.78 * 0.82
    assert float(m.los_probability(100.0)) == pytest.approx(0.18 + math.exp(-100 / 36) * 0.82)


def test_nlos_is_never_below_los_and_sigma_table():
    d = np.geomspace(10, 5000, 200)
    for m in (UMiStreetCanyonPathLoss(), UMaPathLoss()):
        assert np.all(m.loss_db(d, False) >= m.loss_db(d, True))
        assert np.all(np.diff(m.los_probability(d)) <= 1e-12)  # LOS gets less likely with distance
    assert list(UMiStreetCanyonPathLoss().shadowing_std_db([True, False])) == [4.0, 7.82]
    assert list(UMaPathLoss().shadowing_std_db([True, False])) == [4.0, 6.0]


def test_uma_los_probability_height_term():
    """C'(h_UT) = ((h_UT - 13) / 10)^1.5 above 13 m raises Pr_LOS by 5/4 C' (d/100)^3 exp(-d/150)."""
    d, h = 200.0, 18.0
    c = ((h - 13) / 10) ** 1.5
    expected = (18 / d + math.exp(-d / 63) * (1 - 18 / d)) * (1 + c * 1.25 * (d / 100) ** 3 * math.exp(-d / 150))
    assert float(UMaPathLoss(FC_HZ, h).los_probability(d)) == pytest.approx(expected)
