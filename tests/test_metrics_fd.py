"""Frechet distance: closed forms, agreement with scipy's sqrtm, stability, mergeable moments, FD-inf."""

import numpy as np
import pytest
import scipy.linalg

from artifix.errors import UserError
from artifix.metrics.fd import (FDReference, Moments, fd_features, fd_inf, frechet_distance, sqrtm_psd,
                                trace_sqrt_product, trace_sqrt_product_features)


def _random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d)


def test_diagonal_gaussians_closed_form():
    # diagonal covariances commute: Tr sqrt(S1 S2) = sum sqrt(s1_i s2_i), so FD = |dmu|^2 + sum (sqrt s1 - sqrt s2)^2
    rng = np.random.default_rng(0)
    d = 50
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(want, rel=1e-10)


def test_rotated_gaussians_closed_form():
    # S2 = c^2 S1 (any S1): Tr sqrt(S1 S2) = c Tr S1, so FD = |dmu|^2 + (1 - c)^2 Tr S1
    rng = np.random.default_rng(1)
    s1 = _random_cov(rng, 40)
    c = 1.7
    mu = rng.standard_normal(40)
    assert frechet_distance(mu, s1, mu + 0.5, c * c * s1) == pytest.approx(40 * 0.25 + (1 - c) ** 2 * np.trace(s1), rel=1e-9)


def test_same_set_is_zero_and_symmetric():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 64)) @ rng.standard_normal((64, 64))
    y = rng.standard_normal((250, 64)) * 1.3 + 0.2
    assert fd_features(x, x) == pytest.approx(0.0, abs=1e-8)
    assert fd_features(x, y) == pytest.approx(fd_features(y, x), rel=1e-9)


@pytest.mark.parametrize("d,rank", [(64, None), (96, 30)])
def test_agrees_with_scipy_sqrtm(d, rank):
    rng = np.random.default_rng(d + (rank or 0))
    s1 = _random_cov(rng, d, rank)
    s2 = _random_cov(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    want = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_near_singular_covariances_are_stable():
    # fewer samples than dimensions: both covariances are singular; the eig route stays finite, >= 0,
    # and matches the same computation done on the exact low-rank factors
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 100))
    y = rng.standard_normal((30, 100)) + 0.1
    v = fd_features(x, y)
    assert np.isfinite(v) and v > 0
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ex = trace_sqrt_product(sx, sy)
    # reference: nuclear norm of the (centred, scaled) cross product of the two factor matrices
    xc = (x - x.mean(0)) / np.sqrt(19)
    yc = (y - y.mean(0)) / np.sqrt(29)
    assert ex == pytest.approx(np.linalg.svd(xc @ yc.T, compute_uv=False).sum(), rel=1e-8)
    assert fd_features(x, x) == pytest.approx(0.0, abs=1e-7)


def test_sqrtm_psd_squares_back():
    rng = np.random.default_rng(4)
    s = _random_cov(rng, 30, 10)
    r = sqrtm_psd(s)
    assert np.allclose(r @ r, s, atol=1e-10)
    assert np.allclose(r, r.T)


def test_moments_merge_equals_one_shot():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((257, 16)) * 3 + 5
    one = Moments.of(x)
    shards = [Moments(16).update(x[i : i + 50]) for i in range(0, 257, 50)]
    merged = shards[0]
    for s in shards[1:]:
        merged = merged + s
    assert merged.n == one.n == 257
    assert np.allclose(merged.sum, one.sum, rtol=1e-13)
    assert np.allclose(merged.outer, one.outer, rtol=1e-13)
    assert np.allclose(merged.cov, np.cov(x, rowvar=False), rtol=1e-10)
    assert np.allclose(merged.mean, x.mean(0), rtol=1e-12)
    round_trip = Moments.from_arrays(merged.to_arrays())
    assert round_trip.n == 257 and np.array_equal(round_trip.outer, merged.outer)


def test_moments_reject_wrong_width_and_tiny_sets():
    with pytest.raises(ValueError):
        Moments(4).update(np.zeros((3, 5)))
    with pytest.raises(UserError):
        _ = Moments.of(np.zeros((1, 4))).cov


def test_weighted_distance_equals_explicit_resample():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((60, 24)) + 0.3
    r = rng.standard_normal((80, 24))
    ref = FDReference.of(Moments.of(r))
    p = ref.prepare(x)
    assert ref.weighted_distance(p, np.ones(60, int)) == pytest.approx(fd_features(x, r), rel=1e-9)
    for k in range(3):  # k-sized Gram path (few distinct rows) and d-sized scatter path
        idx = rng.integers(0, 60, size=60 if k else 15)
        counts = np.bincount(idx, minlength=60)
        assert ref.weighted_distance(p, counts) == pytest.approx(fd_features(x[idx], r), rel=1e-9)



def test_gram_route_and_threaded_replicates_equal_explicit_resamples():
    # fewer rows than dimensions: replicates gather their Gram matrix from the one prepare() keeps (centred there)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 64)) * 3.0 + 5.0  # a large common mean: the centring must not lose precision
    r = rng.standard_normal((90, 64))
    ref = FDReference.of(Moments.of(r))
    p = ref.prepare(x)
    assert p.gram is not None
    counts = np.stack([np.bincount(rng.integers(0, 40, 40), minlength=40) for _ in range(5)], axis=1)
    want = [fd_features(x[np.repeat(np.arange(40), counts[:, b])], r) for b in range(5)]
    assert [ref.weighted_distance(p, counts[:, b]) for b in range(5)] == pytest.approx(want, rel=1e-9)
    assert list(ref.weighted_distances(p, counts)) == pytest.approx(want, rel=1e-9)

def test_fd_inf_recovers_intercept():
    # same distribution as the reference: FD_N is mostly the 1/N bias term and FD-inf is far below it
    rng = np.random.default_rng(7)
    d = 8
    r = rng.standard_normal((20000, d))
    x = rng.standard_normal((2000, d))
    ref = FDReference.of(Moments.of(r))
    out = fd_inf(x, ref, seed=0)
    assert len(out["ns"]) == 10 and out["ns"][-1] == 2000
    assert out["slope"] > 0
    assert abs(out["value"]) < 0.25 * out["fds"][0]
    assert out == fd_inf(x, ref, seed=0)  # seeded


def fd_reference(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook FD of two feature arrays: np.cov and scipy.linalg.sqrtm of the d x d product (kept as a reference)."""
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    diff = x.mean(0) - y.mean(0)
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n,m,d", [(40, 70, 160), (90, 90, 128), (400, 300, 64), (128, 500, 128)])
def test_both_regimes_agree_with_the_sqrtm_reference(n, m, d):
    # N < d: the n x m nuclear-norm route; N >= d: the d x d route; both against sqrtm of the d x d product
    rng = np.random.default_rng(n + m + d)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    x = rng.standard_normal((n, d)) @ mix
    y = 0.8 * rng.standard_normal((m, d)) @ (mix + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d)) + 0.05
    want = fd_reference(x, y)
    assert fd_features(x, y) == pytest.approx(want, rel=1e-6)
    # the statistics-only route (mu, sigma without features) agrees too
    assert frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)) == pytest.approx(want, rel=1e-6)


def test_nuclear_norm_route_matches_the_covariance_route():
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((50, 200)), rng.standard_normal((70, 200)) * 1.2
    want = trace_sqrt_product(np.cov(x, rowvar=False), np.cov(y, rowvar=False))
    assert trace_sqrt_product_features(x, y) == pytest.approx(want, rel=1e-9)
    with pytest.raises(UserError):
        trace_sqrt_product_features(x[:1], y)
