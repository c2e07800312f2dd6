"""The Review grid's parts that need no torch: counters, one tile with its label buttons, and the flag callback.

Both the full Review page (`page_review`) and the first page drawn from its snapshot while torch is still importing
(`first_page`) draw the grid with these, so the two look and behave the same. `d` is anything with `store`, `run_id`,
`reviewer` and `opts` (the page's `Dash`, or the snapshot's light view); `q` anything with `priors` and `probability`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import streamlit as st

from artifix.errors import UserError

LABEL_BUTTONS = (("artifact", "Artifact", ":material/broken_image:"), ("clean", "Clean", ":material/check_circle:"),
                 ("unsure", "Unsure", ":material/help:"))


def flag(d: Any, sample: int, label: str) -> None:
    """Save one flag now (button callback)."""
    try:
        d.store.set_flag(d.run_id, int(sample), label, d.reviewer)
        st.session_state["last_saved"] = f"sample {sample}: {label} (saved)"
    except UserError as e:
        st.session_state["last_error"] = str(e)


def next_batch(d: Any, samples: Sequence[int]) -> list[int]:
    """The next page of the queue: the first unlabelled samples in review order."""
    labelled = set(int(s) for s in d.store.flags(d.run_id)["sample"])
    return [int(s) for s in samples if int(s) not in labelled][: int(d.opts["page_size"])]


def counters(d: Any) -> None:
    """What is done: labels by kind, painted regions, this reviewer's share."""
    c = d.store.counts(d.run_id)
    mine = len(d.store.reviewer_flags(d.run_id, d.reviewer))
    cols = st.columns(6)
    cols[0].metric("labelled", c["labelled"])
    cols[1].metric("artifact", c["artifact"])
    cols[2].metric("clean", c["clean"])
    cols[3].metric("unsure", c["unsure"])
    cols[4].metric("painted", c["masked"])
    cols[5].metric(f"by {d.reviewer}", mine)
    pool = int(d.opts["pool"])
    flags = d.store.flags(d.run_id)
    start = int(d.opts["start"])
    in_pool = int(((flags["sample"] >= start) & (flags["sample"] < start + pool)).sum())
    st.progress(min(in_pool / max(pool, 1), 1.0), text=f"{in_pool} of the {pool} samples in the review pool labelled")


def order_caption(order: str) -> str:
    """The sentence under the header: which order the queue is in, and why."""
    return (f"Review queue in **{order}** order: "
            + ("samples the classifier is least sure about, interleaved with the most suspicious by the priors."
               if order == "active learning" else
               "no artifact classifier yet, so the priors order it (samples firing rarely-activated units strongly, "
               "and samples far from the reference data). Once you have flagged some, train it with Classifier → Train."))


def labels_and_masked(d: Any) -> tuple[dict[int, str], set[int]]:
    """The run's current label per sample, and the samples with a painted region."""
    flags, recs = d.store.flags(d.run_id), d.store.mask_records(d.run_id)
    labels = dict(zip(flags["sample"].astype(int), flags["label"]))
    masked = set(int(s) for s in recs[recs["pixels"] > 0]["sample"])  # not DataFrame.query: 0.34 s of a first load (cProfile)
    return labels, masked


def grid(d: Any, q: Any, batch: Sequence[int], images: np.ndarray, labels: dict[int, str], masked: set[int], ncol: int = 3) -> None:
    """The tiles of `batch`, `ncol` per row."""
    for r in range(0, len(batch), ncol):
        cols = st.columns(ncol)
        for c, (s, im) in enumerate(zip(batch[r:r + ncol], images[r:r + ncol])):
            with cols[c].container(border=True, key=f"tile-{s}"):
                tile(d, q, int(s), im, labels.get(int(s)), int(s) in masked)


def tile(d: Any, q: Any, s: int, im: np.ndarray, label: str | None, masked: bool) -> None:
    """One sample: its image, scores, label badge and the label / paint buttons."""
    st.image(im.repeat(4, 0).repeat(4, 1), width="stretch")  # nearest-neighbour: keep the pixels sharp
    info = [f"**#{s}**"]
    if q.probability:
        info.append(f"p={q.probability.get(s, float('nan')):.2f}")
    info.append(f"prior {q.priors.get(s, float('nan')):+.2f}")
    st.markdown(" · ".join(info) + ("  \n" + (f":{colour(label)}-badge[{label}]" if label else ":gray-badge[unlabelled]"))
                + (" :violet-badge[painted]" if masked else ""))
    for row in (LABEL_BUTTONS[:2], LABEL_BUTTONS[2:]):
        b = st.columns(2, gap="small")
        for col, (lab, text, _icon) in zip(b, row):
            col.button(text, key=f"flag-{s}-{lab}", help=f"save '{lab}' for sample {s} now",
                       type="primary" if label == lab else "secondary", on_click=flag, args=(d, s, lab), width="stretch")
    b[1].button("Paint", key=f"paint-{s}", width="stretch", help=f"paint or box the artifact region of sample {s}",
                type="primary" if st.session_state.get("paint_sample") == s else "tertiary",
                on_click=lambda: st.session_state.update(paint_sample=s, scroll_to_paint=st.session_state.get("scroll_to_paint", 0) + 1))


def colour(label: str) -> str:
    """The badge colour of a label."""
    return {"artifact": "red", "clean": "green", "unsure": "orange"}.get(label, "gray")
