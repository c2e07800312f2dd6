"""Image grids, overlays and PNG writing (uint8 NHWC in, files written atomically)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import write_bytes_atomic


def grid(images: np.ndarray, ncol: int | None = None, pad: int = 2, scale: int = 1, fill: int = 255) -> np.ndarray:
    """Tile uint8 images (N, H, W, C) into one (rows*H, cols*W, C) image with `pad` pixels between tiles."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    ncol = ncol or max(1, int(math.ceil(math.sqrt(n))))
    nrow = max(1, int(math.ceil(n / ncol)))
    out = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), fill, np.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = images[i]
    if scale > 1:
        out = out.repeat(scale, 0).repeat(scale, 1)
    return out if c != 1 else out[..., 0]


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 HxW or HxWxC array as PNG bytes (deterministic: no timestamps)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 image as PNG atomically; returns the path."""
    write_bytes_atomic(path, png_bytes(image))
    return Path(path)


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """Darken a uint8 HxWx3 image and light up a [0, 1] heat map (h, w, upsampled) in green-cyan over it."""
    h, w = image.shape[:2]
    hm = np.asarray(Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR), np.float32) / 255.0
    colour = np.stack([np.zeros_like(hm), np.ones_like(hm), hm], -1) * 255.0
    image = image.astype(np.float32) * 0.6
    a = (alpha * np.sqrt(hm))[..., None]
    return np.clip(image.astype(np.float32) * (1 - a) + colour * a, 0, 255).astype(np.uint8)
