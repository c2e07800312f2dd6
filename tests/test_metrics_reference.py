"""Reference data: folders, arrays, statistics files, the default scenes, content-keyed caching, bad inputs."""

import numpy as np
import pytest
import torch
from PIL import Image

from artifix.example import model as example, scenes
from artifix.errors import UserError
from artifix.metrics.extractor import Extractor
from artifix.metrics import reference as R


class PixelFeatures(Extractor):
    """A cheap deterministic extractor for tests: 8x8 resize + a fixed random projection; counts images."""

    name, tag, dim, size = "pixels", "px", 16, (8, 8)

    def __init__(self, seed=0, **kw):
        super().__init__(**kw)
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(16, 3 * 64, generator=g) / 14.0
        self.net = lambda x: torch.tanh(x.reshape(x.shape[0], -1) @ w.T)
        self.seen = 0
        self.seed = seed

    def _weights_id(self):
        return {"weights_sha256": f"pixels-{self.seed}"}

    def _normalise(self, x):
        return x / 255.0

    def __call__(self, images):
        out = super().__call__(images)
        self.seen += len(out)
        return out


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "real"
    (d / "sub").mkdir(parents=True)
    imgs = scenes.render(2, 0, 6).images
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(d / ("sub" if i % 2 else ".") / f"img{i}.png")
    return d, imgs


def test_folder_stats_match_array_stats_and_are_cached(folder, tmp_path):
    d, imgs = folder
    ext = PixelFeatures()
    s1 = R.load_real(d, ext, cache=tmp_path / "c", swd_n=4)
    assert s1.n == 6 and ext.seen == 6 and s1.features.shape == (6, 16) and s1.swd.n == 4
    assert "cache" in s1.source
    s2 = R.load_real(d, ext, cache=tmp_path / "c", swd_n=4)
    assert ext.seen == 6  # served from the cache
    assert np.array_equal(s2.moments.outer, s1.moments.outer)
    files = sorted(p.relative_to(d).as_posix() for p in d.rglob("*.png"))
    order = [int(f.split("img")[1][:-4]) for f in files]
    npz = tmp_path / "arr.npz"
    np.savez(npz, images=imgs[order].transpose(0, 3, 1, 2))  # NCHW is accepted too
    s3 = R.load_real(npz, ext, cache=tmp_path / "c", swd_n=4)
    assert np.allclose(s3.moments.sum, s1.moments.sum) and np.allclose(s3.features, s1.features)


def test_cache_key_follows_content_not_names(folder, tmp_path):
    d, imgs = folder
    ext = PixelFeatures()
    R.load_real(d, ext, cache=tmp_path / "c", swd_n=0)
    renamed = d.rename(tmp_path / "other-name")
    R.load_real(renamed, ext, cache=tmp_path / "c", swd_n=0)
    assert ext.seen == 6  # same bytes under another folder name: cache hit
    Image.fromarray(255 - imgs[0]).save(renamed / "img0.png")
    R.load_real(renamed, ext, cache=tmp_path / "c", swd_n=0)
    assert ext.seen == 12  # one changed file: recomputed
    R.load_real(renamed, PixelFeatures(seed=1), cache=tmp_path / "c", swd_n=0)
    assert len(list((tmp_path / "c" / "metrics").glob("real-*.npz"))) == 3  # other extractor weights: new key


def test_a_request_without_swd_reads_the_entry_with_the_default_swd_sample(folder, tmp_path):
    from artifix import defaults
    d, imgs = folder
    ext = PixelFeatures()
    full = R.load_real(d, ext, cache=tmp_path / "c", swd_n=int(defaults.get("metrics", "swd_n")))
    assert full.swd is not None and ext.seen == 6
    fd_only = R.load_real(d, ext, cache=tmp_path / "c", swd_n=0)
    assert ext.seen == 6 and fd_only.swd is None and fd_only.source["cache"] == full.source["cache"]
    assert np.array_equal(fd_only.features, full.features) and np.array_equal(fd_only.moments.outer, full.moments.outer)
    R.load_real(d, ext, cache=tmp_path / "c", swd_n=3)  # another SWD sample size is its own entry
    assert ext.seen == 12


def test_default_scenes_reference(tmp_path):
    ext = PixelFeatures()
    s = R.load_real(None, ext, n=5, cache=tmp_path, swd_n=5)
    assert s.n == 5 and s.source["kind"] == "scenes" and s.source["seed"] == example.REAL_SCENES_SEED == 2
    want = ext(scenes.render(2, 0, 5).images)
    assert np.allclose(s.features, want)
    assert s.swd.shape == (64, 64)


def test_stats_file_round_trip_and_feature_space_check(tmp_path, folder):
    d, _ = folder
    ext = PixelFeatures()
    stats = R.load_real(d, ext, use_cache=False, swd_n=3)
    path = tmp_path / "stats.npz"
    R.save_stats(path, stats)
    back = R.load_real(path, ext)
    assert back.n == 6 and np.array_equal(back.features, stats.features) and back.swd.n == 3
    with pytest.raises(UserError, match="feature space"):
        other = PixelFeatures()
        other.tag = "zz"
        R.load_real(path, other)
    with pytest.raises(UserError, match="different weights_sha256"):
        R.load_real(path, PixelFeatures(seed=3))


def test_mixed_sizes_refused_unless_resize(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    imgs = scenes.render(2, 0, 3).images
    Image.fromarray(imgs[0]).save(d / "a.png")
    Image.fromarray(imgs[1]).save(d / "b.jpg")
    Image.fromarray(imgs[2]).resize((32, 48)).save(d / "c.png")
    with pytest.raises(UserError) as e:
        R.load_real(d, PixelFeatures(), use_cache=False)
    msg = str(e.value)
    assert "a.png is 64x64" in msg and "c.png is 32x48" in msg and "--real-resize" in msg
    s = R.load_real(d, PixelFeatures(), use_cache=False, resize=True, swd_n=3)
    assert s.n == 3 and s.swd.shape == (64, 64)


def test_bad_inputs_are_user_errors(tmp_path):
    ext = PixelFeatures()
    with pytest.raises(UserError, match="not found"):
        R.load_real(tmp_path / "missing", ext)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="No images .* 1 other files"):
        R.load_real(empty, ext)
    fake_png = tmp_path / "fakes"
    fake_png.mkdir()
    Image.fromarray(scenes.render(2, 0, 1).images[0]).save(fake_png / "ok.png")
    (fake_png / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(UserError, match="broken.png is not a readable image"):
        R.load_real(fake_png, ext)
    good = tmp_path / "good.npz"
    np.savez(good, images=scenes.render(2, 0, 4).images)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(UserError, match="truncated or corrupt"):
        R.load_real(truncated, ext)
    floats = tmp_path / "floats.npz"
    np.savez(floats, images=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(UserError, match="uint8"):
        R.load_real(floats, ext)
    several = tmp_path / "several.npz"
    np.savez(several, a=np.zeros((2, 8, 8, 3), np.uint8), b=np.zeros(3))
    with pytest.raises(UserError, match="name the image array 'images'"):
        R.load_real(several, ext)
    txt = tmp_path / "data.txt"
    txt.write_text("x")
    with pytest.raises(UserError, match="neither a folder"):
        R.load_real(txt, ext)
    stats = tmp_path / "stats.npz"
    R.save_stats(stats, R.load_real(good, ext, use_cache=False, swd_n=0))
    stats_trunc = tmp_path / "stats_trunc.npz"
    stats_trunc.write_bytes(stats.read_bytes()[: len(stats.read_bytes()) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        R.load_real(stats_trunc, ext)


def test_damaged_cache_entry_is_recomputed(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, images=scenes.render(2, 0, 4).images)
    ext = PixelFeatures()
    s = R.load_real(good, ext, cache=tmp_path / "c", swd_n=0)
    entry = next((tmp_path / "c" / "metrics").glob("real-*.npz"))
    entry.write_bytes(entry.read_bytes()[:100])
    s2 = R.load_real(good, ext, cache=tmp_path / "c", swd_n=0)
    assert ext.seen == 8 and np.allclose(s2.moments.sum, s.moments.sum)
    assert R.load_stats(entry).n == 4  # rewritten atomically
