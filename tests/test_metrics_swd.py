"""SWD (ProGAN protocol): a plain numpy reference, zero for identical sets, monotone in noise, seeds,
batch-size independence, storage modes and exact bootstrap replicates."""

import numpy as np
import pytest

from artifix.example import scenes
from artifix.errors import UserError
import artifix.metrics.swd as S

# The plain numpy reference lives in bench/ (the benchmark compares against it too, without importing tests/).
from bench.swd_numpy import _ref_pyramid, swd_reference  # noqa: E402


@pytest.fixture(scope="module")
def imgs():
    return scenes.render(1, 0, 24).images[:, ::2, ::2]  # 32x32: two pyramid levels, fast


def _noisy(x, sigma, seed=0):
    noise = np.random.default_rng(seed).normal(0, sigma, x.shape)
    return np.clip(x.astype(np.float64) + noise, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- tests


def test_matches_numpy_reference(imgs):
    other = scenes.render(2, 0, 24).images[:, ::2, ::2]
    got = S.swd(imgs, other, seed=3)
    want, levels = swd_reference(imgs, other, seed=3)
    assert got["n"] == 24 and len(got["levels"]) == 2
    assert got["value"] == pytest.approx(want, rel=1e-4)
    assert got["levels"] == pytest.approx(levels, rel=1e-4)


def test_pyramid_matches_scipy(imgs):
    x = imgs[:3].transpose(0, 3, 1, 2).astype(np.float32)
    for m, r in zip(S.laplacian_pyramid(x, 3), _ref_pyramid(x, 3)):
        assert np.allclose(m, r, atol=1e-3)
    odd = np.random.default_rng(0).uniform(0, 255, (2, 3, 67, 50)).astype(np.float32)  # odd sizes: 67 -> 34 -> 17
    for m, r in zip(S.laplacian_pyramid(odd, 3), _ref_pyramid(odd, 3)):
        assert m.shape == r.shape and np.allclose(m, r, atol=1e-3)


def test_identical_sets_give_zero(imgs):
    assert S.swd(imgs, imgs, seed=0)["value"] == pytest.approx(0.0, abs=1e-9)


def test_grows_with_noise_level(imgs):
    vals = [S.swd(imgs, _noisy(imgs, s), seed=0)["value"] for s in (2, 8, 20, 50)]
    assert all(b > a for a, b in zip(vals, vals[1:])), vals


def test_seeded_and_seed_dependent(imgs):
    other = _noisy(imgs, 10)
    a = S.swd(imgs, other, seed=5)
    assert a == S.swd(imgs, other, seed=5)
    assert a["value"] != S.swd(imgs, other, seed=6)["value"]


def test_patch_centres_are_pure_functions_of_seed_level_index():
    y1, x1 = S.patch_centres(0, 1, np.arange(10), 32, 32)
    y2, x2 = S.patch_centres(0, 1, np.arange(4, 10), 32, 32)
    assert np.array_equal(y1[4:], y2) and np.array_equal(x1[4:], x2)
    assert y1.min() >= 3 and y1.max() <= 28
    assert not np.array_equal(y1, S.patch_centres(0, 2, np.arange(10), 32, 32)[0])


def test_batch_size_and_storage_mode_do_not_change_the_result(imgs):
    other = _noisy(imgs, 10)
    ref = S.SWDSet(0, 100)
    ref.add(other)
    results = []
    for split in (24, 5, 1):
        s = S.SWDSet(0, 100)
        for i in range(0, 24, split):
            s.add(imgs[i : i + split])
        assert s.store == "images"
        results.append(S.swd_compare([s], ref, seed=1)[0]["value"])
    d = S.SWDSet(0, 100)
    d.store, d.shape, d.levels = "descriptors", imgs.shape[1:3], 2
    for i in range(0, 24, 7):
        d._desc.append(S.descriptors(imgs[i : i + 7], np.arange(i, min(i + 7, 24)), 0, 2))
        d.n += len(imgs[i : i + 7])
    results.append(S.swd_compare([d], ref, seed=1)[0]["value"])
    assert results == pytest.approx([results[0]] * 4, rel=1e-6)
    again = S.SWDSet.from_arrays(d.to_arrays())
    assert S.swd_compare([again], ref, seed=1)[0]["value"] == pytest.approx(results[0], rel=1e-6)


def test_limit_and_size_checks(imgs):
    s = S.SWDSet(0, 10)
    s.add(imgs)
    assert s.n == 10
    with pytest.raises(UserError, match="one size"):
        s2 = S.SWDSet(0, 100)
        s2.add(imgs)
        s2.add(scenes.render(1, 0, 2).images)
    with pytest.raises(UserError, match="at least 16"):
        S.num_levels(8, 8)
    big = S.SWDSet(0, 5)
    big.add(scenes.render(1, 0, 5).images)
    with pytest.raises(UserError, match="one size"):
        S.swd_compare([s], big, seed=0)


def test_bootstrap_replicates_are_exact_resamples(imgs):
    other = _noisy(imgs, 10)
    a, r = S.SWDSet(0, 24), S.SWDSet(0, 24)
    a.add(imgs)
    r.add(other)
    rng = np.random.default_rng(0)
    counts = np.stack([np.bincount(rng.integers(0, 24, 24), minlength=24) for _ in range(3)], axis=1)
    boot = S.swd_compare([a], r, seed=2, counts=counts)[0]["boot"]
    for b in range(3):
        lv = []
        for lvl in range(2):
            d = a.level(lvl).reshape(24, 128, -1)[np.repeat(np.arange(24), counts[:, b])].reshape(-1, 147)
            dirs = S.directions(2, lvl)[:, :128]
            lv.append(S.sliced_wasserstein(S.normalise(d), S.normalise(r.level(lvl)), dirs) * 1e3)
        assert boot[b] == pytest.approx(np.mean(lv), rel=1e-4)


def test_bootstrap_direction_chunks_do_not_change_the_bits(imgs, monkeypatch):
    a, r = S.SWDSet(0, 24), S.SWDSet(0, 24)
    a.add(imgs)
    r.add(_noisy(imgs, 10))
    counts = np.random.default_rng(1).multinomial(24, np.ones(24) / 24, size=3).T
    boots = []
    for chunk in (128, 32, 64):  # all directions at once, the default, and another multiple of the GEMM tiles
        monkeypatch.setattr(S, "_BOOT_DIR_CHUNK", chunk)
        boots.append(S.swd_compare([a], r, seed=2, counts=counts)[0]["boot"])
    assert np.array_equal(boots[0], boots[1]) and np.array_equal(boots[0], boots[2])
