"""The region painter adapter: a reviewer paints or boxes the artifact region of one sample; we get a boolean mask.

Pages call `paint_region(...)` only. The painter behind it is chosen by name from `PAINTERS`:

- `drawable-canvas`: streamlit-drawable-canvas 0.13 (Fabric.js; freehand strokes or rectangles over the
  image). Its drawing comes back as Fabric JSON, which `fabric_to_mask` rasterises at the image's size.
  The package is imported only when it is used: 0.13 declares a Streamlit "components v2" component whose
  assets are found by the running Streamlit server (`streamlit run`, AppTest), so a bare `import
  streamlit_drawable_canvas` in a plain Python process raises. If it cannot be loaded the page falls back
  to `box` and says so.
- `box`: a rectangle from four sliders (no JavaScript); used as the fallback and where a test needs to
  set a region programmatically.

Another component replaces the canvas by `register("name", painter)`, where a painter is
`(image: uint8 HxWx3, key: str, mode: "paint" | "box", brush: int, scale: int) -> bool HxW mask or None`.
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable

import numpy as np
import streamlit as st

from artifix.model.images import heat_overlay
from PIL import Image, ImageDraw

Painter = Callable[..., "np.ndarray | None"]
PAINTERS: dict[str, Painter] = {}
STROKE = "#ff00ff"
FILL = "rgba(255, 0, 255, 0.35)"


def register(name: str, painter: Painter) -> None:
    """Make `painter` available as --canvas NAME."""
    PAINTERS[name] = painter


def paint_region(image: np.ndarray, key: str, painter: str = "drawable-canvas", mode: str = "paint", brush: int = 4,
                 scale: int = 5) -> np.ndarray | None:
    """Show `image` for painting with the named painter; the drawn region as a bool mask of the image's size, or None."""
    fn = PAINTERS.get(painter)
    if fn is None:
        st.warning(f"unknown region painter {painter!r} (known: {', '.join(sorted(PAINTERS))}); using 'box'.")
        fn = PAINTERS["box"]
    try:
        return fn(image, key, mode=mode, brush=brush, scale=scale)
    except _Unavailable as e:
        st.warning(f"the drawing canvas is unavailable ({e}); using the box selector instead.")
        return PAINTERS["box"](image, key, mode="box", brush=brush, scale=scale)


class _Unavailable(Exception):
    pass


def _upscaled_png(image: np.ndarray, scale: int) -> bytes:
    h, w = image.shape[:2]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).resize((w * scale, h * scale), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def _drawable_canvas(image: np.ndarray, key: str, *, mode: str, brush: int, scale: int) -> np.ndarray | None:
    try:
        from streamlit_drawable_canvas import st_canvas  # optional, and only importable in a running server (docstring)
    except Exception as e:  # noqa: BLE001  (the component's own import errors vary by Streamlit version)
        raise _Unavailable(f"{type(e).__name__}: {e}") from None
    h, w = image.shape[:2]
    res = st_canvas(fill_color=FILL, stroke_width=max(1, int(brush * scale)), stroke_color=STROKE,
                    background_image=_upscaled_png(image, scale), update_streamlit=True, height=h * scale, width=w * scale,
                    drawing_mode="freedraw" if mode == "paint" else "rect", key=key)
    if not res.json_data or not res.json_data.get("objects"):
        return None
    return fabric_to_mask(res.json_data, (h * scale, w * scale), (h, w))


def _box(image: np.ndarray, key: str, *, mode: str = "box", brush: int = 0, scale: int = 5) -> np.ndarray | None:
    h, w = image.shape[:2]
    c1, c2 = st.columns(2)
    x0, x1 = c1.slider("x range (pixels)", 0, w, (0, 0), key=f"{key}-x")
    y0, y1 = c2.slider("y range (pixels)", 0, h, (0, 0), key=f"{key}-y")
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    st.image(heat_overlay(image, mask.astype(np.float32)), width=w * scale, caption="box (drag the sliders)")
    return mask if mask.any() else None


def fabric_to_mask(drawing: dict[str, Any], canvas_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """Rasterise a Fabric.js drawing (paths, rects, circles, lines) drawn on a canvas of canvas_hw into a bool image_hw mask."""
    ch, cw = canvas_hw
    layer = Image.new("L", (cw, ch), 0)
    d = ImageDraw.Draw(layer)
    for obj in drawing.get("objects", []):
        typ = str(obj.get("type", "")).lower()
        sx, sy = float(obj.get("scaleX", 1) or 1), float(obj.get("scaleY", 1) or 1)
        width, height = float(obj.get("width", 0)) * sx, float(obj.get("height", 0)) * sy
        ox = {"left": 0.0, "center": 0.5, "right": 1.0}.get(obj.get("originX", "left"), 0.0)
        oy = {"top": 0.0, "center": 0.5, "bottom": 1.0}.get(obj.get("originY", "top"), 0.0)
        left = float(obj.get("left", 0)) - ox * width
        top = float(obj.get("top", 0)) - oy * height
        sw = float(obj.get("strokeWidth", 1) or 0)
        if typ in ("rect", "labeledrect"):
            d.rectangle([left, top, left + width + sw * sx, top + height + sw * sy], fill=255)
        elif typ in ("circle", "ellipse"):
            d.ellipse([left, top, left + width + sw * sx, top + height + sw * sy], fill=255)
        elif typ == "path":
            pts = _path_points(obj.get("path") or [])
            if not pts:
                continue
            po = obj.get("pathOffset") or {}
            # Fabric draws path points relative to pathOffset around the object's centre
            cx = left + (width + sw * sx) / 2
            cy = top + (height + sw * sy) / 2
            px, py = float(po.get("x", cx)), float(po.get("y", cy))
            pts = [(cx + (x - px) * sx, cy + (y - py) * sy) for x, y in pts]
            r = max(sw * max(sx, sy) / 2, 0.5)
            d.line(pts, fill=255, width=max(1, int(round(2 * r))), joint="curve")
            for x, y in (pts[0], pts[-1]):
                d.ellipse([x - r, y - r, x + r, y + r], fill=255)
        elif typ == "line":
            x1, y1, x2, y2 = (float(obj.get(k, 0)) for k in ("x1", "y1", "x2", "y2"))
            cx, cy = left + width / 2, top + height / 2
            d.line([(cx + x1 * sx, cy + y1 * sy), (cx + x2 * sx, cy + y2 * sy)], fill=255, width=max(1, int(sw)))
    ih, iw = image_hw
    small = layer.resize((iw, ih), Image.BOX)  # fraction of each image pixel that is painted
    return np.asarray(small) >= 64  # a pixel counts when at least a quarter of it is painted


def _path_points(path: list[Any]) -> list[tuple[float, float]]:
    """The points of an SVG-like Fabric path (M, L, Q, C commands), curves sampled."""
    pts: list[tuple[float, float]] = []
    for cmd in path:
        if not cmd:
            continue
        op, args = str(cmd[0]).upper(), [float(a) for a in cmd[1:]]
        if op in ("M", "L") and len(args) >= 2:
            pts.append((args[0], args[1]))
        elif op == "Q" and len(args) >= 4 and pts:
            (x0, y0), (x1, y1), (x2, y2) = pts[-1], (args[0], args[1]), (args[2], args[3])
            for t in np.linspace(0.25, 1, 4):
                pts.append(((1 - t) ** 2 * x0 + 2 * (1 - t) * t * x1 + t * t * x2, (1 - t) ** 2 * y0 + 2 * (1 - t) * t * y1 + t * t * y2))
        elif op == "C" and len(args) >= 6 and pts:
            (x0, y0) = pts[-1]
            for t in np.linspace(0.25, 1, 4):
                a, b, c, e = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t * t, t ** 3
                pts.append((a * x0 + b * args[0] + c * args[2] + e * args[4], a * y0 + b * args[1] + c * args[3] + e * args[5]))
    return [p for p in pts if all(math.isfinite(v) for v in p)]


register("drawable-canvas", _drawable_canvas)
register("box", _box)
