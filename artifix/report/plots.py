"""Report pictures drawn with Pillow: a forest plot of each metric's change with its interval (repair beside the
random-unit control, or a gate's candidate beside its threshold) and the k-sweep curves."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

from ..results import metric_rows

BLUE, GREY, RED, INK, LIGHT = (31, 97, 179), (150, 150, 150), (200, 40, 40), (30, 30, 30), (225, 225, 225)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval (lo, hi may be None when no interval was computed)."""

    value: float
    lo: float | None = None
    hi: float | None = None

    def finite(self) -> bool:
        """Whether the estimate can be drawn."""
        return self.value is not None and math.isfinite(self.value)


@dataclass(frozen=True)
class ForestRow:
    """One metric: up to two estimates (e.g. repair and random control) on the plot's common axis."""

    label: str
    first: Interval | None
    second: Interval | None = None
    marker: float | None = None  # a threshold line for this row (gate)


def _font(size: int = 13) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _span(rows: Sequence[ForestRow]) -> tuple[float, float]:
    vals = [0.0]
    for r in rows:
        for iv in (r.first, r.second):
            if iv is not None and iv.finite():
                vals += [v for v in (iv.value, iv.lo, iv.hi) if v is not None and math.isfinite(v)]
        if r.marker is not None and math.isfinite(r.marker):
            vals.append(r.marker)
    lo, hi = min(vals), max(vals)
    pad = 0.08 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, k: int = 5) -> list[float]:
    step = 10 ** math.floor(math.log10((hi - lo) / k))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (m * step) <= k:
            step *= m
            break
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 10) for i in range(int((hi - start) / step) + 1)]


def forest_plot(rows: Sequence[ForestRow], title: str, axis: str, legend: tuple[str, str | None] = ("repair", "random control"),
                width: int = 760) -> Image.Image:
    """Each row's estimates as points with horizontal interval bars around a zero line; returns an RGB image."""
    font, small = _font(13), _font(11)
    left, right, top, row_h = 170, 30, 54, 34
    height = top + row_h * max(len(rows), 1) + 46
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    lo, hi = _span(rows)
    x = lambda v: left + (v - lo) / (hi - lo) * (width - left - right)  # noqa: E731
    d.text((10, 8), title, fill=INK, font=font)
    d.line([(left, 36), (left + 18, 36)], fill=BLUE, width=3)
    d.text((left + 24, 29), legend[0], fill=INK, font=small)
    if legend[1]:
        d.line([(left + 150, 36), (left + 168, 36)], fill=GREY, width=3)
        d.text((left + 174, 29), legend[1], fill=INK, font=small)
    base = top + row_h * len(rows)
    for t in _ticks(lo, hi):
        d.line([(x(t), top), (x(t), base)], fill=LIGHT)
        d.text((x(t) - 12, base + 6), f"{t:g}", fill=INK, font=small)
    d.line([(x(0), top - 4), (x(0), base)], fill=INK, width=1)
    d.text((left, base + 24), axis, fill=INK, font=small)
    for i, r in enumerate(rows):
        y = top + row_h * i + row_h // 2
        d.text((10, y - 8), r.label[:24], fill=INK, font=font)
        if r.marker is not None and math.isfinite(r.marker):
            d.line([(x(r.marker), y - 12), (x(r.marker), y + 12)], fill=RED, width=2)
        for iv, colour, dy in ((r.first, BLUE, -6), (r.second, GREY, 6)):
            if iv is None or not iv.finite():
                continue
            if iv.lo is not None and iv.hi is not None and math.isfinite(iv.lo) and math.isfinite(iv.hi):
                d.line([(x(iv.lo), y + dy), (x(iv.hi), y + dy)], fill=colour, width=3)
            cx = x(iv.value)
            d.ellipse([cx - 5, y + dy - 5, cx + 5, y + dy + 5], fill=colour)
    return img


def _relative(change: float | None, ci: Sequence[float] | None, before: float | None) -> Interval | None:
    """A paired change as a percentage of the value before (None when that value is 0 or missing)."""
    if change is None or not before or not math.isfinite(float(before)):
        return None
    s = 100.0 / abs(float(before))
    return Interval(float(change) * s, *(float(c) * s for c in ci)) if ci else Interval(float(change) * s)


def repair_rows(sub: Mapping[str, Any]) -> list[ForestRow]:
    """Forest rows of one subset of a repair manifest's metrics (the model card's rows, `results.metric_rows`):
    each metric's change as a % of its value before, repair and random control. The pixel change (0 before) is
    left out."""
    return [ForestRow(r["metric"], _relative(r["change"], r["change_ci"], r["before"]),
                      _relative(r["control_change"], r["control_ci"], r["before"]))
            for r in metric_rows(sub) if r["metric"] != "pixel change"]


def sweep_plot(sweep: Mapping[str, Any], width: int = 760) -> Image.Image:
    """The k sweep: each recorded metric against k (one panel per metric), k_best marked."""
    rows = sweep["rows"]
    keys = [k for k in ("fd", "swd", "artifact_rate") if rows and k in rows[0]]
    font, small = _font(13), _font(11)
    panel, left, right = 150, 70, 30
    img = Image.new("RGB", (width, 40 + panel * max(len(keys), 1)), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 8), f"k sweep over {sweep['layer']} ({sweep['n']} samples); k_best = {sweep['k_best']}", fill=INK, font=font)
    ks = [int(r["k"]) for r in rows]
    kmin, kmax = min(ks, default=0), max(ks, default=1)
    x = lambda k: left + (k - kmin) / max(kmax - kmin, 1) * (width - left - right)  # noqa: E731
    for p, key in enumerate(keys):
        y0, y1 = 40 + panel * p + 10, 40 + panel * (p + 1) - 30
        vals = [float(r[key]["value"]) for r in rows]
        finite = [v for v in vals if math.isfinite(v)] or [0.0]
        vlo, vhi = min(finite), max(finite)
        y = lambda v: y1 - (v - vlo) / ((vhi - vlo) or 1.0) * (y1 - y0)  # noqa: E731,B023
        d.rectangle([left, y0, width - right, y1], outline=LIGHT)
        d.text((10, y0), key, fill=INK, font=small)
        d.text((10, y0 + 16), f"{vhi:.3g}", fill=INK, font=small)
        d.text((10, y1 - 12), f"{vlo:.3g}", fill=INK, font=small)
        d.line([(x(sweep["k_best"]), y0), (x(sweep["k_best"]), y1)], fill=RED)
        drawn = [(x(k), y(v), r) for k, v, r in zip(ks, vals, rows) if math.isfinite(v)]
        if len(drawn) > 1:
            d.line([(px, py) for px, py, _ in drawn], fill=BLUE, width=2)
        for px, py, r in drawn:
            d.ellipse([px - 4, py - 4, px + 4, py + 4], fill=BLUE if r.get("helped") else GREY)
        for k in ks:
            d.text((x(k) - 3, y1 + 4), str(k), fill=INK, font=small)
    return img


def gate_rows(criteria: Sequence[Mapping[str, Any]]) -> list[ForestRow]:
    """Forest rows of a gate report's criteria against a baseline: the worsening (% of the baseline's value) with
    its interval, and the allowed worsening as a red mark. Absolute criteria and a zero baseline are left out."""
    rows = []
    for r in criteria:
        base = r.get("baseline")
        if r.get("against") != "baseline" or not base or r.get("change") is None or not math.isfinite(float(base)):
            continue
        s = (100.0 if r.get("direction", "lower") == "lower" else -100.0) / abs(float(base))
        lo, hi = sorted(float(v) * s for v in r["ci"])
        allowed = r.get("allowed_worsening")
        rows.append(ForestRow(f"{r['name']} ({r['status']})", Interval(float(r["change"]) * s, lo, hi),
                              marker=None if allowed is None else abs(float(allowed)) * 100.0 / abs(float(base))))
    return rows
