"""compute_metrics / paired_compare: names, JSON, seeds, batch-size independence, paired intervals, errors."""

import json

import numpy as np
import pytest

from artifix.example import scenes
from artifix.errors import UserError
from artifix.metrics import compute_metrics, format_n, metric_name, paired_compare, parse_metrics
from tests.test_metrics_reference import PixelFeatures

N = 40


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fake():
    return scenes.render(1, 0, N).images


def _batches(x, size):
    return (x[i : i + size] for i in range(0, len(x), size))


def _noisy(x, sigma):
    rng = np.random.default_rng(0)
    return np.clip(x + rng.normal(0, sigma, x.shape), 0, 255).astype(np.uint8)


OPTS = dict(bootstrap=30, swd_bootstrap=4, kid_subsets=8, kid_subset_size=20, swd_n=N, seed=0)


def test_names_and_protocol():
    assert [format_n(n) for n in (500, 1000, 1500, 2000, 2048, 10000, 50000)] == \
        ["500", "1k", "1.5k", "2k", "2048", "10k", "50k"]
    assert metric_name("fd", "effnetl0", 2000) == "fd_effnetl0_2k"
    assert metric_name("fd", "inception", 50000) == "fid_inception_50k"
    assert metric_name("kid", "inception", 50000) == "kid_inception_50k"
    assert metric_name("swd", "effnetl0", 16384) == "swd_16384"
    assert parse_metrics("swd, FID,kid") == ["fd", "kid", "swd"]
    with pytest.raises(UserError, match="valid metrics: fd, kid, swd"):
        parse_metrics("fd,is")


def test_compute_metrics_shape_json_and_seeds(fake, tmp_path):
    ext = PixelFeatures()
    res = compute_metrics(_batches(fake, 16), features=ext, cache=tmp_path, fd_inf=True, **OPTS)
    assert set(res) == {"fd_px_40", "fd_px_inf", "kid_px_40", "swd_40"}
    json.dumps(res)
    for name, e in res.items():
        assert e["n"] == N and e["n_real"] == N
        if name != "fd_px_inf":
            lo, hi = e["ci"]
            assert lo < e["value"] < hi and e["se"] > 0
    assert res["fd_px_inf"]["ci"] is None and len(res["fd_px_inf"]["ns"]) == 10
    assert res["kid_px_40"]["std"] > 0 and res["kid_px_40"]["subset_size"] == 20
    assert len(res["swd_40"]["levels"]) == 3 and "features" not in res["swd_40"]
    again = compute_metrics(_batches(fake, 16), features=ext, cache=tmp_path, fd_inf=True, **OPTS)
    assert again == res  # same seed: identical
    other = compute_metrics(_batches(fake, 16), features=ext, cache=tmp_path, fd_inf=True, **{**OPTS, "seed": 1})
    assert other["fd_px_40"]["value"] == res["fd_px_40"]["value"]  # the point estimate has no randomness
    assert other["fd_px_40"]["ci"] != res["fd_px_40"]["ci"]


def test_batch_size_does_not_change_metrics(fake, tmp_path):
    ext = PixelFeatures()
    a = compute_metrics(_batches(fake, 40), features=ext, cache=tmp_path, **OPTS)
    b = compute_metrics(_batches(fake, 3), features=ext, cache=tmp_path, **OPTS)
    for k in a:
        assert b[k]["value"] == pytest.approx(a[k]["value"], rel=1e-6, abs=1e-9)
        assert b[k]["ci"] == pytest.approx(a[k]["ci"], rel=1e-6, abs=1e-9)


def test_n_limits_the_stream_and_short_streams_fail(fake, tmp_path):
    ext = PixelFeatures()
    res = compute_metrics(_batches(fake, 16), n=20, features=ext, cache=tmp_path, metrics="fd", bootstrap=0)
    assert set(res) == {"fd_px_20"} and res["fd_px_20"]["ci"] is None
    with pytest.raises(UserError, match="stream ended after 40"):
        compute_metrics(_batches(fake, 16), n=50, features=ext, cache=tmp_path, metrics="fd")
    with pytest.raises(UserError, match="confidence"):
        compute_metrics(_batches(fake, 16), features=ext, cache=tmp_path, metrics="fd", confidence=95)


def test_paired_compare(fake, tmp_path):
    ext = PixelFeatures()
    same = paired_compare(_batches(fake, 16), _batches(fake, 7), features=ext, cache=tmp_path, **OPTS)
    for name, e in same.items():
        assert e["diff"] == pytest.approx(0.0, abs=1e-6), name
        assert e["a"] == pytest.approx(e["b"], rel=1e-5, abs=1e-8) and not e["significant"]
    damaged = _noisy(fake * 0.7, 30)  # darker (moves the pixel features) and noisier (moves the patches)
    worse = paired_compare(_batches(fake, 16), [damaged], features=ext, cache=tmp_path, **OPTS)
    json.dumps(worse)
    for name in ("fd_px_40", "kid_px_40", "swd_40"):
        e = worse[name]
        assert e["diff"] == pytest.approx(e["b"] - e["a"]) and e["diff"] > 0
        assert e["significant"] and e["ci"][0] > 0 and e["p_b_better"] == 0.0
        # the paired interval of the difference is narrower than the two sets' own intervals combined
        assert e["ci"][1] - e["ci"][0] < (e["ci_a"][1] - e["ci_a"][0]) + (e["ci_b"][1] - e["ci_b"][0])
    with pytest.raises(UserError, match="as many images"):
        paired_compare([fake], [fake[:30]], features=ext, cache=tmp_path, metrics="fd", bootstrap=0)


def test_default_extractor_end_to_end(fake, tmp_path):
    res = compute_metrics([fake[:6]], cache=tmp_path, metrics="fd,kid", bootstrap=5, kid_subsets=3)
    assert set(res) == {"fd_effnetl0_6", "kid_effnetl0_6"}
    assert res["fd_effnetl0_6"]["value"] > 0 and res["fd_effnetl0_6"]["features"] == "effnetl0"


def test_swd_alone_runs_no_network_on_the_generated_images(fake, tmp_path):
    """SWD reads pixels: asked alone, the generated sets are never passed through the feature network."""
    ext = PixelFeatures()
    opts = {**OPTS, "metrics": "swd"}
    compute_metrics(_batches(fake, 16), features=ext, cache=tmp_path, **opts)  # the reference is extracted (and cached) once
    seen = ext.seen
    one = compute_metrics(_batches(fake, 16), features=ext, cache=tmp_path, **opts)
    two = paired_compare(_batches(fake, 16), [_noisy(fake, 30)], features=ext, cache=tmp_path, **opts)
    assert ext.seen == seen  # neither run extracted a feature of a generated image
    assert set(one) == {"swd_40"} and two["swd_40"]["diff"] > 0
    full = compute_metrics(_batches(fake, 16), features=ext, cache=tmp_path, **OPTS)
    assert full["swd_40"]["value"] == pytest.approx(one["swd_40"]["value"])  # same SWD with or without FD/KID beside it
    assert ext.seen == seen + len(fake)  # FD/KID do extract the generated images
