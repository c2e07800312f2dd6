"""The dissection drawn: per-layer bar charts of interpretable units per concept, and the Markdown report."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..concepts.dissect import LayerDissection, class_index, summary_rows
from .tables import table_markdown


_PALETTE = [(70, 130, 220), (200, 200, 210), (240, 200, 40), (110, 160, 60), (180, 120, 90), (190, 60, 45), (60, 90, 160),
            (110, 70, 40), (30, 110, 40), (150, 80, 160), (60, 170, 170), (220, 120, 160)]


def chart(d: LayerDissection, width: int = 520) -> np.ndarray:
    """A bar chart (uint8 HxWx3) of the number of interpretable units per concept in one layer."""
    counts = d.counts()
    rows = list(counts.items())
    bar_h, top, left = 18, 30, 90
    h = top + bar_h * len(rows) + 12
    img = Image.new("RGB", (width, h), (255, 255, 255))
    dr = ImageDraw.Draw(img)
    dr.text((8, 8), f"{d.layer}: {d.interpretable()} of {d.units} units interpretable (IoU > {d.iou_min:g}), n={d.n}", fill=(0, 0, 0))
    most = max([v for _, v in rows] + [1])
    span = width - left - 50
    for i, (name, v) in enumerate(rows):
        y = top + i * bar_h
        dr.text((8, y + 3), name, fill=(0, 0, 0))
        w = int(round(span * v / most))
        if w:
            dr.rectangle([left, y + 2, left + w, y + bar_h - 3], fill=_PALETTE[i % len(_PALETTE)])
        dr.text((left + w + 6, y + 3), str(v), fill=(0, 0, 0))
    return np.asarray(img)


def charts(res: dict[str, LayerDissection]) -> np.ndarray:
    """The per-layer charts stacked vertically (uint8 HxWx3)."""
    parts = [chart(d) for d in res.values()]
    sep = np.full((6, parts[0].shape[1], 3), 230, np.uint8)
    out = [parts[0]]
    for p in parts[1:]:
        out += [sep, p]
    return np.concatenate(out)


def report_markdown(res: dict[str, LayerDissection], ace: Sequence[dict[str, Any]] = (), top: int = 5,
                    concepts: Sequence[str] = ()) -> str:
    """The dissection report: counts per layer, top units of some concepts, causal checks."""
    first = next(iter(res.values()))
    cols = ["layer", "units", "interpretable", *first.classes]
    lines = [f"# Dissection ({first.n} samples)", "", f"Interpretable units (best concept IoU > {first.iou_min:g}), by concept:", "",
             table_markdown(summary_rows(res), cols), "", "![chart](dissection.png)", ""]
    for c in concepts:
        rows = []
        for name, d in res.items():
            k = class_index(d.classes, c)
            for u in d.top_units(c, top):
                best = d.classes[int(d.iou[u].argmax())]
                rows.append({"layer": name, "unit": u, f"IoU({c})": float(d.iou[u, k]), "best concept": best})
        lines += [f"## Top {top} `{c}` units per layer", "", table_markdown(rows, ["layer", "unit", f"IoU({c})", "best concept"], ".3f"), ""]
    if ace:
        rows = [{"layer": a["layer"], "concept": a["concept"], "units": len(a["units"]), "n": a["n"],
                 "pixels before": a["pixels_before"],
                 "removed": "{:.1%} [{:.1%}, {:.1%}]".format(a["removed_fraction"], *a["removed_ci"]),
                 "random control removed": "{:.1%} [{:.1%}, {:.1%}]".format(a["control_removed_fraction"], *a["control_removed_ci"])}
                for a in ace]
        lines += ["## Causal check: ablate a concept's top units", "",
                  table_markdown(rows, ["layer", "concept", "units", "n", "pixels before", "removed", "random control removed"]), ""]
    return "\n".join(lines)

