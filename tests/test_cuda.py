"""The GPU path: generator, hooks + unit statistics, features, classifier and FD on CUDA, checked against the CPU.

Every test is marked `cuda` and skipped when torch.cuda.is_available() is False (see conftest.py); run them on a
CUDA machine with `pytest -m cuda tests/test_cuda.py` (or scripts/gpu_check.sh).
"""

import numpy as np
import pytest
import torch

from artifix.model import devices
from artifix.model.generator import example_spec, load_generator, sample, sample_batches
from tests.fixtures.device_gens import OOMOnCalls

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def gens():
    return load_generator(example_spec(), device="cpu"), load_generator(example_spec(), device="cuda")


def test_generator_runs_on_the_gpu_and_repeats_exactly(gens):
    cpu, gpu = gens
    assert gpu.device.type == "cuda" and gpu.fingerprint == cpu.fingerprint
    a, b = sample(gpu, seed=4, n=40, batch=16), sample(gpu, seed=4, n=40, batch=16)
    assert np.array_equal(a, b)  # same seeds, same device: the same images
    ref = sample(cpu, seed=4, n=40, batch=16)
    assert np.abs(a.astype(int) - ref.astype(int)).max() <= 2  # other kernels: at most a grey level or two
    assert np.abs(sample(gpu, seed=4, n=40, batch=5).astype(int) - a.astype(int)).max() <= 1  # batch-independent
    _, imgs = next(sample_batches(gpu, 0, 0, 4, 4))
    assert imgs.device.type == "cpu" and imgs.dtype == torch.uint8  # only uint8 images come back


def test_hooks_and_unit_stats_on_the_gpu(gens):
    from artifix.units.scoring import collect_stats

    cpu, gpu = gens
    s_gpu = collect_stats(gpu, "main.5", seed=0, n=64, batch=32)
    s_cpu = collect_stats(cpu, "main.5", seed=0, n=64, batch=32)
    assert s_gpu.sketch.device.type == "cuda"
    q_gpu, q_cpu = s_gpu.quantile([0.1, 0.5, 0.99]), s_cpu.quantile([0.1, 0.5, 0.99])
    assert q_gpu.device.type == "cpu"
    torch.testing.assert_close(q_gpu, q_cpu, rtol=2 * s_cpu.relative_accuracy + 1e-4, atol=1e-4)
    torch.testing.assert_close(s_gpu.mean, s_cpu.mean, rtol=1e-4, atol=1e-5)


def test_features_on_the_gpu_match_the_cpu(gens):
    from artifix.metrics.features import get_extractor

    imgs = sample(gens[0], seed=1, n=16, batch=16)
    f_gpu = get_extractor("effnet-lite0", batch=8, device="cuda")
    f_cpu = get_extractor("effnet-lite0", batch=8, device="cpu")
    assert next(f_gpu.net.parameters()).device.type == "cuda" and next(f_cpu.net.parameters()).device.type == "cpu"
    a, b = f_gpu(imgs), f_cpu(imgs)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_classifier_on_the_gpu(gens):
    from artifix.review.classifier import differentiable_score, train_classifier

    cpu, gpu = gens
    imgs = sample(cpu, seed=2, n=24, batch=24)
    y = np.arange(24) % 2
    imgs[y == 1, :8] = 255  # a white band: the artifact
    devices.use("cuda")
    try:
        clf = train_classifier(imgs, y)
        p_gpu = clf.predict_proba(imgs)
        score = differentiable_score(clf, "[-1,1]")
        x = gpu(torch.zeros(2, *gpu.spec.latent))
        s = score(x)
        assert s.device.type == "cuda" and torch.isfinite(s).all()
    finally:
        devices.use("cpu")
    assert ((p_gpu >= clf.threshold) == (y == 1)).mean() >= 0.9


def test_fd_on_the_gpu_matches_lapack():
    from artifix.metrics.fd import FDReference, Moments

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(3000, 256)), rng.normal(size=(1000, 256)) * 1.05 + 0.02
    mr, mf = Moments.of(real), Moments.of(fake)
    cpu, gpu = FDReference.of(mr), FDReference.of(mr, CUDA)
    d_cpu, d_gpu = cpu.distance(mf.mean, mf.cov), gpu.distance(mf.mean, mf.cov)
    assert abs(d_gpu - d_cpu) < 1e-8 * d_cpu  # float64 on both
    counts = np.bincount(rng.integers(0, 1000, 1000), minlength=1000)
    w_cpu = cpu.weighted_distance(cpu.prepare(fake), counts)
    w_gpu = gpu.weighted_distance(gpu.prepare(fake), counts)
    assert abs(w_gpu - w_cpu) < 1e-8 * w_cpu


def test_metrics_end_to_end_on_the_gpu(gens):
    from artifix.metrics import compute_metrics

    cpu, gpu = gens
    kw = dict(n=64, metrics="fd,kid", bootstrap=10, kid_subset_size=32, kid_subsets=10, real_n=64)
    devices.use("cuda")
    try:
        r_gpu = compute_metrics((im.numpy() for _, im in sample_batches(gpu, 0, 0, 64, 32)), **kw)
    finally:
        devices.use("cpu")
    r_cpu = compute_metrics((im.numpy() for _, im in sample_batches(cpu, 0, 0, 64, 32)), **kw)
    for name in r_cpu:
        assert abs(r_gpu[name]["value"] - r_cpu[name]["value"]) <= 0.02 * abs(r_cpu[name]["value"]) + 1e-6, name


def test_oom_backoff_on_the_gpu(gens, capsys):
    _, gpu = gens
    want = sample(gpu, seed=3, n=24, batch=8)
    inner = gpu.module
    gpu.module = OOMOnCalls(inner, fail=1)
    try:
        got = sample(gpu, seed=3, n=24, batch=16)
    finally:
        gpu.module = inner
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert "out of GPU memory in sampling" in capsys.readouterr().err
