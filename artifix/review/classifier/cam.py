"""Localisation: exact class-activation maps of the linear model, pseudo masks, and the score as a torch function of G's output."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import UserError
from .backbone import FeatureSet, _backbone, _check_images, _feature_batch, _opt, _pixel_maps, _pixel_maps_t
from .model import ArtifactClassifier


def _cell_logits(clf: ArtifactClassifier, grid: np.ndarray) -> np.ndarray:
    """Per-cell logits (N, h, w) of the backbone part: their mean over cells is the backbone part of the logit."""
    d = clf.n_backbone
    w = clf.coef[:d] / clf.scale[:d]
    g = np.asarray(grid, np.float64)
    return np.einsum("ndhw,d->nhw", g, w) - float(w @ clf.mean[:d])


def _pixel_logits(clf: ArtifactClassifier, images: np.ndarray) -> np.ndarray:
    """Per-pixel logit contribution (N, H, W) of the pixel-statistics part (zero for the plain model)."""
    n, h, w_, _ = images.shape
    if not clf.pixel_stats:
        return np.zeros((n, h, w_))
    d = clf.n_backbone
    wp = clf.coef[d:] / clf.scale[d:]
    return np.einsum("nphw,p->nhw", _pixel_maps(images), wp) - float(wp @ clf.mean[d:])


def localize(
    clf: ArtifactClassifier,
    images: np.ndarray,
    *,
    precomputed: FeatureSet | None = None,
    normalize: bool = True,
    batch: int | None = None,
) -> np.ndarray:
    """Class-activation maps (N, H, W) float32: per-image min-max normalised to [0, 1] (raw logit maps if not normalize)."""
    images = _check_images(images)
    n, h, w, _ = images.shape
    batch = int(batch or _feature_batch())
    out = np.zeros((n, h, w), np.float32)
    if precomputed is not None and precomputed.grid is None:
        raise UserError("localize needs precomputed features with a spatial grid (compute_features(..., grid=True)).")
    if precomputed is not None and len(precomputed) != n:
        raise UserError(f"got {n} images but {len(precomputed)} rows of precomputed features.")
    for s in range(0, n, batch):
        ims = images[s:s + batch]
        if precomputed is not None:
            if precomputed.features != clf.features:
                raise UserError(
                    f"features were computed with {precomputed.features!r} but the classifier uses {clf.features!r}."
                )
            g = precomputed.grid[s:s + batch]
        else:
            if s == 0:
                clf.check_extractor()
            g = _backbone(clf.features)(ims, True)[1]
        cells = torch.from_numpy(_cell_logits(clf, g))[:, None]
        up = F.interpolate(cells, size=(h, w), mode="bilinear", align_corners=False)[:, 0].numpy()
        m = up + _pixel_logits(clf, ims) + clf.intercept
        if normalize:
            lo = m.min(axis=(1, 2), keepdims=True)
            span = m.max(axis=(1, 2), keepdims=True) - lo
            m = np.where(span > 1e-12, (m - lo) / np.where(span > 1e-12, span, 1.0), 0.0)
        out[s:s + batch] = m
    return out


def pseudo_masks(
    clf: ArtifactClassifier,
    images: np.ndarray,
    top_fraction: float | None = None,
    *,
    maps: np.ndarray | None = None,
    precomputed: FeatureSet | None = None,
) -> np.ndarray:
    """Pseudo artifact masks (N, H, W) bool: the top `top_fraction` of each image's localisation map."""
    top_fraction = float(_opt("top_fraction") if top_fraction is None else top_fraction)
    if not 0.0 < top_fraction <= 1.0:
        raise UserError(f"top_fraction must lie in (0, 1]; got {top_fraction}.")
    if maps is None:
        maps = localize(clf, images, precomputed=precomputed)
    maps = np.asarray(maps)
    n, h, w = maps.shape
    k = max(1, int(round(top_fraction * h * w)))
    flat = maps.reshape(n, -1)
    order = np.argsort(-flat, axis=1, kind="stable")[:, :k]  # ties: lower pixel index first
    masks = np.zeros_like(flat, dtype=bool)
    np.put_along_axis(masks, order, True, axis=1)
    return masks.reshape(n, h, w)


def differentiable_score(
    clf: ArtifactClassifier, value_range: str = "[-1,1]", logit: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A torch function: G's output (N, 1|3, H, W) in `value_range` -> p(artifact) (or its logit), differentiable."""
    if value_range not in ("[-1,1]", "[0,1]"):
        raise UserError(f"generator output range must be '[-1,1]' or '[0,1]'; got {value_range!r}.")
    ext = _backbone(clf.features).extractor
    w = torch.from_numpy(clf.coef / clf.scale)
    offset = float((clf.coef / clf.scale) @ clf.mean) - clf.intercept

    def score(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise UserError(f"the artifact score needs images shaped (N, 1 or 3, H, W); got {tuple(x.shape)}.")
        x = x.float().expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.float()
        x255 = ((x + 1.0) * 127.5 if value_range == "[-1,1]" else x * 255.0).clamp(0.0, 255.0)
        z = x255
        if ext.size is not None and tuple(z.shape[2:]) != tuple(ext.size):
            # antialiased bicubic, as PIL's (the extractor's) resize, within about 1e-3 grey levels
            z = F.interpolate(z, size=ext.size, mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 255.0)
        z = ext._normalise(z.to(ext.device))  # the extractor's device (G's, when both follow the current device)
        if ext.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        feats = ext.net(z).reshape(x.shape[0], -1).double().to(x.device)
        if clf.pixel_stats:
            stats = _pixel_maps_t(x255.permute(0, 2, 3, 1).double() / 255.0).mean(dim=(2, 3))
            feats = torch.cat([feats, stats], dim=1)
        out = feats @ w.to(feats.device) - offset
        return out if logit else torch.sigmoid(out)

    return score
