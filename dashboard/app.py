"""The artifix review dashboard (Streamlit).

Start it with `artifix dashboard [artifix options]` (binds 127.0.0.1, XSRF protection on), or with
`streamlit run dashboard/app.py -- [artifix options]` from the checkout (its .streamlit/config.toml keeps the
same safe settings). With no options it opens the bundled example and its label store. Every page calls the
same library functions as the CLI (artifix.session, artifix.labels, artifix.report, artifix.repair).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` puts only dashboard/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from artifix import serve, session  # noqa: E402
from artifix.errors import ArtifixError  # noqa: E402
from dashboard import page_ab, page_approvals, page_paint, page_repair, page_review, page_units  # noqa: E402
from dashboard.state import open_dash, resolve_settings  # noqa: E402

PAGES = {
    "Review": (":material/rate_review:", page_review.render),
    "Units": (":material/grid_view:", page_units.render),
    "Approvals": (":material/verified_user:", page_approvals.render),
    "Repair": (":material/build:", page_repair.render),
    "Paint": (":material/brush:", page_paint.render),
    "A/B": (":material/compare:", page_ab.render),
}


def sidebar(d) -> str:
    """Run facts, this session's reviewer, and the page choice."""
    with st.sidebar:
        st.markdown("## artifix")
        page = st.radio("page", list(PAGES), key="page", label_visibility="collapsed",
                        format_func=lambda p: f"{PAGES[p][0]} {p}")
        st.divider()
        if d.pinned_reviewer:
            st.text_input("reviewer", d.reviewer, disabled=True, help="set with --reviewer when the dashboard was started")
        else:
            st.text_input("reviewer", key="reviewer", value=d.reviewer,
                          help="your name, recorded with every label and decision")
        c = d.store.counts(d.run_id)
        st.caption(f"run **{d.run_id}** · generator `{d.g.fingerprint}` · layer `{d.layer}` · seed {d.seed}  \n"
                   f"store `{d.store.location}`  \n{c['labelled']} labelled · {c['masked']} painted · "
                   f"{c['proposed']} proposed · {c['approved']} approved")
        if "seeded" in st.session_state:
            st.success(st.session_state.pop("seeded"))
        if session.bundled_review_applies(d.store, d.run_id, d.g, d.layer, d.seed):
            st.button("Load the maintainers' example review", key="seed-review", icon=":material/playlist_add_check:",
                      on_click=load_example_review, args=(d,), width="stretch",
                      help="import the flags and approvals the maintainers recorded for this example (data/example/review/); "
                           "offered only while this run has no labels")
        others = [r for r in d.store.runs() if r.id != d.run_id]
        if others:
            st.caption(f"{len(others)} other run(s) in this store (other generators, layers or seeds): "
                       + ", ".join(f"{r.id} (`{r.fingerprint[:8]}`, {', '.join(r.layers)}, seed {r.seed})" for r in others[:5]))
        host = st.get_option("server.address") or "(all interfaces)"
        if not serve.is_local(str(host)):
            st.warning(f"This dashboard listens on {host}: anyone who reaches it can label under any name.")
    return page


def load_example_review(d) -> None:
    """Import the maintainers' review of the example into this (empty) run (button callback)."""
    added = session.load_bundled_review(d.store, d.run_id, d.g, d.layer, d.seed)
    st.session_state["seeded"] = ("loaded the maintainers' review: "
                                  f"{added['flags'].get('flags', '?')} flags; units {added['approved']} approved by {added['reviewer']}"
                                  if added else "the run is no longer empty: nothing was loaded")


def main() -> None:
    """Render the chosen page."""
    st.set_page_config(page_title="artifix dashboard", page_icon=":material/healing:", layout="wide")
    try:
        opts = resolve_settings()
        d = open_dash(opts)
    except ArtifixError as e:
        st.error(f"artifix: {e}")
        st.stop()
    page = sidebar(d)
    PAGES[page][1](d)


main()
