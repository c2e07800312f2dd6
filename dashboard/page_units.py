"""Units page: the ranked unit table with every score component, a unit card, and a live ablation preview."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from artifix import progress, session
from artifix.concepts.dissect import concepts_of_units
from artifix.errors import UserError
from artifix.units.cautions import ranking_caution, unit_cautions
from artifix.model.images import grid, heat_overlay
from artifix.report.unitviz import top_card

from .progress_ui import stages
from .state import Dash

FIRST_COLUMNS = ["rank", "unit", "status", "combined", "causal", "causal_se", "iou", "auc", "prob_drop", "mask_change",
                 "flagged_change", "collateral", "first_order", "iqr", "iou_threshold", "firing_rate", "rarity", "mean"]


@st.cache_resource(show_spinner=False, max_entries=8)
def _score(fingerprint: str, layer: str, seed: int, labels: str, clf_key: str, settings: tuple, _d: Dash):
    """The score report for one state of the labels (cached by content)."""
    exact_top, collateral_weight, rare_rate = settings
    with _d.using_g() as g, progress.muted():  # a cached function: no live updates of the box outside it
        return session.score_run(g, layer, _d.store, _d.run_id, _d.stats(), seed=seed, clf=_d.classifier(),
                                 exact_top=exact_top, collateral_weight=collateral_weight, rare_rate=rare_rate)


def _score_args(d: Dash) -> tuple:
    """What a score report depends on: generator, layer, seed, the labels' state, the classifier and the settings."""
    o = d.opts
    return (d.g.fingerprint, d.layer, d.seed, session.label_state(d.store, d.run_id), d.classifier_key(),
            (int(o["exact_top"]), float(o["collateral_weight"]), float(o["rare_rate"])))


def current_scores(d: Dash) -> dict[int, dict[str, float]]:
    """{unit: its numeric scores} of this session's ranking when it is for the current labels, else {}."""
    rep = st.session_state.get("last_report")
    if rep is None or st.session_state.get("scored") != "score:" + repr(_score_args(d)):
        return {}
    return {int(r["unit"]): {k: float(v) for k, v in r.items() if isinstance(v, float)} for r in rep.table.to_dict("records")}


def score_report(d: Dash, compute: bool):
    """The cached report for the current labels; computed only when `compute` (a button) asks for it."""
    args = _score_args(d)
    key = "score:" + repr(args)
    if compute or st.session_state.get("scored") == key:
        with stages("scoring units: statistics, IoU against the painted regions, exact ablations of the candidates"):
            rep = _score(*args, _d=d)
        st.session_state["scored"] = key
        st.session_state["last_report"] = rep
        return rep, True
    return st.session_state.get("last_report"), False


def ranked_table(d: Dash, rep: Any, diss: Any = None) -> pd.DataFrame:
    """The ranking with every component, each unit's latest decision from the store, and its best concept (with a dissection)."""
    dec = d.store.unit_decisions(d.run_id)
    status = {int(u): s for u, s, lay in zip(dec["unit"], dec["status"], dec["layer"]) if lay == d.layer}
    t = rep.table.copy()
    t["status"] = [status.get(int(u), "") for u in t["unit"]]
    first = list(FIRST_COLUMNS)
    if diss is not None:
        best = {r["unit"]: r for r in diss.best()}
        t["concept"] = [best[int(u)]["concept"] for u in t["unit"]]
        t["concept_iou"] = [best[int(u)]["iou"] for u in t["unit"]]
        first[3:3] = ["concept", "concept_iou"]
    cols = [c for c in first if c in t] + [c for c in t.columns if c not in first and c != "layer"]
    return t[cols]


def render(d: Dash) -> None:
    """The Units page."""
    st.header(f"Units of `{d.layer}`")
    flagged, clean = session.flagged_and_clean(d.store, d.run_id)
    masks = d.store.counts(d.run_id)["masked"]
    c = st.columns([2, 1, 1])
    c[0].caption(f"Scores from {len(flagged)} flagged ({masks} painted) and {len(clean)} clean samples"
                 + (" and the artifact classifier." if d.classifier() is not None else "; no artifact classifier yet."))
    go = c[1].button("Score units", type="primary", icon=":material/calculate:", key="score")
    rep, fresh = score_report(d, go)
    if rep is None:
        st.info("Press **Score units** to rank the units of this layer from the current labels "
                "(without labels the cold-start prior ranks them: rarely-activated units with strong peaks).")
        return
    if not fresh:
        st.warning("The labels changed since this ranking was computed; press **Score units** to update it.")
    few = ranking_caution(rep.n_flagged, rep.n_clean, d.opts.get("trust_labels"))
    if few:
        st.warning(few, icon=":material/warning:")
    top_n = int(d.opts["top"])
    if c[2].button(f"Propose top {top_n}", icon=":material/playlist_add:", key="propose-top"):
        new = session.propose_top(d.store, d.run_id, rep.table, top_n, actor=d.reviewer, note="proposed in the dashboard")
        st.toast(f"proposed units {new}" if new else "the top units already have decisions")
    diss, why = layer_dissection(d)
    table = ranked_table(d, rep, diss)
    st.dataframe(table, hide_index=True, height=300, width="stretch",
                 column_config={"status": st.column_config.TextColumn(width="small"),
                                "concept": st.column_config.TextColumn(width="small", help="the unit's best-matching segmenter class"),
                                **{k: st.column_config.NumberColumn(format="%.3f") for k in table.columns
                                   if k not in ("rank", "unit", "status") and table[k].dtype.kind == "f"}})
    st.caption("combined = 0.6 causal + 0.2 IoU + 0.2 AUC as robust z-scores; causal = change inside the painted regions minus "
               "outside, minus the collateral on clean samples (exact ablation of the candidates); iou = IoU@IQR against the "
               "regions; auc = flagged vs clean by the unit's peak; firing_rate / rarity = the cold-start prior"
               + ("; concept / concept_iou = the unit's best-matching segmenter class and its IoU." if diss is not None else "."))
    units = [int(u) for u in rep.table["unit"]]
    c = st.columns([2, 1], vertical_alignment="bottom")
    u = c[0].selectbox("unit card", units, index=0, key="card_unit", format_func=lambda x: f"unit {x} (rank {units.index(x) + 1})")
    cautions = unit_cautions(rep.table.set_index("unit").loc[u].to_dict(), unit_concepts(diss, u))
    if cautions:
        st.warning(f"Unit {u}: " + " ".join(cautions) + " Approving it will ask for a note.", icon=":material/warning:")
    if c[1].button(f"Propose unit {u} for removal", key="propose-one", icon=":material/add_task:"):
        d.store.propose_unit(d.run_id, d.layer, u, d.reviewer, note="proposed in the dashboard",
                             scores={k: float(v) for k, v in rep.table.set_index("unit").loc[u].items() if isinstance(v, float)})
        st.toast(f"unit {u} proposed")
    _card(d, u, diss, why)
    _preview(d, units, u)


def _card(d: Dash, u: int, diss: Any = None, why: str | None = None) -> None:
    stats = d.stats()
    with d.using_g() as g:
        img = top_card(g, stats, u, d.seed)
    st.image(img, width=min(img.shape[1], 1100),
             caption=f"unit {u}: its top activating samples, each beside where the unit fires on it (its map normalised per "
             f"sample; outlined: above half its range; red cross: its peak; firing rate {float(stats.firing_rate()[u]):.1%})")
    concepts_line(d, u, diss, why)


NO_SEGMENTER = ("No segmenter for this generator, so no concepts: start the dashboard with --segmenter FILE "
                "(and --segmenter-classes) to see what each unit draws.")


def layer_dissection(d: Dash) -> tuple[Any, str | None]:
    """(the run layer's concept dissection, None) or (None, why there is none)."""
    try:
        diss = d.dissection(d.layer)
    except UserError as e:
        return None, f"No concepts: {e}"
    return (diss, None) if diss is not None else (None, NO_SEGMENTER)


def unit_concepts(diss: Any, u: int, top: int = 3) -> list[tuple[str, float]]:
    """The concepts unit `u` draws above the dissection's IoU threshold (none without a dissection)."""
    if diss is None:
        return []
    (row,) = concepts_of_units(diss, [int(u)], top=top)
    return [(str(c["concept"]), float(c["iou"])) for c in row["concepts"]]


def concepts_line(d: Dash, u: int, diss: Any, why: str | None) -> None:
    """The unit's best-matching concepts with their IoU, or one line saying why there are none."""
    if diss is None:
        st.caption(why or NO_SEGMENTER)
        return
    (row,) = concepts_of_units(diss, [u], top=3)
    found = " ".join(f":blue-badge[{c['concept']} {c['iou']:.2f}]" for c in row["concepts"])
    st.markdown(f"**Unit {u} draws** {found or f'no concept above IoU {diss.iou_min:g}'}")
    st.caption(f"the unit's top concepts by IoU with the segmenter's classes (threshold by IQR, {diss.n} samples of {d.layer}): "
               "what removing it may also take away")


def _preview(d: Dash, units: list[int], u: int) -> None:
    st.subheader("Live ablation preview")
    chosen = st.multiselect("units to ablate", units, default=[u], key=f"ablate-{u}")
    n = int(d.opts["preview_n"])
    flagged, clean = session.flagged_and_clean(d.store, d.run_id)
    if not flagged:
        idx, _ = d.stats().top_samples(n)
        flagged = [int(i) for i in idx[u].tolist()[:n]]
        st.caption("no flagged samples yet: the unit's top activating samples stand in for them")
    cols = st.columns(2, gap="large")
    for col, (name, ids) in zip(cols, (("flagged", flagged[:n]), ("clean", clean[:n]))):
        if not ids:
            col.caption(f"no {name} samples yet")
            continue
        with d.using_g() as g:
            before, after, diff = session.before_after(g, d.layer, d.seed, chosen, ids)
        heat = np.stack([heat_overlay(b, m) for b, m in zip(before, diff)])
        img = grid(np.concatenate([before, after, heat]), ncol=len(ids), scale=2)
        col.image(img, width="content",  # its own 2x size, never wider than the column: a single sample is not blown up
                 caption=f"{name} samples {ids} — rows: before; units {chosen} ablated; where pixels changed "
                         f"(mean change {float(diff.mean()):.3f})")
