"""Approvals page: approve or reject each proposed removal with a note; the audit history.

The approver check runs here on the server, in `LabelStore.decide_unit(..., approvers=...)`, against the
approvers configured when the dashboard started (`--approvers` / `[labels] approvers`): hiding buttons in the
browser is never the check.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

from artifix import session
from artifix.units.cautions import check_approval, ranking_caution, unit_cautions
from artifix.errors import UserError

from .page_units import current_scores, layer_dissection, unit_concepts
from .state import Dash


def decide(d: Dash, layer: str, unit: int, status: str, note: str | None = None, cautions: list[str] | None = None) -> None:
    """Record one decision through the store's server-side approver check (button callback); a cautioned approval needs a note."""
    if note is None:  # the note box's value when the button was pressed
        note = str(st.session_state.get(f"note-{layer}-{unit}") or "")
    try:
        if may_approve(d):  # a reviewer who may not approve is refused by the store's check, whatever the note
            check_approval(status, cautions or [], note)
        d.store.decide_unit(d.run_id, layer, int(unit), status, d.reviewer, note=note, approvers=d.approvers)
        st.session_state["decision_msg"] = ("success", f"unit {unit} {status} by {d.reviewer}")
    except UserError as e:
        st.session_state["decision_msg"] = ("error", str(e))


def may_approve(d: Dash) -> bool:
    """Whether this session's reviewer is one of the configured approvers (anyone when none are configured)."""
    return d.approvers is None or d.reviewer in d.approvers


def render(d: Dash) -> None:
    """The Approvals page."""
    st.header("Approvals")
    who = (f"You are **{d.reviewer}**" + (" (set when the dashboard was started)." if d.pinned_reviewer else " (name from the sidebar)."))
    if d.approvers is None:
        st.caption(who + " No approvers are configured, so any reviewer may approve; set `--approvers alice,bob` "
                   "(or `[labels] approvers` in artifix.toml) to restrict it.")
    elif may_approve(d):
        st.caption(who + f" You are an approver (approvers: {', '.join(sorted(d.approvers))}).")
    else:
        st.warning(who + f" Only {', '.join(sorted(d.approvers)) or 'nobody'} may approve or reject; the server refuses other names.")
    msg = st.session_state.pop("decision_msg", None)
    if msg:
        (st.success if msg[0] == "success" else st.error)(msg[1])
    dec = d.store.unit_decisions(d.run_id)
    flagged, clean = session.flagged_and_clean(d.store, d.run_id)
    few = ranking_caution(len(flagged), len(clean), d.opts.get("trust_labels"))
    if few and not dec.empty:
        st.warning(few.replace("This ranking", "The ranking behind these proposals (if it used the current labels)"),
                   icon=":material/warning:")
    diss = _dissection(d) if not dec.empty else None
    fresh = {(d.layer, u): v for u, v in current_scores(d).items()}  # the Units page's ranking, when it is for these labels
    if dec.empty:
        st.info("No units proposed yet: score the units and propose the top ones on the Units page.")
    for status in ("proposed", "approved", "rejected"):
        rows = dec[dec.status == status]
        if rows.empty:
            continue
        st.subheader(f"{status.capitalize()} ({len(rows)})")
        for r in rows.itertuples():
            with st.container(border=True, key=f"dec-{r.layer}-{r.unit}"):
                c = st.columns([1.2, 3, 3, 1, 1])
                c[0].markdown(f"**unit {r.unit}**  \n`{r.layer}`")
                sc, source = _scores(r, fresh)
                c[1].caption(", ".join(f"{k} {sc[k]:.3f}" for k in ("combined", "causal", "iou", "auc") if isinstance(sc.get(k), (int, float)))
                             + source + f"  \nlast: {r.status} by {r.reviewer}" + (f" — “{r.note}”" if r.note else ""))
                cautions = unit_cautions(sc, _concepts(diss, r.layer, r.unit) if r.layer == d.layer else [])
                c[2].text_input("note", key=f"note-{r.layer}-{r.unit}",
                                placeholder=("required: why approve it despite the caution" if cautions and status != "approved"
                                             else "why (recorded in the audit log)"), label_visibility="collapsed")
                c[3].button("Approve", key=f"approve-{r.layer}-{r.unit}", type="primary", icon=":material/check:",
                            on_click=decide, args=(d, r.layer, r.unit, "approved", None, cautions), disabled=status == "approved",
                            help="disabled: already approved" if status == "approved" else
                            ("needs a note: this unit has cautions" if cautions else "approve removing this unit"))
                c[4].button("Reject", key=f"reject-{r.layer}-{r.unit}", icon=":material/close:",
                            on_click=decide, args=(d, r.layer, r.unit, "rejected"), disabled=status == "rejected",
                            help="disabled: already rejected" if status == "rejected" else "reject removing this unit")
                if cautions:
                    st.warning(f"Caution on unit {r.unit}: " + " ".join(cautions)
                               + (" Approving it needs a note." if status != "approved" else ""), icon=":material/warning:")
    st.subheader("Audit history")
    audit = d.store.audit(d.run_id)
    if not audit.empty:
        audit = audit.sort_values("id", ascending=False)
        audit["detail"] = [json.dumps(x, sort_keys=True)[:300] for x in audit["detail"]]
        st.dataframe(audit[["id", "time", "actor", "action", "detail"]], hide_index=True, width="stretch", height=320)
    st.caption("The audit log is append-only (database triggers refuse updates and deletes).")


def _scores(r: Any, fresh: dict[tuple[str, int], dict[str, float]]) -> tuple[dict[str, Any], str]:
    """A proposal's scores and where they come from: stored with it, else the current ranking's (proposed without scores)."""
    stored = r.scores if isinstance(r.scores, dict) else {}
    if isinstance(stored.get("causal"), (int, float)):
        return stored, ""
    now = fresh.get((str(r.layer), int(r.unit)))
    if now:
        return now, " (from the Units page's ranking of the current labels: proposed without a measured causal effect)"
    return stored, ""


def _dissection(d: Dash):
    """The run layer's dissection for collateral cautions, or None (no segmenter, or it failed: the Units page says why)."""
    return layer_dissection(d)[0]


def _concepts(diss, layer: str, unit: int) -> list[tuple[str, float]]:
    return unit_concepts(diss, int(unit))


def audit_frame(d: Dash) -> pd.DataFrame:
    """The run's audit log (for tests and downloads)."""
    return d.store.audit(d.run_id)
