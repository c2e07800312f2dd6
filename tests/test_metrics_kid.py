"""KID: unbiased MMD^2 with the cubic kernel; the streaming quadratic forms against a plain loop."""

import numpy as np
import pytest

from artifix.metrics.kid import (KIDPlan, RealKernelTerms, kid, kid_terms, mmd2_unbiased, polynomial_kernel,
                                 quadratic_forms)


def _kid_loop(x, y, subsets, size, seed):
    """The classic loop: draw a fake then a real subset, compute the unbiased MMD^2 with full kernels."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x41D]))
    m = min(size, len(x), len(y))
    vals = []
    for _ in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        vals.append(mmd2_unbiased(a, b))
    return np.mean(vals), np.std(vals)


def test_kernel_definition():
    x = np.array([[1.0, 2.0], [0.0, -1.0]])
    assert polynomial_kernel(x, x)[0, 1] == pytest.approx((-2 / 2 + 1) ** 3)
    assert polynomial_kernel(x, x)[0, 0] == pytest.approx((5 / 2 + 1) ** 3)


def test_quadratic_forms_match_dense():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((37, 5)), rng.standard_normal((23, 5))
    a, b = rng.random((37, 4)), rng.random((23, 4))
    dense = np.diag(a.T @ polynomial_kernel(x, y) @ b)
    assert np.allclose(quadratic_forms(x, y, a, b, chunk=8), dense, rtol=1e-12)


def test_streaming_kid_equals_subset_loop():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 16)) + 0.2
    y = rng.standard_normal((150, 16))
    assert kid(x, y, subsets=7, subset_size=50, seed=3) == pytest.approx(_kid_loop(x, y, 7, 50, 3), rel=1e-10)


def test_unbiased_near_zero_for_same_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(2)
    same, shifted = [], []
    for _ in range(30):
        x, y = rng.standard_normal((60, 8)), rng.standard_normal((60, 8))
        same.append(mmd2_unbiased(x, y))
        shifted.append(mmd2_unbiased(x + 0.5, y))
    same, shifted = np.array(same), np.array(shifted)
    se = same.std(ddof=1) / np.sqrt(len(same))
    assert abs(same.mean()) < 3 * se  # unbiased: some estimates are negative, the mean is ~0
    assert (same < 0).any()
    assert shifted.mean() > 10 * se and (shifted > 0).all()
    m, s = kid(rng.standard_normal((200, 8)) + 0.5, rng.standard_normal((200, 8)), subsets=10, subset_size=100)
    assert m > 0 and s > 0


def test_bootstrap_replicates_equal_explicit_resamples():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((40, 6)) + 0.1, rng.standard_normal((50, 6))
    plan = KIDPlan.make(40, 50, 5, 20, seed=0)
    counts = np.stack([np.bincount(rng.integers(0, 40, 40), minlength=40) for _ in range(4)], axis=1)
    subsets, boot = kid_terms(x, y, plan, RealKernelTerms.compute(y, plan), counts, chunk=16)
    assert subsets.shape == (5,) and boot.shape == (4,)
    for b in range(4):
        xr = x[np.repeat(np.arange(40), counts[:, b])]
        # positions are distinct samples (duplicates included), as in any bootstrap of a U-statistic
        assert boot[b] == pytest.approx(mmd2_unbiased(xr, y), rel=1e-10)
    full = kid_terms(x, y, plan, RealKernelTerms.compute(y, plan), np.ones((40, 1)))[1][0]
    assert full == pytest.approx(mmd2_unbiased(x, y), rel=1e-10)


def test_kid_seeded():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((80, 4)), rng.standard_normal((90, 4))
    assert kid(x, y, 5, 30, seed=1) == kid(x, y, 5, 30, seed=1)
    assert kid(x, y, 5, 30, seed=1) != kid(x, y, 5, 30, seed=2)
