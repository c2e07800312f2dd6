"""Feature extractors: registry, input handling, resize, EfficientNet-Lite0, FID Inception weights, TorchScript."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from artifix.example import scenes
from artifix.errors import UserError
from artifix.metrics import extractor as EX
from artifix.metrics import features as FE
from artifix.metrics import inception as INC


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def imgs():
    return scenes.render(1, 0, 6).images


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError) as e:
        FE.get_extractor("resnet50")
    msg = str(e.value)
    assert "resnet50" in msg and "effnet-lite0" in msg and "inception" in msg and "torchscript:PATH" in msg
    with pytest.raises(UserError, match="needs a path"):
        FE.get_extractor("torchscript:")


def test_input_layouts_and_errors(imgs):
    nchw = imgs.transpose(0, 3, 1, 2)
    assert np.array_equal(EX.as_uint8_nhwc(nchw), imgs)
    assert np.array_equal(EX.as_uint8_nhwc(torch.from_numpy(nchw)), imgs)
    grey = EX.as_uint8_nhwc(imgs[..., :1])
    assert grey.shape == imgs.shape and np.array_equal(grey[..., 2], imgs[..., 0])
    assert np.array_equal(EX.as_uint8_nhwc(np.concatenate([imgs, imgs[..., :1]], -1)), imgs)  # alpha dropped
    with pytest.raises(UserError, match="uint8"):
        EX.as_uint8_nhwc(imgs.astype(np.float32))
    with pytest.raises(UserError, match="4-D"):
        EX.as_uint8_nhwc(imgs[0])


def test_resize_is_pil_bicubic_per_channel_in_float(imgs):
    out = EX.resize_uint8(imgs[:2], 100)
    assert out.shape == (2, 3, 100, 100) and out.dtype == np.float32
    ch = Image.fromarray(imgs[1, :, :, 2].astype(np.float32), mode="F").resize((100, 100), Image.BICUBIC)
    assert np.allclose(out[1, 2], np.clip(np.asarray(ch), 0, 255))
    assert out.min() >= 0 and out.max() <= 255
    same = EX.resize_uint8(imgs[:1], 64)  # already at size: only converted
    assert np.array_equal(same[0], imgs[0].transpose(2, 0, 1).astype(np.float32))


def test_effnet_features_batch_size_and_layout_independent(imgs):
    e = FE.get_extractor("effnet-lite0")
    assert (e.tag, e.dim, e.size) == ("effnetl0", 1280, (224, 224))
    imgs = imgs[:3]
    f = e(imgs)
    assert f.shape == (3, 1280) and f.dtype == np.float32 and np.isfinite(f).all()
    g = FE.get_extractor("effnet-lite0", batch=2, channels_last=False, fold_bn=False)(imgs[1:])
    assert np.allclose(f[1:], g, rtol=1e-4, atol=1e-4)
    one = np.concatenate([e(imgs[i : i + 1]) for i in range(2)])
    assert np.allclose(f[:2], one, rtol=1e-4, atol=1e-4)
    assert not np.allclose(f[0], f[1])
    assert e.fingerprint()["weights_sha256"] == FE.get_extractor("effnet-lite0").fingerprint()["weights_sha256"]


def test_inception_matches_the_standard_state_dict_layout(tmp_path):
    net = INC.FIDInceptionV3()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    well_known = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
        "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
        "Mixed_7c.branch3x3_2b.bn.running_var": (384,),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    for k, v in well_known.items():
        assert shapes[k] == v, k
    assert not any(k.startswith("AuxLogits") for k in shapes)
    # torchvision's Inception-v3 without aux logits has 23,834,568 parameters at 1000 classes; +8 classes
    assert sum(p.numel() for p in net.parameters()) == 23_834_568 + 8 * 2049
    g = torch.Generator().manual_seed(0)

    def fake(k, shape):  # random tensors of the right shapes, scaled so activations stay finite
        if k.endswith("conv.weight"):
            return torch.randn(shape, generator=g) * (2.0 / np.prod(shape[1:])) ** 0.5
        if k.endswith("running_var") or k.endswith("bn.weight"):
            return 0.9 + 0.2 * torch.rand(shape, generator=g)
        return 0.1 * torch.randn(shape, generator=g)

    state = {k: fake(k, v) for k, v in shapes.items() if not k.endswith("num_batches_tracked")}  # old files lack these
    path = tmp_path / INC.INCEPTION_FILE
    torch.save(state, path)
    net.load_state_dict(torch.load(path, weights_only=True), strict=True)
    e = FE.get_extractor("inception", inception_weights=str(path))
    assert (e.tag, e.dim, e.size) == ("inception", 2048, (299, 299))
    img = scenes.render(1, 0, 1).images
    f = e(img)
    assert f.shape == (1, 2048) and np.isfinite(f).all()
    with torch.inference_mode():  # folded, channels-last extractor == the plain network on the same input
        x = torch.from_numpy(EX.resize_uint8(img, 299)) * (2 / 255) - 1
        plain = net.eval().to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last)).numpy()
    assert np.allclose(f, plain, rtol=1e-3, atol=1e-3 * np.abs(plain).max())


def test_inception_wrong_or_missing_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(INC.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torchhome"))
    with pytest.raises(UserError) as e:
        FE.get_extractor("inception")
    msg = str(e.value)
    assert str(tmp_path / "torchhome" / "hub" / "checkpoints" / INC.INCEPTION_FILE) in msg
    assert "never" in msg and "--inception-weights" in msg
    with pytest.raises(UserError, match="not found at"):
        FE.get_extractor("inception", inception_weights=str(tmp_path / "nope.pth"))
    monkeypatch.setenv(INC.INCEPTION_ENV, str(tmp_path / "env.pth"))
    with pytest.raises(UserError, match=INC.INCEPTION_ENV):
        FE.get_extractor("inception")
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(UserError, match="not the FID Inception state dict"):
        FE.get_extractor("inception", inception_weights=str(bad))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="Cannot read"):
        FE.get_extractor("inception", inception_weights=str(junk))


class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, 3, stride=2)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_torchscript_extractor(tmp_path, imgs):
    torch.manual_seed(0)
    path = tmp_path / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(_TinyNet().eval(), torch.zeros(1, 3, 32, 32)).save(str(path))
    e = FE.get_extractor(f"torchscript:{path}", torchscript_size=32)
    assert e.tag.startswith("ts") and len(e.tag) == 10 and e.dim == 5
    f = e(imgs)
    assert f.shape == (6, 5)
    assert np.allclose(FE.get_extractor(f"torchscript:{path}", torchscript_size=32, batch=1)(imgs), f, atol=1e-6)
    native = FE.get_extractor(f"torchscript:{path}", torchscript_size=0, torchscript_range="[-1,1]")
    assert native(imgs).shape == (6, 5)
    with pytest.raises(UserError, match="not found"):
        FE.get_extractor(f"torchscript:{tmp_path / 'missing.pt'}")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"nope")
    with pytest.raises(UserError, match="TorchScript"):
        FE.get_extractor(f"torchscript:{junk}")
    with pytest.raises(UserError, match="torchscript_range"):
        FE.get_extractor(f"torchscript:{path}", torchscript_range="[0,2]")


@pytest.mark.parametrize("kernel,stride,pad,size,groups", [(3, 2, (0, 1), 224, 1), (5, 2, (1, 2), 56, 4), (3, 2, (0, 1), 15, 4),
                                                           (5, 3, (0, 2), 17, 1), (3, 2, (1, 1), 9, 1)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_strided_same_convolution_equals_the_padded_one(kernel, stride, pad, size, groups, channels_last):
    from torch import nn
    import torch.nn.functional as F
    from artifix.metrics.effnet import _StridedSame
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, kernel, stride, groups=groups, bias=True)
    x = torch.randn(2, 8, size, size + 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    want = conv(F.pad(x, (pad[0], pad[1], pad[0], pad[1])))
    got = _StridedSame(conv, (pad[0], pad[0]), (pad[1], pad[1]))(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
