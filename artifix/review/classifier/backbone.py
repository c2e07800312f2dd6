"""Classifier inputs: pooled backbone features, the backbone's last spatial grid (for exact CAMs) and pixel statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ... import defaults
from ...errors import RuntimeFailure, UserError
from ...metrics.extractor import as_uint8_nhwc
from ...metrics.features import get_extractor
from ...model import devices
from ...progress import Progress

PIXEL_STATS = "pixel-stats-v1"
PIXEL_STAT_NAMES: tuple[str, ...] = ("r", "g", "b", "r2", "g2", "b2", "saturation", "saturation2", "value", "contrast")


def _opt(name: str) -> Any:
    """The `classify` default `name`."""
    return defaults.get("classify", name)

@dataclass
class FeatureSet:
    """Precomputed inputs of the classifier for N images: pooled backbone features, optional spatial grid, pixel stats."""

    features: str  # backbone name, e.g. "effnet-lite0"
    pooled: np.ndarray  # (N, D) float32: mean over the grid cells
    pixels: np.ndarray | None = None  # (N, P) float64 means of per-pixel statistics
    grid: np.ndarray | None = None  # (N, D, h, w) float32 last spatial feature grid (large: only for small N)

    def __len__(self) -> int:
        return int(self.pooled.shape[0])

    def subset(self, index: np.ndarray | Sequence[int]) -> "FeatureSet":
        """The same features restricted to rows `index`."""
        idx = np.asarray(index, dtype=np.int64)
        return FeatureSet(
            self.features,
            self.pooled[idx],
            None if self.pixels is None else self.pixels[idx],
            None if self.grid is None else self.grid[idx],
        )


def _check_images(images: Any, what: str = "images") -> np.ndarray:
    """Images (uint8, NHWC or NCHW, numpy or torch) as a uint8 RGB NHWC array; anything else is a UserError."""
    return as_uint8_nhwc(images, what)


def _pixel_maps_t(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel statistics (N, P, H, W) of RGB images (N, H, W, 3) in [0, 1], in the order of PIXEL_STAT_NAMES."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    hi, lo = x.amax(-1), x.amin(-1)
    sat = hi - lo
    lum = x.mean(-1)
    dx = (lum.diff(dim=2, append=lum[:, :, -1:])).abs()
    dy = (lum.diff(dim=1, append=lum[:, -1:, :])).abs()
    contrast = (dx + dy).clamp(max=1.0)
    return torch.stack([r, g, b, r * r, g * g, b * b, sat, sat * sat, hi, contrast], dim=1)


def _pixel_maps(images: np.ndarray) -> np.ndarray:
    """Per-pixel statistics (N, P, H, W) float64 of uint8 NHWC images."""
    return _pixel_maps_t(torch.from_numpy(np.ascontiguousarray(images)).double() / 255.0).numpy()


def pixel_stats(images: np.ndarray) -> np.ndarray:
    """Means of the per-pixel statistics PIXEL_STAT_NAMES for each image: (N, P) float64."""
    images = _check_images(images)
    out = np.empty((len(images), len(PIXEL_STAT_NAMES)), np.float64)
    for s in range(0, len(images), 256):
        out[s:s + 256] = _pixel_maps(images[s:s + 256]).mean(axis=(2, 3))
    return out


# Module (relative to the extractor's `net`) whose output is the last spatial feature grid; the extractor's pooled
# feature is exactly the mean of that grid over its cells, which makes the linear model's CAM exact. The
# top-level `_swish` of EfficientNet runs twice per forward (stem, then head): the last call is the head's grid.
GRID_MODULES: dict[str, str] = {"effnet-lite0": "model._swish", "inception": "Mixed_7c"}


def _feature_batch() -> int:
    """Images per backbone forward pass (the metrics `feature_batch` option)."""
    return int(defaults.get("metrics", "feature_batch"))


class _Backbone:
    """A feature extractor from artifix.metrics (`get_extractor`) plus a forward hook that captures its last spatial grid."""

    def __init__(self, name: str):
        if name not in GRID_MODULES:
            raise UserError(
                f"classifier backbone {name!r} has no known spatial feature grid for localisation; "
                f"use one of {', '.join(GRID_MODULES)}."
            )
        self.name = name
        self.extractor = get_extractor(name, batch=_feature_batch())
        mods = dict(self.extractor.net.named_modules())
        if GRID_MODULES[name] not in mods:
            raise RuntimeFailure(f"the {name} extractor has no module {GRID_MODULES[name]!r} to read its feature grid from.")
        self.grid_module = mods[GRID_MODULES[name]]

    def __call__(self, images: np.ndarray, grid: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Pooled features (B, D) and, when asked, the grid (B, D, h, w) of uint8 NHWC images, in one pass."""
        if not grid:
            return self.extractor(images), None
        grids: list[np.ndarray] = []
        last: list[torch.Tensor] = []

        def hook(_m: Any, _inp: Any, out: torch.Tensor) -> None:
            last[:] = [out]

        def flush(_m: Any, _inp: Any, _out: Any) -> None:
            grids.append(last[0].float().contiguous().cpu().numpy().copy())

        h1 = self.grid_module.register_forward_hook(hook)
        h2 = self.extractor.net.register_forward_hook(flush)  # once per batch, after the grid's last call
        try:
            pooled = self.extractor(images)
        finally:
            h1.remove()
            h2.remove()
        g = np.concatenate(grids) if grids else np.zeros((0, pooled.shape[1], 1, 1), np.float32)
        if g.shape[:2] != pooled.shape:
            raise RuntimeFailure(
                f"the captured {self.name} feature grid {g.shape} does not match its pooled features {pooled.shape}."
            )
        return pooled, g


_BACKBONES: dict[tuple[str, str], _Backbone] = {}


def _backbone(name: str) -> _Backbone:
    """The cached backbone `name` on the current device."""
    key = (name, str(devices.current()))
    if key not in _BACKBONES:
        _BACKBONES[key] = _Backbone(name)
    return _BACKBONES[key]


def compute_features(
    images: np.ndarray,
    features: str | None = None,
    *,
    grid: bool = False,
    pixels: bool = True,
    batch: int | None = None,
) -> FeatureSet:
    """Run the backbone once over `images` (uint8 NHWC): pooled features, pixel statistics and optionally the grid."""
    images = _check_images(images)
    features = features or _opt("backbone")
    batch = int(batch or _feature_batch())
    bb = _backbone(features)
    pooled: list[np.ndarray] = []
    grids: list[np.ndarray] = []
    bar = Progress(len(images), "classifier features")
    for s in range(0, len(images), batch):
        p, g = bb(images[s:s + batch], grid)
        pooled.append(np.asarray(p, np.float32))
        if grid:
            grids.append(np.asarray(g, np.float32))
        bar.update(len(p))
    bar.close()
    d = pooled[0].shape[1] if pooled else int(bb.extractor.dim)
    return FeatureSet(
        features,
        np.concatenate(pooled) if pooled else np.zeros((0, d), np.float32),
        pixel_stats(images) if pixels else None,
        (np.concatenate(grids) if grids else None) if grid else None,
    )


def _resolve_features(
    images: np.ndarray | None, features: FeatureSet | np.ndarray | None, name: str, pixels: bool, grid: bool = False
) -> FeatureSet:
    """A FeatureSet from precomputed features (a FeatureSet or an (N, D) array) or else from images."""
    if features is None:
        if images is None:
            raise UserError("pass images or precomputed features.")
        return compute_features(images, name, grid=grid, pixels=pixels)
    if isinstance(features, FeatureSet):
        fs = features
    else:
        arr = np.asarray(features)
        if arr.ndim != 2:
            raise UserError(f"precomputed features must be an (N, D) array; got shape {arr.shape}.")
        fs = FeatureSet(name, arr.astype(np.float32, copy=False))
    if not np.isfinite(fs.pooled).all():
        raise UserError("precomputed features contain NaN or infinite values.")
    if pixels and fs.pixels is None:
        if images is None:
            raise UserError("pixel statistics are needed: pass the images along with the precomputed features.")
        fs = FeatureSet(fs.features, fs.pooled, pixel_stats(images), fs.grid)
    if grid and fs.grid is None:
        if images is None:
            raise UserError("a spatial feature grid is needed: pass images or features computed with grid=True.")
        fs = compute_features(images, fs.features, grid=True, pixels=pixels)
    if images is not None and len(np.asarray(images)) != len(fs):
        raise UserError(f"got {len(np.asarray(images))} images but {len(fs)} rows of precomputed features.")
    return fs
