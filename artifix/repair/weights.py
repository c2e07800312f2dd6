"""Module kinds and in-place weight rewrites: what the export rules (`rules.py`) know about torch modules.

`_stock` tells a stock torch module (running its class's own forward) from a subclass that overrides it;
the `_PASS_*` families commute with a non-negative per-channel scale; `_scale_output`, `_scale_input`
and `_fold_batchnorm` are the three exact weight rewrites.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

_CONV: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT: tuple[type, ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN: tuple[type, ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_IN: tuple[type, ...] = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
# Modules whose output channel count is an attribute (see _out_channels).
_SHAPED: tuple[type, ...] = _CONV + _CONVT + _BN + _IN + (nn.Linear, nn.GroupNorm, nn.Embedding)
# Elementwise and positively homogeneous: f(s x) = s f(x) for s >= 0, per element.
_PASS_ELEMENTWISE: tuple[type, ...] = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Dropout)
# Per channel and positively homogeneous (valid while dim 1 is still the channel dim).
_PASS_CHANNEL: tuple[type, ...] = _PASS_ELEMENTWISE + tuple(
    getattr(nn, n) for n in (
        "Dropout1d", "Dropout2d", "Dropout3d", "Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d",
        "AvgPool1d", "AvgPool2d", "AvgPool3d", "MaxPool1d", "MaxPool2d", "MaxPool3d",
        "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d",
        "AdaptiveMaxPool3d", "ZeroPad1d", "ZeroPad2d", "ZeroPad3d", "ReflectionPad1d", "ReflectionPad2d",
        "ReflectionPad3d", "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d",
    ) if hasattr(nn, n)
)


def _stock(m: nn.Module, classes: tuple[type, ...]) -> bool:
    """True when `m` is one of `classes` and runs that class's own forward (not an override)."""
    return any(isinstance(m, c) and type(m).forward is c.forward for c in classes)


def _is_sequential(m: nn.Module) -> bool:
    """A plain nn.Sequential: its children run one after the other, each feeding the next."""
    return _stock(m, (nn.Sequential,))


def _untouchable(m: nn.Module) -> str:
    """Why hooks or parametrizations on `m` stop baking ('' when there are none)."""
    if m._forward_hooks or m._forward_pre_hooks:
        return "it carries forward hooks (e.g. spectral or weight norm), which change its output"
    if parametrize.is_parametrized(m):
        return "its weights are parametrized (e.g. spectral or weight norm), so scaling them is not linear"
    return ""


def _out_channels(m: nn.Module) -> int | None:
    """The number of output channels of a module that has per-channel output weights."""
    for attr in ("out_channels", "out_features", "num_features", "num_channels", "embedding_dim"):
        if hasattr(m, attr):
            return int(getattr(m, attr))
    return None


def _scalable_output(m: nn.Module, rank: int | None) -> str:
    """'' when output channel u of `m` can be scaled through its own weights, else why not."""
    name = type(m).__name__
    if _stock(m, _CONV):
        return ""
    if _stock(m, _CONVT):
        return "" if m.groups == 1 else f"{name} has groups={m.groups}"
    if _stock(m, (nn.Linear,)):
        if rank is None:
            return "a Linear's units are its output features only for 2-D outputs; pass example inputs to check the shape"
        return "" if rank == 2 else f"the Linear's output is {rank}-D, so dim 1 is not its feature dim"
    if _stock(m, (nn.Embedding,)):
        if m.max_norm is not None:
            return "the Embedding renormalises rows (max_norm), which is not linear"
        if rank is None:
            return "an Embedding's units are its features only for 2-D outputs; pass example inputs to check the shape"
        return "" if rank == 2 else f"the Embedding's output is {rank}-D, so dim 1 is not its feature dim"
    if _stock(m, _BN + _IN + (nn.GroupNorm,)):
        return "" if getattr(m, "weight", None) is not None and getattr(m, "bias", None) is not None else f"{name} has no affine weight and bias"
    return f"{name} has no per-channel output weights"


def _scale_output(m: nn.Module, s: torch.Tensor) -> list[str]:
    """Multiply output channel u of `m` by s[u] through its weight and bias; returns the tensor names changed."""
    w = m.weight
    if _stock(m, _CONVT) or _stock(m, (nn.Embedding,)):  # output channel on dim 1
        w.mul_(s.to(w.dtype).view(1, -1, *([1] * (w.dim() - 2))))
    else:  # Conv, Linear: out channel on dim 0; norms: 1-D weight
        w.mul_(s.to(w.dtype).view(-1, *([1] * (w.dim() - 1))))
    names = ["weight"]
    if getattr(m, "bias", None) is not None:
        m.bias.mul_(s.to(m.bias.dtype))
        names.append("bias")
    return names


def _scale_input(m: nn.Module, s: torch.Tensor, cols: int) -> list[str]:
    """Multiply the weights that read input channel u of Conv/ConvTranspose/Linear `m` by s[u]."""
    w = m.weight
    if _stock(m, _CONVT):
        w.mul_(s.to(w.dtype).view(-1, *([1] * (w.dim() - 1))))
    elif _stock(m, _CONV):
        w.mul_(s.to(w.dtype).view(1, -1, *([1] * (w.dim() - 2))))
    else:
        w.mul_(s.repeat_interleave(cols).to(w.dtype).view(1, -1))
    return ["weight"]


def _fold_batchnorm(bn: nn.Module, s: torch.Tensor) -> list[str]:
    """Make eval-mode BN(x) equal BN(s x): w' = s w, b' = b - (1 - s) m w / sd (channels with s = 1 unchanged)."""
    sd = torch.sqrt(bn.running_var.double() + bn.eps)
    w, b, mean = bn.weight.double(), bn.bias.double(), bn.running_mean.double()
    s64 = s.double()
    new_b = b - (1 - s64) * mean * w / sd
    keep = s64 == 1
    bn.bias.copy_(torch.where(keep, b, new_b).to(bn.bias.dtype))
    bn.weight.copy_((w * s64).to(bn.weight.dtype))
    return ["weight", "bias"]


def _leaves(prefix: str, seq: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The modules a plain Sequential calls, in order, descending into nested plain Sequentials."""
    for child, m in seq._modules.items():
        full = f"{prefix}.{child}" if prefix else child
        if m is None:
            continue
        if _is_sequential(m) and len(m) > 0:
            yield from _leaves(full, m)
        else:
            yield full, m
