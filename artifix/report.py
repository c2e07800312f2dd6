"""Pictures a reviewer looks at: unit cards (top activating samples with the unit's map overlaid)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .generator import LoadedGenerator
from .images import grid, heat_overlay, save_png
from .scoring import trace_batches
from .stats import UnitStats


def unit_card(g: LoadedGenerator, layer: str, seed: int, unit: int, samples: Sequence[int], scale: float | None = None) -> np.ndarray:
    """One row per sample pair: the image and the image with the unit's activation overlaid (uint8 HxWx3)."""
    tiles = []
    for _, acts, imgs in trace_batches(g, layer, seed, list(samples), images=True):
        a = acts[:, unit].float()
        s = float(scale) if scale else float(a.max().clamp(min=1e-8))
        for im, m in zip(imgs.numpy(), a.numpy()):
            tiles += [im, heat_overlay(im, np.clip(m / s, 0, 1))]
    return grid(np.stack(tiles), ncol=min(len(tiles), 8), scale=2)


def captioned(card: np.ndarray, text: str) -> np.ndarray:
    """The card with a white strip of text above it (e.g. the unit's high-activation score)."""
    im = Image.new("RGB", (card.shape[1], card.shape[0] + 14), (255, 255, 255))
    im.paste(Image.fromarray(card), (0, 14))
    ImageDraw.Draw(im).text((2, 1), text, fill=(0, 0, 0))
    return np.asarray(im)


def unit_cards(g: LoadedGenerator, stats: UnitStats, units: Sequence[int], seed: int, out_dir: str | Path, k: int = 8,
               captions: Mapping[int, str] | None = None) -> list[Path]:
    """Write `unit_<layer>_<u>.png` for each unit: its k top activating samples, plain and with the map overlaid (+ caption)."""
    idx, _ = stats.top_samples(k)
    paths = []
    for u in units:
        path = Path(out_dir) / f"unit_{stats.layer}_{int(u)}.png"
        card = unit_card(g, stats.layer, seed, int(u), idx[int(u)].tolist(), float(stats.max[int(u)]))
        save_png(path, captioned(card, captions[int(u)]) if captions and int(u) in captions else card)
        paths.append(path)
    return paths


def table_markdown(rows: list[dict], columns: Sequence[str], floatfmt: str = ".3f") -> str:
    """A Markdown table of `columns` from dict rows."""
    def fmt(v: object) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return "nan" if np.isnan(v) else format(v, floatfmt)
        return str(v)

    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |\n" for r in rows)


