"""The plain numpy SWD that bench/ compares artifix's SWD against (the same protocol, patch centres and directions).

It lives in bench/ so that the benchmarks run from a plain install (no pytest, no tests/); tests/test_metrics_swd.py
keeps its own copy as the test suite's reference.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

import artifix.metrics.swd as S


def _ref_pyramid(x: np.ndarray, levels: int) -> list:
    """Laplacian pyramid with scipy.ndimage (mirror borders), as the ProGAN code builds it."""
    g = S.GAUSS.astype(np.float64)[None, None]

    def down(a):
        return scipy.ndimage.convolve(a, g, mode="mirror")[:, :, ::2, ::2]

    def up(a, shape):
        z = np.zeros(a.shape[:2] + (2 * a.shape[2], 2 * a.shape[3]), a.dtype)
        z[:, :, ::2, ::2] = a
        return scipy.ndimage.convolve(z, g * 4.0, mode="mirror")[:, :, : shape[0], : shape[1]]

    pyr = [x]
    for _ in range(1, levels):
        pyr.append(down(pyr[-1]))
    for i in range(levels - 1):
        pyr[i] = pyr[i] - up(pyr[i + 1], pyr[i].shape[2:])
    return pyr


def swd_reference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, list]:
    """Straightforward numpy SWD on uint8 NHWC sets of equal size, with the module's patch centres and
    directions (so both compute the same numbers): flat-index patch gather, per-channel normalisation,
    then for each of 4 x 128 directions np.sort along the sample axis."""
    levels = S.num_levels(*a.shape[1:3])
    per_level = []
    for lvl in range(levels):
        descs = []
        for imgs in (a, b):
            x = imgs.transpose(0, 3, 1, 2).astype(np.float32)
            L = _ref_pyramid(x, levels)[lvl]
            n, c, h, w = L.shape
            ys, xs = S.patch_centres(seed, lvl, np.arange(n), h, w)
            img, ch, dy, dx = np.ogrid[0:n * 128, 0:3, -3:4, -3:4]
            yy = ys.reshape(-1)[:, None, None, None] + dy
            xx = xs.reshape(-1)[:, None, None, None] + dx
            idx = ((img // 128 * c + ch) * h + yy) * w + xx
            d = L.flat[idx].astype(np.float64)  # (n*128, 3, 7, 7)
            d = (d - d.mean(axis=(0, 2, 3), keepdims=True)) / d.std(axis=(0, 2, 3), keepdims=True)
            descs.append(d.reshape(n * 128, -1))
        dirs = S.directions(seed, lvl).astype(np.float64)
        dists = []
        for r in range(4):
            d = dirs[:, r * 128 : (r + 1) * 128]
            pa = np.sort(descs[0] @ d, axis=0)
            pb = np.sort(descs[1] @ d, axis=0)
            dists.append(np.abs(pa - pb).mean())
        per_level.append(np.mean(dists) * 1e3)
    return float(np.mean(per_level)), per_level
