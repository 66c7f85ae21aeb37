"""The offline rank plan with a per-round deadline: bounded latency, the dropped share reported."""

import numpy as np

from fedsim.tsfa import plan_rank

B_HZ = 20e6


def sample_round(rng):
    gain = rng.exponential(size=8)  # Rayleigh fading: |h|^2 ~ Exp(1)
    return 1e9 * gain, np.full(8, 0.05)


def bits(rank):
    return np.full(8, 2e5 * rank)


def test_a_deadline_bounds_every_draw_and_reports_who_is_dropped():
    kw = dict(bandwidth_total_hz=B_HZ)
    free = plan_rank([2, 8, 32], bits, sample_round, 10.0, 200, np.random.default_rng(0), **kw)
    capped = plan_rank([2, 8, 32], bits, sample_round, 10.0, 200, np.random.default_rng(0), deadline_s=0.3, **kw)
    for a, b in zip(free.rows, capped.rows, strict=True):
        assert a.dropped_share == 0.0
        assert b.expected_latency_s <= min(a.expected_latency_s, 0.3 * (1 + 1e-6))
    assert free.rows[-1].expected_latency_s > 0.3  # without the deadline the largest rank is too slow
    assert 0 < capped.rows[-1].dropped_share < 1
    assert capped.rows[-1].dropped_share > capped.rows[0].dropped_share  # bigger uploads miss the deadline more
    assert "dropped_share" in capped.rows_as_table()[0]
