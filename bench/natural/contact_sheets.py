"""Render numbered contact sheets of the example's samples for blind flagging by eye (no score is computed here)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from artifix.model.generator import load_generator, sample


def sheet(images: np.ndarray, first: int, ncol: int = 10, scale: int = 3) -> Image.Image:
    """A grid of images scaled up, each with its sample index written above it."""
    h, w = images.shape[1:3]
    cw, ch = w * scale, h * scale + 14
    rows = (len(images) + ncol - 1) // ncol
    canvas = Image.new("RGB", (ncol * cw, rows * ch), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, im in enumerate(images):
        x, y = (k % ncol) * cw, (k // ncol) * ch
        canvas.paste(Image.fromarray(im).resize((cw, h * scale), Image.NEAREST), (x, y + 14))
        draw.text((x + 2, y + 1), str(first + k), fill=(0, 0, 0))
    return canvas


def main() -> None:
    """Sample seed/start..start+n-1 and write sheets of `per` images each."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--n", type=int, default=480)
    p.add_argument("--per", type=int, default=60)
    p.add_argument("--out", default="bench/natural/sheets")
    a = p.parse_args()
    g = load_generator()
    imgs = sample(g, a.seed, a.start, a.n)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for s in range(0, a.n, a.per):
        sheet(imgs[s:s + a.per], a.start + s).save(out / f"sheet_{a.start + s:05d}.png")
    print(f"wrote {(a.n + a.per - 1) // a.per} sheets to {out}/")


if __name__ == "__main__":
    main()
