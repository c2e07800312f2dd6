"""Streaming unit statistics: sketch accuracy, exact moments, merges, per-sample summaries, persistence, errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artifix.errors import UserError
from artifix.units.stats import QuantileSketch, UnitStats, merge_all
from artifix.units.stats.sketch import _bucket_of_bits

QS = [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0]


def sample_acts(i: int, c: int = 4, h: int = 5, w: int = 6, kind: str = "mixed") -> torch.Tensor:
    """Activations of sample i: a pure function of i, as from a seeded generator."""
    g = torch.Generator().manual_seed(1000 + i)
    x = torch.randn(c, h, w, generator=g)
    if kind == "positive":
        return torch.exp(2.0 * x)  # log-normal, ~4 decades
    if kind == "negative":
        return -torch.exp(2.0 * x)
    if kind == "relu":
        return torch.relu(x - 0.8) * 3.0  # ~79 % exact zeros
    if kind == "ties":
        return torch.relu(torch.round(x * 2) / 2)  # quantised: many equal spatial maxima
    scale = torch.logspace(-1, 2, c).view(c, 1, 1)
    return x * scale + 0.5 * scale


def batch(indices, **kw) -> torch.Tensor:
    return torch.stack([sample_acts(int(i), **kw) for i in indices])


def record(indices, n_total, batch_size, layer="main.3", **kw) -> UnitStats:
    c = kw.get("c", 4)
    s = UnitStats(layer, c, n_total)
    indices = list(indices)
    for k in range(0, len(indices), batch_size):
        part = indices[k:k + batch_size]
        s.update(batch(part, **kw), part)
    return s


def per_unit_values(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (C, B*H*W) float64."""
    return x.transpose(0, 1).reshape(x.shape[1], -1).to(torch.float64)


def exact(a: torch.Tensor, b: torch.Tensor) -> None:
    """Bit-equal, NaN where the other is NaN."""
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def assert_same(a: UnitStats, b: UnitStats) -> None:
    """Exact equality where the design promises it, float tolerance for float64 moments."""
    assert torch.equal(a.sketch.bins, b.sketch.bins)
    assert torch.equal(a.count, b.count)
    exact(a.min, b.min)
    exact(a.max, b.max)
    ta, tb = a.samples(), b.samples()
    assert torch.equal(ta.index, tb.index)
    assert torch.equal(ta.max, tb.max)
    torch.testing.assert_close(ta.mean, tb.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.sum, b.sum, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(a.std, b.std, rtol=1e-10, atol=1e-12, equal_nan=True)
    exact(a.quantile(QS), b.quantile(QS))
    assert a.spatial == b.spatial and a.num_recorded == b.num_recorded


# -- quantile sketch accuracy -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["positive", "negative", "mixed", "relu"])
def test_quantiles_within_relative_accuracy(kind):
    x = batch(range(60), kind=kind, c=4, h=8, w=8)  # 3,840 values per unit
    s = UnitStats("l", 4, 60)
    s.update(x[:25], range(25))
    s.update(x[25:], range(25, 60))
    flat = per_unit_values(x)
    q = torch.tensor(QS, dtype=torch.float64)
    exact = torch.quantile(flat, q, dim=1, interpolation="lower").t()
    assert torch.equal(exact, torch.from_numpy(np.quantile(flat.numpy(), QS, axis=1, method="lower").T))
    est = s.quantile(QS)
    alpha = s.relative_accuracy
    assert alpha == pytest.approx(1 / 257) and alpha <= 0.005
    err = (est - exact).abs()
    # Guarantee: relative alpha for |x| >= min_abs; values below min_abs read as 0 (absolute error < min_abs).
    assert bool((err <= alpha * exact.abs() * (1 + 1e-12) + s.sketch.min_abs).all()), (est, exact)
    big = exact.abs() >= s.sketch.min_abs
    assert bool((err[big] <= alpha * exact[big].abs() * (1 + 1e-12)).all())
    assert torch.equal(est[:, 0], flat.min(1).values) and torch.equal(est[:, -1], flat.max(1).values)
    if kind == "relu":  # zero-heavy: the median is exactly zero, the top tail is accurate
        assert bool((est[:, QS.index(0.5)] == 0).all())
        assert bool((flat == 0).double().mean(1).gt(0.7).all())
    # Scalar q gives (C,), and top-fraction thresholds are quantile(1 - f).
    assert torch.equal(s.quantile(0.9), est[:, QS.index(0.9)])
    thr = s.top_fraction_threshold([0.01, 0.1])
    assert thr.shape == (4, 2) and torch.equal(thr[:, 1], s.quantile(0.9))
    assert torch.equal(s.top_fraction_threshold(0.01), thr[:, 0])


def test_top_fraction_threshold_leaves_that_fraction_above():
    x = batch(range(50), kind="positive", c=3, h=10, w=10)
    s = UnitStats("l", 3, 50)
    s.update(x, range(50))
    flat = per_unit_values(x)
    a = s.relative_accuracy
    for f in (0.001, 0.01, 0.1, 0.5, 1.0):
        t = s.top_fraction_threshold(f)
        n = flat.shape[1]
        # Exact threshold lies within alpha of t, so the fraction above brackets f.
        above_lo = (flat > (t * (1 + a)).view(-1, 1)).sum(1)
        above_hi = (flat > (t * (1 - a)).view(-1, 1)).sum(1)
        assert bool((above_lo <= math.ceil(f * n)).all()) and bool((above_hi >= math.floor(f * (n - 1))).all())


def test_sketch_range_edges_and_out_of_range_values():
    sk = QuantileSketch(2, relative_accuracy=0.01, min_abs=1e-3, max_abs=100.0)
    assert sk.mantissa_bits == 6 and sk.min_abs == 2.0**-10 and sk.max_abs == 128.0
    assert sk.nbins == 2 * 17 * 64 + 3 and sk.bytes_per_unit == sk.nbins * 8 + 8
    vals = torch.tensor([0.0, 1e-5, -1e-5, 0.5, 1000.0, -5000.0, 2.0, 2000.0]).view(1, 1, 8).repeat(1, 2, 1)
    sk.update(vals)  # sorted: -5000, -1e-5, 0, 1e-5, 0.5, 2, 1000, 2000
    assert sk.count.tolist() == [8, 8] and sk.out_of_range.tolist() == [3, 3]
    assert sk.quantile(0.0).tolist() == [-5000.0] * 2 and sk.quantile(1.0).tolist() == [2000.0] * 2
    assert sk.quantile(0.9).tolist() == [2000.0] * 2  # rank 6 (1000) is in the overflow bucket: reads as max
    assert sk.quantile(0.1).tolist() == [-5000.0] * 2  # rank 0 in the negative overflow bucket: min
    assert sk.quantile(0.3).tolist() == [0.0] * 2 and sk.quantile(0.45).tolist() == [0.0] * 2  # |x| < min_abs
    # Bucket edges: a power of two opens its bucket [L, U); its float32 predecessor falls in the one below.
    for edge in (0.25, 1.0, 2.0**-10, 64.0):
        below = float(np.nextafter(np.float32(edge), np.float32(0)))
        sk2 = QuantileSketch(1, 0.01, 1e-3, 100.0)
        sk2.update(torch.tensor([-1.0e4, below, edge, 1.0e4]).view(1, 1, 4))
        lo, hi = sk2.quantile([0.34, 0.67]).tolist()[0]
        a = sk2.relative_accuracy * (1 + 1e-9)  # the bound is tight at a bucket's lower edge
        assert lo < edge < hi and abs(hi - edge) <= a * edge
        assert lo == 0.0 if edge == sk2.min_abs else abs(lo - below) <= a * below  # below min_abs reads as 0
    empty = QuantileSketch(3)
    assert bool(empty.quantile([0.5, 1.0]).isnan().all()) and empty.count.tolist() == [0, 0, 0]


def test_half_precision_and_channels_last_match_float32():
    x = batch(range(8), c=3, h=4, w=4)
    a = UnitStats("l", 3, 8)
    a.update(x, range(8))
    b = UnitStats("l", 3, 8)
    b.update(x.contiguous(memory_format=torch.channels_last), torch.arange(8))
    assert_same(a, b)
    h = UnitStats("l", 3, 8)
    h.update(x.half(), range(8))
    ref = UnitStats("l", 3, 8)
    ref.update(x.half().float(), range(8))
    assert_same(h, ref)


# -- exact moments ----------------------------------------------------------------------------------------------
def test_mean_std_min_max_match_direct_computation():
    x = batch(range(40), c=5, h=6, w=7)
    s = record(range(40), 40, 9, c=5, h=6, w=7)
    flat = per_unit_values(x)
    assert torch.equal(s.count, torch.full((5,), 40 * 42))
    assert torch.equal(s.min.double(), flat.min(1).values) and torch.equal(s.max.double(), flat.max(1).values)
    scale = flat.abs().mean(1)
    assert bool(((s.mean - flat.mean(1)).abs() <= 1e-7 * scale).all())
    assert bool(((s.std - flat.std(1, correction=0)).abs() <= 1e-7 * scale).all())
    assert bool(((s.sum - flat.sum(1)).abs() <= 1e-7 * flat.abs().sum(1)).all())
    torch.testing.assert_close(s.sum_sq, (flat**2).sum(1), rtol=1e-7, atol=0)
    torch.testing.assert_close(s.var, flat.var(1, correction=0), rtol=1e-6, atol=0)


def test_std_is_stable_for_large_offsets():
    g = torch.Generator().manual_seed(0)
    x = 1000.0 + 0.01 * torch.randn(30, 2, 8, 8, generator=g)
    s = UnitStats("l", 2, 30)
    for k in range(0, 30, 7):
        s.update(x[k:k + 7], range(k, min(k + 7, 30)))
    ref = per_unit_values(x).std(1, correction=0)
    torch.testing.assert_close(s.std, ref, rtol=1e-3, atol=0)  # float32 data: E[x^2]-E[x]^2 would be garbage


# -- per-sample summaries ---------------------------------------------------------------------------------------
def brute_force_top_k(vals: torch.Tensor, idx: list[int], k: int):
    out_i, out_v = [], []
    for u in range(vals.shape[1]):
        order = sorted(range(len(idx)), key=lambda r: (-float(vals[r, u]), idx[r]))[:k]
        out_i.append([idx[r] for r in order])
        out_v.append([float(vals[r, u]) for r in order])
    return torch.tensor(out_i), torch.tensor(out_v)


def test_top_k_and_firing_rate_match_brute_force():
    n, c = 45, 4
    order = list(np.random.default_rng(3).permutation(n) + 100)  # shuffled indices, offset start
    x = batch(order, kind="ties", c=c, h=3, w=3)
    s = UnitStats("l", c, n, start=100)
    for k in range(0, n, 8):
        s.update(x[k:k + 8], order[k:k + 8])
    smax = x.amax(dim=(2, 3))
    smean = x.mean(dim=(2, 3))
    table = s.samples()
    perm = torch.tensor(np.argsort(order))
    assert table.index.tolist() == sorted(order)
    assert torch.equal(table.max, smax[perm])
    torch.testing.assert_close(table.mean, smean[perm], rtol=1e-6, atol=1e-7)
    assert len(set(smax[:, 0].tolist())) < n // 2  # plenty of ties to break
    for k in (1, 5, 12, n, n + 10):
        ti, tv = s.top_samples(k)
        ri, rv = brute_force_top_k(smax, order, k)
        assert torch.equal(ti, ri) and torch.equal(tv, rv)
    ti, tv = s.top_samples(7, by="mean")
    ri, rv = brute_force_top_k(table.mean, table.index.tolist(), 7)
    assert torch.equal(ti, ri) and torch.equal(tv, rv)
    # Firing: spatial max strictly above the threshold, as a fraction of recorded samples.
    for thr in (0.0, 0.5, torch.tensor([0.0, 0.5, 1.0, 1.5])):
        t = torch.as_tensor(thr, dtype=torch.float64).expand(c)
        ref = torch.tensor([sum(float(smax[r, u]) > float(t[u]) for r in range(n)) / n for u in range(c)],
                           dtype=torch.float64)
        assert torch.equal(s.firing_rate(thr), ref)
    t99 = s.top_fraction_threshold(0.01)
    flat = per_unit_values(x)
    exact99 = torch.quantile(flat, 0.99, dim=1, interpolation="lower")
    assert bool(((t99 - exact99).abs() <= s.relative_accuracy * exact99.abs() + 1e-12).all())
    ref = (smax.double() > t99.view(1, -1)).double().mean(0)
    assert torch.equal(s.firing_rate(), ref) and torch.equal(s.firing_rate(top_fraction=0.01), ref)
    assert torch.equal(s.firing(t99).sum(0), (smax.double() > t99).sum(0))
    empty = UnitStats("l", c, 5)
    assert bool(empty.firing_rate(0.0).isnan().all()) and empty.top_samples(3)[0].shape == (c, 0)


# -- merging ----------------------------------------------------------------------------------------------------
def test_merged_shards_equal_one_pass_regardless_of_order_and_batch_size():
    n = 36
    one = record(range(n), n, n)
    shards = [record(range(0, n, 3), n, 5), record(range(1, n, 3), n, 2), record(range(2, n, 3), n, 12)]
    assert_same(one, merge_all(shards))
    assert_same(one, merge_all(shards[::-1]))
    assert_same(one, shards[2].merge(shards[0]).merge(shards[1]))
    assert_same(one, record(range(n), n, 1))  # batch size 1
    assert_same(one, record(reversed(range(n)), n, 7))  # any index order
    # merge() leaves its inputs alone; merge_() works in place and returns self.
    before = shards[0].num_recorded
    _ = shards[0].merge(shards[1])
    assert shards[0].num_recorded == before
    acc = UnitStats("main.3", 4, n)
    assert acc.merge_(shards[1]) is acc and acc.num_recorded == shards[1].num_recorded
    # Merging an empty shard is the identity.
    assert_same(one, one.merge(UnitStats("main.3", 4, n)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=2, max_value=14),
    data=st.data(),
)
def test_merge_is_associative_and_commutative(n, data):
    perm = data.draw(st.permutations(list(range(n))))
    cuts = sorted(data.draw(st.lists(st.integers(0, n), min_size=2, max_size=2)))
    parts = [perm[:cuts[0]], perm[cuts[0]:cuts[1]], perm[cuts[1]:]]
    bs = data.draw(st.lists(st.integers(1, 4), min_size=3, max_size=3))
    a, b, c = (record(p, n, size, c=3, h=2, w=3) for p, size in zip(parts, bs))
    one = record(range(n), n, n, c=3, h=2, w=3)
    left = a.merge(b).merge(c)
    right = a.merge(b.merge(c))
    swapped = c.merge(a).merge(b)
    for m in (left, right, swapped):
        assert_same(one, m)


# -- persistence ------------------------------------------------------------------------------------------------
def test_state_dict_round_trip_and_atomic_save(tmp_path):
    s = record(range(0, 20, 2), 20, 4, kind="relu")
    s.meta["fingerprint"] = "abc123"
    path = tmp_path / "stats" / "main.3.pt"
    s.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["main.3.pt"]  # no temporary left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "artifix.unit_stats" and raw["sketch"]["bins"].shape[1] < s.sketch.nbins
    back = UnitStats.load(path)
    assert_same(s, back)
    assert back.meta == {"fingerprint": "abc123"} and back.layer == "main.3"
    assert_same(s, UnitStats.from_state_dict(s.state_dict()))
    # A loaded shard keeps accumulating and merging exactly like the original.
    back.update(batch([1, 3], kind="relu"), [1, 3])
    full = record(list(range(0, 20, 2)) + [1, 3], 20, 4, kind="relu")
    full.meta["fingerprint"] = "abc123"
    assert_same(full, back)
    rest = record(range(5, 20, 2), 20, 3, kind="relu")
    rest.meta["fingerprint"] = "abc123"
    assert_same(full.merge(rest), back.merge(rest))
    empty = UnitStats("l", 2, 3)
    assert_same(empty, UnitStats.from_state_dict(empty.state_dict()))


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        UnitStats.load(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a readable unit-stats file"):
        UnitStats.load(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not an artifix unit-stats state"):
        UnitStats.load(tmp_path / "other.pt")
    sd = record(range(4), 4, 2).state_dict()
    sd["spatial_max"] = sd["spatial_max"][:, :2]
    with pytest.raises(UserError, match="malformed"):
        UnitStats.from_state_dict(sd)


# -- bad inputs -------------------------------------------------------------------------------------------------
def _recorded() -> UnitStats:
    s = UnitStats("main.3", 4, 10)
    s.update(batch([0, 1]), [0, 1])
    return s


@pytest.mark.parametrize(
    "acts, idx, message",
    [
        (torch.zeros(2, 4, 5), [2, 3], "shape \\(batch, channels, height, width\\)"),
        (torch.zeros(2, 3, 5, 6), [2, 3], "expected 4 channels, got 3"),
        (torch.zeros(2, 4, 5, 6), [2, 10], "sample index 10 is outside this run's range \\[0, 10\\)"),
        (torch.zeros(2, 4, 5, 6), [-1, 3], "sample index -1 is outside"),
        (torch.zeros(2, 4, 5, 6), [3, 3], "sample index 3 appears more than once"),
        (torch.zeros(2, 4, 5, 6), [1, 3], "sample 1 was already recorded"),
        (torch.zeros(2, 4, 5, 6), [2], "got 1 sample indices for a batch of 2"),
        (torch.zeros(2, 4, 5, 6), torch.tensor([2.0, 3.0]), "must be integers"),
        (torch.zeros(2, 4, 5, 6), ["a", "b"], "sequence of integers"),
        (torch.zeros(2, 4, 5, 6, dtype=torch.int64), [2, 3], "floating point"),
        (torch.zeros(2, 4, 4, 6), [2, 3], "4x6 but earlier batches were 5x6"),
        (torch.tensor([0.0, math.nan]).view(2, 1, 1, 1).expand(2, 4, 5, 6), [2, 3], "sample 3 contain NaN"),
        (torch.full((2, 4, 5, 6), math.inf), [2, 3], "NaN or infinite"),
        ([[1.0]], [2], "must be a torch.Tensor"),
    ],
)
def test_bad_updates_raise_user_error_and_change_nothing(acts, idx, message):
    s = _recorded()
    before = s.state_dict()
    with pytest.raises(UserError, match=message) as e:
        s.update(acts, idx)
    assert str(e.value).count(". ") == 0  # one sentence
    after = s.state_dict()
    assert torch.equal(before["sketch"]["bins"], after["sketch"]["bins"])
    assert s.num_recorded == 2 and torch.equal(before["count"], after["count"])


def test_bad_merges_and_queries_raise_user_error():
    s = _recorded()
    with pytest.raises(UserError, match="layer differs"):
        s.merge(UnitStats("main.6", 4, 10))
    with pytest.raises(UserError, match="num_samples differs"):
        s.merge(UnitStats("main.3", 4, 11))
    with pytest.raises(UserError, match="sketch layout differs"):
        s.merge(UnitStats("main.3", 4, 10, relative_accuracy=0.02))
    with pytest.raises(UserError, match="sample 0 was recorded in both"):
        s.merge(_recorded())
    other = UnitStats("main.3", 4, 10)
    other.update(torch.zeros(1, 4, 3, 3), [5])
    with pytest.raises(UserError, match="spatial sizes differ"):
        s.merge(other)
    with pytest.raises(UserError, match="meta differs"):
        s.merge(UnitStats("main.3", 4, 10, meta={"fingerprint": "x"}))
    for bad in (1.5, -0.1, [0.5, math.nan], "high"):
        with pytest.raises(UserError):
            s.quantile(bad)
    with pytest.raises(UserError, match=r"fraction must lie in \(0, 1\]"):
        s.top_fraction_threshold(0.0)
    with pytest.raises(UserError, match="threshold must be a number or 4 per-unit values"):
        s.firing_rate(torch.zeros(3))
    with pytest.raises(UserError):
        s.top_samples(-1)
    with pytest.raises(UserError):
        merge_all([])
    for kwargs in ({"channels": 0}, {"num_samples": 0}, {"relative_accuracy": 0.0}, {"min_abs": 10.0, "max_abs": 1.0}):
        args = {"layer": "l", "channels": 2, "num_samples": 3, **kwargs}
        with pytest.raises(UserError):
            UnitStats(args.pop("layer"), args.pop("channels"), args.pop("num_samples"), **args)


def test_firing_compares_float32_maxima_with_float64_thresholds_exactly():
    s = UnitStats("l", 1, 3)
    s.update(torch.tensor([1.0, 0.5, 2.0]).view(3, 1, 1, 1), [0, 1, 2])
    assert s.firing_rate(1.0 - 1e-12).tolist() == [2 / 3]  # 1.0 > 1 - 1e-12 although float32(t) == 1.0
    assert s.firing_rate(1.0).tolist() == [1 / 3]  # strictly greater
    assert s.firing_rate(1.0 + 1e-12).tolist() == [1 / 3]
    assert s.firing_rate(-math.inf).tolist() == [1.0] and s.firing_rate(math.inf).tolist() == [0.0]


@pytest.mark.parametrize("accuracy", [0.005, 1e-4])  # a layout read from the bucket table, one computed per value
def test_recorded_buckets_match_each_values_own_bucket(accuracy):
    sk = QuantileSketch(3, relative_accuracy=accuracy)
    x = (torch.randn(4, 3, 50, generator=torch.Generator().manual_seed(3)) * torch.logspace(-9, 9, 50)).contiguous()
    x[0, 0, :10] = torch.tensor([0.0, -0.0, math.inf, -math.inf, 1e-45, -1e-45, 3.4e38, -3.4e38, 1e-4, -1e4])
    sk.add_(x, x.amin((0, 2)), x.amax((0, 2)))
    for c in range(3):
        own = _bucket_of_bits(sk, x[:, c].contiguous().view(torch.int32)).view(-1)
        assert torch.equal(sk.bins[c], torch.bincount(own, minlength=sk.nbins))
