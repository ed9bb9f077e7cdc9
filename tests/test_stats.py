"""The verdict's statistics (scfg_ext/miniature/stats.py) against values worked out by hand."""

import math

import numpy as np
import pytest

from scfg_ext.miniature import stats


def test_mcnemar_exact_is_the_two_sided_binomial_test():
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(5, 5) == 1.0
    # 12 vs 1 discordant pairs: 2 * (C(13,0) + C(13,1)) / 2^13
    assert stats.mcnemar_exact(12, 1) == pytest.approx(2 * 14 / 8192)
    assert stats.mcnemar_exact(1, 12) == stats.mcnemar_exact(12, 1)
    assert stats.mcnemar_exact(0, 6) == pytest.approx(2 / 64)


def test_paired_bootstrap_of_a_constant_difference_is_that_difference():
    a = np.array([0.1, 0.5, 0.9, 0.3])
    d = stats.paired_bootstrap(a, a + 0.25)
    assert (d.a, d.b) == pytest.approx((0.45, 0.70))
    assert d.diff == pytest.approx(0.25) and d.low == pytest.approx(0.25) and d.high == pytest.approx(0.25)
    assert d.excludes_zero()


def test_paired_bootstrap_pairs_the_units():
    """Huge differences between units, a small steady one within each pair: the paired interval is narrow
    and excludes 0; unpaired resampling (b shuffled against a) would not."""
    rng = np.random.default_rng(1)
    a = rng.normal(0, 10, 200)
    b = a + 0.5 + rng.normal(0, 0.1, 200)
    d = stats.paired_bootstrap(a, b, seed=3)
    assert d.diff == pytest.approx(np.mean(b - a))
    assert 0.45 < d.low < d.diff < d.high < 0.55


def test_paired_bootstrap_ratio_counts_objects_not_scenes():
    # per object rates: 3 objects right of 3 in scene 1, 0 of 1 in scene 2 -> 3/4, not the mean of 1 and 0
    d = stats.paired_bootstrap([3, 0], [2, 1], denominators=[3, 1])
    assert d.a == pytest.approx(0.75) and d.b == pytest.approx(0.75) and d.diff == pytest.approx(0)
    with pytest.raises(ValueError):
        stats.paired_bootstrap([1, 2], [1])


def test_bootstrap_interval_covers_zero_without_a_difference():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 2, 300)
    b = rng.permutation(a)  # same rate, no pairing signal
    d = stats.paired_bootstrap(a, b)
    assert d.low < 0 < d.high and not d.excludes_zero()


def test_frechet_distance_closed_forms():
    # identical Gaussians
    cov = np.array([[2.0, 0.3], [0.3, 1.0]])
    assert stats.frechet_distance([1, 2], cov, [1, 2], cov) == pytest.approx(0, abs=1e-9)
    # a shift by v adds |v|^2
    assert stats.frechet_distance([0, 0], cov, [3, 4], cov) == pytest.approx(25)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert stats.frechet_distance([1.0], [[4.0]], [0.0], [[9.0]]) == pytest.approx(1 + 1)
    # diagonal covariances: sum of (sqrt(a) - sqrt(b))^2
    got = stats.frechet_distance([0, 0, 0], np.diag([1.0, 4.0, 0.0]), [0, 0, 0], np.diag([9.0, 1.0, 4.0]))
    assert got == pytest.approx(4 + 1 + 4)
    # a singular covariance against a full one: exact, not NaN
    assert math.isfinite(stats.frechet_distance([0, 0], np.zeros((2, 2)), [0, 0], np.eye(2)))
    assert stats.frechet_distance([0, 0], np.zeros((2, 2)), [0, 0], np.eye(2)) == pytest.approx(2)


def test_paired_frechet_sees_which_set_is_further():
    rng = np.random.default_rng(4)
    ref = rng.normal(0, 1, (2000, 3))
    near = rng.normal(0, 1, (300, 3))
    far = near + np.array([1.0, 0, 0])  # the same units, shifted: FD grows by about 1
    d = stats.paired_frechet(near, far, ref, draws=200)
    assert d.b - d.a == pytest.approx(d.diff)
    assert 0.8 < d.diff < 1.2 and d.low > 0.5
    assert stats.frechet_of(near, ref) == pytest.approx(d.a)
