"""Reference data as users keep it: recursive folders, dataset_tool zips (+ dataset.json classes), .npz/.npy arrays,
pytorch-fid / clean-fid mu/sigma files, and `metrics --images DIR --real DIR`."""

import json
import zipfile
from io import BytesIO

import numpy as np
import pytest
import torch
from PIL import Image

from artifix.errors import UserError
from artifix.metrics import compute_metrics
from artifix.metrics.extractor import Extractor
from artifix.metrics.features import get_extractor
from artifix.metrics.reference import check_real, load_real
from tests.conftest import run_cli

N = 24


@pytest.fixture(scope="module")
def data():
    """24 structured 16x16 images and a class (0, 1, 2) for each."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:16, 0:16]
    imgs = np.empty((N, 16, 16, 3), np.uint8)
    for i in range(N):
        base = (np.sin(xx / (1.5 + i % 5)) + np.cos(yy / (2.0 + i % 3))) * 60 + 128
        imgs[i] = np.clip(base[..., None] + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
    return imgs, np.arange(N) % 3


@pytest.fixture(scope="module")
def ts_features(tmp_path_factory):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 3),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    path = tmp_path_factory.mktemp("feat") / "feat.pt"
    torch.jit.script(net).save(str(path))
    return f"torchscript:{path}"


def _png(im: np.ndarray) -> bytes:
    buf = BytesIO()
    Image.fromarray(im).save(buf, format="PNG")
    return buf.getvalue()


def _write_folder(root, imgs, labels=None):
    """Nested folders (dataset_tool's 00000/ chunks, one level deeper for half) sorted like the array."""
    names = []
    for i, im in enumerate(imgs):
        rel = f"{i // 10:05d}/{'a' if i % 2 else 'b'}/img{i:08d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_png(im))
        names.append(rel)
    if labels is not None:
        (root / "dataset.json").write_text(json.dumps({"labels": [[n, int(c)] for n, c in zip(names, labels)]}))
    return names


def _order(n):
    """The sorted-relative-path order of _write_folder's names, as indices into the array."""
    names = [f"{i // 10:05d}/{'a' if i % 2 else 'b'}/img{i:08d}.png" for i in range(n)]
    return [i for _, i in sorted(zip(names, range(n)))]


def _write_zip(path, imgs, labels=None):
    with zipfile.ZipFile(path, "w") as zf:
        rows = []
        for i, im in enumerate(imgs):
            name = f"{i // 10:05d}/img{i:08d}.png"
            zf.writestr(name, _png(im))
            rows.append([name, int(labels[i])] if labels is not None else None)
        zf.writestr("dataset.json", json.dumps({"labels": rows if labels is not None else None}))


def _same(a, b):
    assert a.n == b.n
    np.testing.assert_allclose(a.moments.mean, b.moments.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.moments.cov, b.moments.cov, rtol=1e-10, atol=1e-12)


def test_folder_recursive_npz_and_npy_give_the_same_statistics(tmp_path, data, ts_features):
    imgs, _ = data
    ext = get_extractor(ts_features, torchscript_size=16)
    _write_folder(tmp_path / "real", imgs)
    ordered = imgs[_order(N)]
    np.savez(tmp_path / "real.npz", images=ordered)
    np.save(tmp_path / "real.npy", ordered.transpose(0, 3, 1, 2))  # NCHW is accepted too
    folder = load_real(tmp_path / "real", ext, cache=tmp_path / "c", swd_n=0)
    assert folder.n == N and folder.source["kind"] == "folder"
    _same(folder, load_real(tmp_path / "real.npz", ext, cache=tmp_path / "c", swd_n=0))
    _same(folder, load_real(tmp_path / "real.npy", ext, cache=tmp_path / "c", swd_n=0))


def test_dataset_tool_zip_with_labels_and_per_class_statistics(tmp_path, data, ts_features):
    imgs, labels = data
    ext = get_extractor(ts_features, torchscript_size=16)
    _write_zip(tmp_path / "ds.zip", imgs, labels)
    np.savez(tmp_path / "all.npz", images=imgs)
    np.savez(tmp_path / "c1.npz", images=imgs[labels == 1])
    whole = load_real(tmp_path / "ds.zip", ext, cache=tmp_path / "c", swd_n=0)
    assert whole.source["kind"] == "zip" and whole.n == N
    _same(whole, load_real(tmp_path / "all.npz", ext, cache=tmp_path / "c", swd_n=0))
    one = load_real(tmp_path / "ds.zip", ext, cache=tmp_path / "c", swd_n=0, class_id=1)
    assert one.n == int((labels == 1).sum()) and one.source["class"] == 1
    _same(one, load_real(tmp_path / "c1.npz", ext, cache=tmp_path / "c", swd_n=0))
    _write_folder(tmp_path / "dir", imgs, labels)  # dataset.json beside a folder works the same way
    _same(one, load_real(tmp_path / "dir", ext, cache=tmp_path / "c", swd_n=0, class_id=1))
    with pytest.raises(UserError, match="no images of class 7; its classes are 0, 1, 2"):
        check_real(tmp_path / "ds.zip", class_id=7)
    with pytest.raises(UserError, match="only a folder or a zip archive"):
        check_real(tmp_path / "all.npz", class_id=1)
    _write_zip(tmp_path / "nolabels.zip", imgs)
    with pytest.raises(UserError, match="has no dataset.json labels"):
        check_real(tmp_path / "nolabels.zip", class_id=0)


class InceptionStandIn(Extractor):
    """Features in the 'inception' space (2048-d) from a small random network at 16 px.

    The real FID Inception weights are not on this machine, and a random-weight 299-px Inception-v3 took 40 s
    for 8 images on the shared CPU; what is under test is the mu/sigma file path, not the network.
    """

    name, tag, dim, size = "inception", "inception", 2048, (16, 16)

    def __init__(self) -> None:
        super().__init__(batch=8, channels_last=False, device="cpu")
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 2048, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                       torch.nn.Flatten()).eval()

    def _normalise(self, x):
        return x / 255.0


def test_fd_from_a_mu_sigma_file_equals_fd_from_our_statistics(tmp_path, data):
    """A pytorch-fid-style file (keys mu, sigma) written from our own features gives the same FD within 1e-6."""
    imgs, _ = data
    ext = InceptionStandIn()
    np.savez(tmp_path / "real.npz", images=imgs[:16])
    fake = 255 - imgs[16:]
    kw = dict(metrics="fd", features=ext, bootstrap=0, cache=tmp_path / "c")
    ours = compute_metrics([fake], real=str(tmp_path / "real.npz"), **kw)["fid_inception_8"]["value"]
    stats = load_real(tmp_path / "real.npz", ext, cache=tmp_path / "c", swd_n=0)  # from the cache: no new features
    np.savez(tmp_path / "fid_stats.npz", mu=stats.moments.mean, sigma=stats.moments.cov)  # pytorch-fid's keys
    theirs = compute_metrics([fake], real=str(tmp_path / "fid_stats.npz"), **kw)["fid_inception_8"]
    assert ours > 1e-3 and abs(theirs["value"] - ours) < 1e-6
    assert theirs["n_real"] == 0  # the file does not say how many images it summarises
    check_real(tmp_path / "fid_stats.npz", features="inception")  # accepted in its own space
    with pytest.raises(UserError, match="holds no features, so KID cannot be computed"):
        compute_metrics([fake], real=str(tmp_path / "fid_stats.npz"), **{**kw, "metrics": "kid"})


def test_mu_sigma_file_in_another_feature_space_is_refused(tmp_path, data, ts_features):
    imgs, _ = data
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 2048))
    np.savez(tmp_path / "fid_stats.npz", mu=a.mean(0), sigma=np.cov(a, rowvar=False))
    (tmp_path / "imgs").mkdir()
    _write_folder(tmp_path / "imgs", imgs[:6])
    for feats in ([], ["--features", ts_features, "--torchscript-size", "16"]):
        code, out, err = run_cli("metrics", "--images", str(tmp_path / "imgs"), "--real", str(tmp_path / "fid_stats.npz"),
                                 "--metrics", "fd", *feats)
        assert code == 2, err
        line = err.strip().splitlines()[-1]
        assert "FID Inception-v3 pool3" in line and "--features inception" in line and out == ""
    ext = get_extractor(ts_features, torchscript_size=16)
    with pytest.raises(UserError, match="can only be compared with features of that same network"):
        load_real(tmp_path / "fid_stats.npz", ext)


def test_metrics_of_two_folders_without_a_generator(tmp_path, data, ts_features):
    imgs, _ = data
    _write_folder(tmp_path / "a", imgs[:12])
    _write_folder(tmp_path / "b", 255 - imgs[12:])  # negatives: far from a in feature space
    args = ["--features", ts_features, "--torchscript-size", "16", "--metrics", "fd,kid", "--bootstrap", "20",
            "--kid-subset-size", "6", "--kid-subsets", "10", "--cache", str(tmp_path / "c")]
    code, out, err = run_cli("metrics", "--images", str(tmp_path / "a"), "--real", str(tmp_path / "b"), "--json", *args)
    assert code == 0, err
    res = json.loads(out)
    tag = get_extractor(ts_features, torchscript_size=16).tag
    fd = res["metrics"][f"fd_{tag}_12"]
    assert res["n"] == 12 and fd["n_real"] == 12 and fd["value"] > 0 and fd["ci"][0] < fd["value"] < fd["ci"][1]
    api = compute_metrics([imgs[:12][_order(12)]], real=str(tmp_path / "b"), metrics="fd", bootstrap=0,
                          features=get_extractor(ts_features, torchscript_size=16), cache=tmp_path / "c")
    assert abs(api[f"fd_{tag}_12"]["value"] - fd["value"]) < 1e-6 * fd["value"]
    code, _, err = run_cli("metrics", "--images", str(tmp_path / "a"), *args)
    assert code == 2 and "--images needs --real" in err
    code, _, err = run_cli("metrics", "--images", str(tmp_path / "a"), "--real", str(tmp_path / "b"),
                           "--generator", "tests.fixtures.gens:tiny_dcgan", *args)
    assert code == 2 and "takes no --generator" in err
