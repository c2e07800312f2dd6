"""Review page: the review queue as a grid; one click flags a sample; paint or box its artifact region.

Every click is written to the label store at once (`LabelStore.set_flag` / `set_mask`), attributed to this
session's reviewer; nothing is kept only in the browser.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st
from streamlit.components.v1 import html

from artifix import session
from artifix.errors import UserError
from artifix.model.images import heat_overlay

from . import canvas, first_page, queue_cache
from . import review_grid as grid
from .state import Dash

@st.cache_resource(show_spinner="ordering the review queue (priors and classifier)", max_entries=16)
def _queue(fingerprint: str, layer: str, seed: int, start: int, pool: int, clf_key: str, _d: Dash) -> session.Queue:
    """The whole pool in review order (labelled samples are skipped when a batch is drawn)."""
    def compute() -> session.Queue:
        with _d.using_g() as g:
            return session.review_queue(g, layer, _d.store, _d.run_id, seed=seed, start=start, n=pool, k=pool,
                                        stats=_d.stats(), clf=_d.classifier(), cache=_d.cache, skip_labelled=False,
                                        real=_d.opts.get("real"))

    clf = _d.opts.get("classifier") or "artifix-classifier.pt"
    key = queue_cache.queue_key(fingerprint, layer, seed, start, pool, int(_d.opts["stats_n"]), clf if _d.classifier() is not None else None)
    return queue_cache.cached(_d.cache, key, compute)


def _prepare(d: Dash) -> tuple[session.Queue, Any]:
    """The queue, with a skeleton and staged progress while the first load computes it (statistics, then the order)."""
    key = (d.g.fingerprint, d.layer, d.seed, d.opts["start"], d.opts["pool"], d.classifier_key())
    if st.session_state.get("_queue_ready") == key:
        return queue_for(d), None
    if st.session_state.pop("_first_page_drawn", False):  # the kept page is on screen: no skeleton over it
        d.stats()
        st.session_state["_queue_ready"] = key
        return queue_for(d), None
    slot = st.empty()
    with slot.container():
        progress_box, grid = st.container(), st.container()
        for c in grid.columns(3):  # a skeleton of the grid, drawn before any heavy work (the grid replaces it)
            c.container(border=True, height=180).caption("…")
        with progress_box, st.status("Preparing the review queue", expanded=True) as status:
            st.write(f"1/3 unit statistics of `{d.layer}` on {d.opts['stats_n']} samples (cached on disk after the first start)")
            d.stats()
            st.write(f"2/3 ordering the {d.opts['pool']} samples of the pool (priors"
                     + (", classifier" if d.classifier() is not None else "") + "; cached on disk by content)")
            q = queue_for(d)
            st.write(f"3/3 drawing the first {d.opts['page_size']} tiles")
            status.update(label="Review queue ready", state="complete")
    st.session_state["_queue_ready"] = key
    return q, slot


def queue_for(d: Dash) -> session.Queue:
    """The cached review order of this run's pool."""
    o = d.opts
    return _queue(d.g.fingerprint, d.layer, d.seed, int(o["start"]), int(o["pool"]), d.classifier_key(), _d=d)


def save_mask(d: Dash, sample: int, mask: np.ndarray) -> int:
    """Save a painted region now; a painted sample is an artifact sample, so it is flagged as one if it is not yet."""
    return session.save_painted_mask(d.store, d.run_id, int(sample), d.reviewer, mask)


def render(d: Dash) -> None:
    """The Review page."""
    st.header("Review")
    q, skeleton = _prepare(d)
    st.caption(grid.order_caption(q.order))
    grid.counters(d)
    if "last_error" in st.session_state:
        st.error(st.session_state.pop("last_error"))
    batch_key = f"batch-{d.run_id}"
    if batch_key not in st.session_state or st.session_state.get("batch_order") != (q.order, d.classifier_key()):
        st.session_state[batch_key] = grid.next_batch(d, q.samples)
        st.session_state["batch_order"] = (q.order, d.classifier_key())
    batch: list[int] = st.session_state[batch_key]
    top = st.columns([1, 1, 1.4, 1.4, 2.2])
    if top[0].button("Next batch", key="next-batch", icon=":material/skip_next:", help="the next unlabelled samples in queue order"):
        st.session_state[batch_key] = batch = grid.next_batch(d, q.samples)
    with top[1].popover("Classifier", icon=":material/model_training:"):
        _train_panel(d)
    _undo_button(d, top[2], top[3], top[4])
    if not batch:
        if skeleton is not None:
            skeleton.empty()
        st.success("Every sample of the review pool is labelled. Score the units on the Units page.")
        return
    labels, masked = grid.labels_and_masked(d)
    images = d.images(batch)
    first_page.save(d.cache, d.opts, d.g, d.run_id, d.layer, q, batch, images)  # the next start draws this page without torch
    if skeleton is not None:
        skeleton.empty()  # the progress and skeleton give way to the grid
    left, right = st.columns([2, 1], gap="large")
    with left:
        grid.grid(d, q, batch, images, labels, masked)
    with right, st.container(key="paint-panel"):
        _paint_panel(d, batch, images)


def _paint_panel(d: Dash, batch: list[int], images: np.ndarray) -> None:
    s = st.session_state.get("paint_sample")
    if s not in batch:
        s = batch[0]
    im = images[batch.index(s)]
    st.subheader(f"Artifact region of sample #{s}")
    _scroll_here()
    c1, c2 = st.columns(2)
    mode = c1.segmented_control("tool", ["paint", "box"], default="paint", key="paint_mode",
                                help="paint with a brush, or drag a box") or "paint"
    brush = c2.slider("brush (image pixels)", 1, 12, 4, key="brush")
    mask = canvas.paint_region(im, key=f"canvas-{d.run_id}-{s}-{mode}", painter=str(d.opts.get("canvas") or "drawable-canvas"),
                               mode=mode, brush=brush, scale=5)
    last = st.session_state.setdefault("saved_masks", {})
    if mask is not None:
        digest = hash(mask.tobytes())
        if last.get(s) != digest:
            try:
                save_mask(d, s, mask)
                last[s] = digest
            except UserError as e:
                st.error(str(e))
            else:
                st.rerun()  # the counters and badges above now include this region
    stored = d.store.mask(d.run_id, s)
    if stored is not None and stored.any():
        st.image(heat_overlay(im, stored.astype(np.float32)), width=160,
                 caption=f"saved region: {int(stored.sum())} px (union over reviewers); sample flagged artifact")
    else:
        st.caption("Draw on the image: each stroke is saved to the label store as you draw, and the sample is flagged 'artifact'.")


def _scroll_here() -> None:
    """After a click on Paint, scroll the paint panel into view (a lower tile's canvas would be off-screen above)."""
    n = st.session_state.get("scroll_to_paint", 0)
    if n:  # drawn on every rerun with the same content: the frame (and its one scroll) survives later reruns
        # repeated for 3 s: the canvas and the tiles' images above it finish their layout after this script runs
        html(f"<script>/* {n} */ let k = 0; const t = setInterval(() => {{"
             " const p = window.parent.document.querySelector('.st-key-paint-panel');"
             " if (p) p.scrollIntoView({block: 'start'}); if (++k >= 15) clearInterval(t); }, 200);</script>", height=0)


def _said_flag(r: dict) -> str:
    return (f"undid your '{r['undone_label']}' on sample {r['sample']}: it is now "
            + (f"'{r['restored_label']}'" if r["restored_label"] else "unlabelled") + " (audit log: undo_flag)")


def _said_mask(r: dict) -> str:
    return (f"undid your painted mask of sample {r['sample']} ({r['pixels']} px): "
            + ("your earlier mask is back" if r["restored_mask_id"] else "no mask of yours now")
            + ("; its 'artifact' flag from painting is undone too" if r.get("unflagged") else "") + " (audit log: undo_mask)")


def _undo(d: Dash, what: str) -> None:
    """Undo this reviewer's latest label or painted mask (button callback): a new audit event, nothing deleted."""
    undo, said = (d.store.undo_last_flag, _said_flag) if what == "flag" else (d.store.undo_last_mask, _said_mask)
    try:
        r = undo(d.run_id, d.reviewer)
    except UserError as e:
        st.session_state["last_error"] = str(e)
        return
    st.session_state["last_saved"] = "nothing to undo" if r is None else said(r)


def _undo_button(d: Dash, where: Any, where_paint: Any, msg: Any) -> None:
    mine = d.store.reviewer_flags(d.run_id, d.reviewer)
    why = (f"undo your latest label ({len(mine)} sample(s) carry a label of yours); recorded in the audit log, nothing deleted"
           if len(mine) else f"disabled: {d.reviewer} has no label left to undo in this run")
    where.button("Undo my last label", key="undo-label", icon=":material/undo:", disabled=not len(mine), help=why,
                 on_click=_undo, args=(d, "flag"))
    recs = d.store.mask_records(d.run_id)
    painted = recs[recs.reviewer == d.reviewer]
    why_paint = (f"undo your latest painted mask ({len(painted)} sample(s) carry a mask of yours); recorded in the audit log, "
                 "nothing deleted" if len(painted) else f"disabled: {d.reviewer} has no painted mask left to undo in this run")
    where_paint.button("Undo my last paint", key="undo-mask", icon=":material/format_paint:", disabled=not len(painted),
                       help=why_paint, on_click=_undo, args=(d, "mask"))
    if "last_saved" in st.session_state:
        msg.caption(st.session_state.pop("last_saved"))
    elif not len(mine):
        msg.caption(f"Undo is disabled: {d.reviewer} has no label to undo yet.")


def _train_panel(d: Dash) -> None:
    flagged, clean = session.flagged_and_clean(d.store, d.run_id)
    st.write(f"Train the artifact classifier on the {len(flagged)} flagged and {len(clean)} clean samples; "
             "the queue then switches to active-learning order.")
    clf = d.classifier()
    if clf is not None:
        r = clf.report
        st.caption(f"current classifier: cross-validated ROC-AUC {r.get('auc', float('nan')):.3f} "
                   f"on {r.get('n_pos')} flagged / {r.get('n_neg')} clean")
    need = 2  # what cross-validated training needs (artifix.review.classifier.train_classifier)
    short = min(len(flagged), len(clean)) < need
    why = (f"disabled: needs at least {need} artifact and {need} clean flags; you have {len(flagged)} artifact and {len(clean)} clean"
           if short else "train on the current flags (cross-validated)")
    if short:
        st.caption("Train classifier is " + why)
    if st.button("Train classifier", disabled=short, key="train", help=why):
        with st.spinner("training (features of the labelled samples, cross-validation)"):
            try:
                with d.using_g() as g:
                    session.train_from_store(g, d.store, d.run_id, d.seed, d.opts.get("classifier") or "artifix-classifier.pt")
            except UserError as e:
                st.error(str(e))
                return
        st.rerun()


def page(d: Dash) -> Any:
    """Entry point used by app.py."""
    return render(d)
