"""Paint page (GANpaint): switch a concept's units on or off inside a region of one sample and see the result.

The user picks a sample, a layer, a concept (its top units by IoU in the layer's dissection) or explicit units,
add or remove, and draws the region with the region painter (`canvas.paint_region`). The edit itself is
`artifix.session.paint_sample` -> `artifix.concepts.dissect.paint`, the same code as `artifix paint`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import streamlit as st

from artifix import session
from artifix.errors import UserError
from artifix.model.images import png_bytes

from . import canvas
from .state import Dash

SCALE = 5  # shown size = image pixels x SCALE (nearest neighbour)


@st.cache_data(max_entries=64, show_spinner=False)
def _painted(fingerprint: str, layer: str, seed: int, index: int, mode: str, units: tuple[int, ...], mask_digest: str,
             _mask: np.ndarray, _d: Dash) -> session.Painted:
    """One edit, cached by its inputs (the mask by a digest of all its pixels)."""
    with _d.using_g() as g:
        return session.paint_sample(g, layer, seed, index, _mask, mode, units)


def _big(image: np.ndarray) -> np.ndarray:
    return image.repeat(SCALE, 0).repeat(SCALE, 1)  # nearest neighbour: keep the pixels sharp


def choose_units(d: Dash, layer: str) -> tuple[list[int] | None, str]:
    """The concept or explicit units the user picked: (units, how they were chosen), or (None, why not)."""
    seg_error = None
    try:
        seg = d.segmenter()
    except UserError as e:
        seg, seg_error = None, str(e)
    c = st.columns([1, 2, 1], vertical_alignment="bottom")
    by = c[0].segmented_control("paint with", ["concept", "units"], default="concept" if seg is not None else "units",
                                key="paint-by", disabled=seg is None,
                                help="a concept's top units by IoU, or units you name" if seg is not None else
                                "concepts are disabled: there is no segmenter for this generator (--segmenter FILE)") or "units"
    if by == "units" or seg is None:
        if seg is None:
            st.caption(seg_error or "No segmenter for this generator, so no concepts: name the units to paint with, or start "
                       "the dashboard with --segmenter FILE (and --segmenter-classes).")
        text = c[1].text_input("units", key="paint-units", placeholder="3, 17, 42",
                               help=f"comma-separated units of {layer}")
        if not text.strip():
            return None, ("Name the units to paint with (comma-separated)." if seg is None else
                          "Name the units to paint with (comma-separated), or pick a concept.")
        return session.paint_units(text), "units you named"
    classes = list(seg.classes)
    concept = c[1].selectbox("concept", classes, index=classes.index("tree") if "tree" in classes else 0, key="paint-concept",
                             help="the segmenter's classes")
    k = int(c[2].number_input("top units", 1, 512, int(d.opts.get("ace_units") or 20), key="paint-k",
                              help="how many of the concept's units, best IoU first"))
    diss = d.dissection(layer)
    units = session.paint_units(None, diss, concept, min(k, diss.units))
    ci = diss.classes.index(concept)
    ious = [float(diss.iou[u, ci]) for u in units]
    return units, f"the top {len(units)} '{concept}' units of {layer} (IoU {ious[0]:.2f} .. {ious[-1]:.2f})"


def render(d: Dash) -> None:
    """The Paint page."""
    st.header("Paint")
    st.caption("Switch a set of units on (**add**: set to their 99th-percentile activation) or off (**remove**: set to 0) "
               "inside a region of one sample, as in GANpaint, and see what they draw. A concept's units are its top units "
               "by IoU in the layer's dissection.")
    layers, default = session.paint_layers(d.g, d.layer)
    c = st.columns([1, 1, 1, 2], vertical_alignment="bottom")
    index = int(c[0].number_input("sample", 0, 10**7, 0, key="paint-index", help=f"index of the sample (seed {d.seed})"))
    layer = c[1].selectbox("layer", layers, index=layers.index(default), key="paint-layer")
    mode = c[2].segmented_control("mode", ["add", "remove"], default="add", key="paint-mode") or "add"
    tool = c[3].segmented_control("tool", ["paint", "box"], default="paint", key="paint-tool",
                                  help="paint with a brush, or drag a box") or "paint"
    try:
        units, how = choose_units(d, layer)
    except UserError as e:
        st.error(str(e))
        return
    image = d.images([index])[0]
    heads = st.columns(3, gap="medium")
    for col, text in zip(heads, ("**Region**", "**Before**", "**After**")):
        col.markdown(text)  # one row of titles, so the canvas toolbar (top right of the canvas) has room
    left, mid, right = st.columns(3, gap="medium", vertical_alignment="bottom")
    with left:
        mask = canvas.paint_region(image, key=f"paint-region-{index}-{tool}", painter=str(d.opts.get("canvas") or "drawable-canvas"),
                                   mode=tool, brush=6, scale=SCALE)
        st.caption(f"region: {'paint' if tool == 'paint' else 'drag a box'} where the units go"
                   + (f" ({int(mask.sum())} px)" if mask is not None else ""))
    if mask is None or units is None:
        mid.image(_big(image), caption=f"before: sample {index}")
        right.info(how if units is None else "Draw the region to paint on the left: the edited sample appears here.")
        return
    try:
        with st.spinner(f"{mode} {len(units)} units of {layer} in the region"):
            digest = hashlib.sha256(np.packbits(mask).tobytes() + str(mask.shape).encode()).hexdigest()
            p = _painted(d.g.fingerprint, layer, d.seed, index, mode, tuple(units), digest, _mask=mask, _d=d)
    except UserError as e:
        right.error(str(e))
        return
    st.session_state["painted"] = p
    with mid.container(key="paint-before"):
        st.image(_big(session.region_outline(p.before, p.mask)), caption=f"before: sample {index}, region outlined")
    with right.container(key="paint-after"):
        st.image(_big(p.after), caption=f"after: {mode} {len(p.units)} units of {layer}")
    _summary(p, how)


def _summary(p: session.Painted, how: str) -> None:
    with st.container(key="paint-summary"):
        _summary_text(p, how)


def _summary_text(p: session.Painted, how: str) -> None:
    st.markdown(f"{p.mode.capitalize()} {how}: units {', '.join(map(str, p.units))}.  \n"
                f"Mean change per pixel: **{p.change_inside:.3f}** inside the region ({int(p.mask.sum())} px), "
                f"**{p.change_outside:.3f}** outside (what the edit leaks beyond the region; 0 = none, 1 = every pixel "
                "changed completely).")
    both = np.concatenate([session.region_outline(p.before, p.mask), np.full((p.before.shape[0], 2, 3), 255, np.uint8), p.after], 1)
    st.download_button("Download before | after (PNG)", png_bytes(both.repeat(4, 0).repeat(4, 1)), icon=":material/download:",
                       file_name=f"paint_{p.layer}_{p.index}_{p.mode}.png", mime="image/png", key="paint-download")


def page(d: Dash) -> Any:
    """Entry point (as the other pages)."""
    return render(d)
