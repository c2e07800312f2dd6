"""The artifix review dashboard (Streamlit).

Start it with `artifix dashboard [artifix options]` (binds 127.0.0.1, XSRF protection on), or with
`streamlit run dashboard/app.py -- [artifix options]` from the checkout (its .streamlit/config.toml keeps the
same safe settings). With no options it opens the bundled example and its label store. Every page calls the
same library functions as the CLI (artifix.session, artifix.labels, artifix.report.tables, artifix.repair).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKOUT = (ROOT / "artifix" / "__init__.py").is_file()  # else an installed wheel: this file is artifix/dashboard/app.py
if CHECKOUT and str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` puts only dashboard/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from artifix.cli import serve  # noqa: E402

st.set_page_config(page_title="artifix dashboard", page_icon=":material/healing:", layout="wide")
BOOT = st.empty()  # the first thing a reviewer sees, before the imports below finish (about 4 s on a first load)
if serve.warm_pending():  # `artifix dashboard` imports torch and artifix in a background thread: this is its first run
    BOOT.info("Starting: loading the generator and the label store (the Review page then prepares its queue).",
              icon=":material/hourglass_top:")
    if "page" not in st.session_state:  # the Review page: draw its kept last page now, with the label store only
        if CHECKOUT:
            from dashboard import first_page  # noqa: E402
        else:
            from artifix.dashboard import first_page  # noqa: E402
        try:  # drawn at the same places as the full page's elements, so the full page replaces them without a gap
            drawn = first_page.draw(serve.settings_from_env() or {}, BOOT)
        except Exception:  # noqa: BLE001  (a head start only: the full page below computes the same and reports any error)
            drawn = False
        if drawn:
            serve.await_warm_imports()
            st.rerun()  # into the full page, which keeps this batch
serve.await_warm_imports()  # let the background imports finish before importing the same modules here

from artifix import session  # noqa: E402
from artifix.errors import ArtifixError  # noqa: E402
from artifix.workflow import bundled_review_for  # noqa: E402

if CHECKOUT:
    from dashboard import page_ab, page_approvals, page_paint, page_repair, page_review, page_units  # noqa: E402
    from dashboard.state import open_dash, resolve_settings  # noqa: E402
else:
    from artifix.dashboard import page_ab, page_approvals, page_paint, page_repair, page_review, page_units  # noqa: E402
    from artifix.dashboard.state import open_dash, resolve_settings  # noqa: E402

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
        st.session_state["_counts_slot"] = st.empty()  # filled after the page ran, so its actions are counted
        if "seeded" in st.session_state:
            st.success(st.session_state.pop("seeded"))
        seed_review_button(d)
        others = [r for r in d.store.runs() if r.id != d.run_id]
        if others:
            st.caption(f"{len(others)} other run(s) in this store (other generators, layers or seeds): "
                       + ", ".join(f"{r.id} (`{r.fingerprint[:8]}`, {', '.join(r.layers)}, seed {r.seed})" for r in others[:5]))
        host = st.get_option("server.address") or "(all interfaces)"
        if not serve.is_local(str(host)):
            st.warning(f"This dashboard listens on {host}: anyone who reaches it can label under any name.")
    return page


def run_facts(d) -> None:
    """The run facts and its counts, drawn into the sidebar slot after the page (so they include this run's actions)."""
    c = d.store.counts(d.run_id)
    slot = st.session_state.get("_counts_slot") or st.sidebar.empty()
    slot.caption(f"run **{d.run_id}** · generator `{d.g.fingerprint}` · layer `{d.layer}` · seed {d.seed}  \n"
                 f"store `{d.store.location}`  \n{c['labelled']} labelled · {c['masked']} painted · "
                 f"{c['proposed']} proposed · {c['approved']} approved")


def is_example_run(d) -> bool:
    """Whether the generator profile's bundled review is about this run (its generator, layer and seed), labels or not."""
    return bundled_review_for(session.profile_for(d.g.spec), d.g.fingerprint, d.layer, d.seed) is not None


def seed_review_button(d) -> None:
    """The maintainers' review button: enabled while it applies; on the example it stays, disabled, saying why."""
    review_fits = session.bundled_review_applies(d.store, d.run_id, d.g, d.layer, d.seed)
    if not review_fits and not is_example_run(d):
        return  # another generator, layer or seed: the maintainers' review is not about it
    why = ("import the flags and approvals the maintainers recorded for this example (data/example/review/)" if review_fits else
           "disabled: this run already has labels or decisions, and the maintainers' review is loaded only into an empty run "
           "(it never mixes with yours). To see it again, start the dashboard with a new --store.")
    st.button("Load the maintainers' example review", key="seed-review", icon=":material/playlist_add_check:",
              on_click=load_example_review, args=(d,), width="stretch", disabled=not review_fits, help=why)
    if not review_fits:
        st.caption("Maintainers' review: " + why.removeprefix("disabled: "))


def load_example_review(d) -> None:
    """Import the maintainers' review of the example into this (empty) run (button callback)."""
    added = session.load_bundled_review(d.store, d.run_id, d.g, d.layer, d.seed)
    st.session_state["seeded"] = ("loaded the maintainers' review: "
                                  f"{added['flags'].get('flags', '?')} flags; units {added['approved']} approved by {added['reviewer']}"
                                  if added else "the run is no longer empty: nothing was loaded")


def main() -> None:
    """Render the chosen page."""
    try:
        opts = resolve_settings()
        d = open_dash(opts)
    except ArtifixError as e:
        BOOT.empty()
        st.error(f"artifix: {e}")
        st.stop()
    BOOT.empty()
    page = sidebar(d)
    PAGES[page][1](d)
    run_facts(d)


main()
