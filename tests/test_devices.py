"""--device, CUDA out-of-memory back-off (simulated, on the CPU), NaN/Inf mid-run, and the float64 torch FD path."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from artifix import defaults
from artifix.model import devices
from artifix.errors import UserError
from artifix.model.generator import GeneratorSpec, latents, load_generator, sample, sample_batches
from tests.conftest import FIXTURES, run_cli
from tests.fixtures.device_gens import NAN_THRESHOLD, OOMOnCalls

NAN_GEN = str(FIXTURES / "device_gens.py") + ":nan_gen"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")


@pytest.fixture
def tiny():
    from tests.fixtures.gens import tiny_dcgan

    torch.manual_seed(0)
    g = load_generator(GeneratorSpec(generator="tests.fixtures.gens:tiny_dcgan", latent=(16, 1, 1)), device="cpu")
    for p in g.module.parameters():
        p.data.normal_(0, 0.2)
    assert isinstance(g.module, type(tiny_dcgan()))
    return g


def test_device_option_is_in_the_defaults_table_and_every_command():
    opt = defaults.option("run", "device")
    assert opt.default is None and "auto" in opt.help and "cuda:N" in opt.help
    from artifix.cli.main import COMMANDS, build_parser

    build_parser()
    assert all("device" in (c.options.get("run") or []) for c in COMMANDS.values())


def test_resolve_names():
    assert devices.resolve("cpu") == torch.device("cpu")
    assert devices.resolve("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    for bad in ("gpu", "cuda:x", "cuda:-1"):
        with pytest.raises(UserError, match="is not a device"):
            devices.resolve(bad)


@no_cuda
def test_cuda_on_a_machine_without_it_is_one_sentence_and_exit_2(tmp_path):
    code, out, err = run_cli("sample", "--device", "cuda", "--n", "4", "--grid", str(tmp_path / "g.png"))
    assert code == 2, err
    lines = [l for l in err.strip().splitlines() if l]
    assert len(lines) == 1 and "--device cuda" in lines[0] and "no CUDA GPU" in lines[0] and "--device cpu" in lines[0]
    assert "Traceback" not in err and not (tmp_path / "g.png").exists()
    code, _, err = run_cli("metrics", "--device", "cuda:1", "--n", "4")
    assert code == 2 and "cuda:1" in err
    devices.use("cpu")


def test_backoff_halves_retries_and_says_so_once(capsys):
    sizes = []

    def fn(start, count):
        if count > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        sizes.append(count)
        return list(range(start, start + count))

    got = [i for part in devices.backoff(fn, 10, 8, "a test loop") for i in part]
    assert got == list(range(10)) and sizes == [2, 2, 2, 2, 2]
    err = capsys.readouterr().err
    assert err.count("out of GPU memory in a test loop") == 1 and "retrying with batch 4" in err
    list(devices.backoff(fn, 5, 8, "a test loop"))
    assert "out of GPU memory" not in capsys.readouterr().err  # said once per process


def test_backoff_reraises_other_errors_and_oom_at_batch_one():
    def boom(start, count):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        list(devices.backoff(boom, 4, 4, "x"))

    def always_oom(start, count):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        list(devices.backoff(always_oom, 4, 4, "y"))


def test_sampling_oom_backoff_gives_the_same_images(tiny):
    want = sample(tiny, seed=3, n=10, batch=8)
    tiny.module = OOMOnCalls(tiny.module, fail=2)  # a wrapped forward raising torch.cuda.OutOfMemoryError
    parts = list(sample_batches(tiny, seed=3, n=10, batch=8))
    assert [len(idx) for idx, _ in parts] == [2, 2, 2, 2, 2]  # 8 -> 4 -> 2, then every later batch at 2
    assert np.array_equal(np.concatenate([im.numpy() for _, im in parts]), want)


def test_stats_oom_backoff_gives_the_same_statistics(tiny):
    from artifix.units.scoring import collect_stats

    want = collect_stats(tiny, "main.2", seed=1, n=12, batch=8)
    tiny.module = OOMOnCalls(tiny.module, fail=1)
    got = collect_stats(tiny, "inner.main.2", seed=1, n=12, batch=8)
    assert tiny.module.batches[0] == 8  # batch 4 padded to the PAD_MULTIPLE of 8 rows
    assert torch.equal(got.quantile([0.1, 0.5, 0.9]), want.quantile([0.1, 0.5, 0.9]))
    assert torch.allclose(got.mean, want.mean, rtol=1e-12) and torch.equal(got.samples().max, want.samples().max)


def _tiny_extractor(tmp_path: Path):
    from artifix.metrics.features import get_extractor

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    path = tmp_path / "feat.pt"
    torch.jit.script(net).save(str(path))
    return get_extractor(f"torchscript:{path}", batch=8, torchscript_size=16, channels_last=False, device="cpu")


def test_features_oom_backoff_gives_the_same_features(tmp_path, capsys):
    ext = _tiny_extractor(tmp_path)
    imgs = np.random.default_rng(0).integers(0, 256, (11, 16, 16, 3), dtype=np.uint8)
    want = ext(imgs)
    ext.net = OOMOnCalls(ext.net, fail=2)
    got = ext(imgs)
    assert ext.net.batches == [2, 2, 2, 2, 2, 1] and ext.device == torch.device("cpu")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert "out of GPU memory in features" in capsys.readouterr().err


def _nan_indices(n: int) -> list[int]:
    z, _ = latents(GeneratorSpec(generator=NAN_GEN, latent=(8,)), 0, range(n))
    return [i for i in range(n) if float(z[i, 0]) > NAN_THRESHOLD]


def test_nan_mid_run_names_the_samples_and_writes_nothing(tmp_path):
    bad = _nan_indices(128)
    assert bad and bad[0] >= 16  # the first two batches of 8 are fine: the NaN appears mid-run
    first_bad_batch = [i for i in bad if i // 8 == bad[0] // 8]
    out = tmp_path / "imgs"
    code, stdout, err = run_cli("sample", "--generator", NAN_GEN, "--latent", "8", "--n", "128", "--batch", "8",
                                "--images", str(out), "--grid", str(tmp_path / "grid.png"))
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert "NaN or Inf" in line and "sample(s) " + ", ".join(map(str, first_bad_batch)) in line
    assert not out.exists() and not (tmp_path / "grid.png").exists() and stdout == ""


def test_nan_mid_run_in_the_api_names_indices():
    g = load_generator(GeneratorSpec(generator=NAN_GEN, latent=(8,)), validate=False, device="cpu")
    bad = _nan_indices(128)
    seen = []
    with pytest.raises(UserError, match=rf"sample\(s\) {bad[0]}\b"):
        for idx, _ in sample_batches(g, 0, 0, 128, 8):
            seen += list(idx)
    assert seen == list(range(bad[0] // 8 * 8))  # every batch before the bad one came out, none after


def test_fd_reference_torch_path_matches_lapack():
    from artifix.metrics.fd import FDReference, Moments

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(300, 40)), rng.normal(size=(120, 40)) * 1.1 + 0.1
    mr, mf = Moments.of(real), Moments.of(fake)
    cpu, tor = FDReference.of(mr), FDReference.of(mr, "cpu")  # a device given: the float64 torch path
    assert tor.device == torch.device("cpu") and cpu.device is None
    assert abs(tor.distance(mf.mean, mf.cov) - cpu.distance(mf.mean, mf.cov)) < 1e-9 * cpu.distance(mf.mean, mf.cov)
    counts = np.bincount(rng.integers(0, 120, 120), minlength=120)
    a = cpu.weighted_distance(cpu.prepare(fake), counts)
    b = tor.weighted_distance(tor.prepare(fake), counts)
    assert abs(a - b) < 1e-9 * a


def test_latents_are_drawn_on_the_cpu_and_moved(tiny):
    z, _ = latents(tiny.spec, 5, [0, 1, 2])
    assert z.device == torch.device("cpu")  # the same latents on every device; G moves them to its own
    assert tiny.device == torch.device("cpu")
    imgs = next(sample_batches(tiny, 5, 0, 3, 3))[1]
    assert imgs.device == torch.device("cpu") and imgs.dtype == torch.uint8


# ---------------------------------------------------------------------------------------------- CPU allocator

_ALLOC_CHILD = r"""
import ctypes, torch
from artifix.model import devices


class MallInfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
tuned = devices.tune_allocator()
m0 = mallinfo2()
a = torch.ones(24 << 18, dtype=torch.float32)  # 24 MB, about what one of EfficientNet's activations is at batch 8
mapped = mallinfo2().hblkhd - m0.hblkhd  # bytes in blocks that got their own mapping
del a
kept = mallinfo2().fordblks - m0.fordblks  # freed bytes the heap keeps for the next batch
print(tuned, mapped >> 20, kept >> 20)
"""


def _alloc_child(**env: str) -> tuple[str, int, int]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "ARTIFIX_MALLOPT"}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", _ALLOC_CHILD], capture_output=True, text=True, env=e, check=True)
    tuned, mapped, kept = out.stdout.split()
    return tuned, int(mapped), int(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux only")
def test_tuned_allocator_keeps_freed_buffers_for_reuse():
    """Under glibc's defaults a 24 MB tensor gets its own mapping, handed back on free (the next batch faults it in again
    page by page); tuned, it comes from the heap, which keeps it when freed."""
    assert _alloc_child() == ("True", 0, 24)
    assert _alloc_child(ARTIFIX_MALLOPT="0") == ("False", 24, 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux only")
def test_allocator_tuning_leaves_the_users_own_glibc_settings():
    """The user's own MALLOC_* settings are left alone."""
    assert _alloc_child(MALLOC_TRIM_THRESHOLD_="1000000")[0] == "False"
