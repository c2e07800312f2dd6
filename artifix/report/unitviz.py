"""Unit cards that show where a unit fires: each sample's map normalised on its own, the firing region outlined,
and its peak marked (instead of a global-scale wash that looks the same everywhere).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..model.generator import LoadedGenerator
from ..model.images import grid, save_png
from ..units.scoring import trace_batches
from ..units.stats import UnitStats

OUTLINE = (255, 220, 0)  # the firing region's contour
PEAK = (255, 40, 40)  # the peak marker


def normalised(act: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One sample's (h, w) activation map min-max normalised to [0, 1] and upsampled (bilinear) to `size` (H, W)."""
    a = np.asarray(Image.fromarray(np.asarray(act, np.float32)).resize((size[1], size[0]), Image.BILINEAR), np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def marked(image: np.ndarray, act: np.ndarray, level: float = 0.5) -> np.ndarray:
    """`image` dimmed outside where the unit fires above `level` of its own range, the region outlined, the peak crossed."""
    h, w = image.shape[:2]
    m = normalised(act, (h, w))
    region = m >= level
    out = image.astype(np.float32)
    out[~region] *= 0.35
    out = out.astype(np.uint8)
    p = np.pad(region, 1)
    inner = p[2:, 1:-1] & p[:-2, 1:-1] & p[1:-1, 2:] & p[1:-1, :-2]
    out[region & ~inner] = OUTLINE
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    r = max(2, h // 24)
    out[max(y - r, 0): y + r + 1, x] = PEAK
    out[y, max(x - r, 0): x + r + 1] = PEAK
    return out


def unit_card(g: LoadedGenerator, layer: str, seed: int, unit: int, samples: Sequence[int], per_row: int = 4) -> np.ndarray:
    """Pairs (sample, where the unit fires on it), `per_row` pairs a row, at 2x (uint8 HxWx3)."""
    tiles = []
    for _, acts, imgs in trace_batches(g, layer, seed, list(samples), images=True):
        for im, a in zip(imgs.numpy(), acts[:, unit].float().numpy()):
            tiles += [im, marked(im, a)]
    return grid(np.stack(tiles), ncol=min(len(tiles), 2 * per_row), scale=2)


def top_card(g: LoadedGenerator, stats: UnitStats, unit: int, seed: int, k: int = 8) -> np.ndarray:
    """The unit card of the `k` samples where `unit` fires most (by its spatial max): what the CLI writes and the dashboard shows."""
    idx, _ = stats.top_samples(k)
    return unit_card(g, stats.layer, seed, int(unit), idx[int(unit)].tolist()[:k])


def captioned(card: np.ndarray, text: str) -> np.ndarray:
    """The card with a white strip of text above it (e.g. the unit's high-activation score)."""
    im = Image.new("RGB", (card.shape[1], card.shape[0] + 14), (255, 255, 255))
    im.paste(Image.fromarray(card), (0, 14))
    ImageDraw.Draw(im).text((2, 1), text, fill=(0, 0, 0))
    return np.asarray(im)


def unit_cards(g: LoadedGenerator, stats: UnitStats, units: Sequence[int], seed: int, out_dir: str | Path, k: int = 8,
               captions: Mapping[int, str] | None = None) -> list[Path]:
    """Write `unit_<layer>_<u>.png` for each unit: its `top_card` (+ caption)."""
    paths = []
    for u in units:
        path = Path(out_dir) / f"unit_{stats.layer}_{int(u)}.png"
        card = top_card(g, stats, int(u), seed, k)
        save_png(path, captioned(card, captions[int(u)]) if captions and int(u) in captions else card)
        paths.append(path)
    return paths
