"""Segmenters: per-pixel concept labels for generated images.

A segmenter maps float images in [0, 1], NCHW, to per-class logits (N, K, h, w); `Segmenter` wraps it with
its K class names and turns uint8 NHWC images into label maps at the images' resolution (logits are
upsampled bilinearly when the network answers at another resolution).

Two kinds load with `load_segmenter`:
- a plain state dict of `SceneSegmenter` (a small U-Net), loaded with `weights_only=True`: the example's
  bundled one, `data/example/segmenter.pt` (trained by `scripts/train_segmenter.py` on `artifix.example.scenes`
  label maps; its card `segmenter.json` holds the class names and held-out IoU), is the segmenter of the
  example's profile, which `load_segmenter()` without a path loads (`profiles.default_profile`);
- a user's TorchScript file for their own domain; class names from `classes=` or a JSON sidecar next to it
  (`<file>.json` with a `"classes"` list).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..model import devices
from ..model.generator import _is_torchscript
from ..profiles import default_profile

WIDTH = 16


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SceneSegmenter(nn.Module):
    """A three-level U-Net: image (N, 3, H, W) in [0, 1] -> class logits (N, K, H, W); H, W divisible by 4."""

    def __init__(self, classes: int, width: int = WIDTH) -> None:
        super().__init__()
        w = width
        self.enc1, self.enc2, self.enc3 = _block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.dec2, self.dec1 = _block(6 * w, 2 * w), _block(3 * w, w)
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x - 0.5)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0, mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), e1], 1))
        return self.head(d1)


@dataclass
class Segmenter:
    """A segmentation network with its class names; `labels(images)` gives per-pixel class indices."""

    module: nn.Module
    classes: tuple[str, ...]
    source: str
    batch: int = 64

    def logits(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Class logits (N, K, H, W) at the images' resolution for uint8 NHWC images."""
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        if x.dim() != 4 or x.shape[-1] not in (1, 3):
            raise UserError(f"the segmenter needs uint8 images shaped (N, H, W, 1 or 3), got {tuple(x.shape)}.")
        x = x.to(devices.of(self.module)).permute(0, 3, 1, 2).float().div(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        outs = []
        with torch.inference_mode():
            for s in range(0, len(x), self.batch):
                out = self.module(x[s:s + self.batch].contiguous())
                if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[1] != len(self.classes):
                    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise UserError(f"segmenter {self.source} returned {shape}; it must return logits (N, {len(self.classes)}, h, w), "
                                    f"one channel per class ({len(self.classes)} class names given).")
                if out.shape[-2:] != (h, w):
                    out = F.interpolate(out.float(), size=(h, w), mode="bilinear", align_corners=False)
                outs.append(out.float().cpu())  # computed on the segmenter's device; logits return to the CPU
        return torch.cat(outs) if outs else torch.zeros(0, len(self.classes), h, w)

    def labels(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Per-pixel class indices (N, H, W) int64 for uint8 NHWC images."""
        return self.logits(images).argmax(1)


def _sidecar_classes(path: Path) -> tuple[str, ...] | None:
    """Class names from `<path>.json` (same stem), or None when there is no sidecar."""
    side = path.with_suffix(".json")
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"segmenter sidecar {side} is not valid JSON ({e}).") from None
    classes = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise UserError(f"segmenter sidecar {side} must hold a \"classes\" list of class names.")
    return tuple(classes)


def _named(p: Path, names: tuple[str, ...] | None) -> tuple[str, ...]:
    """The class names given, else the sidecar's; UserError when there are none."""
    names = names or _sidecar_classes(p)
    if names is None:
        raise UserError(f"segmenter {p} has no class names: pass --segmenter-classes 'a,b,c' or put a {p.with_suffix('.json').name} "
                        "with a \"classes\" list next to it.")
    return names


def parse_classes(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Parse 'a,b,c' (or a list) into class names; None stays None."""
    if text is None:
        return None
    names = [c.strip() for c in (text.split(",") if isinstance(text, str) else text)]
    if not names or any(not c for c in names):
        raise UserError(f"segmenter classes must be comma-separated names like 'sky,tree,door', got {text!r}.")
    if len(set(names)) != len(names):
        raise UserError(f"segmenter classes must be distinct, got {text!r}.")
    return tuple(names)


def load_segmenter(path: str | Path | None = None, classes: str | Sequence[str] | None = None) -> Segmenter:
    """The default profile's segmenter (path None), a `SceneSegmenter` state dict, or a TorchScript file; probed once."""
    p = Path(path) if path is not None else default_profile().segmenter
    if p is None:
        raise UserError("no segmenter given and the default generator brings none; pass --segmenter.")
    names = parse_classes(classes)
    if not p.is_file():
        hint = " Train it with 'python scripts/train_segmenter.py'." if path is None else " Check --segmenter."
        raise UserError(f"segmenter file {p} does not exist.{hint}")
    if _is_torchscript(p):
        try:
            module: nn.Module = torch.jit.load(str(p), map_location="cpu")
        except RuntimeError as e:
            raise UserError(f"cannot load TorchScript segmenter {p} ({str(e).splitlines()[0][:200]}).") from None
        names = _named(p, names)
    else:
        if not zipfile.is_zipfile(p):
            raise UserError(f"segmenter {p} is neither a TorchScript file nor a PyTorch state dict file.")
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  any unreadable file is the user's input problem
            raise UserError(f"segmenter {p} is neither TorchScript nor a readable state dict ({str(e).splitlines()[0][:160]}).") from None
        if not isinstance(sd, dict) or "head.weight" not in sd or "enc1.0.weight" not in sd:
            raise UserError(f"segmenter {p} is not a SceneSegmenter state dict; give a TorchScript file for your own network.")
        k, width = int(sd["head.weight"].shape[0]), int(sd["enc1.0.weight"].shape[0])
        names = _named(p, names)
        if len(names) != k:
            raise UserError(f"segmenter {p} predicts {k} classes but {len(names)} class names were given.")
        module = SceneSegmenter(k, width)
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise UserError(f"segmenter {p} does not fit SceneSegmenter ({str(e).splitlines()[0][:160]}).") from None
    module.eval()
    module.to(devices.current())
    seg = Segmenter(module, tuple(names), str(p))
    try:
        seg.logits(np.zeros((1, 64, 64, 3), np.uint8))
    except UserError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        raise UserError(f"segmenter {p} failed on a 64x64 RGB probe image ({str(e).splitlines()[0][:160]}).") from None
    return seg


def confusion(pred: torch.Tensor, truth: torch.Tensor, k: int) -> torch.Tensor:
    """Confusion counts (k, k) int64, rows = truth, columns = prediction."""
    idx = truth.reshape(-1).long() * k + pred.reshape(-1).long()
    return torch.bincount(idx, minlength=k * k).reshape(k, k)


def iou_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Per-class IoU (k,) from a confusion matrix; NaN for a class absent from both truth and prediction."""
    cm = cm.double()
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))
