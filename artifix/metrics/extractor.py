"""The extractor base class and the preprocessing every extractor shares: uint8 images, the clean-fid resize, BN folding."""

from __future__ import annotations

import copy
import json
from contextlib import nullcontext
from typing import Any, Callable, Iterable

import numpy as np
import torch
from PIL import Image
from torch import nn

from .. import defaults
from ..errors import UserError
from ..model import devices
from ..progress import Progress

#: Version of the preprocessing pipeline; part of every cache key (bump when the pixels fed to a network change).
PREPROCESS_VERSION = 1
RESIZE_FILTER = "pil-bicubic-float-clip"  # the clean-fid "clean" resize, recorded in fingerprints


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
        devices.tune_allocator()  # batches of activations reuse freed buffers instead of fresh page-faulted mappings

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
